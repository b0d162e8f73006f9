"""Retrieval latency at a size no corpus here has: synthetic chunks through the product's own Retriever.

Embedding 100,000 passages with the real model would take hours on this
machine and would not change what is measured here (FAISS, BM25 and fusion),
so the chunks are made up:

- vectors: random unit vectors of the embedder's size, in the FAISS index
  type the product builds (`IndexFlatIP`, exact inner product), and as many
  sentence-piece vectors per chunk as the product's corpus has (~5, each
  owned by its chunk; `Index.dense_search` looks them up too);
- text: words drawn from jieba's own dictionary by their frequencies (so
  BM25 sees a Zipf-like vocabulary of real Chinese words), tokenized by the
  product's `rag.index.lexical.tokenize`;
- queries: a few consecutive words of a random chunk, with a vector near
  that chunk's (its vector plus noise), so both lists have a true match.

`Retriever.rank` is timed exactly as the product calls it, with the query
embedding looked up (EmbeddingGemma adds ~95 ms per query, `rag bench`).
Optionally the same queries go through HNSW and IVF indexes built from the
same vectors, with their recall of the exact top 10.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rag.schema import Chunk
from rag_eval.metrics import text_table
from rag_eval.rgb import Latency, peak_rss_mb, progress_bar

WORDS_PER_CHUNK = 90  # ~190 characters, the size of an RGB passage
QUERY_WORDS = 6
QUERY_NOISE = 0.6  # query = normalize(chunk vector + this * a random unit vector): cosine ~0.85 to its chunk
VECTOR_BATCH = 10_000
HNSW_M = 32  # neighbours per node: the usual default for 768-d text embeddings
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = (64, 128)
IVF_NLIST = 1024  # ~ 3 * sqrt(n) for 100k; 4096-16384 at 1M
IVF_NPROBE = (16, 64)


def random_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def random_flat_index(n: int, dim: int, rng: np.random.Generator, desc: str, progress: bool, unit: str):  # type: ignore[no-untyped-def]
    """An `IndexFlatIP` of `n` random unit vectors, added one batch at a time (memory: the index, one batch)."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    with progress_bar(n, desc, progress, unit=unit) as bar:
        for start in range(0, n, VECTOR_BATCH):
            batch = random_unit_vectors(min(VECTOR_BATCH, n - start), dim, rng)
            index.add(batch)
            bar.update(len(batch))
    return index


def jieba_vocabulary(max_words: int = 60_000) -> tuple[list[str], np.ndarray]:
    """The most frequent all-Chinese words of jieba's dictionary and their probabilities."""
    import re

    import jieba

    cjk = re.compile(r"[\u4e00-\u9fff]+")
    entries: list[tuple[str, int]] = []
    with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and cjk.fullmatch(parts[0]):
                entries.append((parts[0], int(parts[1])))
    entries.sort(key=lambda e: -e[1])
    entries = entries[:max_words]
    freq = np.array([f for _, f in entries], dtype=np.float64)
    return [w for w, _ in entries], freq / freq.sum()


def synthetic_texts(n: int, rng: np.random.Generator, words_per_chunk: int = WORDS_PER_CHUNK) -> list[str]:
    """`n` passages of dictionary words drawn by frequency, with a full stop every ~15 words."""
    words, probs = jieba_vocabulary()
    ids = rng.choice(len(words), size=(n, words_per_chunk), p=probs)
    texts = []
    for row in ids:
        parts = [words[i] + ("。" if j % 15 == 14 else "") for j, i in enumerate(row)]
        texts.append("".join(parts))
    return texts


@dataclass
class AnnResult:
    index: str
    build_seconds: float
    memory_mb: float  # vectors + structure, from the serialized size
    p50_ms: float | None
    p95_ms: float | None
    recall_at_10: float  # share of the exact top 10 (flat index) found
    source_found: float  # share of queries whose exact best chunk (the one the query was made from) is in the top 10


@dataclass
class ScaleReport:
    chunks: int
    dim: int
    queries: int
    build: dict[str, float]  # seconds per step
    flat_memory_mb: float
    latencies: list[Latency]
    ann: list[AnnResult] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    pieces_memory_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LookupEmbedder:
    """Query vectors made in advance; the product's Retriever calls encode_query as usual."""

    name = "synthetic"

    def __init__(self, vectors: dict[str, np.ndarray], dim: int) -> None:
        self.vectors, self.dim = vectors, dim

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        raise NotImplementedError("synthetic chunks are never embedded")

    def encode_query(self, text: str) -> np.ndarray:
        return self.vectors[text]


def _serialized_mb(index) -> float:  # type: ignore[no-untyped-def]
    import faiss

    return float(faiss.serialize_index(index).nbytes) / 2**20


@dataclass
class _Synthetic:
    """The synthetic index and its parts that the timings and the ANN variants reuse."""

    index: Any  # rag.index.reader.Index
    dense: Any  # the chunks' faiss.IndexFlatIP
    piece_index: Any  # the pieces' faiss.IndexFlatIP, None without pieces
    texts: list[str]


def run_scale(
    chunks: int = 100_000,
    dim: int = 768,
    queries: int = 200,
    ann: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
    candidates: int | None = None,
    pieces_per_chunk: int = 0,
) -> ScaleReport:
    """Build the synthetic index in memory, time `queries` searches; ann: any of 'hnsw', 'ivf'."""
    unknown = set(ann) - {"hnsw", "ivf"}
    if unknown:
        raise ValueError(f"unknown ANN index type(s) {sorted(unknown)}: use hnsw, ivf")
    rng = np.random.default_rng(seed)
    build: dict[str, float] = {}
    syn = _build_synthetic(chunks, dim, pieces_per_chunk, rng, progress, build)
    query_texts, query_vectors = _synthetic_queries(syn, queries, dim, rng)
    seconds, exact, params = _time_searches(syn.index, query_texts, query_vectors, candidates)
    pieces = syn.index.pieces
    report = ScaleReport(chunks, dim, queries, build, _serialized_mb(syn.dense), _latencies(seconds, params, pieces),
                         pieces_memory_mb=_serialized_mb(syn.piece_index) if pieces is not None else 0.0)  # fmt: skip
    matrix = np.stack([query_vectors[t] for t in query_texts])
    report.ann += _time_ann_variants(ann, syn.dense, matrix, exact, report, progress)
    report.peak_rss_mb = peak_rss_mb()
    return report


def _build_synthetic(chunks: int, dim: int, pieces_per_chunk: int, rng: np.random.Generator, progress: bool,
                     build: dict[str, float]) -> _Synthetic:  # fmt: skip
    """The product's `Index` over random vectors and dictionary-word texts; each step's seconds go into `build`."""
    from rag.index.manifest import FORMAT_VERSION, Manifest
    from rag.index.reader import Index, Pieces
    from rag.index.store import FaissStore

    t0 = time.perf_counter()
    dense = random_flat_index(chunks, dim, rng, "random vectors -> IndexFlatIP", progress, "chunk")
    build["faiss_flat"] = time.perf_counter() - t0
    pieces, piece_index = None, None
    if pieces_per_chunk > 0:
        t0 = time.perf_counter()
        piece_index = random_flat_index(chunks * pieces_per_chunk, dim, rng, "random piece vectors -> IndexFlatIP",
                                        progress, "piece")  # fmt: skip
        pieces = Pieces(FaissStore(piece_index), np.repeat(np.arange(chunks, dtype=np.int64), pieces_per_chunk))
        build["faiss_pieces"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = synthetic_texts(chunks, rng)
    build["texts"] = time.perf_counter() - t0
    lexical = _build_lexical(texts, progress, build)

    rows = [Chunk(id=f"s{i}", path=f"synthetic/{i}.txt", title="", headings=(), start=0, end=len(t), text=t)
            for i, t in enumerate(texts)]  # fmt: skip
    manifest = Manifest(FORMAT_VERSION, "synthetic", "", dim, {}, {}, piece_chars=50 if pieces else 0)
    index = Index(Path("synthetic"), manifest, rows, FaissStore(dense), lexical, pieces)
    return _Synthetic(index, dense, piece_index, texts)


def _build_lexical(texts: list[str], progress: bool, build: dict[str, float]):  # type: ignore[no-untyped-def]
    """The product's BM25 index of `texts`, tokenizing and indexing timed apart (the tokens are dropped after)."""
    from rag.index.lexical import LexicalIndex, tokenize

    t0 = time.perf_counter()
    tokens = []
    with progress_bar(len(texts), "BM25 tokens (jieba + bigrams)", progress, unit="chunk") as bar:
        for text in texts:
            tokens.append(tokenize(text))
            bar.update(1)
    build["bm25_tokenize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lexical = LexicalIndex.build(tokens)
    del tokens
    build["bm25_index"] = time.perf_counter() - t0
    return lexical


def _synthetic_queries(syn: _Synthetic, queries: int, dim: int,
                       rng: np.random.Generator) -> tuple[list[str], dict[str, np.ndarray]]:  # fmt: skip
    """Queries with a true match on both lists: a few words of a random chunk, a vector near that chunk's."""
    picks = rng.choice(len(syn.texts), size=queries, replace=False)
    query_texts: list[str] = []
    query_vectors: dict[str, np.ndarray] = {}
    for n, i in enumerate(picks):
        words = syn.texts[i].replace("。", "")
        start = int(rng.integers(0, max(1, len(words) - 14)))
        text = f"{words[start : start + 12]}？{n}"  # the counter keeps every query distinct
        vec = syn.dense.reconstruct(int(i)) + QUERY_NOISE * random_unit_vectors(1, dim, rng)[0]
        query_vectors[text] = (vec / np.linalg.norm(vec)).astype(np.float32)
        query_texts.append(text)
    return query_texts, query_vectors


def _time_searches(index, query_texts: list[str], query_vectors: dict[str, np.ndarray],  # type: ignore[no-untyped-def]
                   candidates: int | None) -> tuple[dict[str, list[float]], list[list[int]], Any]:  # fmt: skip
    """Seconds per query of each search the product runs, and the exact top 10 the ANN variants are scored on."""
    from rag.answer.retrieval import RetrievalParams, Retriever
    from rag.config import Settings

    settings = Settings()
    params = RetrievalParams.from_settings(settings)
    if candidates:
        params = RetrievalParams(candidates, params.rrf_k, params.dense_weight, params.lexical_weight,
                                 params.min_dense_score, piece_candidates=params.piece_candidates)  # fmt: skip
    if index.pieces is None:
        params = replace(params, piece_candidates=0)
    retriever = Retriever(index, _LookupEmbedder(query_vectors, index.manifest.dim), params)
    retriever.rank(query_texts[0], settings.top_k)  # loads jieba's dictionary, as a process's first query does

    seconds: dict[str, list[float]] = {"dense": [], "pieces": [], "bm25": [], "fused": []}
    exact: list[list[int]] = []
    for text in query_texts:
        vec = query_vectors[text]
        t0 = time.perf_counter()
        found = index.dense_search(vec, params.candidates)
        seconds["dense"].append(time.perf_counter() - t0)
        exact.append([r for r, _ in found[:10]])
        if index.pieces is not None:
            t0 = time.perf_counter()
            index.dense_search(vec, params.candidates, params.piece_candidates)
            seconds["pieces"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.lexical_search(text, params.candidates)
        seconds["bm25"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        retriever.rank(text, settings.top_k)
        seconds["fused"].append(time.perf_counter() - t0)
    return seconds, exact, params


def _latencies(seconds: dict[str, list[float]], params: Any, pieces: Any) -> list[Latency]:
    """The report's latency rows, named after what each search was (the pieces row only with pieces)."""
    return [
        Latency.of(f"FAISS IndexFlatIP, top {params.candidates}", seconds["dense"]),
        *([Latency.of(f"… and {len(pieces):,} pieces, top {params.piece_candidates} (dense_search)", seconds["pieces"])]
          if pieces is not None else []),
        Latency.of(f"BM25 (jieba + bigrams on the query), top {params.candidates}", seconds["bm25"]),
        Latency.of("fused: Retriever.rank (query vector given)", seconds["fused"]),
    ]  # fmt: skip


def _time_ann_variants(ann: Sequence[str], dense, matrix: np.ndarray, exact: list[list[int]],  # type: ignore[no-untyped-def]
                       report: ScaleReport, progress: bool) -> list[AnnResult]:  # fmt: skip
    """The flat index as the reference row, then each asked-for ANN index at each of its search settings."""
    results: list[AnnResult] = []
    if ann:
        results.append(_time_ann("Flat (exact, the product's)", dense, matrix, exact, report.build["faiss_flat"],
                                 report.flat_memory_mb))  # fmt: skip
    if "hnsw" in ann:
        results += _time_hnsw(dense, matrix, exact, progress)
    if "ivf" in ann:
        results += _time_ivf(dense, matrix, exact)
    return results


def _time_hnsw(dense, matrix: np.ndarray, exact: list[list[int]], progress: bool) -> list[AnnResult]:  # type: ignore[no-untyped-def]
    """An HNSW index of the same vectors, built once, searched at each efSearch (freed on return)."""
    import faiss

    chunks, dim = dense.ntotal, dense.d
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    with progress_bar(chunks, f"IndexHNSWFlat M={HNSW_M}", progress, unit="chunk") as bar:
        for start in range(0, chunks, VECTOR_BATCH):
            hnsw.add(dense.reconstruct_n(start, min(VECTOR_BATCH, chunks - start)))
            bar.update(min(VECTOR_BATCH, chunks - start))
    built = time.perf_counter() - t0
    size = _serialized_mb(hnsw)
    results = []
    for ef in HNSW_EF_SEARCH:
        hnsw.hnsw.efSearch = ef
        results.append(_time_ann(f"HNSW M={HNSW_M} efSearch={ef}", hnsw, matrix, exact, built, size))
    return results


def _time_ivf(dense, matrix: np.ndarray, exact: list[list[int]]) -> list[AnnResult]:  # type: ignore[no-untyped-def]
    """An IVF index of the same vectors, trained and filled once, searched at each nprobe (freed on return)."""
    import faiss

    chunks, dim = dense.ntotal, dense.d
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    nlist = max(1, min(IVF_NLIST, chunks // 40))  # k-means wants ~40 training points per list
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = dense.reconstruct_n(0, min(chunks, 40 * nlist))
    ivf.train(sample)
    del sample
    for start in range(0, chunks, VECTOR_BATCH):
        ivf.add(dense.reconstruct_n(start, min(VECTOR_BATCH, chunks - start)))
    built = time.perf_counter() - t0
    size = _serialized_mb(ivf)
    results = []
    for nprobe in IVF_NPROBE:
        ivf.nprobe = nprobe
        results.append(_time_ann(f"IVFFlat nlist={nlist} nprobe={nprobe}", ivf, matrix, exact, built, size))
    return results


def _time_ann(name: str, index, queries: np.ndarray, exact: list[list[int]], built: float, size: float) -> AnnResult:  # type: ignore[no-untyped-def]
    seconds, found, best = [], 0, 0
    for q, truth in zip(queries, exact):
        t0 = time.perf_counter()
        _, rows = index.search(q.reshape(1, -1), 10)
        seconds.append(time.perf_counter() - t0)
        got = {int(r) for r in rows[0] if r >= 0}
        found += len(set(truth) & got)
        best += bool(truth) and truth[0] in got
    lat = Latency.of(name, seconds)
    return AnnResult(name, built, size, lat.p50_ms, lat.p95_ms, found / max(1, sum(len(t) for t in exact)),
                     best / max(1, len(exact)))


def format_scale_report(report: ScaleReport) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else (f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms")

    lat = text_table(["query latency", "n", "p50", "p95"], [[x.what, str(x.n), ms(x.p50_ms), ms(x.p95_ms)] for x in report.latencies])
    b = report.build
    lines = [
        f"{report.chunks:,} synthetic chunks, {report.dim}-d vectors, {report.queries} queries\n",
        lat,
        "",
        (
            f"Build: FAISS flat {b['faiss_flat']:.1f} s ({report.flat_memory_mb:.0f} MB)"
            + (f", pieces {b['faiss_pieces']:.1f} s ({report.pieces_memory_mb:.0f} MB)" if "faiss_pieces" in b else "")
            + f", texts {b['texts']:.1f} s, "
            f"BM25 tokens {b['bm25_tokenize']:.1f} s, BM25 index {b['bm25_index']:.1f} s."
        ),
    ]
    if report.ann:
        rows = [[a.index, f"{a.build_seconds:.1f} s", f"{a.memory_mb:.0f} MB", ms(a.p50_ms), ms(a.p95_ms),
                 f"{a.recall_at_10:.3f}", f"{a.source_found:.3f}"] for a in report.ann]  # fmt: skip
        header = ["ANN index (top 10)", "build", "size", "p50", "p95", "recall@10 vs flat", "best found"]
        lines += ["", text_table(header, rows)]
    lines += ["", f"Peak memory (ru_maxrss): {report.peak_rss_mb:.0f} MB"]
    return "\n".join(lines)
