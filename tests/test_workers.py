"""``tollhouse serve --workers N`` as an operator runs it: real processes, one port.

The parent and its workers are real child processes (``serve_process``); which worker
answered a request is read from ``GET /admin/config`` (``worker``), asked on fresh
connections until each worker has answered (the kernel spreads connections over the
workers' sockets). Every wait is for a line the processes print or an answer they
give, under a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys

import httpx
import trio

from tests.admin_page import parse, sign_in
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config
from tests.gateway_process import STOPPED, serve_process, write_config
from tests.test_config_cli import tollhouse, write
from tests.workers_backend import shared_state

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
LISTENING = "tollhouse listening on "
DEADLINE = 90  # a worker is a whole interpreter's start: generous on a loaded machine


def worker_config(tmp_path, state: dict, **overrides) -> dict:
    doc = base_config(tmp_path)
    doc["state"] = state
    doc["metrics"] = {"port": 0, "require_token": False}
    doc.update(overrides)
    return doc


async def each_worker(url: str, count: int, ask=None) -> dict[int, httpx.Response]:
    """``ask(client)`` (default ``GET /admin/config``) on fresh connections until each of
    ``count`` workers has answered once (its ``x-tollhouse-worker`` header)."""
    ask = ask or (lambda client: client.get("/admin/config", headers=ADMIN))
    seen: dict[int, httpx.Response] = {}
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=20, limits=no_reuse) as client:
        while len(seen) < count:
            answer = await ask(client)
            seen.setdefault(int(answer.headers["x-tollhouse-worker"]), answer)
    return seen


def test_the_local_backend_refuses_more_than_one_worker(tmp_path):
    done = tollhouse("serve", "--config", write(tmp_path, base_config(tmp_path)), "--port", "0", "--workers", "2")
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert "the local backend's meter and SQLite ledger belong to one process" in line
    assert '"state": {"backend": "shared"}' in line
    assert not (tmp_path / "state").exists()  # refused before anything started


def test_workers_with_metrics_on_the_main_port_are_refused(tmp_path, shared_state):
    doc = worker_config(tmp_path, shared_state, metrics={"enabled": True})
    done = tollhouse("serve", "--config", write(tmp_path, doc), "--port", "0", "--workers", "2")
    assert done.returncode == 2, done
    assert "set metrics.port (worker i serves /metrics on metrics.port + i)" in done.stderr


def test_a_port_in_use_refuses_the_parent_before_any_worker(tmp_path, shared_state):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tollhouse("serve", "--config", write(tmp_path, worker_config(tmp_path, shared_state)),
                         "--port", str(port), "--workers", "2")
    assert done.returncode == 2, done
    assert done.stderr == f"tollhouse: cannot listen on 127.0.0.1:{port}: address already in use\n"


async def test_two_workers_share_one_port_reload_together_and_stop_together(tmp_path, shared_state):
    doc = worker_config(tmp_path, shared_state, trace={"enabled": True})
    path = write_config(tmp_path, doc)
    with trio.fail_after(DEADLINE):
        async with serve_process(path, "--workers", "2") as fleet:
            url = await fleet.url()
            assert [line for line in fleet.stdout if LISTENING in line and '"worker"' not in line].__len__() == 1
            listening = await fleet.event(f"{LISTENING}{url} (2 workers)")
            assert len(listening["pids"]) == 2 and len(listening["metrics_urls"]) == 2
            answers = await each_worker(url, 2)
            assert {w: a.json()["generation"] for w, a in answers.items()} == {0: 1, 1: 1}
            state = tmp_path / "state"
            assert (state / "gateway.lock").exists()  # the parent's
            assert {p.name for p in (state / "workers").iterdir()} == {"0", "1"}
            assert all((state / "workers" / i / "gateway.lock").exists() for i in "01")
            no_reuse = httpx.Limits(max_keepalive_connections=0)  # spread over both workers
            async with httpx.AsyncClient(base_url=url, timeout=20, limits=no_reuse) as client:
                served = set()
                for _ in range(6):
                    chat = await client.post("/v1/chat/completions", headers={**AUTH, "x-tollhouse-trace": "1"},
                                             json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
                    assert chat.status_code == 200, chat.text
                    served.add(chat.headers["x-request-id"])
            # one ledger: every worker lists every charge, whichever worker served it
            ledgers = await each_worker(url, 2, lambda c: c.get("/admin/usage/records", headers=ADMIN))
            for answer in ledgers.values():
                assert {r["request_id"] for r in answer.json()["records"]} == served
            request_id = chat.headers["x-request-id"]
            traces = await each_worker(url, 2, lambda c: c.get(f"/admin/traces/{request_id}", headers=ADMIN))
            assert all(t.status_code == 200 and t.json()["request_id"] == request_id for t in traces.values())
            assert not (state / "traces").exists()  # each worker writes its own traces, under workers/<i>/

            # SIGHUP to the parent: every worker reads the file again
            doc["aliases"] = {"renamed": "demo"}
            path.write_text(json.dumps(doc))
            fleet.send_signal(signal.SIGHUP)
            assert (await fleet.line("tollhouse reloaded ")).endswith("on 2 workers: generation 2")
            answers = await each_worker(url, 2)
            assert {w: a.json()["generation"] for w, a in answers.items()} == {0: 2, 1: 2}
            views = [a.json()["config"] for a in answers.values()]
            assert views[0] == views[1] and views[0]["aliases"] == {"renamed": "demo"}

            # POST /admin/reload on one worker: every worker, and the answer says so
            doc["aliases"] = {"again": "demo"}
            path.write_text(json.dumps(doc))
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                reloaded = await client.post("/admin/reload", headers=ADMIN)
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["workers"] == [{"worker": 0, "generation": 3}, {"worker": 1, "generation": 3}]
            answers = await each_worker(url, 2)
            assert all(a.json()["config"]["aliases"] == {"again": "demo"} for a in answers.values())

            # a file that is refused: the answer says so, every worker keeps generation 3
            path.write_text(json.dumps({**doc, "models": {"demo": {"targets": ["nowhere/x"]}}}))
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                refused = await client.post("/admin/reload", headers=ADMIN)
            assert refused.status_code == 400
            assert "generation 3 keeps running" in refused.json()["error"]["message"]
            answers = await each_worker(url, 2)
            assert {w: a.json()["generation"] for w, a in answers.items()} == {0: 3, 1: 3}

            fleet.send_signal(signal.SIGTERM)
            assert await fleet.wait() == 0
            await fleet.until_exit()
        assert (await fleet.line(STOPPED)) == "tollhouse stopped: 2 workers stopped"
        for i in (0, 1):
            assert (await fleet.line(f"tollhouse worker {i} stopping (")).startswith(
                f"tollhouse worker {i} stopping (SIGTERM): no new connections")
        for i in (0, 1):  # (a request of the loop above may still be finishing: it is let finish)
            assert " 0 cut at the end of the grace period" in await fleet.line(f"tollhouse worker {i} stopped: ")


async def test_a_worker_killed_is_started_again_and_serves(tmp_path, shared_state):
    path = write_config(tmp_path, worker_config(tmp_path, shared_state))
    with trio.fail_after(DEADLINE):
        async with serve_process(path, "--workers", "2") as fleet:
            url = await fleet.url()
            listening = await fleet.event(f"{LISTENING}{url} (2 workers)")
            os.kill(listening["pids"][1], signal.SIGKILL)
            exited = await fleet.event("tollhouse worker 1 exited unexpectedly (status 137); starting it again in 0.5 s")
            assert exited["level"] == "error"
            again = await fleet.event("tollhouse worker 1 started again (start 2)")
            assert again["pid"] != listening["pids"][1]
            answers = await each_worker(url, 2)
            assert set(answers) == {0, 1}
            # the stop reaches every process at once (systemd's KillMode=control-group): one graceful stop each
            for pid in (fleet.pid, listening["pids"][0], again["pid"]):
                os.kill(pid, signal.SIGTERM)
            assert await fleet.wait() == 0
            await fleet.until_exit()
        for i in (0, 1):
            assert " 0 cut at the end of the grace period" in await fleet.line(f"tollhouse worker {i} stopped: ")
        assert not any("stopping at once" in line for line in fleet.stdout)


async def test_a_worker_that_cannot_start_stops_every_worker_with_its_error(tmp_path, shared_state):
    with socket.socket() as taken:  # worker 0's metrics port (metrics.port + 0) is taken
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        doc = worker_config(tmp_path, shared_state, metrics={"port": taken.getsockname()[1]})
        path = write_config(tmp_path, doc)
        with trio.fail_after(DEADLINE):
            async with serve_process(path, "--workers", "2") as fleet:
                assert await fleet.wait() == 1
                await fleet.until_exit()
    assert any("tollhouse: cannot start: metrics.port: cannot listen on" in line for line in fleet.stderr)
    # worker 0's port is the taken one; worker 1's (the next port) may be taken too, by
    # any connection of the host: whichever failed first is the one named
    assert re.fullmatch(r"tollhouse: worker [01] could not start \(exit status 1\); every worker stopped",
                        fleet.stderr[-1]), fleet.stderr[-1]
    assert not any(line.startswith(LISTENING) for line in fleet.stdout)


async def test_workers_whose_parent_is_killed_stop_gracefully(tmp_path, shared_state):
    path = write_config(tmp_path, worker_config(tmp_path, shared_state))
    with trio.fail_after(DEADLINE):
        async with serve_process(path, "--workers", "2") as fleet:
            url = await fleet.url()
            await fleet.event(f"{LISTENING}{url} (2 workers)")
            fleet.process.kill()
            for i in (0, 1):  # the workers write to the same stdout the test reads
                await fleet.event(f"tollhouse worker {i} stopping (parent gone): no new connections; 0 requests "
                                  f"in flight, given up to 0.5 s to finish (a second signal stops at once)")
                await fleet.event(f"tollhouse worker {i} stopped: of 0 requests in flight, 0 finished and 0 cut at "
                                  f"the end of the grace period; ledger closed")
            await fleet.until_exit()  # both workers closed the pipe: they have exited


async def test_another_gateway_on_the_state_dir_is_refused_while_workers_run(tmp_path, shared_state):
    path = write_config(tmp_path, worker_config(tmp_path, shared_state))
    with trio.fail_after(DEADLINE):
        async with serve_process(path, "--workers", "2") as fleet:
            await fleet.url()
            other = await trio.run_process([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", "0"],
                                           capture_stdout=True, capture_stderr=True, check=False)
            assert other.returncode == 1
            assert b"is in use by another tollhouse gateway (pid %d" % fleet.pid in other.stderr
            fleet.send_signal(signal.SIGTERM)
            assert await fleet.wait() == 0


async def test_an_admin_page_session_works_on_every_worker(tmp_path, shared_state):
    path = write_config(tmp_path, worker_config(tmp_path, shared_state))
    no_reuse = httpx.Limits(max_keepalive_connections=0)  # each request may reach either worker
    with trio.fail_after(DEADLINE):
        async with serve_process(path, "--workers", "2") as fleet:
            url = await fleet.url()
            async with httpx.AsyncClient(base_url=url, timeout=20, limits=no_reuse) as client:
                signed_in = {}
                while len(signed_in) < 2:  # the form from one worker, signed in on either
                    client.cookies.clear()
                    answer = await sign_in(client)
                    assert answer.status_code == 303, answer.text
                    signed_in.setdefault(answer.headers["x-tollhouse-worker"], client.cookies.get("th_session"))
                cookie = {"cookie": f"th_session={signed_in['0']}"}  # signed in on worker 0
                pages = await each_worker(url, 2, lambda c: c.get("/admin/ui/keys", headers=cookie))
                assert all(p.status_code == 200 for p in pages.values())
                token = parse(pages[0].text).hidden["csrf"]
                assert parse(pages[1].text).hidden["csrf"] == token  # one session, one CSRF token
                done = await each_worker(url, 2, lambda c: c.post("/admin/ui/keys/test/enable", data={"csrf": token},
                                                                  headers=cookie))
                assert all(d.status_code == 303 and d.headers["location"] == "/admin/ui/keys" for d in done.values())
            fleet.send_signal(signal.SIGTERM)
            assert await fleet.wait() == 0
