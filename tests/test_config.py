"""Config errors are all reported at once, each with its JSON path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, parse_config


def test_every_problem_has_its_path():
    doc = {
        "server": {"port": "80", "bogus": 1},
        "providers": {
            "a": {"family": "nope", "credentials": [{"id": "x", "key": "env:MISSING"}]},
            "b": {"family": "openai_compat", "base_url": "http://x"},
        },
        "models": {"m": {"targets": ["zzz/model", 3]}},
        "keys": [{"name": "k", "key": "k1", "credit_usd": "abc"}],
        "streaming": {"on_disconnect": "explode"},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, env={})
    problems = "\n".join(caught.value.problems)
    for path in ("server.port", "server.bogus", "providers.a.family", "providers.a.credentials[0].key",
                 "providers.a.base_url", "providers.b.credentials", "models.m.targets[0]",
                 "models.m.targets[1]", "keys[0].credit_usd", "streaming.on_disconnect"):
        assert path in problems, path
    assert "MISSING" in problems


def test_env_secrets_resolve_and_never_print():
    doc = {"providers": {"p": {"family": "openai_compat", "base_url": "http://x",
                               "credentials": [{"id": "c", "key": "env:SECRET_K"}]}},
           "models": {"m": {"targets": ["p/x"]}}}
    config = parse_config(doc, env={"SECRET_K": "sk-very-secret"})
    cred = config.providers["p"].credentials[0]
    assert cred.key.value == "sk-very-secret"
    assert "sk-very-secret" not in repr(config)


def test_default_config_is_valid(capsys):
    root = Path(__file__).resolve().parent.parent
    assert main(["check-config", "--config", str(root / "config.json")]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_reports_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"m": {"targets": []}}}))
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "models.m.targets" in capsys.readouterr().err
