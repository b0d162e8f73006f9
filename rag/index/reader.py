"""A loaded, read-only index: the live build's chunks, vectors and BM25 state, and their searches.

Loading refuses a build made for another embedder or format, or damaged, with the fix in the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.errors import IndexStateError, RagError
from rag.index import entities
from rag.index.lexical import LexicalIndex, tokenize
from rag.index.manifest import (
    CHUNKS_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PIECE_OWNERS_FILE,
    REBUILD_HINT,
    Manifest,
    verify_checksums,
)
from rag.index.store import CHUNKS, PIECES, VectorStore, close_store, open_store, vector_files
from rag.ingest.chunking import following, passage
from rag.schema import Chunk


@dataclass
class Pieces:
    """Vectors of the chunks' sentence pieces (chunking.piece_texts) and the row of the chunk each belongs to."""

    dense: VectorStore
    owners: np.ndarray  # int64, one row per piece vector

    def __len__(self) -> int:
        return self.dense.count()


def index_exists(root: Path) -> bool:
    """A build has been published under `root` (it may still be damaged: Index.load says)."""
    return (root / "current").exists()


class Index:
    """A loaded, read-only index."""

    def __init__(self, directory: Path, manifest: Manifest, chunks: list[Chunk], dense: VectorStore,
                 lexical: LexicalIndex, pieces: Pieces | None = None) -> None:  # fmt: skip
        self.directory = directory
        self.manifest = manifest
        self.chunks = chunks
        self._dense = dense
        self._lexical = lexical
        self.pieces = pieces
        self._following: dict[int, int] | None = None
        self._passages: dict[tuple[int, int], Chunk] = {}

    def passage(self, row: int, join_max_chars: int) -> Chunk:
        """What the model reads for a row (chunking.passage). Computed when first asked for, so
        loading a large index does not pay for the rows no question reaches."""
        key = (row, join_max_chars)
        if key not in self._passages:
            if self._following is None:
                self._following = following(self.chunks)
            after = self._following.get(row)
            nxt = self.chunks[after] if after is not None else None
            self._passages[key] = passage(self.chunks[row], nxt, join_max_chars)
        return self._passages[key]

    def readable(self, join_max_chars: int) -> list[Chunk]:
        """Every passage the model may be given (the passage KV store computes a block for each):
        each row's passage, and also the chunk alone where it was joined (see retrieval.given_once)."""
        rows = [self.passage(row, join_max_chars) for row in range(len(self.chunks))]
        return rows + [c for c, p in zip(self.chunks, rows, strict=True) if p is not c]

    def __len__(self) -> int:
        return len(self.chunks)

    @classmethod
    def load(cls, root: Path, embed_model: str | None = None, embed_sha256: str | None = None) -> Index:
        """Load the live build under `root`, refusing one made for another embedder or format, or damaged."""
        current = root / "current"
        for attempt in range(3):
            if not current.exists():
                raise IndexStateError(f"No index found in {root}.", "Run: rag index")
            directory = current.resolve()
            try:
                return cls._load_build(directory, embed_model, embed_sha256)
            except IndexStateError:
                # A rebuild may have swapped `current` and removed this build while we read it: read the new one.
                if attempt == 2 or current.resolve() == directory:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _load_build(cls, directory: Path, embed_model: str | None, embed_sha256: str | None) -> Index:
        """Read one build directory, checking it at each step before trusting the next file."""
        manifest = _read_manifest(directory)
        verify_checksums(directory, vector_files(manifest))
        _check_embedder(manifest, embed_model, embed_sha256)
        chunks, dense, lexical = _read_parts(directory, manifest)
        try:
            _check_consistent(directory, manifest, chunks, dense)
            pieces = _load_pieces(directory, manifest, len(chunks))
        except BaseException:
            close_store(dense)
            raise
        return cls(directory, manifest, chunks, dense, lexical, pieces)

    def close(self) -> None:
        """Let go of the vector stores' connections (a no-op for FAISS; Milvus Lite lets one process at a
        time open its folder, so a process that is done with the index releases it)."""
        close_store(self._dense)
        if self.pieces is not None:
            close_store(self.pieces.dense)

    def dense_search(self, vector: np.ndarray, n: int, pieces: int = 0) -> list[tuple[int, float]]:
        """The n rows closest to `vector`, best first. A row scores the cosine of its chunk or of its
        closest sentence piece, whichever is higher; pieces are looked up `pieces` deep (0: chunks only).

        A row that only the piece search finds scores its piece; one that only the chunk search finds,
        its chunk (its pieces are all further than the `pieces`-th).
        """
        if not self.chunks:
            return []
        query = vector.reshape(1, -1).astype(np.float32)
        scores, rows = self._dense.search(query, min(n, len(self.chunks)))
        best = {int(r): float(s) for r, s in zip(rows[0], scores[0]) if r >= 0}
        if pieces > 0 and self.pieces is not None and len(self.pieces):
            scores, ids = self.pieces.dense.search(query, min(pieces, len(self.pieces)))
            for i, s in zip(ids[0], scores[0]):
                if i >= 0:
                    row = int(self.pieces.owners[i])
                    best[row] = max(best.get(row, -np.inf), float(s))
        return sorted(best.items(), key=lambda kv: -kv[1])[:n]

    def lexical_search(self, query: str, n: int) -> list[tuple[int, float]]:
        """The n rows BM25 ranks first for `query`, best first."""
        return self._lexical.search(tokenize(query), n)

    def knows(self, text: str) -> bool:
        """The passages write `text` (see LexicalIndex.knows)."""
        return self._lexical.knows(text)

    def entities(self) -> dict[str, int] | None:
        """The names mined from this build's passages (rag.index.entities); read on first use."""
        if not hasattr(self, "_entities"):
            self._entities = entities.load(self.directory)
        return self._entities

    def vectors(self) -> np.ndarray:
        """Every chunk vector in row order: what an incremental build reuses for unchanged files."""
        if not self.chunks:
            return np.zeros((0, self.manifest.dim), dtype=np.float32)
        return self._dense.get()

    def piece_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, owner rows) of every sentence piece; empty without pieces."""
        if self.pieces is None or not len(self.pieces):
            return np.zeros((0, self.manifest.dim), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return self.pieces.dense.get(), self.pieces.owners


def _read_manifest(directory: Path) -> Manifest:
    """The build's manifest, refused when unreadable or of another format version."""
    try:
        manifest = Manifest.from_json((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except Exception as exc:
        raise IndexStateError(f"The index manifest in {directory} is unreadable ({exc}).", REBUILD_HINT) from exc
    if manifest.format_version != FORMAT_VERSION:
        raise IndexStateError(
            f"The index was built in format {manifest.format_version}; this version reads format {FORMAT_VERSION}.",
            "Run: rag index",
        )
    return manifest


def _check_embedder(manifest: Manifest, embed_model: str | None, embed_sha256: str | None) -> None:
    """Vectors of another embedder would answer nonsense without an error: refuse them."""
    if embed_model and (manifest.embed_model != embed_model or (embed_sha256 and manifest.embed_sha256 != embed_sha256)):
        raise IndexStateError(
            f"The index was built with embedding model '{manifest.embed_model}', but '{embed_model}' is configured.",
            "Run: rag index  (or set embed_model back)",
        )


def _read_parts(directory: Path, manifest: Manifest) -> tuple[list[Chunk], VectorStore, LexicalIndex]:
    """Chunks, chunk vectors and BM25 state; any failure is reported as damage with the fix."""
    try:
        chunks = [Chunk.from_dict(json.loads(line)) for line in (directory / CHUNKS_FILE).open(encoding="utf-8")]
        lexical = LexicalIndex.load(directory / "bm25", len(chunks))
        dense = open_store(directory, manifest, CHUNKS)
    except RagError:
        raise
    except Exception as exc:
        raise IndexStateError(f"The index in {directory} is damaged ({exc.__class__.__name__}: {exc}).", REBUILD_HINT) from exc
    return chunks, dense, lexical


def _check_consistent(directory: Path, manifest: Manifest, chunks: list[Chunk], dense: VectorStore) -> None:
    """Vectors, chunk store and manifest describe the same rows, in the same order."""
    listed = [cid for entry in manifest.files.values() for cid in entry.chunk_ids]
    if not (dense.count() == len(chunks) == len(listed)) or dense.dim != manifest.dim:
        raise IndexStateError(
            f"The index in {directory} is inconsistent ({dense.count()} vectors of size {dense.dim}, {len(chunks)} "
            f"chunks, manifest lists {len(listed)} of size {manifest.dim}).",
            REBUILD_HINT,
        )
    if listed != [c.id for c in chunks]:
        raise IndexStateError(f"The index in {directory} is inconsistent (manifest and chunk store disagree).", REBUILD_HINT)


def _load_pieces(directory: Path, manifest: Manifest, rows: int) -> Pieces | None:
    """The sentence pieces' vectors and owners, checked against the chunk rows; None for a build without them."""
    if manifest.piece_chars <= 0:
        return None
    try:
        owners = np.load(directory / PIECE_OWNERS_FILE).astype(np.int64)
        dense = open_store(directory, manifest, PIECES)
    except RagError:
        raise
    except Exception as exc:
        raise IndexStateError(f"The index in {directory} is damaged ({exc.__class__.__name__}: {exc}).", REBUILD_HINT) from exc
    n = dense.count()
    if n != len(owners) or (len(owners) and (owners.min() < 0 or owners.max() >= rows)) or (n and dense.dim != manifest.dim):
        close_store(dense)
        raise IndexStateError(
            f"The index in {directory} is inconsistent ({n} piece vectors for {len(owners)} pieces "
            f"of {rows} chunks).",
            REBUILD_HINT,
        )
    return Pieces(dense, owners)
