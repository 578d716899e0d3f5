"""API keys: only hashes stored, in a JSON file and in Redis; names unique; revocation seen at once."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from app.access.keys import (
    KEY_PREFIX,
    FileKeyStore,
    KeyRecord,
    KeyRing,
    KeyStoreError,
    RedisKeyStore,
    hash_key,
    new_key,
)


def test_keys_are_long_random_and_only_their_hash_is_kept(tmp_path):
    ring = KeyRing(FileKeyStore(tmp_path / "keys.json"), None)
    key, record = ring.create("alice", rpm=10)
    other, _ = ring.create("bob")
    assert key.startswith(KEY_PREFIX) and len(key) - len(KEY_PREFIX) >= 43  # 32 random bytes, base64
    assert key != other
    assert record.sha256 == hashlib.sha256(key.encode()).hexdigest() == hash_key(key)
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and record.sha256 in text
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600


def test_record_compares_hashes_in_constant_time():
    record = KeyRecord(name="a", sha256=hash_key("k1"))
    assert record.matches(hash_key("k1")) and not record.matches(hash_key("k2"))


def test_file_store_sees_a_change_made_by_another_process(tmp_path):
    path = tmp_path / "keys.json"
    reader, writer = FileKeyStore(path), FileKeyStore(path)
    assert reader.lookup(hash_key("nothing")) is None  # no file yet: no keys
    key, record = KeyRing(writer, None).create("alice", tpm=500)
    assert reader.lookup(record.sha256) == record
    assert writer.revoke("alice")
    assert reader.lookup(hash_key(key)).revoked
    assert not writer.revoke("nobody")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not a JSON object"),
    ('{"keys": {}}', "not a JSON object"),
    ('{"keys": [{"name": "a"}]}', "needs a name and a sha256"),
    ('{"keys": [{"name": "a", "sha256": "00", "rpm": -1}]}', "whole numbers >= 0"),
])
def test_unreadable_keys_file_is_an_error_naming_the_problem(tmp_path, content, problem):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyStoreError, match=problem):
        FileKeyStore(path).lookup(hash_key("x"))


def test_redis_store(redis_client):
    store = RedisKeyStore(redis_client)
    ring = KeyRing(None, store)
    key, record = ring.create("carol", max_concurrent=2)
    assert store.lookup(hash_key(key)) == record
    assert [r.name for r in store.records()] == ["carol"]
    assert key.encode() not in b"".join(redis_client.get(k) or b"" for k in redis_client.keys("sluice:key:*"))
    assert ring.revoke("carol") and store.lookup(hash_key(key)).revoked
    assert not ring.revoke("nobody")


def test_new_keys_go_to_the_file_else_the_database_and_names_are_unique_across_stores(tmp_path, redis_client):
    from app.ledger import connect
    from app.ledger.keystore import DatabaseKeyStore

    database = DatabaseKeyStore(connect({"DATABASE_URL": f"sqlite:///{tmp_path / 'sluice.db'}"}))
    KeyRing(FileKeyStore(tmp_path / "keys.json"), None, database).create("in-file")
    ring = KeyRing(None, RedisKeyStore(redis_client), database)
    _, record = ring.create("in-database", budget_tokens=10, budget_period="month")
    assert database.lookup(record.sha256) == record and ring.redis.lookup(record.sha256) is None
    ring.file = FileKeyStore(tmp_path / "keys.json")
    with pytest.raises(KeyStoreError, match="already exists"):
        ring.create("in-file")
    assert [(kind, r.name) for kind, r in ring.records()] == [("file", "in-file"), ("database", "in-database")]


@pytest.mark.parametrize("name", ["", "-dash-first", "has space", "a" * 65, "key:colon"])
def test_invalid_names_are_refused(tmp_path, name):
    with pytest.raises(KeyStoreError, match="invalid key name"):
        KeyRing(FileKeyStore(tmp_path / "keys.json"), None).create(name)


def test_no_store_configured_says_which_settings_to_set():
    with pytest.raises(KeyStoreError, match="SLUICE_KEYS_FILE or SLUICE_DATABASE_URL"):
        KeyRing(None, None).create("x")


def test_keys_file_is_json_people_can_read(tmp_path):
    KeyRing(FileKeyStore(tmp_path / "keys.json"), None).create("dora", rpm=60, tpm=1000, max_concurrent=4)
    (entry,) = json.loads((tmp_path / "keys.json").read_text())["keys"]
    assert {k: entry[k] for k in ("name", "rpm", "tpm", "max_concurrent", "revoked")} == {
        "name": "dora", "rpm": 60, "tpm": 1000, "max_concurrent": 4, "revoked": False}
    assert new_key() != new_key()


def test_weight_and_priority_are_optional_fields_with_defaults(tmp_path):
    ring = KeyRing(FileKeyStore(tmp_path / "keys.json"), None)
    ring.create("batch", weight=1, priority="low")
    ring.create("app", weight=3)
    old = KeyRecord.from_json({"name": "old", "sha256": "0" * 64})  # written before these fields existed
    shares = {r.name: (r.weight, r.priority) for _, r in ring.records()}
    assert shares == {"batch": (1, "low"), "app": (3, "normal")}
    assert (old.weight, old.priority) == (1, "normal")


@pytest.mark.parametrize("field, value", [("weight", 0), ("weight", 1001), ("weight", "3"), ("weight", True),
                                          ("priority", "urgent"), ("priority", None)])
def test_bad_weight_or_priority_is_refused(field, value):
    with pytest.raises(KeyStoreError, match=field):
        KeyRecord.from_json({"name": "k", "sha256": "0" * 64, field: value})
