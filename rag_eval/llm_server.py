"""`rag eval llm-server`: the same questions through both chat backends in one run, the model in this
process (llama.cpp) and an OpenAI-compatible server, each question on both back to back. Prints whether
the answers are token-identical (they should be at temperature 0, same model file and context) and what
each backend's first token and whole answer took.

Without --llm-url it starts llama-cpp-python's server (the `scale` extra) on 127.0.0.1 itself, serving the
configured chat model with the configured context, threads and batch, and stops it at the end.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ModelError

if TYPE_CHECKING:
    from rag.answer.pipeline import Pipeline
    from rag.config import Settings

SERVER_START_S = 180  # a 1.5B model loads in ~10 s; far more means something is wrong


@dataclass
class Run:
    """One question answered by one backend."""

    pieces: list[str]  # every token streamed, in order (a retry's too)
    first_token: float | None  # seconds from the question; None: refused before the model wrote
    total: float
    refused: bool


@dataclass
class Pair:
    id: str
    question: str
    local: Run
    server: Run

    @property
    def identical(self) -> bool:
        return self.local.pieces == self.server.pieces


@dataclass
class Report:
    url: str
    started_here: bool
    settings: dict[str, Any]
    load_seconds: dict[str, float]
    pairs: list[Pair] = field(default_factory=list)
    load_average: tuple[str, str] = ("", "")  # before, after

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for pair, row in zip(self.pairs, data["pairs"], strict=True):
            row["identical"] = pair.identical
        return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


@contextmanager
def local_server(settings: Settings, log: Path) -> Iterator[str]:
    """llama-cpp-python's server on a free 127.0.0.1 port, serving the chat model as this process loads it."""
    import httpx

    from rag.models import locate

    s = settings
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(locate(s.chat_model, s.models_dir)),
            "--model_alias", s.chat_model, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(s.n_ctx),
            "--n_batch", str(s.n_batch), "--n_threads", str(s.n_threads), "--n_threads_batch", str(s.n_threads)]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ModelError(
                    f"The LLM server did not start (log: {log}): {log.read_text(errors='replace')[-500:]}",
                    "Install the `scale` extra (scripts/setup.sh --dev), or start a server and pass --llm-url.",
                )
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _ask(pipeline: Pipeline, question: str) -> Run:
    """Answer on the ordinary path (the cached path exists only in process), timing it."""
    from rag.answer.pipeline import Done, Token

    pieces: list[str] = []
    for event in pipeline.ask(question, path="ordinary"):
        if isinstance(event, Token):
            pieces.append(event.text)
        elif isinstance(event, Done):
            t = event.answer.timings
            generated = "generation" in t
            return Run(pieces, t.get("first_token") if generated else None, t["total"], event.answer.refused)
    raise RuntimeError("the pipeline ended without an answer")


def compare(
    settings: Settings, url: str, questions: Sequence[tuple[str, str]], started_here: bool,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:  # fmt: skip
    """Each (id, question) through the in-process model, then through the server at `url`."""
    from rag.answer.pipeline import Pipeline

    local = Pipeline(settings)
    load = local.load()
    server = Pipeline(replace(settings, llm_url=url), embedder=local.get_embedder())
    t = time.perf_counter()
    server.get_generator()
    load["server client"] = time.perf_counter() - t
    shown = {k: getattr(settings, k) for k in ("chat_model", "embed_model", "n_ctx", "n_threads", "n_batch",
                                               "temperature", "max_answer_tokens", "top_k")}  # fmt: skip
    report = Report(url, started_here, shown, load)
    before = _loadavg()
    for i, (qid, question) in enumerate(questions, start=1):
        pair = Pair(qid, question, _ask(local, question), _ask(server, question))
        report.pairs.append(pair)
        progress(f"[{i}/{len(questions)}] {qid} {'same' if pair.identical else 'DIFFERENT'} "
                 f"local {pair.local.total:.1f}s server {pair.server.total:.1f}s {''.join(pair.local.pieces)[:50]!r}")  # fmt: skip
    report.load_average = (before, _loadavg())
    return report


def _median(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{statistics.median(present):.2f}" if present else "-"


def _row(name: str, local: object, server: object) -> str:
    return f"{name:<22}{local!s:>12}{server!s:>12}"


def format_report(report: Report) -> str:
    pairs = report.pairs
    written = [p for p in pairs if p.local.first_token is not None or p.server.first_token is not None]
    same = sum(p.identical for p in pairs)
    started = " (started here)" if report.started_here else ""
    lines = [
        f"LLM backends on {len(pairs)} questions: in process vs {report.url}{started}",
        "settings: " + ", ".join(f"{k} {v}" for k, v in report.settings.items()),
        "load (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report.load_seconds.items()),
        "",
        (f"token-identical answers: {same}/{len(pairs)} ({sum(p.identical for p in written)}/{len(written)} that"
        f" the model wrote; the rest were refused before it)"),
        _row("", "in process", "server"),
        _row("first token p50 (s)", _median([p.local.first_token for p in written]),
             _median([p.server.first_token for p in written])),
        _row("whole answer p50 (s)", _median([p.local.total for p in written]), _median([p.server.total for p in written])),
        _row("tokens written", sum(len(p.local.pieces) for p in written), sum(len(p.server.pieces) for p in written)),
        f"load average before {report.load_average[0]}, after {report.load_average[1]}",
    ]  # fmt: skip
    for p in pairs:
        if not p.identical:
            local, server = "".join(p.local.pieces)[:60], "".join(p.server.pieces)[:60]
            lines.append(f"  DIFFERENT {p.id}: local {local!r} / server {server!r}")
    return "\n".join(lines)
