"""Safe default: without API keys the gateway listens on loopback only, unless told otherwise."""
from __future__ import annotations

import pytest

from app import config


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:8080", True),
    ("127.9.9.9:80", True),
    ("localhost:8080", True),
    ("[::1]:8080", True),
    ("unix:/run/sluice.sock", True),
    ("0.0.0.0:8080", False),
    ("[::]:8080", False),
    (":8080", False),
    ("10.0.0.5:8080", False),
    ("gateway.internal:8080", False),
    ("fd://3", False),
])
def test_loopback_binds(address, loopback):
    assert config.is_loopback_bind(address) is loopback


def test_no_keys_on_a_public_address_refuses_to_start():
    with pytest.raises(config.ConfigError) as caught:
        config.load(environ={"SLUICE_BIND": "127.0.0.1:8080, 0.0.0.0:8081"})
    message = str(caught.value)
    assert "0.0.0.0:8081" in message and "SLUICE_ALLOW_UNAUTHENTICATED=true" in message
    assert "SLUICE_KEYS_FILE" in message


@pytest.mark.parametrize("environ", [
    {"SLUICE_BIND": "0.0.0.0:8080", "SLUICE_ALLOW_UNAUTHENTICATED": "true"},
    {"SLUICE_BIND": "0.0.0.0:8080", "SLUICE_KEYS_FILE": "/etc/sluice/keys.json"},
    {"SLUICE_BIND": "0.0.0.0:8080", "SLUICE_REDIS_URL": "redis://10.0.0.2:6379/0"},
    {"SLUICE_BIND": "127.0.0.1:8080"},
])
def test_keys_or_loopback_or_explicit_opt_in_start(environ):
    settings = config.load(environ=environ)
    assert settings["BIND"] == environ["SLUICE_BIND"]


def test_authentication_is_on_exactly_when_a_key_store_is_configured():
    assert not config.authentication_required(config.load(environ={}))
    assert config.authentication_required(config.load(environ={"SLUICE_KEYS_FILE": "k.json"}))
    assert config.authentication_required(config.load(environ={"SLUICE_REDIS_URL": "redis://r:6379/0"}))
