"""Config errors are all reported at once, each with its JSON path; nothing is free by accident."""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, parse_config
from protocols.money import FREE, Price

ROOT = Path(__file__).resolve().parent.parent


def minimal() -> dict:
    """A small valid config that the cases below break one way each."""
    return {
        "providers": {"p": {"family": "openai_compat", "base_url": "http://x",
                            "credentials": [{"id": "c", "key": "sk-p"}]}},
        "models": {"m": {"targets": ["p/gpt-x"]}},
        "pricing": {"p/gpt-x": {"input": "1.00", "output": "2.00"}},
        "keys": [{"name": "k", "key": "th-k", "credit_usd": "5.00"}],
    }


def problems_of(doc: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, env=env or {})
    return caught.value.problems


def readme_example() -> dict:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configure it"):]
    return json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))


def readme_env(doc: dict) -> dict:
    """A value for every ``env:NAME`` the example names (the secrets an operator would export)."""
    names = re.findall(r'"env:(\w+)"', json.dumps(doc))
    return {name: f"value-of-{name.lower()}" for name in names}


def test_minimal_config_is_valid():
    config = parse_config(minimal(), env={})
    assert config.pricing["p/gpt-x"] == Price(input=Decimal("1.00"), output=Decimal("2.00"))


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
    problems = "\n".join(problems_of(doc))
    for path in ("server.port", "server.bogus", "providers.a.family", "providers.a.credentials[0].key",
                 "providers.a.base_url", "providers.b.credentials", "models.m.targets[0]",
                 "models.m.targets[1]", "keys[0].credit_usd", "streaming.on_disconnect"):
        assert path in problems, path
    assert "MISSING" in problems
    assert "keys[0]: has no credit_usd" not in problems  # the bad credit_usd is the problem, said once


TYPOS = [
    # (where the typo goes, the path the error names, the suggestion it makes)
    (lambda d: d.update(provders={}), "provders", "providers"),
    (lambda d: d["providers"]["p"].update(credentails=[]), "providers.p.credentails", "credentials"),
    (lambda d: d["providers"]["p"]["credentials"][0].update(requests_per_minit=5),
     "providers.p.credentials[0].requests_per_minit", "requests_per_minute"),
    (lambda d: d["models"]["m"].update(hold_output_token=5), "models.m.hold_output_token", "hold_output_tokens"),
    (lambda d: d["pricing"]["p/gpt-x"].update(ouput="2"), "pricing.p/gpt-x.ouput", "output"),
    (lambda d: d["keys"][0].update(credit="5.00"), "keys[0].credit", "credit_usd"),
    (lambda d: d["keys"][0].update(request_per_minute=5), "keys[0].request_per_minute", "requests_per_minute"),
    (lambda d: d.update(streaming={"stall_timout_s": 5}), "streaming.stall_timout_s", "stall_timeout_s"),
    (lambda d: d.update(cooldown={"max_retry_after": 5}), "cooldown.max_retry_after", "max_retry_after_s"),
    (lambda d: d.update(streaming={"on_disconnect": "drian"}), "streaming.on_disconnect", "drain"),
]


@pytest.mark.parametrize("typo,path,suggestion", TYPOS, ids=[t[1] for t in TYPOS])
def test_a_typo_at_any_depth_is_an_error_with_a_suggestion(typo, path, suggestion):
    doc = minimal()
    typo(doc)
    problems = problems_of(doc)
    assert any(p.startswith(f"{path}: ") and f"did you mean {suggestion!r}?" in p for p in problems), problems


def test_a_credit_typo_is_an_error_not_unlimited_credit():
    doc = minimal()
    doc["keys"] = [{"name": "k", "key": "th-k", "credit": "5.00"}]
    problems = problems_of(doc)
    assert "keys[0].credit: unknown setting; did you mean 'credit_usd'?" in problems
    assert any(p.startswith("keys[0]: has no credit_usd") for p in problems)


@pytest.mark.parametrize("key,problem", [
    ({"name": "k", "key": "th-k"}, "keys[0]: has no credit_usd; set credit_usd, or \"unlimited\": true"),
    ({"name": "k", "key": "th-k", "credit_usd": None}, "keys[0]: has no credit_usd"),
    ({"name": "k", "key": "th-k", "unlimited": False}, "keys[0]: has no credit_usd"),
    ({"name": "k", "key": "th-k", "credit_usd": "5", "unlimited": True}, "keys[0]: sets both credit_usd"),
    ({"name": "k", "key": "th-k", "unlimited": "yes", "credit_usd": "1"}, "keys[0].unlimited: expected true/false"),
    ({"name": "k", "key": ""}, "keys[0].key: must not be empty"),
    ({"name": "k", "key": "th-k", "credit_usd": "10000000000000"}, "keys[0].credit_usd: must be at most"),
])
def test_a_key_needs_credit_or_an_explicit_unlimited(key, problem):
    doc = minimal()
    doc["keys"] = [key]
    assert any(p.startswith(problem) for p in problems_of(doc)), problems_of(doc)


def test_an_unlimited_key_is_explicit():
    doc = minimal()
    doc["keys"] = [{"name": "ops", "key": "th-ops", "unlimited": True}]
    key = parse_config(doc, env={}).keys[0]
    assert key.unlimited and key.credit_usd is None


def test_duplicate_keys_are_errors_and_the_secret_is_not_shown():
    doc = minimal()
    doc["keys"].append({"name": "k", "key": "th-k", "credit_usd": "1"})
    problems = problems_of(doc)
    assert "keys[1].name: duplicate key name 'k' (also keys[0])" in problems
    assert "keys[1].key: the same key as keys[0]" in problems
    assert "th-k" not in "\n".join(problems)


@pytest.mark.parametrize("entry,problem", [
    ({}, "pricing.p/gpt-x: has no prices; set input/output or free: true"),
    ({"free": False}, "pricing.p/gpt-x: has no prices"),
    ({"input": "1"}, "pricing.p/gpt-x: has no output price"),
    ({"output": "1"}, "pricing.p/gpt-x: has no input price"),
    ({"free": True, "input": "1"}, "pricing.p/gpt-x: is free: true and also sets input"),
    ({"input": "-1", "output": "1"}, "pricing.p/gpt-x.input: must be a finite number >= 0"),
    ({"input": "NaN", "output": "1"}, "pricing.p/gpt-x.input: must be a finite number >= 0"),
    ({"input": True, "output": "1"}, "pricing.p/gpt-x.input: expected a decimal string"),
    ({"input": "1", "output": "1", "free": 1}, "pricing.p/gpt-x.free: expected true/false"),
    ("1.00", "pricing.p/gpt-x: expected an object"),
])
def test_a_pricing_entry_is_prices_or_free(entry, problem):
    doc = minimal()
    doc["pricing"]["p/gpt-x"] = entry
    assert any(p.startswith(problem) for p in problems_of(doc)), problems_of(doc)


def test_a_free_target_is_a_zero_price_on_purpose():
    doc = minimal()
    doc["pricing"] = {"p/gpt-x": {"free": True}}
    config = parse_config(doc, env={})
    assert config.pricing["p/gpt-x"] == FREE == Price()
    assert config.is_priced("p/gpt-x")


def test_an_unpriced_target_names_the_near_miss_pricing_key():
    doc = minimal()
    doc["pricing"] = {"p/gpt-y": {"input": "1", "output": "2"}}
    problems = problems_of(doc)
    assert problems == [
        "models.m.targets[0]: 'p/gpt-x' has no price; add pricing[\"p/gpt-x\"] or pricing[\"p/*\"], "
        "or mark it free on purpose with \"free\": true; did you mean pricing key 'p/gpt-y' "
        "(a typo in its model name?)"]


def test_empty_pricing_leaves_every_reachable_target_unpriced():
    doc = minimal()
    doc["models"]["*"] = {"targets": ["p/catch-all"]}
    doc["aliases"] = {"direct": "p/aliased", "named": "m"}
    doc["pricing"] = {}
    problems = problems_of(doc)
    assert [p.split(":")[0] for p in problems] == ["models.m.targets[0]", "models.*.targets[0]", "aliases.direct"]


def test_a_provider_wide_price_covers_its_targets():
    doc = minimal()
    doc["models"]["*"] = {"targets": ["p/anything"]}
    doc["pricing"] = {"p/*": {"input": "1", "output": "2"}}
    config = parse_config(doc, env={})
    assert config.is_priced("p/gpt-x") and config.is_priced("p/other") and not config.is_priced("q/gpt-x")


def test_a_pricing_key_must_name_a_configured_provider():
    doc = minimal()
    doc["pricing"]["openia/gpt-4.1"] = {"input": "1", "output": "2"}
    doc["providers"]["openai"] = doc["providers"].pop("p")
    doc["models"]["m"]["targets"] = ["openai/gpt-x"]
    doc["pricing"]["openai/*"] = {"input": "1", "output": "2"}
    doc["pricing"]["no-slash"] = {"input": "1", "output": "2"}
    problems = problems_of(doc)
    assert 'pricing["openia/gpt-4.1"]: provider \'openia\' is not configured; did you mean \'openai\'?' in problems
    assert "pricing.no-slash: expected a 'provider/model' or 'provider/*' key" in problems
    assert any(p.startswith("pricing.p/gpt-x: provider 'p' is not configured") for p in problems)


def test_new_settings_have_their_defaults():
    config = parse_config(minimal(), env={})
    provider = config.providers["p"]
    assert (provider.keepalive_s, provider.max_connections, provider.proxy) == (15.0, 100, None)
    assert config.streaming.settle_timeout_s == 10.0
    assert config.server.shutdown_grace_s == 30.0
    assert config.cooldown.max_retry_after_s == 3600.0


@pytest.mark.parametrize("where,value,problem", [
    ("providers.p.keepalive_s", 0, "must be positive"),
    ("providers.p.keepalive_s", "15", "expected number, got string"),
    ("providers.p.max_connections", 0, "must be positive"),
    ("providers.p.max_connections", 1.5, "expected integer, got number"),
    ("providers.p.proxy", "socks5://h:1080", "expected null or 'http://[user:pass@]host:port'"),
    ("providers.p.proxy", "http://h", "expected null or 'http://[user:pass@]host:port'"),
    ("providers.p.proxy", "http://h:80/path", "expected null or 'http://[user:pass@]host:port'"),
    ("providers.p.proxy", "http://u:secret@h:99999", "expected null or 'http://[user:pass@]host:port'"),
    ("streaming.settle_timeout_s", 0, "must be positive"),
    ("server.shutdown_grace_s", -1, "must be >= 0"),
    ("cooldown.max_retry_after_s", 0, "must be positive"),
    ("cooldown.max_retry_after_s", float("inf"), "must be a finite number"),
    ("server.port", True, "expected integer, got true/false"),
])
def test_new_settings_are_validated(where, value, problem):
    doc = minimal()
    *parents, leaf = where.split(".")
    node = doc
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value
    problems = problems_of(doc)
    assert problems == [f"{where}: {problem}"]
    assert "secret" not in problems[0]


@pytest.mark.parametrize("provider,accepted", [
    ({"family": "openai", "base_url": "https://api.openai.com/v1", "credentials": [{"id": "c", "key": "sk"}]}, True),
    ({"family": "simulator", "embedded": True, "protocol": "openai_responses"}, True),
    ({"family": "openai_compat", "embedded": True, "protocol": "openai_responses"}, True),
    ({"family": "openai_compat", "base_url": "http://x", "credentials": [{"id": "c", "key": "sk"}]}, False),
    ({"family": "anthropic", "base_url": "http://x", "credentials": [{"id": "c", "key": "sk"}]}, False),
    ({"family": "simulator", "embedded": True}, False),  # speaks Chat unless told otherwise
    ({"family": "simulator", "embedded": True, "protocol": "anthropic"}, False),
])
def test_the_websocket_switch_is_for_providers_that_speak_responses(provider, accepted):
    doc = minimal()
    doc["providers"]["p"] = {**provider, "websocket": True}
    if accepted:
        assert parse_config(doc, env={}).providers["p"].websocket is True
    else:
        assert problems_of(doc) == ['providers.p.websocket: needs a provider that speaks the Responses API '
                                    '(family "openai", or a simulated one with protocol "openai_responses")']
    assert parse_config(minimal(), env={}).providers["p"].websocket is False


@pytest.mark.parametrize("proxy", [None, "http://proxy.internal:3128", "http://user:pass@10.0.0.1:8080"])
def test_a_proxy_is_null_or_an_http_url(proxy):
    doc = minimal()
    doc["providers"]["p"]["proxy"] = proxy
    assert parse_config(doc, env={}).providers["p"].proxy == proxy


def test_env_secrets_resolve_and_never_print():
    doc = minimal()
    doc["providers"]["p"]["credentials"] = [{"id": "c", "key": "env:SECRET_K"}]
    config = parse_config(doc, env={"SECRET_K": "sk-very-secret"})
    cred = config.providers["p"].credentials[0]
    assert cred.key.value == "sk-very-secret"
    assert "sk-very-secret" not in repr(config)
    assert problems_of(doc, env={"SECRET_K": ""}) == [
        "providers.p.credentials[0].key: environment variable SECRET_K is empty"]


def test_defaults_that_depend_on_position_are_filled():
    doc = minimal()
    doc["providers"]["p"]["credentials"] = [{"key": "a"}, {"key": "b"}]
    doc["providers"]["sim"] = {"family": "simulator", "embedded": True}
    doc["keys"] = [{"key": "th-a", "credit_usd": "1"}]
    config = parse_config(doc, env={})
    assert [c.id for c in config.providers["p"].credentials] == ["p-0", "p-1"]
    assert [c.id for c in config.providers["sim"].credentials] == ["sim-embedded"]
    assert config.keys[0].name == "key-0"


def test_a_document_that_is_not_an_object_is_one_problem():
    assert problems_of([1, 2]) == ["$: expected an object, got array"]


def test_the_readme_example_is_valid():
    doc = readme_example()
    config = parse_config(copy.deepcopy(doc), env=readme_env(doc))
    reachable = {t for m in config.models.values() for t in m.targets}
    assert reachable and all(config.is_priced(t) for t in reachable)


def test_default_config_is_valid(capsys):
    assert main(["check-config", "--config", str(ROOT / "config.json")]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_reports_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"m": {"targets": []}}}))
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "models.m.targets: needs at least one target" in capsys.readouterr().err


def test_check_config_lists_what_is_free_on_purpose(tmp_path, capsys):
    doc = minimal()
    doc["pricing"]["p/*"] = {"free": True}
    doc["keys"].append({"name": "ops", "key": "th-ops", "unlimited": True})
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(doc))
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "charged nothing (free): p/*" in out and "unlimited): ops" in out
