"""RGB (Chen et al., AAAI 2024), Chinese part, measured through the product's own code.

Two protocols (../shared/bench/rgb/README.md):

- Retrieval at scale: every positive and negative passage of every row is
  pooled into one corpus (deduplicated by text), indexed in the product's
  on-disk format (one synthetic document per passage, chunked by the
  product's chunker), and each row's query is ranked by BM25 alone, dense
  alone and the product's fused `Retriever`. A hit is a chunk of one of that
  row's positive passages.
- Noise robustness: the model is given 5 passages, a share of them (the
  noise rate) negatives, and answers through `Pipeline.ask` (prompt,
  generation, citation check, refusal rule); accuracy is the paper's
  gold-string match, and with noise 1.0 the right answer is a refusal.

Gold answers (the paper's `checkanswer`): a row's `answer` is a list whose
every element must occur in the output; an element that is itself a list is
a set of alternatives, one of which must occur. Example:

    >>> parse_answer([["4次", "四次"]])        # one fact, two spellings
    (('4次', '四次'),)
    >>> parse_answer(["东盟", "中国"])          # both must be named
    (('东盟',), ('中国',))
    >>> is_correct(parse_answer(["东盟", "中国"]), "包括东盟和中国[1]。")
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.errors import RagError
from rag.ingest.chunking import ChunkerSettings, chunk_document, piece_texts, search_text
from rag.schema import Chunk, Document, Hit
from rag_eval.metrics import text_table
from rag_eval.stats import percentile

if TYPE_CHECKING:
    from rag.answer.pipeline import Pipeline
    from rag.answer.retrieval import RetrievalParams
    from rag.config import Settings
    from rag.guards import Guards
    from rag.index.embedding import Embedder
    from rag.index.reader import Index
    from rag.llm.generation import Generator

MRR_CUTOFF = 10
PASSAGES = 5  # the paper's passage_num
PAPER_SEED = 2333  # the paper seeds Python's random with this before each row
EMBED_BATCH = 64  # texts per encode call: vectors go into FAISS batch by batch, never all at once twice
RGB_INDEX_VERSION = 1  # bump when the pooled-index layout or its key changes
# RGB passages are web-search snippets without a title; this is the document title the model sees.
ANSWER_TITLE = "网页"


class RgbFileError(RagError):
    """The RGB file cannot be read or a row is malformed."""


# ---------------------------------------------------------------- data


Gold = tuple[tuple[str, ...], ...]  # every group must occur; any one alternative of a group


@dataclass(frozen=True)
class RgbRow:
    id: str
    query: str
    answer: Gold
    positive: tuple[str, ...]
    negative: tuple[str, ...]


def parse_answer(raw: object) -> Gold:
    """The paper's answer format as groups of alternatives (see the module docstring)."""
    items = raw if isinstance(raw, list) else [raw]
    groups: list[tuple[str, ...]] = []
    for item in items:
        alternatives = item if isinstance(item, list) else [item]
        if not alternatives or not all(isinstance(a, str | int | float) for a in alternatives):
            raise ValueError(f"answer element {item!r} is not a string or a list of strings")
        groups.append(tuple(str(a) for a in alternatives))
    if not groups:
        raise ValueError("the answer is empty")
    return tuple(groups)


def load_rows(path: str | Path, limit: int | None = None) -> list[RgbRow]:
    """Rows of an RGB JSON Lines file (zh_refine.json), the first `limit` if given."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RgbFileError(f"Cannot read the RGB file {path}: {exc}.", "Give the path to zh_refine.json.") from exc
    rows: list[RgbRow] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            row = RgbRow(
                id=str(obj["id"]),
                query=str(obj["query"]),
                answer=parse_answer(obj["answer"]),
                # An empty passage carries nothing (zh_refine.json has none); the prompt builder would stop at it.
                positive=tuple(str(p) for p in obj["positive"] if str(p).strip()),
                negative=tuple(str(p) for p in obj["negative"] if str(p).strip()),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RgbFileError(
                f"{path}:{number}: not an RGB row ({exc.__class__.__name__}: {exc}).",
                "Each line must be a JSON object with id, query, answer, positive and negative.",
            ) from exc
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise RgbFileError(f"The RGB file {path} holds no rows.", "Give the path to zh_refine.json.")
    return rows


# ---------------------------------------------------------------- gold matching


def normalize_output(text: str) -> str:
    """What gold strings are searched in: NFKC, lower case, no whitespace (the paper drops spaces for zh)."""
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def gold_labels(answer: Gold, output: str) -> list[bool]:
    """Per gold group: does one of its alternatives occur in the output?"""
    text = normalize_output(output)
    return [any(normalize_output(alt) in text for alt in group) for group in answer]


def is_correct(answer: Gold, output: str) -> bool:
    labels = gold_labels(answer, output)
    return bool(labels) and all(labels)


# ---------------------------------------------------------------- the pooled corpus


@dataclass
class PassagePool:
    """Distinct passages of all rows (first-seen order) and, per row, the ids of its positives.

    Example: rows (pos [a], neg [b]) and (pos [b], neg [a, c]) ->
    texts [a, b, c], positives [{0}, {1}].
    """

    texts: list[str]
    positives: list[frozenset[int]]

    def digest(self) -> str:
        h = hashlib.sha256()
        for text in self.texts:
            h.update(text.encode("utf-8") + b"\0")
        h.update(b"\1")
        for ids in self.positives:
            h.update(",".join(map(str, sorted(ids))).encode() + b";")
        return h.hexdigest()


def _passage_key(text: str) -> str:
    return text.strip()


def pool_passages(rows: Sequence[RgbRow]) -> PassagePool:
    """Pool every positive and negative passage, deduplicated by (stripped) text; empty ones dropped."""
    ids: dict[str, int] = {}
    for row in rows:
        for text in (*row.positive, *row.negative):
            key = _passage_key(text)
            if key and key not in ids:
                ids[key] = len(ids)
    positives = [frozenset(ids[k] for k in map(_passage_key, row.positive) if k) for row in rows]
    return PassagePool(list(ids), positives)


def passage_path(pid: int) -> str:
    return f"rgb/{pid:05d}.txt"


def passage_id(path: str) -> int:
    """Inverse of passage_path: 'rgb/00042.txt' -> 42."""
    return int(Path(path).stem)


def passage_chunks(pool: PassagePool, chunker: ChunkerSettings) -> list[list[Chunk]]:
    """Each passage as a synthetic document without a title, chunked by the product's chunker."""
    out = []
    for pid, text in enumerate(pool.texts):
        doc = Document(path=passage_path(pid), title="", text=text, sha256=hashlib.sha256(text.encode()).hexdigest())
        out.append(chunk_document(doc, chunker))
    return out


# ---------------------------------------------------------------- building the pooled index


@dataclass
class PoolIndexInfo:
    directory: str
    key: str
    reused: bool
    passages: int
    chunks: int
    pieces: int  # sentence-piece vectors beside the chunks' (0: built without them)
    build_seconds: float  # of the build that made it (recorded in the build when reused)
    embed_seconds: float
    bm25_seconds: float
    peak_rss_mb: float  # of this process so far, after building or loading


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pool_key(
    pool: PassagePool, embed_model: str, embed_sha256: str, chunker: ChunkerSettings, piece_chars: int = 0
) -> dict[str, Any]:
    from rag.index.manifest import FORMAT_VERSION

    return {
        "rgb_index_version": RGB_INDEX_VERSION,
        "index_format": FORMAT_VERSION,
        "pool_sha256": pool.digest(),
        "embed_model": embed_model,
        "embed_sha256": embed_sha256,
        "chunker": chunker.as_dict(),
        "piece_chars": piece_chars,
    }


def _key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "passage"):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, mininterval=2.0)


def ensure_pool_index(
    pool: PassagePool,
    root: Path,
    embedder_factory: Callable[[], Embedder],
    embed_model: str,
    embed_sha256: str,
    chunker: ChunkerSettings,
    piece_chars: int = 0,
    progress: bool = True,
) -> tuple[Index, PoolIndexInfo]:
    """Load the pooled index for exactly this pool and embedder from `root`, building it first if needed.

    Each (pool, embedder, chunker, piece size) gets its own folder `root/<key>/`,
    in the product's index layout (`current` -> `builds/<id>`, sentence pieces
    included when piece_chars > 0), so `Index.load` reads it and a second run
    only loads it.
    """
    from rag.index.lock import BuildLock
    from rag.index.reader import Index, index_exists

    key = pool_key(pool, embed_model, embed_sha256, chunker, piece_chars)
    directory = root / _key_id(key)
    with BuildLock(directory, wait=True):
        reused = index_exists(directory) and _read_key(directory) == key
        if not reused:
            stats = _build_pool_index(pool, directory, embedder_factory(), embed_model, embed_sha256, chunker,
                                      piece_chars, key, progress)  # fmt: skip
        else:
            stats = json.loads((directory / "current" / "rgb.json").read_text(encoding="utf-8"))["build"]
    index = Index.load(directory, embed_model, embed_sha256)
    info = PoolIndexInfo(
        directory=str(directory), key=_key_id(key), reused=reused, passages=len(pool.texts), chunks=len(index),
        pieces=len(index.pieces) if index.pieces is not None else 0,
        build_seconds=stats["seconds"], embed_seconds=stats["embed_seconds"], bm25_seconds=stats["bm25_seconds"],
        peak_rss_mb=peak_rss_mb(),
    )  # fmt: skip
    return index, info


def _read_key(directory: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((directory / "current" / "rgb.json").read_text(encoding="utf-8"))["key"]
        return data
    except (OSError, ValueError, KeyError):
        return None


def _build_pool_index(
    pool: PassagePool,
    directory: Path,
    embedder: Embedder,
    embed_model: str,
    embed_sha256: str,
    chunker: ChunkerSettings,
    piece_chars: int,
    key: dict[str, Any],
    progress: bool,
) -> dict[str, float]:
    """Write one build in the product's layout; vectors go into FAISS one batch at a time."""
    from rag.index.manifest import FORMAT_VERSION, Manifest
    from rag.index.publish import new_staging, publish

    t0 = time.perf_counter()
    chunks, files, now = _pool_chunks_and_files(pool, chunker)
    staging = new_staging(directory)

    t_embed = time.perf_counter()
    texts = [search_text(c) for c in chunks]
    _embed_pool(embedder, chunks, texts, piece_chars, staging, progress)
    embed_seconds = time.perf_counter() - t_embed

    t_bm25 = time.perf_counter()
    _save_bm25(texts, staging, progress)
    bm25_seconds = time.perf_counter() - t_bm25

    manifest = Manifest(FORMAT_VERSION, embed_model, embed_sha256, embedder.dim, chunker.as_dict(), files, built_at=now,
                        piece_chars=piece_chars)  # fmt: skip
    stats = {"seconds": time.perf_counter() - t0, "embed_seconds": embed_seconds, "bm25_seconds": bm25_seconds}
    (staging / "rgb.json").write_text(json.dumps({"key": key, "build": stats}, indent=1), encoding="utf-8")
    publish(directory, staging, manifest, chunks)
    return stats


def _pool_chunks_and_files(pool: PassagePool, chunker: ChunkerSettings) -> tuple[list[Chunk], dict[str, Any], str]:
    """The pool's chunks in embedding order, the manifest's entry for each passage's file, and their time stamp."""
    from rag.index.manifest import FileEntry

    per_passage = passage_chunks(pool, chunker)
    # Shortest passages first: batches of similar length waste less padding in the embedder.
    order = sorted((pid for pid in range(len(per_passage)) if per_passage[pid]),
                   key=lambda pid: sum(len(c.text) for c in per_passage[pid]))  # fmt: skip
    chunks = [c for pid in order for c in per_passage[pid]]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    files = {
        passage_path(pid): FileEntry(hashlib.sha256(pool.texts[pid].encode()).hexdigest(), "",
                                     [c.id for c in per_passage[pid]], now)
        for pid in order
    }  # fmt: skip
    return chunks, files, now


def _embed_pool(embedder: Embedder, chunks: list[Chunk], texts: list[str], piece_chars: int, staging: Path,
                progress: bool) -> None:  # fmt: skip
    """The chunks' vectors, and with piece_chars their sentence pieces' vectors and owners, as index.build writes them."""
    from rag.index.manifest import DENSE_FILE, PIECE_OWNERS_FILE, PIECES_FILE

    _embed_into_faiss(embedder, texts, staging / DENSE_FILE, "embedding RGB passages", progress)
    if piece_chars > 0:  # as the product's index has them (index.build)
        pieces_of = [piece_texts(c, piece_chars) for c in chunks]
        owners = np.repeat(np.arange(len(chunks), dtype=np.int64), [len(p) for p in pieces_of])
        np.save(staging / PIECE_OWNERS_FILE, owners)
        _embed_into_faiss(embedder, [t for p in pieces_of for t in p], staging / PIECES_FILE,
                          "embedding their sentence pieces", progress)  # fmt: skip


def _embed_into_faiss(embedder: Embedder, texts: list[str], path: Path, desc: str, progress: bool) -> None:
    """Embed `texts` EMBED_BATCH at a time into an `IndexFlatIP` written to `path` (memory: the index, one batch)."""
    import faiss

    dense = faiss.IndexFlatIP(embedder.dim)
    with progress_bar(len(texts), desc, progress) as bar:
        for i in range(0, len(texts), EMBED_BATCH):
            vectors = embedder.encode_documents(texts[i : i + EMBED_BATCH])
            dense.add(np.ascontiguousarray(vectors, dtype=np.float32))
            bar.update(len(vectors))
    faiss.write_index(dense, str(path))


def _save_bm25(texts: list[str], staging: Path, progress: bool) -> None:
    """The product's BM25 index of `texts`, saved in the build (the tokens are dropped once it is built)."""
    from rag.index.lexical import LexicalIndex, tokenize

    with progress_bar(len(texts), "BM25 tokens", progress) as bar:
        tokens = []
        for text in texts:
            tokens.append(tokenize(text))
            bar.update(1)
    LexicalIndex.build(tokens).save(staging / "bm25")
    del tokens


# ---------------------------------------------------------------- retrieval metrics


@dataclass
class ModeMetrics:
    """hit@k and MRR@10 of one ranking mode over all rows."""

    mode: str
    rows: int
    hit: dict[int, float]
    mrr: float

    @classmethod
    def of(cls, mode: str, first_ranks: Sequence[int | None], ks: Sequence[int]) -> ModeMetrics:
        n = len(first_ranks)
        hit = {k: sum(1 for r in first_ranks if r is not None and r <= k) / n if n else 0.0 for k in ks}
        mrr = sum(1 / r for r in first_ranks if r is not None and r <= MRR_CUTOFF) / n if n else 0.0
        return cls(mode, n, hit, mrr)


def first_positive_rank(ranked_paths: Sequence[str], positives: frozenset[int]) -> int | None:
    """Rank (from 1) of the first chunk that belongs to a positive passage; None if none does.

    Example: paths ['rgb/00003.txt', 'rgb/00001.txt'], positives {1} -> 2.
    """
    for rank, path in enumerate(ranked_paths, start=1):
        if passage_id(path) in positives:
            return rank
    return None




@dataclass
class Latency:
    what: str
    n: int
    p50_ms: float | None
    p95_ms: float | None

    @classmethod
    def of(cls, what: str, seconds: Sequence[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(what, len(ms), percentile(ms, 50), percentile(ms, 95))


@dataclass
class RowRanks:
    id: str
    query: str
    positives: int
    first_rank: dict[str, int | None]  # mode -> rank of the first positive chunk
    top: dict[str, list[int]]  # mode -> passage ids of the top chunks


@dataclass
class RetrievalReport:
    ks: list[int]
    modes: list[ModeMetrics]
    latencies: list[Latency]
    index: PoolIndexInfo
    rows: list[RowRanks] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _TimedEmbedder:
    """Wraps an embedder and records how long each query embedding took."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name, self.dim = inner.name, inner.dim
        self.seconds: list[float] = []

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self.inner.encode_documents(texts, progress)

    def encode_query(self, text: str) -> np.ndarray:
        t0 = time.perf_counter()
        vec = self.inner.encode_query(text)
        self.seconds.append(time.perf_counter() - t0)
        return vec


MODES = ("BM25 only", "dense only", "fused")


def evaluate_pool_retrieval(
    rows: Sequence[RgbRow],
    pool: PassagePool,
    index: Index,
    embedder: Embedder,
    params: RetrievalParams,
    info: PoolIndexInfo,
    ks: Sequence[int] = (1, 5, 10),
    on_progress: Callable[[int, int, RowRanks], None] | None = None,
) -> RetrievalReport:
    """Rank every row's query three ways over the pooled index and score the first positive's rank.

    Fused is the product's `Retriever.rank` (query embedding included in its
    latency); dense only and BM25 only are the two lists it fuses, each cut at
    the depth.
    """
    from rag.answer.retrieval import Retriever

    ks = sorted(set(ks))
    depth = max(ks[-1], MRR_CUTOFF)
    timed = _TimedEmbedder(embedder)
    retriever = Retriever(index, timed, params)
    seconds: dict[str, list[float]] = {"fused": [], "dense": [], "bm25": []}
    results: list[RowRanks] = []
    for i, (row, positives) in enumerate(zip(rows, pool.positives), start=1):
        paths = _rank_three_ways(row.query, retriever, index, embedder, params, depth, seconds)
        result = RowRanks(
            id=row.id, query=row.query, positives=len(positives),
            first_rank={m: first_positive_rank(p, positives) for m, p in paths.items()},
            top={m: [passage_id(x) for x in p] for m, p in paths.items()},
        )  # fmt: skip
        results.append(result)
        if on_progress:
            on_progress(i, len(rows), result)
    modes = [ModeMetrics.of(m, [r.first_rank[m] for r in results], ks) for m in MODES]
    return RetrievalReport(list(ks), modes, _pool_latencies(timed.seconds, seconds), info, results)


def _rank_three_ways(question: str, retriever: Any, index: Index, embedder: Embedder, params: RetrievalParams,
                     depth: int, seconds: dict[str, list[float]]) -> dict[str, list[str]]:  # fmt: skip
    """One query's ranked chunk paths per mode (MODES), each search's seconds appended to `seconds`."""
    from rag.answer.pipeline import clean_question

    query = clean_question(question)
    t0 = time.perf_counter()
    fused = retriever.rank(query, depth)  # first: the query embedding is not cached yet
    seconds["fused"].append(time.perf_counter() - t0)
    vector = embedder.encode_query(query)
    t0 = time.perf_counter()
    dense = index.dense_search(vector, depth, pieces=params.piece_candidates)
    seconds["dense"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    lexical = index.lexical_search(query, depth)
    seconds["bm25"].append(time.perf_counter() - t0)
    return {
        MODES[0]: [index.chunks[r].path for r, _ in lexical],
        MODES[1]: [index.chunks[r].path for r, _ in dense],
        MODES[2]: [h.chunk.path for h in fused],
    }


def _pool_latencies(embedding: list[float], seconds: dict[str, list[float]]) -> list[Latency]:
    """The report's latency rows: query embedding, each search alone, fused with and without the embedding."""
    return [
        Latency.of("query embedding", embedding),
        Latency.of("FAISS search (dense only, vector given)", seconds["dense"]),
        Latency.of("BM25 search (incl. jieba on the query)", seconds["bm25"]),
        Latency.of("fused: Retriever.rank, embedding included", seconds["fused"]),
        Latency.of("fused minus query embedding", [f - e for f, e in zip(seconds["fused"], embedding)]),
    ]


# ---------------------------------------------------------------- tables


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms")


def format_retrieval_report(report: RetrievalReport) -> str:
    header = ["mode", "rows", *[f"hit@{k}" for k in report.ks], f"MRR@{MRR_CUTOFF}"]
    rows = [[m.mode, str(m.rows), *[f"{m.hit[k]:.3f}" for k in report.ks], f"{m.mrr:.3f}"] for m in report.modes]
    lat = text_table(["query latency", "n", "p50", "p95"],
                 [[x.what, str(x.n), _ms(x.p50_ms), _ms(x.p95_ms)] for x in report.latencies])  # fmt: skip
    info = report.index
    built = "reused (built earlier in" if info.reused else "built in"
    return (
        f"{text_table(header, rows)}\n\n{lat}\n\n"
        f"Index: {info.passages} distinct passages -> {info.chunks} chunks"
        f"{f' and {info.pieces} sentence pieces' if info.pieces else ''}, {built} {info.build_seconds:.0f} s"
        f"{')' if info.reused else ''}: embedding {info.embed_seconds:.0f} s, BM25 {info.bm25_seconds:.0f} s. "
        f"{info.directory}\nPeak memory (ru_maxrss): {peak_rss_mb():.0f} MB"
    )


# ================================================================ noise robustness


def noise_passages(row: RgbRow, noise_rate: float, n: int = PASSAGES, seed: int = PAPER_SEED) -> list[tuple[str, bool]]:
    """The paper's `processdata`: (passage, is_positive) for `n` passages, a share `noise_rate` negative.

    The first ceil(n * rate) negatives and the first n - that many positives,
    topped up from the other side when a row has too few, then shuffled with
    random.Random(seed) (the paper calls random.seed(2333) before each row).
    Example: rate 0.4, n 5 -> 3 positives and 2 negatives, same order on every run.
    """
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise rate {noise_rate} is not between 0 and 1")
    # The paper's math.ceil(5 * 0.6) is 4 (5 * 0.6 == 3.0000000000000004); round first.
    neg = math.ceil(round(n * noise_rate, 9))
    pos = n - neg
    if noise_rate >= 1.0:
        neg, pos = n, 0
    elif neg > len(row.negative):
        neg = len(row.negative)
        pos = n - neg
    elif pos > len(row.positive):
        pos = len(row.positive)
        neg = n - pos
    docs = [(p, True) for p in row.positive[:pos]] + [(p, False) for p in row.negative[:neg]]
    random.Random(seed).shuffle(docs)
    return docs


def passage_hits(row: RgbRow, passages: Sequence[tuple[str, bool]]) -> list[Hit]:
    """The passages as Hits of title-less synthetic documents (nothing in them tells positive from negative)."""
    hits = []
    for j, (text, _) in enumerate(passages, start=1):
        chunk = Chunk(id=f"rgb-{row.id}-{j}", path=f"rgb/{row.id}/{j}.txt", title=ANSWER_TITLE, headings=(),
                      start=0, end=len(text), text=text)  # fmt: skip
        hits.append(Hit(chunk=chunk, score=1.0 / j))
    return hits


@dataclass
class NoiseResult:
    id: str
    noise: float
    query: str
    gold: list[list[str]]
    passages: list[dict[str, Any]]  # text, positive
    answer: str  # what the user sees (after citation checking and the refusal rule)
    raw_answer: str  # what the model wrote
    correct: bool  # a gold string in every group occurs in the shown answer
    correct_raw: bool
    refused: bool  # the product answered with its refusal
    timings: dict[str, float]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class NoiseMetrics:
    noise: float
    n: int
    accuracy: float
    accuracy_raw: float
    refusal: float
    ttft_median: float | None
    total_median: float | None

    @classmethod
    def of(cls, noise: float, results: Sequence[NoiseResult]) -> NoiseMetrics:
        n = len(results)

        def share(flags: list[bool]) -> float:
            return sum(flags) / n if n else 0.0

        ttft = [r.timings["first_token"] for r in results if "first_token" in r.timings]
        total = [r.timings["total"] for r in results if "total" in r.timings]
        return cls(
            noise=noise, n=n, accuracy=share([r.correct for r in results]),
            accuracy_raw=share([r.correct_raw for r in results]), refusal=share([r.refused for r in results]),
            ttft_median=percentile(ttft, 50), total_median=percentile(total, 50),
        )  # fmt: skip


@dataclass
class NoiseReport:
    metrics: list[NoiseMetrics]
    results: list[NoiseResult]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _given_passages_pipeline(settings: Settings, generator: Generator) -> Pipeline:
    """A Pipeline whose retrieval returns the passages set on it: the protocol fixes what the model reads.

    Everything after retrieval (prompt, generation, citation check, refusal
    rule) is `Pipeline.ask` unchanged.
    """
    from rag.answer.pipeline import Pipeline
    from rag.answer.retrieval import RetrievalParams, Retriever

    class GivenPassages(Retriever):
        def __init__(self, hits: list[Hit]) -> None:  # no index or embedder: nothing is searched
            self.hits = hits
            self.params = RetrievalParams()

        def rank(self, query: str, k: int) -> list[Hit]:
            return self.hits[:k]

        def has_evidence(self, hits: list[Hit]) -> bool:
            return bool(hits)

        def knows(self, text: str) -> bool:
            return any(text.lower() in h.chunk.text.lower() for h in self.hits)

        def entities(self) -> dict[str, int] | None:
            return None  # no index, so no names mined from it: the unknown-name check is skipped

    class GivenPassagesPipeline(Pipeline):
        passages: list[Hit] = []  # noqa: RUF012  (set per question by evaluate_noise)

        def retriever(self) -> Retriever:
            return GivenPassages(self.passages)

    return GivenPassagesPipeline(settings, generator=generator)


def evaluate_noise(
    rows: Sequence[RgbRow],
    noise_rates: Sequence[float],
    settings: Settings,
    generator: Generator,
    on_progress: Callable[[int, int, NoiseResult], None] | None = None,
    guards: Guards | None = None,
) -> NoiseReport:
    """Answer every row at every noise rate through `Pipeline.ask` with the row's 5 passages.

    `guards`: the answer guards to use, counting into it (default: those the settings leave on)."""
    from dataclasses import fields, replace

    from rag.answer.pipeline import Done

    overrides: dict[str, Any] = {"top_k": PASSAGES}
    if "kv_cache" in {f.name for f in fields(settings)}:
        # RGB passages are never in the passage KV store, so the cached path could only fall back.
        overrides["kv_cache"] = False
    settings = replace(settings, **overrides)
    pipeline = _given_passages_pipeline(settings, generator)
    if guards is not None:
        pipeline.guards = guards
    t0 = time.perf_counter()
    results: list[NoiseResult] = []
    total = len(rows) * len(noise_rates)
    for rate in noise_rates:
        for row in rows:
            passages = noise_passages(row, rate)
            pipeline.passages = passage_hits(row, passages)  # type: ignore[attr-defined]
            answer = None
            for event in pipeline.ask(row.query):
                if isinstance(event, Done):
                    answer = event.answer
            if answer is None:
                raise RuntimeError("the pipeline ended without an answer")
            result = NoiseResult(
                id=row.id, noise=rate, query=row.query, gold=[list(g) for g in row.answer],
                passages=[{"text": t, "positive": p} for t, p in passages], answer=answer.text,
                raw_answer=answer.raw_text, correct=is_correct(row.answer, answer.text),
                correct_raw=is_correct(row.answer, answer.raw_text), refused=answer.refused,
                timings=dict(answer.timings), prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
            )  # fmt: skip
            results.append(result)
            if on_progress:
                on_progress(len(results), total, result)
    metrics = [NoiseMetrics.of(rate, [r for r in results if r.noise == rate]) for rate in noise_rates]
    return NoiseReport(metrics, results, time.perf_counter() - t0)


def format_noise_report(report: NoiseReport) -> str:
    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} s"

    rows = [
        [f"{m.noise:g}", str(m.n), f"{m.accuracy:.3f}", f"{m.accuracy_raw:.3f}",
         f"{m.refusal:.3f}" + (" (rejection)" if m.noise >= 1.0 else ""), sec(m.ttft_median), sec(m.total_median)]
        for m in report.metrics
    ]  # fmt: skip
    header = ["noise rate", "n", "accuracy", "raw acc", "refused", "TTFT p50", "total p50"]
    return (
        text_table(header, rows)
        + "\n\naccuracy: a gold string (every group of the row's answer) occurs in the answer shown;"
        " raw acc: in the model's text before citation checking; refused: the product answered with its"
        " refusal (at noise 1.0 the right behaviour, the paper's rejection rate)."
        f" {len(report.results)} answers in {report.seconds / 60:.1f} min."
    )


def parse_rates(text: str) -> list[float]:
    """'0,0.4,0.8,1.0' -> [0.0, 0.4, 0.8, 1.0] (order kept, duplicates dropped, each in [0, 1])."""
    try:
        rates = list(dict.fromkeys(float(p) for p in text.replace(" ", "").split(",") if p))
    except ValueError as exc:
        raise RgbFileError(f"Invalid noise rates {text!r}.", "Give comma-separated rates, e.g. 0,0.4,0.8,1.0.") from exc
    if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
        raise RgbFileError(f"Invalid noise rates {text!r}.", "Each rate must be between 0 and 1, e.g. 0,0.4,0.8,1.0.")
    return rates
