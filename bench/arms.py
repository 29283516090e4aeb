"""What is measured: the gateways (processes) and the arms (a gateway + a client protocol).

Every gateway forwards to the same mock. An arm knows how to address its gateway:
the path, the auth headers, and the request body in its client protocol. A gateway
that cannot be installed or started, or an arm whose front door does not work offline,
stays in the results with its status and the reason.

Peers are found under the tools directory that ``bench/setup.sh`` fills (default
``/opt/tollhouse-bench``, or ``$TOLLHOUSE_BENCH_TOOLS``), never inside the repo.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import attrs

from bench import client
from bench.procs import GATEWAY_CORE, Proc, free_port, wait_port

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("TOLLHOUSE_BENCH_TOOLS", "/opt/tollhouse-bench"))
GATEWAYS = ("direct", "nginx", "bare-asgi", "tollhouse", "tollhouse-shared", "tollhouse-shared-2w", "litellm", "portkey")
OTHER = "tollhouse-b"  # Tollhouse from another checkout (``--gateway-b``): an A/B arm in the same run
TRANSLATED = ("tollhouse", OTHER, "litellm", "portkey")  # gateways whose Anthropic front door is tried
ANTHROPIC_VERSION = "2023-06-01"


class Unavailable(Exception):
    """A gateway or arm that cannot run here; ``status`` says how it failed."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.define
class Arm:
    name: str
    gateway: str
    protocol: str  # "openai" | "anthropic"
    port: int = 0
    path: str = "/v1/chat/completions"
    headers: dict = attrs.field(factory=dict)
    status: str = "pending"  # ok | unavailable | n/a | failed | not_installed
    reason: str | None = None
    stream_ok: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def body(self, directive: str, *, stream: bool, include_usage: bool = True) -> bytes:
        text = f"Reply as the bench mock says. bench:{directive}"
        if self.protocol == "anthropic":
            doc: dict = {"model": "mock", "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
            if stream:
                doc["stream"] = True
        else:
            doc = {"model": "mock", "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
            if stream:
                doc["stream"] = True
                if include_usage:
                    doc["stream_options"] = {"include_usage": True}
        return json.dumps(doc, separators=(",", ":")).encode()

    def request(self, directive: str, *, stream: bool, include_usage: bool = True) -> bytes:
        headers = {"content-type": "application/json", **self.headers}
        if stream:
            headers["accept"] = "text/event-stream"
        return client.build_request(self.port, "POST", self.path, headers,
                                    self.body(directive, stream=stream, include_usage=include_usage))

    def summary(self) -> dict:
        return {"gateway": self.gateway, "protocol": self.protocol, "status": self.status, "reason": self.reason,
                "streaming": self.stream_ok}


# ---------------------------------------------------------------- gateways


class Gateway:
    """One process under test (``direct`` has none)."""

    name = ""
    startup_timeout = 30.0
    core: int | str = GATEWAY_CORE  # taskset's list: one core, or "0,1" for an arm given both

    def __init__(self, workdir: Path, mock_port: int) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mock_port = mock_port
        self.port = free_port()
        self.proc: Proc | None = None
        self.status = "pending"
        self.reason: str | None = None
        self.versions: dict = {}

    def check_installed(self) -> None:
        """Raise ``Unavailable('not_installed', ...)`` when the tool is missing."""

    def command(self) -> tuple[list[str], dict | None]:
        raise NotImplementedError

    def arm_headers(self, protocol: str) -> tuple[str, dict]:
        raise NotImplementedError

    def start(self) -> None:
        self.check_installed()
        argv, env = self.command()
        self.proc = Proc(self.name, argv, cwd=self.workdir, env=env, log=self.workdir / "server.log",
                         core=self.core)
        self.proc.start()
        if not wait_port(self.port, self.startup_timeout, self.proc):
            tail = self.proc.log_tail()
            self.proc.stop()
            state = "exited" if not self.proc.alive() else "did not listen"
            raise Unavailable("failed", f"{self.name} {state} within {self.startup_timeout:.0f}s; log tail:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self) -> None:
        """A fresh process on the same port (the memory scenario's clean baseline)."""
        if self.proc is None:
            return
        self.proc.stop()
        self.start()

    def arms(self) -> list[Arm]:
        out = []
        for protocol in ("openai", "anthropic") if self.name in TRANSLATED else ("openai",):
            path, headers = self.arm_headers(protocol)
            name = self.name if protocol == "openai" else f"{self.name}:anthropic"
            out.append(Arm(name, self.name, protocol, self.port, path, headers))
        return out


class Direct(Gateway):
    name = "direct"

    def __init__(self, workdir: Path, mock_port: int) -> None:
        super().__init__(workdir, mock_port)
        self.port = mock_port

    def start(self) -> None:
        pass

    def arm_headers(self, protocol):
        return "/v1/chat/completions", {"authorization": "Bearer sk-mock"}


class Nginx(Gateway):
    name = "nginx"
    startup_timeout = 10.0

    def check_installed(self):
        if not shutil.which("nginx"):
            raise Unavailable("not_installed", "nginx is not installed (Debian package nginx-light; bench/setup.sh)")
        self.versions["nginx"] = _run(["nginx", "-v"]).replace("nginx version: ", "")

    def command(self):
        d = self.workdir
        for sub in ("client_body", "proxy"):
            (d / sub).mkdir(exist_ok=True)
        conf = d / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  upstream mock {{ server 127.0.0.1:{self.mock_port}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
""")
        return ["nginx", "-c", str(conf), "-p", str(d)], None

    def arm_headers(self, protocol):
        return "/v1/chat/completions", {"authorization": "Bearer sk-mock"}


class BareAsgi(Gateway):
    """Hypercorn and the gateway's upstream pool with nothing between them
    (``bench.bare_asgi``): the floor Tollhouse's own code adds to."""

    name = "bare-asgi"

    def check_installed(self):
        from importlib import metadata

        self.versions["hypercorn"] = metadata.version("hypercorn")

    def command(self):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        return [sys.executable, "-m", "bench.bare_asgi", "--port", str(self.port),
                "--upstream", f"http://127.0.0.1:{self.mock_port}"], env

    def arm_headers(self, protocol):
        return "/v1/chat/completions", {}


class Tollhouse(Gateway):
    name = "tollhouse"
    admin_token = "th-bench-admin-" + secrets.token_hex(8)
    key = "th-bench-key-" + secrets.token_hex(8)

    def check_installed(self):
        from importlib import metadata

        self.versions["tollhouse"] = metadata.version("tollhouse")
        for dist in ("trio", "httpx", "httpcore", "hypercorn", "quart", "quart-trio", "h11", "attrs"):
            try:
                self.versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass

    def config(self) -> dict:
        return {
            "server": {"host": "127.0.0.1", "port": self.port},
            "admin": {"token": self.admin_token},
            "state_dir": str(self.workdir / "state"),
            # room for the capacity pass's 1,000 open streams: with the default 100
            # connections the streams past 100 would queue for a slot, not stream
            "providers": {"mock": {"family": "openai_compat", "base_url": f"http://127.0.0.1:{self.mock_port}/v1",
                                   "max_connections": 4096,
                                   "credentials": [{"id": "mock-1", "key": "sk-mock", "max_concurrency": 100000}]}},
            "models": {"mock": {"targets": ["mock/mock"]}},
            "pricing": {"mock/mock": {"input": "0.15", "cached_input": "0.075", "output": "0.60"}},
            "keys": [{"name": "bench", "key": self.key, "credit_usd": "1000000"}],
            "streaming": {"ttfb_timeout_s": 120, "stall_timeout_s": 300, "on_disconnect": "cancel"},
            "actors": {"mailbox_size": 16384},
        }

    def command(self):
        path = self.workdir / "tollhouse.json"
        path.write_text(json.dumps(self.config(), indent=2))
        exe = Path(sys.executable).parent / "tollhouse"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway.cli"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return argv + ["serve", "--config", str(path), "--port", str(self.port)], env

    def arm_headers(self, protocol):
        if protocol == "anthropic":
            return "/v1/messages", {"x-api-key": self.key, "anthropic-version": ANTHROPIC_VERSION}
        return "/v1/chat/completions", {"authorization": f"Bearer {self.key}"}


class TollhouseOther(Tollhouse):
    """The same gateway, run from another checkout with its own venv (``<checkout>/.venv``):
    two versions of the code measured side by side, interleaved, in one run, so a
    regression can be told from a slower host."""

    name = OTHER

    def __init__(self, workdir: Path, mock_port: int, checkout: Path) -> None:
        super().__init__(workdir, mock_port)
        self.checkout = checkout
        self.python = checkout / ".venv" / "bin" / "python"

    def check_installed(self):
        if not self.python.exists():
            raise Unavailable("not_installed", f"{self.python} missing: python3 -m venv {self.checkout}/.venv && "
                                               f"{self.checkout}/.venv/bin/pip install -e {self.checkout}")
        self.versions[OTHER] = {"checkout": str(self.checkout), "commit": checkout_commit(self.checkout)}

    def command(self):
        argv, env = super().command()
        exe = self.python.parent / "tollhouse"
        head = [str(exe)] if exe.exists() else [str(self.python), "-m", "gateway.cli"]
        env = {k: v for k, v in (env or os.environ).items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return head + argv[argv.index("serve"):], env


def checkout_commit(checkout: Path) -> str:
    """The commit a checkout holds: git's answer, or a ``COMMIT`` file (an exported tree)."""
    marker = checkout / "COMMIT"
    if marker.exists():
        return marker.read_text().strip()
    return _run(["git", "-C", str(checkout), "rev-parse", "HEAD"])


class LiteLLM(Gateway):
    name = "litellm"
    startup_timeout = 120.0
    master_key = "sk-" + secrets.token_hex(32)

    @property
    def venv(self) -> Path:
        return TOOLS / "litellm-venv"

    def check_installed(self):
        exe = self.venv / "bin" / "litellm"
        if not exe.exists():
            raise Unavailable("not_installed", f"{exe} missing: pip install 'litellm[proxy]' into its own venv "
                                               "(bench/setup.sh)")
        self.versions["litellm"] = _run([str(self.venv / "bin" / "python"), "-c",
                                         "import importlib.metadata as m; print(m.version('litellm'))"])

    def command(self):
        conf = self.workdir / "litellm.yaml"
        conf.write_text(
            "model_list:\n"
            "  - model_name: mock\n"
            f"    litellm_params: {{model: openai/mock, api_base: \"http://127.0.0.1:{self.mock_port}/v1\", "
            "api_key: sk-mock}\n"
            "litellm_settings: {set_verbose: false, drop_params: true}\n")
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")}
        env.update({
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
            "LITELLM_LOCAL_BLOG_POSTS": "True", "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
            "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True", "LITELLM_LOG": "ERROR", "NO_DOCKER_RUN": "1",
            # /v1/messages for an openai/ model goes to the Responses API unless told otherwise;
            # the mock (like most OpenAI-compatible upstreams) speaks Chat Completions.
            "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "True",
            "LITELLM_MASTER_KEY": self.master_key,
        })
        return [str(self.venv / "bin" / "litellm"), "--config", str(conf), "--host", "127.0.0.1",
                "--port", str(self.port), "--num_workers", "1"], env

    def arm_headers(self, protocol):
        if protocol == "anthropic":
            return "/v1/messages", {"x-api-key": self.master_key, "anthropic-version": ANTHROPIC_VERSION}
        return "/v1/chat/completions", {"authorization": f"Bearer {self.master_key}"}


class Portkey(Gateway):
    name = "portkey"

    @property
    def pkg(self) -> Path:
        return TOOLS / "portkey" / "node_modules" / "@portkey-ai" / "gateway"

    def check_installed(self):
        if not shutil.which("node"):
            raise Unavailable("not_installed", "node is not installed")
        if not (self.pkg / "build" / "start-server.js").exists():
            raise Unavailable("not_installed", f"{self.pkg} missing: npm install @portkey-ai/gateway (bench/setup.sh)")
        self.versions["portkey"] = json.loads((self.pkg / "package.json").read_text())["version"]
        hono = self.pkg.parent.parent / "@hono" / "node-server" / "package.json"
        if hono.exists():
            self.versions["@hono/node-server"] = json.loads(hono.read_text())["version"]
        self.versions["node"] = _run(["node", "--version"])

    def command(self):
        return ["node", str(self.pkg / "build" / "start-server.js"), f"--port={self.port}", "--headless"], None

    def arm_headers(self, protocol):
        headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{self.mock_port}/v1",
                   "authorization": "Bearer sk-mock"}
        if protocol == "anthropic":
            return "/v1/messages", {**headers, "x-api-key": "sk-mock", "anthropic-version": ANTHROPIC_VERSION}
        return "/v1/chat/completions", headers


CLASSES = {"direct": Direct, "nginx": Nginx, "bare-asgi": BareAsgi, "tollhouse": Tollhouse, "litellm": LiteLLM, "portkey": Portkey}


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
