"""What the access line costs one request: a rough micro-benchmark, not part of the suite.

``python -m bench.access_log`` configures the log as ``tollhouse serve`` does (JSON lines,
the gateway's redactor with a few secrets) to ``/dev/null`` and times ``AccessLog.served``
on a typical record, then the same with the level above ``info`` (the line filtered out)
and with ``console`` rendering. Prints microseconds per line.
"""

from __future__ import annotations

import argparse
import time

from gateway import logs
from gateway.access_log import AccessLog
from gateway.observe import Served, Transport
from protocols.redact import Redactor
from protocols.unified import Usage

SECRETS = {"sk-upstream-0123456789abcdef", "th-gateway-key-0123456789", "th-admin-0123456789"}


def record() -> Served:
    return Served(request_id="req_0123456789ab0000000001", protocol="openai_chat", transport=Transport.HTTP,
                  model="demo", stream=True, status=200, duration_s=0.8123, key_name="main",
                  target="openai/gpt-4.1-mini", provider="openai", credential="oa-1", attempts=1, reason="end",
                  provenance="reported", usage=Usage(input=1200, cached_input=300, output=250, reasoning=40),
                  cost_micro=1234, ttfb_s=0.2101)


def per_line_us(fmt: str, level: str, n: int) -> float:
    with open("/dev/null", "w") as sink:
        logs.configure(level, fmt, Redactor(SECRETS), stream=sink)
        observer, served = AccessLog(), record()
        for _ in range(200):
            observer.served(served)
        start = time.perf_counter()
        for _ in range(n):
            observer.served(served)
        return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000)
    args = parser.parse_args()
    for fmt, level in (("json", "info"), ("console", "info"), ("json", "warning")):
        print(f"{fmt:8} level={level:8} {per_line_us(fmt, level, args.n):7.1f} us per access line")


if __name__ == "__main__":
    main()
