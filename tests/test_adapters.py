"""Adapters on the wire form: each one's edit per protocol, the fixed order, family
defaults and per-model choice, copy-on-write of a pass-through body, and the config's
refusals with their JSON paths."""

from __future__ import annotations

import copy

import pytest

from gateway.config import parse_config
from protocols import anthropic_messages, gemini, openai_chat, openai_responses
from protocols.unified import (Finish, FinishReason, ReasoningDelta, ReasoningPart, TextDelta, TextPart,
                               UnifiedResponse)
from providers.adapters import REGISTRY, Chain, ProviderAdapters
from providers.adapters.answer import StripReasoning
from providers.adapters.chain import ANTHROPIC_DEFAULT_MAX_TOKENS, ORDER
from providers.adapters.request import (CapMaxTokens, DefaultMaxTokens, DropParams, ExtraHeaders,
                                        MaxCompletionTokens, OneSamplingParam, RenameParams, SystemPrefix)
from tests.test_config import minimal, problems_of

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
        "temperature": 0.5, "top_p": 0.9}
RESPONSES = {"model": "m", "input": "hi", "max_output_tokens": 100, "temperature": 0.5, "top_p": 0.9}
ANTHROPIC = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
             "temperature": 0.5, "top_p": 0.9}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
          "generationConfig": {"maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9}}


def parsed(protocol: str, doc: dict):
    """A client's request as the front door parses it (its raw body kept)."""
    if protocol == "gemini":
        return gemini.parse_request(copy.deepcopy(doc), model="m", stream=False)
    module = {"openai_chat": openai_chat, "openai_responses": openai_responses, "anthropic": anthropic_messages}
    return module[protocol].parse_request(copy.deepcopy(doc))


def run(adapters, protocol: str, doc: dict) -> dict:
    """The body a same-protocol upstream gets: the client's own, through the chain."""
    req = parsed(protocol, doc)
    built = dict(req.raw)
    return Chain.of(adapters).body(built, req, protocol)


# ---------------------------------------------------------------- each adapter

def test_max_completion_tokens_renames_the_chat_limit():
    out = run([MaxCompletionTokens()], "openai_chat", CHAT)
    assert "max_tokens" not in out and out["max_completion_tokens"] == 100
    both = run([MaxCompletionTokens()], "openai_chat", {**CHAT, "max_completion_tokens": 50})
    assert "max_tokens" not in both and both["max_completion_tokens"] == 50


@pytest.mark.parametrize("protocol, doc, temperature, top_p", [
    ("openai_chat", CHAT, "temperature", "top_p"),
    ("openai_responses", RESPONSES, "temperature", "top_p"),
    ("anthropic", ANTHROPIC, "temperature", "top_p"),
])
def test_one_sampling_param_keeps_one_of_the_pair(protocol, doc, temperature, top_p):
    out = run([OneSamplingParam()], protocol, doc)
    assert out[temperature] == 0.5 and top_p not in out
    out = run([OneSamplingParam(keep="top_p")], protocol, doc)
    assert out[top_p] == 0.9 and temperature not in out
    alone = {k: v for k, v in doc.items() if k != temperature}
    assert run([OneSamplingParam()], protocol, alone)[top_p] == 0.9  # one of them alone is left alone


def test_one_sampling_param_in_gemini_generation_config():
    out = run([OneSamplingParam()], "gemini", GEMINI)
    assert out["generationConfig"] == {"maxOutputTokens": 100, "temperature": 0.5}


@pytest.mark.parametrize("protocol, doc, path", [
    ("openai_chat", CHAT, ("max_tokens",)),
    ("openai_responses", RESPONSES, ("max_output_tokens",)),
    ("anthropic", ANTHROPIC, ("max_tokens",)),
    ("gemini", GEMINI, ("generationConfig", "maxOutputTokens")),
])
def test_default_and_cap_of_output_tokens(protocol, doc, path):
    def limit(body):
        for part in path:
            body = body.get(part, {})
        return body or None

    unset = copy.deepcopy(doc)
    node = unset
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    if protocol == "anthropic":
        assert limit(run([DefaultMaxTokens(value=777)], protocol, {**doc, "max_tokens": 100})) == 100
    else:
        assert limit(run([DefaultMaxTokens(value=777)], protocol, unset)) == 777  # the client set none
        assert limit(run([CapMaxTokens(value=50)], protocol, unset)) is None  # a cap adds nothing
    assert limit(run([DefaultMaxTokens(value=777)], protocol, doc)) == 100  # the client's own wins
    assert limit(run([CapMaxTokens(value=50)], protocol, doc)) == 50
    assert limit(run([CapMaxTokens(value=500)], protocol, doc)) == 100


def test_default_max_tokens_replaces_the_codecs_placeholder_for_a_translated_anthropic_request():
    req = openai_chat.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    built = anthropic_messages.build_request(req, "claude")
    chain = ProviderAdapters("anthropic").chain("claude")  # the family default only
    assert chain.body(built, req, "anthropic")["max_tokens"] == ANTHROPIC_DEFAULT_MAX_TOKENS
    limited = openai_chat.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 64})
    assert chain.body(anthropic_messages.build_request(limited, "claude"), limited, "anthropic")["max_tokens"] == 64


def test_a_thinking_budget_mapped_from_an_effort_comes_on_top_of_the_default_limit():
    req = openai_responses.parse_request({"model": "m", "input": "hi", "reasoning": {"effort": "high"}})
    body = ProviderAdapters("anthropic").chain("claude").body(anthropic_messages.build_request(req, "claude"),
                                                             req, "anthropic")
    budget = body["thinking"]["budget_tokens"]
    assert budget == 16384 and body["max_tokens"] == ANTHROPIC_DEFAULT_MAX_TOKENS + budget


@pytest.mark.parametrize("protocol, doc, expect", [
    ("openai_chat", CHAT, lambda b: b["messages"][0] == {"role": "system", "content": "RULES"}),
    ("openai_chat", {**CHAT, "messages": [{"role": "system", "content": "be brief"}, *CHAT["messages"]]},
     lambda b: b["messages"][0] == {"role": "system", "content": "RULES\n\nbe brief"} and len(b["messages"]) == 2),
    ("openai_responses", {**RESPONSES, "instructions": "be brief"}, lambda b: b["instructions"] == "RULES\n\nbe brief"),
    ("openai_responses", RESPONSES, lambda b: b["instructions"] == "RULES"),
    ("anthropic", {**ANTHROPIC, "system": "be brief"}, lambda b: b["system"] == "RULES\n\nbe brief"),
    ("anthropic", {**ANTHROPIC, "system": [{"type": "text", "text": "be brief"}]},
     lambda b: b["system"] == [{"type": "text", "text": "RULES"}, {"type": "text", "text": "be brief"}]),
    ("gemini", {**GEMINI, "systemInstruction": {"parts": [{"text": "be brief"}]}},
     lambda b: b["systemInstruction"]["parts"] == [{"text": "RULES"}, {"text": "be brief"}]),
    ("gemini", GEMINI, lambda b: b["systemInstruction"] == {"parts": [{"text": "RULES"}]}),
])
def test_system_prefix_goes_first_in_the_protocols_system_slot(protocol, doc, expect):
    assert expect(run([SystemPrefix(text="RULES")], protocol, doc))


def test_drop_and_rename_params_with_dotted_paths():
    out = run([DropParams(params=("top_p", "generationConfig.topP", "absent"))], "openai_chat", CHAT)
    assert "top_p" not in out and out["temperature"] == 0.5
    out = run([DropParams(params=("generationConfig.topP",))], "gemini", GEMINI)
    assert out["generationConfig"] == {"maxOutputTokens": 100, "temperature": 0.5}
    out = run([RenameParams(params={"temperature": "temp", "generationConfig.topP": "generationConfig.nucleus"})],
              "gemini", GEMINI)
    assert out["generationConfig"]["nucleus"] == 0.9 and "topP" not in out["generationConfig"]
    out = run([RenameParams(params={"top_p": "nucleus"})], "openai_chat", CHAT)
    assert out["nucleus"] == 0.9 and "top_p" not in out


def test_a_pass_through_body_is_edited_without_touching_the_clients_request():
    req = parsed("gemini", {**GEMINI, "systemInstruction": {"parts": [{"text": "be brief"}]}})
    before = copy.deepcopy(dict(req.raw))
    chain = Chain.of([DropParams(params=("generationConfig.topP",)), SystemPrefix(text="RULES"),
                      RenameParams(params={"generationConfig.temperature": "generationConfig.t"})])
    out = chain.body(dict(req.raw), req, "gemini")
    assert out["generationConfig"] == {"maxOutputTokens": 100, "t": 0.5}
    assert dict(req.raw) == before  # nested objects were copied, never edited in place


def test_extra_headers_add_but_never_replace_credentials():
    adapter = ExtraHeaders(headers={"X-Vendor-Beta": "on", "Authorization": "Bearer stolen", "x-api-key": "k2"})
    headers = Chain.of([adapter]).headers({"authorization": "Bearer real", "content-type": "application/json"})
    assert headers == {"authorization": "Bearer real", "content-type": "application/json", "x-vendor-beta": "on"}


def test_strip_reasoning_edits_answers_only():
    chain = Chain.of([StripReasoning()])
    assert chain.edits_answers and not Chain.of([DropParams(params=("top_p",))]).edits_answers
    events = (ReasoningDelta("thinking"), TextDelta("hi"), Finish(FinishReason.STOP))
    assert chain.events(events) == events[1:]
    response = UnifiedResponse("r", "m", (ReasoningPart("thinking"), TextPart("hi")))
    assert chain.response(response).parts == (TextPart("hi"),)


# ---------------------------------------------------------------- chains

def test_a_chain_runs_in_the_fixed_order_whatever_the_config_order():
    listed = [DropParams(params=("max_tokens",)), MaxCompletionTokens(), DefaultMaxTokens(value=5),
              SystemPrefix(text="x"), CapMaxTokens(value=3), OneSamplingParam()]
    chain = Chain.of(listed)
    assert chain.names == tuple(cls.NAME for cls in ORDER if cls.NAME in {a.NAME for a in listed})
    # default (5), then capped (3), then renamed; the drop of max_tokens comes after the rename
    req = openai_chat.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    out = chain.body(openai_chat.build_request(req, "m", include_usage=False), req, "openai_chat")
    assert out["max_completion_tokens"] == 3 and "max_tokens" not in out
    assert set(REGISTRY) == {cls.NAME for cls in ORDER}


def test_family_defaults_then_provider_then_model_the_later_wins():
    adapters = ProviderAdapters("anthropic", (SystemPrefix(text="provider"),), {
        "claude-3-haiku": (DefaultMaxTokens(value=4096),),
        "claude-opus*": (DefaultMaxTokens(value=32000),),
        "claude-opus-4-1*": (DefaultMaxTokens(value=30000), SystemPrefix(text="opus")),
    })
    assert adapters.chain("claude-sonnet-4").adapters == (SystemPrefix(text="provider"),
                                                          DefaultMaxTokens(value=ANTHROPIC_DEFAULT_MAX_TOKENS))
    assert adapters.chain("claude-3-haiku").adapters[1] == DefaultMaxTokens(value=4096)
    assert adapters.chain("claude-opus-4").adapters[1] == DefaultMaxTokens(value=32000)
    assert adapters.chain("claude-opus-4-1-2025").adapters == (SystemPrefix(text="opus"), DefaultMaxTokens(value=30000))
    assert ProviderAdapters("openai_chat").chain("gpt").adapters == ()  # no default for Chat


# ---------------------------------------------------------------- config

def with_adapters(adapters=None, model_adapters=None, **provider) -> dict:
    doc = minimal()
    p = doc["providers"]["p"]
    p.update(provider)
    if adapters is not None:
        p["adapters"] = adapters
    if model_adapters is not None:
        p["model_adapters"] = model_adapters
    return doc


def test_adapters_in_config_reach_the_provider_config():
    doc = with_adapters(["max_completion_tokens", {"name": "drop_params", "params": ["top_p"]}],
                        {"o3*": [{"name": "cap_max_tokens", "value": 1000}]})
    p = parse_config(doc, env={}).providers["p"]
    assert tuple(p.adapters) == (MaxCompletionTokens(), DropParams(params=("top_p",)))
    assert tuple(p.model_adapters["o3*"]) == (CapMaxTokens(value=1000),)


@pytest.mark.parametrize("adapters, problem", [
    (["max_tokens_completion"], "providers.p.adapters[0]: unknown adapter 'max_tokens_completion'"),
    (["max_completion_tokens", "default_max_tokens"], "providers.p.adapters[1].value: is required"),
    ([{"name": "default_max_tokens", "value": 0}], "providers.p.adapters[0].value: must be positive"),
    ([{"name": "default_max_tokens", "value": "8k"}], "providers.p.adapters[0].value: expected integer, got string"),
    ([{"name": "cap_max_tokens", "value": 9, "vlaue": 1}], "providers.p.adapters[0].vlaue: unknown setting; did you mean 'value'?"),
    ([{"name": "one_sampling_param", "keep": "top_k"}], "providers.p.adapters[0].keep: unknown value 'top_k'"),
    ([{"name": "drop_params", "params": []}], "providers.p.adapters[0].params: needs at least one field name"),
    ([{"name": "drop_params", "params": ["a..b"]}], "providers.p.adapters[0].params[0]: must be a field name"),
    ([{"name": "extra_headers", "headers": {"Authorization": "Bearer x"}}],
     "providers.p.adapters[0].headers.Authorization: may not be set by an adapter"),
    ([{"name": "extra_headers", "headers": {"x-a": "1\r\nx-b: 2"}}], "providers.p.adapters[0].headers.x-a: a header value may not"),
    ([{"params": ["top_p"]}], "providers.p.adapters[0].name: is required"),
    ([7], "providers.p.adapters[0]: expected an adapter name or an object"),
    ("max_completion_tokens", "providers.p.adapters: expected an array"),
    (["drop_params"], "providers.p.adapters[0].params: is required"),
    ([{"name": "system_prefix", "text": ""}], "providers.p.adapters[0].text: must not be empty"),
    (["one_sampling_param", "one_sampling_param"], "providers.p.adapters[1]: adapter 'one_sampling_param' is already listed"),
])
def test_a_bad_adapter_is_refused_with_its_path(adapters, problem):
    problems = problems_of(with_adapters(adapters))
    assert any(p.startswith(problem) for p in problems), problems


def test_an_adapter_for_another_protocol_is_refused_per_model_too():
    doc = with_adapters(family="anthropic", model_adapters={"claude-x": ["one_sampling_param", "max_completion_tokens"]})
    assert problems_of(doc) == ["providers.p.model_adapters.claude-x[1]: adapter 'max_completion_tokens' applies to "
                                "openai_chat upstreams; this provider speaks anthropic"]
    sim = with_adapters(["max_completion_tokens"], family="simulator", embedded=True, protocol="gemini")
    assert any("this provider speaks gemini" in p for p in problems_of(sim))


def test_count_tokens_setting():
    assert parse_config(minimal(), env={}).providers["p"].count_tokens == "upstream"
    doc = minimal()
    doc["providers"]["p"]["count_tokens"] = "guess"
    assert problems_of(doc)[0].startswith("providers.p.count_tokens: unknown value 'guess'")
