"""The rows of a new build, in corpus order: reused rows from the old index for unchanged files,
freshly embedded rows for new and changed ones.

The order (and so every row) is the same as a full rebuild of the same corpus would give, which is
what lets an incremental update retrieve exactly like a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rag.index.manifest import FileEntry, now
from rag.index.plan import Plan
from rag.index.report import BuildReport
from rag.schema import Chunk


@dataclass
class Embedded:
    """What this run read and embedded, files in corpus order, chunks in file order."""

    chunks: dict[str, list[Chunk]]  # path -> its chunks
    read: dict[str, tuple[str, str]]  # path -> (title, sha256 of the bytes actually read)
    vectors: np.ndarray  # one row per chunk, in the order of `chunks`
    pieces_per_chunk: list[int]  # how many sentence pieces each chunk has, same order
    piece_vectors: np.ndarray  # one row per piece, in the order of their chunks
    dim: int


@dataclass
class Rows:
    """A build's content: chunks, their vectors, their pieces' vectors and owners, and the files' entries."""

    chunks: list[Chunk] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    piece_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    owners: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    files: dict[str, FileEntry] = field(default_factory=dict)


class _Collector:
    """Appends one file's rows at a time, keeping each piece pointed at the new row of its chunk."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.vector_parts: list[np.ndarray] = []
        self.piece_parts: list[np.ndarray] = []
        self.owners: list[int] = []
        self.files: dict[str, FileEntry] = {}

    def add(self, rel: str, entry: FileEntry, kept: list[tuple[Chunk, list[int]]], vectors: np.ndarray,
            piece_source: np.ndarray) -> None:  # fmt: skip
        """`kept`: each chunk with the rows of its pieces in `piece_source`."""
        ids: list[int] = []
        for chunk, chunk_pieces in kept:
            self.owners.extend([len(self.chunks)] * len(chunk_pieces))
            ids.extend(chunk_pieces)
            self.chunks.append(chunk)
        self.vector_parts.append(vectors)
        if ids:
            self.piece_parts.append(piece_source[ids])
        self.files[rel] = entry

    def rows(self, dim: int) -> Rows:
        empty = np.zeros((0, dim), dtype=np.float32)
        return Rows(
            self.chunks,
            np.concatenate(self.vector_parts) if self.vector_parts else empty,
            np.concatenate(self.piece_parts) if self.piece_parts else empty,
            np.array(self.owners, dtype=np.int64),
            self.files,
        )


def assemble(plan: Plan, report: BuildReport, new: Embedded) -> Rows:
    """Every row of the new build in corpus order (iter_corpus order, the order new chunks were embedded in)."""
    out = _Collector()
    previous = plan.previous if report.unchanged else None
    if previous is not None:
        old_rows = {c.id: i for i, c in enumerate(previous.chunks)}
        old_vectors = previous.vectors()
        old_piece_vectors, old_owners = previous.piece_vectors()
        old_pieces_of: dict[int, list[int]] = {}  # old row -> its pieces, in order
        for i, row in enumerate(old_owners):
            old_pieces_of.setdefault(int(row), []).append(i)
    starts = np.cumsum([0, *new.pieces_per_chunk])
    offset = 0
    for rel in plan.files:
        if rel in report.unchanged and previous is not None:
            entry = previous.manifest.files[rel]
            rows = [old_rows[cid] for cid in entry.chunk_ids]
            kept = [(previous.chunks[r], old_pieces_of.get(r, [])) for r in rows]
            out.add(rel, entry, kept, old_vectors[rows], old_piece_vectors)
        elif rel in new.chunks:
            end = offset + len(new.chunks[rel])
            kept = [(c, list(range(starts[k], starts[k + 1])))
                    for k, c in zip(range(offset, end), new.chunks[rel], strict=True)]  # fmt: skip
            title, sha = new.read[rel]
            entry = FileEntry(sha, title, [c.id for c in new.chunks[rel]], now())
            out.add(rel, entry, kept, new.vectors[offset:end], new.piece_vectors)
            offset = end
    return out.rows(new.dim)
