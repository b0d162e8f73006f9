"""Concurrent clients against a running `rag serve`: are all answered, and how long do they wait?

    rag bench-api --url http://127.0.0.1:7860 --clients 8

Each client sends one streamed /v1/chat/completions request at the same moment (half the
questions differ, so nothing can be served from one answer). Printed: how many were answered,
refused with 429 or failed, and p50/p95 of the time to the first word and to the end.
The server answers one question at a time (rag/answer/turns.py), so the p95 total is about
`clients` answers long: the numbers show the line working, not the model's speed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from rag_eval.bench import percentile

QUESTIONS = (
    "DeepSeek-V3 的训练成本是多少？",
    "Transformer 架构是哪一年提出的？",
    "什么是混合专家（MoE）架构？",
    "When was the Transformer architecture introduced?",
)


@dataclass
class Result:
    status: int = 0
    first: float | None = None  # seconds to the first content
    total: float = 0.0
    citations: int = 0
    error: str = ""


@dataclass
class LoadReport:
    clients: int
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0

    def lines(self) -> list[str]:
        ok = [r for r in self.results if r.status == 200 and not r.error]
        totals, firsts = [r.total for r in ok], [r.first for r in ok if r.first is not None]
        busy = sum(r.status == 429 for r in self.results)
        lost = len(self.results) - len(ok) - busy
        return [
            (f"{self.clients} concurrent clients: {len(ok)} answered, {busy} told 429 (queue full), {lost} failed;"
             f" wall {self.wall:.1f} s"),
            f"  first word  p50 {percentile(firsts, 50):6.2f} s   p95 {percentile(firsts, 95):6.2f} s",
            f"  whole answer p50 {percentile(totals, 50):6.2f} s   p95 {percentile(totals, 95):6.2f} s",
            *[f"  failed: {r.status} {r.error}" for r in self.results if r.error],
        ]


def one_client(url: str, question: str, model: str | None, key: str, start: threading.Barrier) -> Result:
    """One streamed question; the clock starts when every client is ready."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body: dict[str, object] = {"messages": [{"role": "user", "content": question}], "stream": True}
    if model:
        body["model"] = model
    result = Result()
    start.wait()
    t0 = time.perf_counter()
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=900) as r:
            result.status = r.status_code
            if r.status_code != 200:
                r.read()
                result.error = "" if r.status_code == 429 else r.text[:200]
                return result
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"].get("message", "error")
                delta = (chunk.get("choices") or [{}])[0].get("delta", {})
                if delta.get("content") and result.first is None:
                    result.first = time.perf_counter() - t0
                if "citations" in chunk:
                    result.citations = len(chunk["citations"])
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.total = time.perf_counter() - t0
    return result


def run_load(url: str, clients: int = 8, model: str | None = None, key: str = "",
             questions: Sequence[str] = QUESTIONS) -> LoadReport:  # fmt: skip
    """Start `clients` threads at once, each asking one question; wait for all."""
    url = url.rstrip("/")
    start = threading.Barrier(clients + 1)
    results: list[Result | None] = [None] * clients

    def work(i: int) -> None:
        results[i] = one_client(url, questions[i % len(questions)], model, key, start)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    report = LoadReport(clients, [r or Result(error="client thread died") for r in results])
    report.wall = time.perf_counter() - t0
    return report
