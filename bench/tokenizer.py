"""What the BPE tokenizer costs and how close it counts: ``python -m bench.tokenizer``.

Each memory figure comes from a fresh child process (so nothing else this process
imported or freed is in it): resident memory after importing ``protocols.tokens``,
after the first count (the table loaded), and the load time. Throughput is measured
on English prose, JSON tool schemas and Chinese text. Accuracy is shown two ways:
against counts a provider reported for text we have (gpt-4o-mini's completion_tokens
in the recorded streams, an o200k model), and against bytes/4 on JSON schemas and
Chinese text, the cases the byte estimate undercounts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from protocols import tokens
from protocols.usage import estimate_tokens
from protocols.sse import SSEDecoder

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

CHILD = r"""
import json, time
def rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
from protocols import tokens
imported = rss_mb()
start = time.perf_counter()
tokens.count_text_tokens("warm up")
load_s = time.perf_counter() - start
print(json.dumps({"imported_mb": imported, "loaded_mb": rss_mb(), "load_s": load_s,
                  "bpe": tokens.bpe_available()}))
"""

CHINESE = (
    "网关在转发请求之前先为密钥预留额度，请求结束后再按上游报告的用量结算。"
    "如果客户端中途断开，上游没有报告用量，网关只能估算已经消耗的输入和输出。"
    "中文文本按字节估算会明显偏低，因为一个汉字在 UTF-8 中占三个字节，"
    "而分词器常常把一个或两个汉字合成一个词元。"
)


def child_memory() -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=120)
    return json.loads(out.stdout)


def samples() -> dict[str, str]:
    request = json.loads((FIXTURES / "requests" / "claude-code-2.1.331__print-tool-roundtrip__01_POST_v1_messages.json")
                         .read_text())["body"]
    schemas = json.dumps(request["tools"], separators=(",", ":"), ensure_ascii=False)
    english = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    pretty = json.dumps(request["tools"], indent=2, ensure_ascii=False)
    return {"english (README)": english, "json (12 tool schemas)": schemas, "json, indented": pretty,
            "chinese": CHINESE * 20}


def throughput(text: str, rounds: int = 5) -> tuple[int, float]:
    count = tokens.count_text_tokens(text)
    start = time.perf_counter()
    for _ in range(rounds):
        tokens.count_text_tokens(text)
    return count, count * rounds / (time.perf_counter() - start)


def known_counts() -> list[tuple[str, int, int]]:
    """(fixture, provider's completion_tokens, tokenizer's count of the streamed text)."""
    rows = []
    for name in ("stream-text-include-usage.sse", "stream-tool-call-include-usage.sse"):
        text, usage = [], None
        decoder = SSEDecoder()
        for event in decoder.feed((FIXTURES / "openai-chat" / name).read_bytes()) + decoder.close():
            if event.data in (None, b"[DONE]"):
                continue
            chunk = json.loads(event.data)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text.append(delta.get("content") or "")
                for call in delta.get("tool_calls") or []:
                    fn = call.get("function") or {}
                    text.append((fn.get("name") or "") + (fn.get("arguments") or ""))
        rows.append((name, usage["completion_tokens"], tokens.count_text_tokens("".join(text))))
    return rows


def main() -> None:
    memory = child_memory()
    print(f"BPE in use: {memory['bpe']}")
    print(f"RSS after import {memory['imported_mb']:.1f} MB, after load {memory['loaded_mb']:.1f} MB "
          f"(+{memory['loaded_mb'] - memory['imported_mb']:.1f} MB), load {memory['load_s'] * 1000:.0f} ms")
    print(f"{'text':26} {'bytes':>8} {'tokens':>8} {'bytes/4':>8} {'bytes/4 ÷ bpe':>14} {'tokens/s':>12}")
    for label, text in samples().items():
        size = len(text.encode())
        count, rate = throughput(text)
        print(f"{label:26} {size:8} {count:8} {estimate_tokens(size):8} {estimate_tokens(size) / count:14.2f} "
              f"{rate:12,.0f}")
    print("known counts (gpt-4o-mini completion_tokens vs this tokenizer on the streamed text):")
    for name, reported, counted in known_counts():
        print(f"  {name:40} reported {reported:5}  counted {counted:5}  ratio {counted / reported:.2f}")


if __name__ == "__main__":
    main()
