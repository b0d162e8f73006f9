"""Embedding throughput in process and on Ray actors: `rag eval ray`.

Issue 26 asks what `rag index --ray` costs or gains. The same passages (the configured corpus,
chunked as a build chunks it) are embedded once by the in-process embedder a build uses and once
per worker count by `RayEmbedder` on a Ray instance started in this process; each run is timed
after its model is loaded, so the figure is passages per second of embedding, not of start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from rag.config import Settings
from rag_eval.metrics import text_table


@dataclass
class RayRun:
    path: str  # "in process" or "ray, N workers"
    passages: int
    seconds: float
    passages_per_s: float
    max_abs_diff: float  # against the in-process vectors: the same model must give the same vectors


@dataclass
class RayReport:
    embed_model: str
    n_threads: int
    runs: list[RayRun]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corpus_passages(settings: Settings, limit: int) -> list[str]:
    """Up to `limit` chunk texts of the configured corpus, chunked with the build's settings."""
    from rag.ingest.chunking import ChunkerSettings, chunk_document
    from rag.ingest.loaders import iter_corpus, load_file

    chunker = ChunkerSettings(settings.chunk_size, settings.chunk_overlap)
    texts: list[str] = []
    for path, rel in iter_corpus(settings.corpus_dir):
        texts += [c.text for c in chunk_document(load_file(path, rel), chunker)]
        if len(texts) >= limit:
            break
    return texts[:limit]


def _timed(encode: Callable[[Sequence[str]], np.ndarray], texts: list[str]) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    vectors = encode(texts)
    return vectors, time.perf_counter() - t0


def run_ray_bench(settings: Settings, texts: list[str], workers: Sequence[int]) -> RayReport:
    """In process first (the reference vectors), then Ray with each worker count."""
    import ray

    from rag.index.distributed import RAY_BATCH, RayEmbedder
    from rag.index.embedding import load_document_embedder

    load = partial(load_document_embedder, settings.embed_model, settings.models_dir, threads=settings.n_threads)
    local = load()
    local.encode_documents(texts[:4])  # warm up, as the actors are warmed by loading
    reference, seconds = _timed(local.encode_documents, texts)
    runs = [RayRun("in process", len(texts), seconds, len(texts) / seconds, 0.0)]
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        for n in workers:
            embedder = RayEmbedder(load, n, RAY_BATCH)
            embedder.encode_documents(texts[: 4 * n])
            vectors, seconds = _timed(embedder.encode_documents, texts)
            diff = float(np.max(np.abs(vectors - reference))) if len(texts) else 0.0
            runs.append(RayRun(f"ray, {n} worker{'s' if n > 1 else ''}", len(texts), seconds, len(texts) / seconds, diff))
            embedder.shutdown()
    finally:
        ray.shutdown()
    return RayReport(settings.embed_model, settings.n_threads, runs)


def format_ray_report(report: RayReport) -> str:
    rows = [[r.path, str(r.passages), f"{r.seconds:.1f} s", f"{r.passages_per_s:.2f}", f"{r.max_abs_diff:.1e}"]
            for r in report.runs]  # fmt: skip
    head = f"embedder {report.embed_model}, n_threads {report.n_threads} per embedder"
    return head + "\n" + text_table(["path", "passages", "time", "passages/s", "max |Δ| vs in process"], rows)
