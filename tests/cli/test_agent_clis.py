"""Real agent CLIs through the gateway: Codex, Claude Code and Gemini CLI.

Opt-in (large installs): see the README's "Agent CLIs" section. Each CLI completes a
prompt that makes it call one tool (read a file) through the gateway, with an
upstream of its own protocol and with one of every other family; the answer must
quote the file, which only the tool call could have read.

``TOLLHOUSE_CLI_BIN`` is the bin directory of the CLIs (default ``.clis/node_modules/.bin``);
``TOLLHOUSE_CLI_BIN2`` may name a second one (another Claude Code version, say): each
CLI found there runs the same cases, their ids ending in ``@bin2``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from tests.conftest import base_config, running_gateway

BIN = Path(os.environ.get("TOLLHOUSE_CLI_BIN", Path(__file__).resolve().parents[2] / ".clis/node_modules/.bin"))
BIN2 = Path(os.environ["TOLLHOUSE_CLI_BIN2"]) if os.environ.get("TOLLHOUSE_CLI_BIN2") else None
KEY = "th-cli-key"
SECRET = "The secret word is marmalade."

pytestmark = [pytest.mark.cli, pytest.mark.skipif(not BIN.is_dir(), reason=f"agent CLIs not installed in {BIN}")]


def cli_config(tmp_path) -> dict:
    doc = base_config(tmp_path)
    # Codex always offers web_search; the Chat upstream has no equivalent: the operator drops it
    doc["providers"]["sim"]["server_tools"] = {"web_search": "drop"}
    doc["providers"].update({
        "simr": {"family": "simulator", "embedded": True, "protocol": "openai_responses", "websocket": True},
        "sima": {"family": "simulator", "embedded": True, "protocol": "anthropic"},
        "simg": {"family": "simulator", "embedded": True, "protocol": "gemini"},
    })
    doc["models"].update({
        "own-responses": {"targets": ["simr/sim-gpt"]},
        "own-anthropic": {"targets": ["sima/sim-claude"]},
        "own-gemini": {"targets": ["simg/sim-gemini"]},
        "cross-chat": {"targets": ["sim/sim-chat"]},
    })
    doc["pricing"].update({f"{p}/*": {"input": "1.00", "output": "2.00"} for p in ("simr", "sima", "simg")})
    doc["keys"] = [{"name": "cli", "key": KEY, "unlimited": True}]
    doc["streaming"] = {"ttfb_timeout_s": 60, "stall_timeout_s": 60}
    return doc


def _home(tmp_path: Path, bin_dir: Path = BIN) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "NO_COLOR": "1"}


def codex(url: str, model: str, prompt: str, tmp_path: Path, bin_dir: Path = BIN) -> tuple[list, dict]:
    env = {**_home(tmp_path, bin_dir), "TOLLHOUSE_KEY": KEY}
    argv = [
        str(bin_dir / "codex"), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
        "-c", 'model_provider="tollhouse"',
        "-c", f'model="{model}"',
        "-c", 'model_providers.tollhouse.name="Tollhouse"',
        "-c", f'model_providers.tollhouse.base_url="{url}/v1"',
        "-c", 'model_providers.tollhouse.env_key="TOLLHOUSE_KEY"',
        "-c", 'model_providers.tollhouse.wire_api="responses"',
        prompt,
    ]
    return argv, env


def codex_socket(url: str, model: str, prompt: str, tmp_path: Path, bin_dir: Path = BIN) -> tuple[list, dict]:
    """Codex on a custom provider with the Responses WebSocket mode on."""
    argv, env = codex(url, model, prompt, tmp_path, bin_dir)
    return [*argv[:-1], "-c", "model_providers.tollhouse.supports_websockets=true", argv[-1]], env


def codex_builtin(url: str, model: str, prompt: str, tmp_path: Path, bin_dir: Path = BIN) -> tuple[list, dict]:
    """Codex's built-in OpenAI provider pointed at the gateway (WebSocket first, as with OpenAI)."""
    env = {**_home(tmp_path, bin_dir), "CODEX_API_KEY": KEY}  # `codex exec` reads the key from here
    argv = [
        str(bin_dir / "codex"), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
        "-c", f'openai_base_url="{url}/v1"', "-c", f'model="{model}"', prompt,
    ]
    return argv, env


def claude(url: str, model: str, prompt: str, tmp_path: Path, bin_dir: Path = BIN) -> tuple[list, dict]:
    env = {**_home(tmp_path, bin_dir), "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY, "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    return [str(bin_dir / "claude"), "-p", prompt, "--model", model], env


def gemini(url: str, model: str, prompt: str, tmp_path: Path, bin_dir: Path = BIN) -> tuple[list, dict]:
    env = {**_home(tmp_path, bin_dir), "GOOGLE_GEMINI_BASE_URL": url, "GEMINI_API_KEY": KEY}
    settings = Path(env["HOME"]) / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"},
                                                 "folderTrust": {"enabled": False}},
                                    "privacy": {"usageStatisticsEnabled": False}}))
    return [str(bin_dir / "gemini"), "-p", prompt, "-m", model, "--yolo"], env


CASES = [
    ("codex", codex, "own-responses"), ("codex", codex, "cross-chat"),
    ("codex", codex, "own-anthropic"), ("codex", codex, "own-gemini"),
    ("codex", codex_socket, "own-responses"), ("codex", codex_socket, "own-anthropic"),
    ("codex", codex_builtin, "own-responses"), ("codex", codex_builtin, "own-anthropic"),
    ("claude", claude, "own-anthropic"), ("claude", claude, "cross-chat"),
    ("claude", claude, "own-responses"), ("claude", claude, "own-gemini"),
    ("gemini", gemini, "own-gemini"), ("gemini", gemini, "cross-chat"),
    ("gemini", gemini, "own-responses"), ("gemini", gemini, "own-anthropic"),
]


BIN_DIRS = [("", BIN)] + ([("@bin2", BIN2)] if BIN2 is not None else [])
# the second directory runs the cases of the CLIs it has (the first one's are skipped when missing)
CHOSEN = [(label, bin_dir, case) for label, bin_dir in BIN_DIRS for case in CASES
          if not label or (bin_dir / case[0]).exists()]
RUNS = [(*case, bin_dir) for _, bin_dir, case in CHOSEN]
RUN_IDS = [f"{case[1].__name__}-{case[2]}{label}" for label, _, case in CHOSEN]


@pytest.mark.parametrize("name,build,model,bin_dir", RUNS, ids=RUN_IDS)
async def test_cli_completes_a_prompt_with_one_tool_call(tmp_path, name, build, model, bin_dir):
    if not (bin_dir / name).exists():
        pytest.skip(f"{name} is not installed in {bin_dir}")
    work = tmp_path / "work"
    work.mkdir()
    target = work / "hello.txt"
    target.write_text(SECRET + "\n")
    prompt = f"Read the file {target} and tell me the secret word."
    async with running_gateway(cli_config(tmp_path)) as gw:
        argv, env = build(gw.url, model, prompt, tmp_path, bin_dir)
        with trio.fail_after(120):
            done = await trio.run_process(argv, env=env, cwd=work, capture_stdout=True, capture_stderr=True,
                                          check=False, stdin=b"")
        out = done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        assert done.returncode == 0, out[-2000:] + err[-2000:]
        assert "marmalade" in out, out[-2000:]
        served = [e for e in gw.ledger_entries() if e["kind"] == "charge"]
        assert len(served) >= 2, "a tool call and the answer to its result"
        if build in (codex_socket, codex_builtin):
            assert "websocket" not in (out + err).lower().replace("supports_websockets", ""), err[-2000:]
            assert gw.runtime.sockets.opened_total >= 1  # the turns came over the WebSocket
            if model == "own-responses":  # and went on over one upstream socket per connection
                assert gw.simulator.websocket_connections == gw.runtime.sockets.opened_total
            # one settlement per turn, each with the upstream's own usage
            assert len({e["request_id"] for e in served}) == len(served)
            assert all(e["provenance"] == "reported" and e["reason"] == "end" for e in served)


async def _gemini_auto_calls(tmp_path: Path, target: str) -> int:
    """Upstream calls Gemini CLI makes for one tool prompt with no ``-m`` (its own model
    routing, which asks for JSON), every model caught by ``"*"`` -> ``target``."""
    work = tmp_path / "work"
    work.mkdir(parents=True)
    (work / "hello.txt").write_text(SECRET + "\n")
    doc = cli_config(tmp_path)
    doc["models"]["*"] = {"targets": [target]}
    async with running_gateway(doc) as gw:
        argv, env = gemini(gw.url, "unused", f"Read the file {work / 'hello.txt'} and tell me the secret word.",
                           tmp_path)
        argv = argv[:argv.index("-m")] + argv[argv.index("-m") + 2:]
        with trio.fail_after(120):
            done = await trio.run_process(argv, env=env, cwd=work, capture_stdout=True, capture_stderr=True,
                                          check=False, stdin=b"")
        assert done.returncode == 0 and "marmalade" in done.stdout.decode(errors="replace"), done.stderr[-2000:]
        return len(gw.simulator.bodies)


async def test_gemini_cli_without_a_model_takes_no_more_calls_through_responses(tmp_path):
    if not (BIN / "gemini").exists():
        pytest.skip("gemini is not installed")
    own = await _gemini_auto_calls(tmp_path / "own", "simg/sim-gemini")
    cross = await _gemini_auto_calls(tmp_path / "cross", "simr/sim-gpt")
    assert cross <= own, (cross, own)
