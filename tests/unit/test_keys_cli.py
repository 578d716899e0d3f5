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
def database(tmp_path, monkeypatch):
    """This test's own database, where keys go when no keys file is set."""
    from app.ledger import connect
    from app.ledger.keystore import DatabaseKeyStore

    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    return DatabaseKeyStore(connect({"DATABASE_URL": url}))


@pytest.fixture
def keys_file(tmp_path, monkeypatch, database):
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
    assert header.split() == ["NAME", "STORE", "RPM", "TPM", "MAX_CONCURRENT", "WEIGHT", "PRIORITY", "STATE", "CREATED",
                              "BUDGET", "ADMIN"]
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


def test_keys_go_to_the_database_when_no_keys_file_is_set(redis_server, redis_client, database, monkeypatch,
                                                          capsys):
    monkeypatch.delenv("SLUICE_KEYS_FILE", raising=False)
    monkeypatch.setenv("SLUICE_REDIS_URL", redis_server.url)
    sluice("keys", "create", "--name", "shared", "--budget-tokens", "5000", "--budget-period", "day", "--admin")
    key = capsys.readouterr().out.strip()
    record = database.lookup(hash_key(key))
    assert (record.name, record.budget_tokens, record.budget_period, record.admin) == ("shared", 5000, "day", True)
    assert not redis_client.keys("sluice:key*"), "Redis holds no key: it may lose its data"


def test_update_changes_only_what_is_given(database, monkeypatch, capsys):
    monkeypatch.delenv("SLUICE_KEYS_FILE", raising=False)
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    sluice("keys", "create", "--name", "bob", "--rpm", "10", "--budget-tokens", "100", "--weight", "3",
           "--priority", "high")
    key = capsys.readouterr().out.strip()
    assert sluice("keys", "update", "bob", "--budget-tokens", "900", "--budget-period", "day", "--admin") == 0
    record = database.lookup(hash_key(key))
    assert (record.rpm, record.budget_tokens, record.budget_period, record.admin) == (10, 900, "day", True)
    assert (record.weight, record.priority) == (3, "high"), "the fair queue's share is kept in the database"
    assert sluice("keys", "update", "bob", "--weight", "5", "--priority", "low") == 0
    assert (database.lookup(hash_key(key)).weight, database.lookup(hash_key(key)).priority) == (5, "low")
    assert sluice("keys", "update", "bob", "--no-budget", "--no-admin") == 0
    record = database.lookup(hash_key(key))
    assert (record.budget_tokens, record.budget_period, record.admin) == (None, None, False)
    assert sluice("keys", "update", "nobody", "--rpm", "1") == 1
    assert sluice("keys", "update", "bob") == 2, "nothing to change"


def test_import_moves_file_and_redis_keys_into_the_database_once(redis_server, redis_client, keys_file, database,
                                                                  monkeypatch, capsys):
    from app.access.keys import FileKeyStore, KeyRing, RedisKeyStore

    file_key, _ = KeyRing(FileKeyStore(keys_file), None).create("from-file", rpm=5)
    redis_key, _ = KeyRing(None, RedisKeyStore(redis_client)).create("from-redis", tpm=50)
    monkeypatch.setenv("SLUICE_REDIS_URL", redis_server.url)
    assert sluice("keys", "import") == 0
    assert "imported 2 key(s)" in capsys.readouterr().err
    assert database.lookup(hash_key(file_key)).rpm == 5
    assert database.lookup(hash_key(redis_key)).tpm == 50
    assert not redis_client.keys("sluice:key*"), "moved: Redis keeps only what may be lost"
    assert sluice("keys", "import") == 0
    assert "imported 0 key(s)" in capsys.readouterr().err


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


def test_unusable_database_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.delenv("SLUICE_KEYS_FILE", raising=False)
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    monkeypatch.setenv("SLUICE_DATABASE_URL", "mysql://nowhere/x")
    assert sluice("keys", "create", "--name", "x") == 1
    assert "unsupported database 'mysql'" in capsys.readouterr().err



@pytest.mark.parametrize("args, says", [(["--weight", "0"], "from 1 to 1000"), (["--weight", "x"], "from 1 to 1000"),
                                        (["--priority", "urgent"], "invalid choice")])
def test_weight_and_priority_are_checked(keys_file, capsys, args, says):
    with pytest.raises(SystemExit):
        sluice("keys", "create", "--name", "carol", *args)
    assert says in capsys.readouterr().err
