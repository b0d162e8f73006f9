"""Query -> Hit[]: dense and BM25 rankings fused by reciprocal rank fusion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.schema import Hit

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.embedding import Embedder
    from rag.index import Index


def rrf(rankings: Sequence[Sequence[int]], k: int = 60, weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
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


@dataclass(frozen=True)
class RetrievalParams:
    candidates: int = 30
    rrf_k: int = 60
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    min_dense_score: float = 0.25

    @classmethod
    def from_settings(cls, s: Settings) -> RetrievalParams:
        return cls(s.candidates, s.rrf_k, s.dense_weight, s.lexical_weight, s.min_dense_score)


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
        p = self.params
        dense = self.index.dense_search(self.embedder.encode_query(query), p.candidates)
        lexical = self.index.lexical_search(query, p.candidates)
        dense_by_row, lexical_by_row = dict(dense), dict(lexical)
        fused = rrf([[r for r, _ in dense], [r for r, _ in lexical]], p.rrf_k, [p.dense_weight, p.lexical_weight])
        return [
            Hit(
                chunk=self.index.chunks[row],
                score=score,
                dense_score=dense_by_row.get(row),
                lexical_score=lexical_by_row.get(row),
            )
            for row, score in fused[:k]
        ]

    def has_evidence(self, hits: list[Hit]) -> bool:
        """Some passage is close in meaning, or shares words with the query."""
        if not hits:
            return False
        best_dense = max((h.dense_score or 0.0) for h in hits)
        return best_dense >= self.params.min_dense_score or any(h.lexical_score for h in hits)
