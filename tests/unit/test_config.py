"""Settings: one name, one default, one environment variable, one doc line; bad values named."""
from __future__ import annotations

from pathlib import Path

import pytest

from app import config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_need_no_environment():
    settings = config.load(environ={})
    assert settings["BIND"] == "127.0.0.1:8080"
    assert settings["UPSTREAM_URL"] == ""
    assert settings["WORKER_CONNECTIONS"] == 1000


def test_environment_then_overrides_win():
    environ = {"SLUICE_WORKERS": "4", "SLUICE_UPSTREAM_READ_TIMEOUT": "9.5"}
    settings = config.load({"WORKERS": 3}, environ=environ)
    assert settings["WORKERS"] == 3
    assert settings["UPSTREAM_READ_TIMEOUT"] == 9.5


@pytest.mark.parametrize("env_var, value, named", [
    ("SLUICE_WORKERS", "many", "SLUICE_WORKERS"),
    ("SLUICE_WORKERS", "0", "at least 1"),
    ("SLUICE_LOG_LEVEL", "loud", "must be one of"),
    ("SLUICE_ENGINE_PORT", "70000", "at most 65535"),
    ("SLUICE_UPSTREAM_CONNECT_TIMEOUT", "-1", "SLUICE_UPSTREAM_CONNECT_TIMEOUT"),
])
def test_bad_value_stops_with_the_setting_named(env_var, value, named):
    with pytest.raises(config.ConfigError, match=named):
        config.load(environ={env_var: value})


def test_unknown_override_is_refused():
    with pytest.raises(config.ConfigError, match="NOT_A_SETTING"):
        config.load({"NOT_A_SETTING": 1}, environ={})


def test_every_setting_is_documented_exactly_as_the_code_says():
    assert config.markdown_table() in DOCS.read_text(), "regenerate with `sluice config --markdown`"
