"""The real ``tollhouse`` command refuses a config that would give money away, naming why.

Each test runs the CLI as its own process, with a deadline, the way an operator does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_config import ROOT, minimal, readme_env, readme_example

DEADLINE_S = 60  # a cold interpreter importing the gateway takes ~1 s; the margin is for a slow CI host


def tollhouse(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=DEADLINE_S, env={**os.environ, **(env or {})})


def write(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return str(path)


def typo_config() -> dict:
    """Every typo the audit found, and the other ways a config gave money away, in one file."""
    doc = minimal()
    doc["providers"]["x"] = {"family": "openai_compat", "base_url": "http://x",
                             "credentials": [{"id": "x1", "key": "sk-x"}], "credentails": []}
    doc["pricing"]["x/*"] = {"input": "1", "output": "2"}
    doc["keys"] = [
        {"name": "typo", "key": "th-1", "credit": "5.00", "request_per_minute": 60},
        {"name": "nothing", "key": "th-2"},
    ]
    doc["models"]["typo"] = {"targets": ["p/gpt-4.1"]}
    doc["pricing"]["p/gpt-4.l"] = {"input": "2", "output": "8"}
    doc["pricing"]["p/empty"] = {}
    doc["streamin"] = {}
    doc["cooldown"] = {"max_retry_after": 60}
    doc["providers"]["p"]["credentials"][0]["tokens_per_minit"] = 1000
    doc["models"]["m"]["hold_output_token"] = 512
    doc["pricing"]["p/gpt-x"]["cached_inptu"] = "0.5"
    return doc


EXPECTED = [
    "streamin: unknown setting; did you mean 'streaming'?",
    "cooldown.max_retry_after: unknown setting; did you mean 'max_retry_after_s'?",
    "providers.p.credentials[0].tokens_per_minit: unknown setting; did you mean 'tokens_per_minute'?",
    "models.m.hold_output_token: unknown setting; did you mean 'hold_output_tokens'?",
    "pricing.p/gpt-x.cached_inptu: unknown setting; did you mean 'cached_input'?",
    "providers.x.credentails: unknown setting; did you mean 'credentials'?",
    "keys[0].credit: unknown setting; did you mean 'credit_usd'?",
    "keys[0].request_per_minute: unknown setting; did you mean 'requests_per_minute'?",
    "keys[0]: has no credit_usd",
    "keys[1]: has no credit_usd",
    "pricing.p/empty: has no prices; set input/output or free: true",
    "models.typo.targets[0]: 'p/gpt-4.1' has no price",
    "did you mean pricing key 'p/gpt-4.l' (a typo in its model name?)",
]


def test_check_config_names_every_problem_in_one_run(tmp_path):
    done = tollhouse("check-config", "--config", write(tmp_path, typo_config()))
    assert done.returncode == 2, done
    for problem in EXPECTED:
        assert problem in done.stderr, (problem, done.stderr)
    assert "OK" not in done.stdout


@pytest.mark.parametrize("key", [{"name": "k", "key": "th-k"}, {"name": "k", "key": "th-k", "credit": "5.00"}])
def test_check_config_rejects_a_key_with_neither_credit_nor_unlimited(tmp_path, key):
    doc = minimal()
    doc["keys"] = [key]
    done = tollhouse("check-config", "--config", write(tmp_path, doc))
    assert done.returncode == 2
    assert "keys[0]: has no credit_usd; set credit_usd, or \"unlimited\": true" in done.stderr


def test_check_config_rejects_an_unpriced_catch_all(tmp_path):
    doc = minimal()
    doc["models"]["*"] = {"targets": ["p/gpt-cheap"]}
    done = tollhouse("check-config", "--config", write(tmp_path, doc))
    assert done.returncode == 2
    assert "models.*.targets[0]: 'p/gpt-cheap' has no price" in done.stderr


def test_serve_refuses_to_start_on_such_a_config(tmp_path):
    doc = typo_config()
    doc["server"] = {"port": 0}
    doc["state_dir"] = str(tmp_path / "state")
    path = write(tmp_path, doc)
    done = tollhouse("serve", "--config", path, "--port", "0")
    assert done.returncode == 2, done
    [line] = done.stdout.splitlines()  # one structured line: the log is JSON lines off a terminal
    event = json.loads(line)
    assert (event["event"], event["level"], event["config_file"]) == ("config error", "error", str(path))
    problems = [f"{e['path']}: {e['problem']}" for e in event["errors"]]
    for problem in EXPECTED:
        assert any(problem in p for p in problems), (problem, problems)
    assert {"path": "streamin", "problem": "unknown setting; did you mean 'streaming'?"} in event["errors"]
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "state").exists()


def test_the_default_config_passes():
    done = tollhouse("check-config", "--config", str(ROOT / "config.json"))
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


def test_the_readme_example_passes(tmp_path):
    doc = readme_example()
    done = tollhouse("check-config", "--config", write(tmp_path, doc), env=readme_env(doc))
    assert done.returncode == 0, done.stderr
    assert "unlimited): ops" in done.stdout
    assert "value-of-" not in done.stdout + done.stderr
