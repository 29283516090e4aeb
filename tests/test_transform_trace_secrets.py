"""No secret in a transform trace, a log line or an admin answer.

A mixed workload with every request traced: clients of all four protocols, whole and
streamed, against an upstream of each family that quotes the credential it was sent
(in its error status and body, its first stream event, mid-stream, and a response
header), and against the simulator. Then every trace file, every captured log record
and the output of every admin JSON endpoint (each trace included) is searched for the
upstream credentials, the gateway key and the admin token, in every form they can take.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.hostile_upstream import HostileUpstream
from tests.test_secrets_redacted import CLIENTS, KEYS, forms
from tests.test_settlement_matrix import request

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN_GETS = ("/admin/actors", "/admin/credentials", "/admin/cooldowns", "/admin/keys", "/admin/sockets",
              "/admin/reservations", "/admin/usage", "/admin/usage/records", "/admin/usage/series",
              "/admin/requests", "/admin/config", "/admin/traces")
ECHOES = ((False, "status"), (True, "status"), (True, "first_event"), (True, "mid_stream"))


def call_for(client: str, model: str, stream: bool) -> tuple[str, dict, dict]:
    path, body, headers = request(client, stream)
    if client == "gemini":
        return path.replace("/models/m:", f"/models/{model}:"), body, headers
    return path, {**body, "model": model}, headers


def config(tmp_path: Path, urls: dict[str, str]) -> dict:
    doc = base_config(tmp_path, trace={"enabled": True, "sample_ratio": 1.0})
    for family, url in urls.items():
        base = url + "/v1" if family in ("openai_compat", "openai") else url
        doc["providers"][f"up_{family}"] = {"family": family, "base_url": base,
                                            "credentials": [{"key": KEYS[family]}],
                                            "adapters": ["one_sampling_param"]}
        doc["models"][f"m_{family}"] = {"targets": [f"up_{family}/hostile"]}
        doc["pricing"][f"up_{family}/*"] = {"input": "1", "output": "2"}
    doc["cooldown"] = {"base_s": 0.02, "max_s": 0.02, "jitter": 0}
    doc["routing"] = {"budget_s": 0.2}
    return doc


async def test_no_secret_in_any_trace_log_or_admin_answer(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    upstreams = {family: HostileUpstream("echo_key", family, echo_status=400) for family in KEYS}
    secrets = [*KEYS.values(), DEMO_KEY, ADMIN_TOKEN]
    ids: list[str] = []
    outputs: list[bytes] = []
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            urls = {family: await nursery.start(up.serve) for family, up in upstreams.items()}
            doc = config(tmp_path, urls)
            async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                for client in CLIENTS:
                    for stream in (False, True):
                        path, body, headers = call_for(client, "demo", stream)
                        r = await http.post(path, json=body, headers=headers)
                        assert r.status_code == 200, r.text
                        ids.append(r.headers["x-request-id"])
                    for family, upstream in upstreams.items():
                        for stream, echo in ECHOES:
                            upstream.echo = echo
                            path, body, headers = call_for(client, f"m_{family}", stream)
                            r = await http.post(path, json=body, headers=headers)
                            ids.append(r.headers["x-request-id"])
                for path in ADMIN_GETS:
                    r = await http.get(path, headers=ADMIN)
                    assert r.status_code == 200, (path, r.text)
                    outputs.append(r.content)
                traces = []
                for rid in ids:
                    r = await http.get(f"/admin/traces/{rid}", headers=ADMIN)
                    assert r.status_code == 200, (rid, r.text)
                    traces.append(r.json())
                    outputs.append(r.content)
            nursery.cancel_scope.cancel()
    files = sorted((Path(doc["state_dir"]) / "traces").glob("*.jsonl"))
    written = b"".join(f.read_bytes() for f in files)
    assert written.count(b"\n") == len(ids)  # every request of the workload was traced
    # the upstreams did quote their keys: the traces show where, redacted
    assert b"[redacted]" in written
    assert any(s["pass"] == "upstream" and s.get("status", 200) >= 400 for t in traces for s in t["states"])
    assert any(s["pass"] == "sent" for t in traces for s in t["states"])
    logs = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records).encode()
    for where, data in (("trace files", written), ("logs", logs), ("admin", b"\n".join(outputs))):
        for secret in secrets:
            leaked = [f for f in forms(secret) if f in data]
            assert not leaked, (where, secret, leaked)
    assert json.loads(files[0].read_text().splitlines()[0])["request_id"] == ids[0]
