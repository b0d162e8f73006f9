"""Query -> Hit[]: dense and BM25 rankings fused (standardised scores, or reciprocal ranks),
then spread over documents so one source cannot fill every slot given to the model."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rag.index.lexical import mentions, names
from rag.ingest.chunking import clean_text
from rag.schema import Chunk, Hit

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index.embedding import Embedder
    from rag.index.reader import Index


def rrf(
    rankings: Sequence[Sequence[int]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum over lists of w / (k + rank), rank from 1.

    Example: rrf([[7, 3], [3, 9]], k=1) -> [(3, 1/3 + 1/2), (7, 1/2), (9, 1/3)]
    Ties keep the order in which items were first seen, so results are deterministic.
    """
    weights = weights or [1.0] * len(rankings)
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = {item: i for i, item in enumerate(dict.fromkeys(x for r in rankings for x in r))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def zscore_fusion(
    lists: Sequence[Sequence[tuple[int, float]]],
    weights: Sequence[float] | None = None,
    floors: Sequence[float | None] | None = None,
) -> list[tuple[int, float]]:
    """Sum of each list's standardised scores, z = (s - mean) / std.

    Unlike rank fusion this keeps how far a clear winner stands out. An item
    missing from a list scores that list's floor: the score a passage outside
    it would have (0 for BM25, which scores non-matching passages 0; None = the
    list's lowest candidate, for dense cut-offs). The floor takes part in the
    mean and std, so a list with a single match still lifts it.
    Example: zscore_fusion([[(7, 0.9), (3, 0.5), (4, 0.1)], [(3, 2.0), (7, 1.0)]])
    ranks 3 (z 0 + 1 = 1) ahead of 7 (1.22 - 1 = 0.22) and 4 (-1.22 - 1 = -2.22).
    Ties keep the order in which items were first seen.
    """
    weights = weights or [1.0] * len(lists)
    floors = floors or [None] * len(lists)
    standardised: list[dict[int, float]] = []
    z_floors: list[float] = []
    for items, floor in zip(lists, floors):
        if not items:
            standardised.append({})
            z_floors.append(0.0)
            continue
        values = np.array([score for _, score in items], dtype=np.float64)
        low = float(values.min()) if floor is None else floor
        stats = np.append(values, low) if floor is not None else values
        mean, std = stats.mean(), stats.std()
        std = std if std > 1e-12 else 1.0
        standardised.append({item: float((score - mean) / std) for item, score in items})
        z_floors.append(float((low - mean) / std))
    order = list(dict.fromkeys(item for items in lists for item, _ in items))
    scores = {
        item: sum(w * z.get(item, floor) for w, z, floor in zip(weights, standardised, z_floors)) for item in order
    }
    position = {item: i for i, item in enumerate(order)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], position[kv[0]]))


def spread(
    items: Sequence[tuple[int, float]], source: Callable[[int], str], cap: int, depth: int
) -> list[tuple[int, float]]:
    """Reorder so that at most `cap` of the first `depth` items share a source; the rest keep their order.

    Example: sources a a a b, cap 2, depth 3 -> a a b a. With one source only
    (or cap 0) nothing moves.
    """
    if cap <= 0:
        return list(items)
    head: list[tuple[int, float]] = []
    rest: list[tuple[int, float]] = []
    per_source: dict[str, int] = {}
    for item in items:
        name = source(item[0])
        if len(head) < depth and per_source.get(name, 0) < cap:
            head.append(item)
            per_source[name] = per_source.get(name, 0) + 1
        else:
            rest.append(item)
    return head + rest


@dataclass(frozen=True)
class RetrievalParams:
    candidates: int = 100
    rrf_k: int = 60
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    min_dense_score: float = 0.25
    fusion: str = "zscore"
    per_doc_cap: int = 2
    diverse_depth: int = 5  # the slots per_doc_cap applies to: the passages the model reads
    join_max_chars: int = 0  # see Settings.join_max_chars
    piece_candidates: int = 0  # see Settings.piece_candidates; 0: chunk vectors only
    split_questions: bool = True  # see Settings.split_questions

    @classmethod
    def from_settings(cls, s: Settings) -> RetrievalParams:
        return cls(
            candidates=s.candidates,
            rrf_k=s.rrf_k,
            dense_weight=s.dense_weight,
            lexical_weight=s.lexical_weight,
            min_dense_score=s.min_dense_score,
            fusion=s.fusion,
            per_doc_cap=s.per_doc_cap,
            diverse_depth=s.top_k,
            join_max_chars=s.join_max_chars,
            piece_candidates=s.piece_candidates if s.piece_chars else 0,
            split_questions=s.split_questions,
        )


def given_once(
    items: Sequence[tuple[int, float]], chunks: Sequence[Chunk], passage_of: Callable[[int], Chunk]
) -> list[tuple[int, float, Chunk]]:
    """Each ranked row with the passage the model reads for it, no text given twice.

    A row whose chunk lies inside a passage ranked before it was read already: it is dropped.
    A row joined with the next chunk (`passage_of(row)`) whose continuation a passage ranked before it
    already gives reads its own chunk alone.
    """
    given: dict[str, list[tuple[int, int]]] = {}
    out: list[tuple[int, float, Chunk]] = []
    for row, score in items:
        chunk, passage = chunks[row], passage_of(row)
        spans = given.setdefault(chunk.path, [])
        if any(a <= chunk.start and chunk.end <= b for a, b in spans):
            continue
        if passage.end > chunk.end and any(a < passage.end and b > chunk.end for a, b in spans):
            passage = chunk
        spans.append((passage.start, passage.end))
        out.append((row, score, passage))
    return out


_PART_END = re.compile(r"(?<=[？?])\s*")
MIN_PART_CHARS = 4  # a shorter part ("为什么？", "Why?") is no question of its own: it stays with the one before


def question_parts(query: str) -> list[str]:
    """The questions a query asks, one per question mark: '会议在哪里举行？谁主持？' -> two parts.

    Each part's passages may sit anywhere in the corpus; ranked as one query, the part with more
    words wins the top places and the other part's passage can fall below the cut.
    """
    parts: list[str] = []
    for piece in _PART_END.split(query.strip()):
        if not piece:
            continue
        if parts and len(piece.strip("？? ")) < MIN_PART_CHARS:
            parts[-1] += piece
        else:
            parts.append(piece)
    return parts


def take_in_turn(rankings: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """The first k distinct passages taking one from each ranking in turn, best first."""
    out: list[Hit] = []
    seen: set[str] = set()
    for rank in range(max((len(r) for r in rankings), default=0)):
        for ranking in rankings:
            if rank < len(ranking) and ranking[rank].chunk.id not in seen:
                seen.add(ranking[rank].chunk.id)
                out.append(ranking[rank])
    return out[:k]


class Retriever:
    """Hybrid search over one loaded index. The only retrieval path: chat, CLI and eval all use it."""

    def __init__(self, index: Index, embedder: Embedder, params: RetrievalParams) -> None:
        self.index = index
        self.embedder = embedder
        self.params = params

    def search(self, query: str, k: int) -> list[Hit]:
        """The k best passages; [] when nothing is evidence (see `has_evidence`)."""
        hits = self.rank(query, max(k, 1))
        return hits[:k] if self.has_evidence(hits) else []

    def rank(self, query: str, k: int) -> list[Hit]:
        """The k best passages for the query; for one that asks several questions, the best
        passages of each part taken in turn (see `question_parts`)."""
        parts = question_parts(query) if self.params.split_questions else [query]
        whole = self._rank_one(query, k)
        if len(parts) < 2:
            return whole
        # Each part is ranked with the whole query after it, so a part that leans on the one
        # before ("估值多少？") keeps its subject while its own words weigh twice.
        return take_in_turn([whole, *(self._rank_one(f"{part} {query}", k) for part in parts)], k)

    def _rank_one(self, query: str, k: int) -> list[Hit]:
        """Dense and lexical candidates fused into one ranking, so exact terms and paraphrases both find their passage."""
        p = self.params
        dense = self.index.dense_search(self.embedder.encode_query(query), p.candidates, p.piece_candidates)
        lexical = self.index.lexical_search(query, p.candidates)
        dense_by_row, lexical_by_row = dict(dense), dict(lexical)
        weights = [p.dense_weight, p.lexical_weight]
        if p.fusion == "rrf":
            fused = rrf([[r for r, _ in dense], [r for r, _ in lexical]], p.rrf_k, weights)
        else:
            fused = zscore_fusion([dense, lexical], weights, floors=[None, 0.0])
        chunks = self.index.chunks
        given = given_once(fused, chunks, lambda row: self.index.passage(row, p.join_max_chars))
        passage_of = {row: passage for row, _, passage in given}
        ranked = spread([(row, score) for row, score, _ in given], lambda row: chunks[row].path, p.per_doc_cap, p.diverse_depth)
        return [
            Hit(
                chunk=passage_of[row],
                score=score,
                dense_score=dense_by_row.get(row),
                lexical_score=lexical_by_row.get(row),
            )
            for row, score in ranked[:k]
        ]

    def knows(self, text: str) -> bool:
        """Some document writes `text` (a name), anywhere in the index."""
        return self.index.knows(text)

    def entities(self) -> dict[str, int] | None:
        """The names mined from the indexed passages at build time (None for an older build)."""
        return self.index.entities()

    def has_evidence(self, hits: list[Hit]) -> bool:
        """Some passage is close in meaning, or shares words with the query."""
        if not hits:
            return False
        best_dense = max((h.dense_score or 0.0) for h in hits)
        return best_dense >= self.params.min_dense_score or any(h.lexical_score for h in hits)


def uncovered_names(query: str, hits: Sequence[Hit]) -> list[str]:
    """Latin-script names of the query ("zLLM", "Orvell Cargo 4.5") that no passage mentions.

    A Chinese question about a name none of the best passages contains asks about
    something the documents do not cover; given only near misses, the small model
    would answer about the wrong thing. (Not for English questions: every word is Latin.)
    """
    text = unicodedata.normalize("NFKC", " ".join(clean_text(h.chunk.text) for h in hits)).lower()
    return sorted(name for name in names(query) if not mentions(text, name))
