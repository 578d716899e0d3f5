"""`sluice keys create|list|revoke`, through the argparse registration app/cli.py uses."""
from __future__ import annotations

import argparse

import pytest

from app.access import keys_cli
from app.access.keys import FileKeyStore, hash_key


def sluice(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sluice")
    keys_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def keys_file(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    monkeypatch.setenv("SLUICE_KEYS_FILE", str(path))
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    return path


def test_create_prints_the_key_once_and_stores_its_hash(keys_file, capsys):
    assert sluice("keys", "create", "--name", "alice", "--rpm", "30", "--max-concurrent", "2") == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert out == key + "\n", "stdout is the key alone, for scripts"
    assert "not shown again" in err
    record = FileKeyStore(keys_file).lookup(hash_key(key))
    assert (record.name, record.rpm, record.tpm, record.max_concurrent) == ("alice", 30, None, 2)
    assert key not in keys_file.read_text()


def test_list_shows_names_and_limits_never_keys(keys_file, capsys):
    sluice("keys", "create", "--name", "alice", "--tpm", "1000")
    key = capsys.readouterr().out.strip()
    sluice("keys", "create", "--name", "bob", "--weight", "3", "--priority", "high")
    sluice("keys", "revoke", "bob")
    capsys.readouterr()
    assert sluice("keys", "list") == 0
    out = capsys.readouterr().out
    header, alice, bob = out.splitlines()
    assert header.split() == ["NAME", "STORE", "RPM", "TPM", "MAX_CONCURRENT", "WEIGHT", "PRIORITY", "STATE", "CREATED"]
    assert alice.split()[:8] == ["alice", "file", "default", "1000", "default", "1", "normal", "active"]
    assert bob.split()[:8] == ["bob", "file", "default", "default", "default", "3", "high", "revoked"]
    assert key not in out and hash_key(key) not in out


def test_revoke_unknown_name_fails(keys_file, capsys):
    assert sluice("keys", "revoke", "nobody") == 1
    assert "no key named 'nobody'" in capsys.readouterr().err


def test_duplicate_name_fails(keys_file, capsys):
    sluice("keys", "create", "--name", "alice")
    assert sluice("keys", "create", "--name", "alice") == 1
    assert "already exists" in capsys.readouterr().err


def test_keys_go_to_redis_when_configured(redis_server, redis_client, keys_file, monkeypatch, capsys):
    monkeypatch.setenv("SLUICE_REDIS_URL", redis_server.url)
    sluice("keys", "create", "--name", "shared")
    key = capsys.readouterr().out.strip()
    assert redis_client.get(f"sluice:key:{hash_key(key)}") is not None
    assert not keys_file.exists()


def test_unreachable_redis_is_one_clear_line(keys_file, monkeypatch, capsys):
    from bench.processes import free_port

    monkeypatch.setenv("SLUICE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert sluice("keys", "list") == 1
    assert "Redis at SLUICE_REDIS_URL did not answer" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["-1", "lots"])
def test_bad_limit_is_refused_by_argparse(keys_file, bad, capsys):
    with pytest.raises(SystemExit):
        sluice("keys", "create", "--name", "x", "--rpm", bad)
    assert "whole number >= 0" in capsys.readouterr().err


def test_no_store_configured(monkeypatch, capsys):
    monkeypatch.delenv("SLUICE_KEYS_FILE", raising=False)
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    assert sluice("keys", "create", "--name", "x") == 1
    assert "set SLUICE_KEYS_FILE or SLUICE_REDIS_URL" in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [(["--weight", "0"], "from 1 to 1000"), (["--weight", "x"], "from 1 to 1000"),
                                        (["--priority", "urgent"], "invalid choice")])
def test_weight_and_priority_are_checked(keys_file, capsys, args, says):
    with pytest.raises(SystemExit):
        sluice("keys", "create", "--name", "carol", *args)
    assert says in capsys.readouterr().err
