"""The container files, checked without a container engine: the Dockerfile, compose.yaml
and .dockerignore are parsed, and the config the image runs is loaded as it would be."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from gateway.config import load_config
from tests.conftest import running_gateway
from tests.packaging import shipped_packages

ROOT = Path(__file__).resolve().parent.parent
IMAGE_ENV = {"TOLLHOUSE_ADMIN_TOKEN": "th-admin-in-the-container", "TOLLHOUSE_DEMO_KEY": "th-demo-key"}


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def args_of(rest: str) -> list[str]:
    """An instruction's arguments, in the exec (JSON) form or the shell form."""
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def one(name: str) -> str:
    [rest] = [rest for word, rest in instructions() if word == name]
    return rest


def image_config_path() -> tuple[str, Path]:
    command = args_of(one("ENTRYPOINT")) + args_of(one("CMD"))
    assert command[:2] == ["tollhouse", "serve"], command
    inside = command[command.index("--config") + 1]
    [source] = [args_of(rest)[0] for word, rest in instructions() if word == "COPY" and args_of(rest)[-1] == inside]
    return inside, ROOT / source


def image_config():
    return load_config(image_config_path()[1], env=IMAGE_ENV)


def test_the_image_is_slim_python_and_runs_unprivileged():
    assert one("FROM") in ("python:3.11-slim", "python:3.12-slim")
    steps = instructions()
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    assert users, "the image must not run as root"
    user = steps[users[-1]][1]
    assert user not in ("root", "0") and not user.startswith("0:")
    assert users[-1] < [i for i, (word, _) in enumerate(steps) if word == "CMD"][0]
    assert any(word == "RUN" and "useradd" in rest and rest.rstrip().split()[-1] != "root" and user in rest
               for word, rest in steps)


def test_the_image_holds_every_package_and_the_config_it_runs():
    packages = shipped_packages()
    assert {"gateway.routes", "gateway.ui", "gateway.metrics"} <= packages  # subpackages ship too
    copied = {args_of(rest)[0] for word, rest in instructions() if word == "COPY"}
    assert {name.split(".")[0] for name in packages} <= copied
    assert {"pyproject.toml", "README.md"} <= {part for rest in (r for w, r in instructions() if w == "COPY")
                                               for part in args_of(rest)[:-1]}
    config = image_config()  # loads: every setting known, every target priced
    assert config.server.host == "0.0.0.0"  # reachable through the container's published port
    assert config.admin_token is not None and config.admin_token.value == IMAGE_ENV["TOLLHOUSE_ADMIN_TOKEN"]
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config",
                           str(image_config_path()[1])], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **IMAGE_ENV})
    assert done.returncode == 0, done.stderr


def test_the_state_dir_is_a_volume_and_the_port_is_exposed():
    config = image_config()
    assert config.state_dir in args_of(one("VOLUME"))
    assert str(config.server.port) in one("EXPOSE").split()
    health = one("HEALTHCHECK")
    assert f"http://127.0.0.1:{config.server.port}/readyz" in health
    assert one("STOPSIGNAL") == "SIGTERM"


async def test_the_health_check_command_passes_on_a_ready_gateway(config_doc):
    health = one("HEALTHCHECK")
    command = args_of(health[health.index("CMD") + 3:].strip())
    port = image_config().server.port
    with trio.fail_after(60):
        async with running_gateway(config_doc) as gw:
            ours = [part.replace(f"127.0.0.1:{port}", gw.url.removeprefix("http://")) for part in command]
            ours[0] = sys.executable if ours[0] == "python" else ours[0]
            done = await trio.run_process(ours, check=False, capture_stdout=True, capture_stderr=True)
            assert done.returncode == 0, done.stderr
            async with httpx.AsyncClient(base_url=gw.url) as client:
                assert (await client.get("/readyz")).status_code == 200


def test_compose_runs_the_image_with_its_state_on_a_volume():
    yaml = pytest.importorskip("yaml", reason="pyyaml comes with the test extra: pip install -e '.[test]'")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    config = image_config()
    [service] = compose["services"].values()
    assert service["build"] == "."
    assert any(str(port).endswith(f":{config.server.port}") for port in service["ports"])
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    assert mounts[config.state_dir] in compose["volumes"]  # a named volume, kept across containers
    assert set(IMAGE_ENV) <= set(service["environment"])
    grace = float(str(service["stop_grace_period"]).removesuffix("s"))
    assert grace > config.server.shutdown_grace_s  # the graceful stop is not cut by a kill


def test_the_build_context_leaves_out_local_state_and_tools():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".tollhouse"} <= ignored
    copied = {args_of(rest)[0] for word, rest in instructions() if word == "COPY"}
    assert not copied & ignored
