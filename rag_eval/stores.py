"""FAISS and Milvus Lite side by side on the same vectors.

Two sources of vectors, one comparison (`_compare`):

- `rag eval scale --stores faiss,milvus`: random unit vectors stand in for chunk vectors (as in
  scale.py); each query is one chunk's vector plus noise, so it has one true match.
- `rag eval rgb FILE --stores faiss,milvus`: the chunk vectors of the RGB pooled index (rag_eval/rgb.py)
  and each row's question embedded by the product's query embedder; a hit is a chunk of one of the
  row's positive passages, as in the pooled retrieval protocol's dense-only mode (chunk vectors only).

Every store gets the same vectors through the product's seam (rag/index/store.py: add, then seal as a
build does) and answers the same queries through `search`. Printed per store: build time (add + seal),
hit@5 and MRR@10, query p50/p95, and how often its top 10 equals FAISS's (both are exact, so this
should be 1.0 up to ties).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_eval import rgb
from rag_eval.metrics import text_table
from rag_eval.rgb import Latency
from rag_eval.scale import QUERY_NOISE, VECTOR_BATCH, random_unit_vectors

if TYPE_CHECKING:
    from rag.index.embedding import Embedder
    from rag.index.reader import Index

STORES = ("faiss", "milvus")
TOP = 10  # rows each query asks for: MRR@10 and "top 10 = FAISS" are read from them

RankOf = Callable[[int, list[int]], int | None]  # (query number, its top rows) -> rank of the first relevant row


@dataclass
class StoreResult:
    store: str
    build_seconds: float  # adding every vector and sealing the store, as a build does
    hit_at_5: float
    mrr_at_10: float
    p50_ms: float | None
    p95_ms: float | None
    same_top10_as_faiss: float | None  # share of queries whose top 10 rows equal FAISS's


@dataclass
class StoreReport:
    chunks: int
    dim: int
    queries: int
    results: list[StoreResult]
    vectors: str = "random"  # what the vectors are: "random", or "rgb" (the RGB pooled index's chunks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(kind: str, vectors: np.ndarray, folder: Path):  # type: ignore[no-untyped-def]
    """The store of `kind` holding `vectors`, written and reopened the way a build and a reader do; and seconds."""
    from rag.index.store import FaissStore

    t0 = time.perf_counter()
    if kind == "faiss":
        store = FaissStore.empty(vectors.shape[1])
        for start in range(0, len(vectors), VECTOR_BATCH):
            store.add(vectors[start : start + VECTOR_BATCH])
        store.save(folder / "dense.faiss")
        seconds = time.perf_counter() - t0
        return FaissStore.read(folder / "dense.faiss"), seconds
    from rag.index.milvus import MilvusStore

    uri = str(folder / "milvus.db")
    store = MilvusStore.create(uri, "compare_chunks", vectors.shape[1])
    store.add(vectors)
    store.finish()
    seconds = time.perf_counter() - t0
    store.close()
    return MilvusStore.open(uri, "compare_chunks"), seconds


def _measure(kind: str, store, queries: np.ndarray, rank_of: RankOf, seconds: float,  # type: ignore[no-untyped-def]
             faiss_top: list[list[int]] | None) -> tuple[StoreResult, list[list[int]]]:  # fmt: skip
    """Time every query's top 10 and score the rank of its first relevant row (`rank_of` says which are)."""
    times, tops, hits, rr = [], [], 0, 0.0
    store.search(queries[:1], TOP)  # the first search loads what a store loads lazily
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, rows = store.search(q.reshape(1, -1), TOP)
        times.append(time.perf_counter() - t0)
        top = [int(r) for r in rows[0] if r >= 0]
        tops.append(top)
        rank = rank_of(i, top)
        if rank is not None:
            hits += rank <= 5
            rr += 1 / rank
    same = None if faiss_top is None else sum(a == b for a, b in zip(tops, faiss_top, strict=True)) / len(tops)
    lat = Latency.of(kind, times)
    return StoreResult(kind, seconds, hits / len(tops), rr / len(tops), lat.p50_ms, lat.p95_ms, same), tops


def check_stores(stores: Sequence[str]) -> None:
    """Refuse a store kind this comparison cannot build, before anything slow runs."""
    unknown = set(stores) - set(STORES)
    if unknown or not stores:
        raise ValueError(f"unknown store(s) {sorted(unknown)}: use {', '.join(STORES)}")


def _compare(vectors: np.ndarray, queries: np.ndarray, rank_of: RankOf, stores: Sequence[str]) -> list[StoreResult]:
    """Build each store from `vectors` in a temporary folder and ask it `queries`; FAISS first, as the reference."""
    check_stores(stores)
    results: list[StoreResult] = []
    faiss_top: list[list[int]] | None = None
    with tempfile.TemporaryDirectory(prefix="rag-stores-") as tmp:
        for kind in sorted(stores, key=lambda k: k != "faiss"):  # FAISS first: the others are compared with it
            folder = Path(tmp) / kind
            folder.mkdir()
            store, seconds = _build(kind, vectors, folder)
            try:
                result, tops = _measure(kind, store, queries, rank_of, seconds, faiss_top)
            finally:
                getattr(store, "close", lambda: None)()
            faiss_top = tops if kind == "faiss" else faiss_top
            results.append(result)
    return results


def run_store_compare(
    chunks: int, dim: int, queries: int, stores: Sequence[str] = STORES, seed: int = 0
) -> StoreReport:
    """Build each store from the same random vectors and ask it the same noisy queries."""
    check_stores(stores)
    rng = np.random.default_rng(seed)
    vectors = random_unit_vectors(chunks, dim, rng)
    truth = rng.choice(chunks, size=queries, replace=False)
    noisy = vectors[truth] + QUERY_NOISE * random_unit_vectors(queries, dim, rng)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)

    def rank_of(i: int, top: list[int]) -> int | None:
        return top.index(truth[i]) + 1 if truth[i] in top else None

    return StoreReport(chunks, dim, queries, _compare(vectors, noisy, rank_of, stores))


def run_rgb_store_compare(
    rows: Sequence[rgb.RgbRow], pool: rgb.PassagePool, index: Index, embedder: Embedder,
    stores: Sequence[str] = STORES,
) -> StoreReport:  # fmt: skip
    """The stores on real vectors: the pooled index's chunk vectors, the rows' questions as queries.

    The vectors are read back from the built index (not re-embedded), so every store holds exactly what
    the product searched in `rag eval rgb`; a row's relevant rows are the chunks of its positive passages
    (rgb.first_positive_rank over the chunks' paths, as evaluate_pool_retrieval scores them).
    """
    from rag.answer.pipeline import clean_question

    check_stores(stores)
    vectors = np.ascontiguousarray(index.vectors(), dtype=np.float32)
    queries = np.vstack([embedder.encode_query(clean_question(row.query)) for row in rows]).astype(np.float32)
    paths = [chunk.path for chunk in index.chunks]

    def rank_of(i: int, top: list[int]) -> int | None:
        return rgb.first_positive_rank([paths[r] for r in top], pool.positives[i])

    return StoreReport(len(vectors), vectors.shape[1], len(rows), _compare(vectors, queries, rank_of, stores), "rgb")


def format_store_report(report: StoreReport) -> str:
    """The comparison as a table for a terminal."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    rows = [[r.store, f"{r.build_seconds:.2f} s", f"{r.hit_at_5:.3f}", f"{r.mrr_at_10:.3f}", ms(r.p50_ms), ms(r.p95_ms),
             "-" if r.same_top10_as_faiss is None else f"{r.same_top10_as_faiss:.3f}"] for r in report.results]  # fmt: skip
    if report.vectors == "rgb":
        head = (f"RGB pooled index: {report.chunks:,} chunk vectors of size {report.dim}, {report.queries} row "
                "questions (query embedder); a hit is a chunk of a positive passage")  # fmt: skip
    else:
        head = f"{report.chunks:,} random unit vectors of size {report.dim}, {report.queries} queries (a vector + noise)"
    table = text_table(["store", "build", "hit@5", "MRR@10", "p50", "p95", "top 10 = FAISS"], rows)
    return f"{head}\n\n{table}"
