"""The vector-store seam: where a build's chunk vectors and sentence-piece vectors live.

Each build has two stores, `chunks` (one vector per chunk row) and `pieces` (one per sentence
piece; pieces.npy keeps the chunk row each belongs to). Row i of a store is the i-th vector added;
rows are never rewritten, a build writes new stores, so the index's crash safety (publish.py) covers
the vectors too. Two implementations, chosen by the `vector_store` setting:

- FaissStore (default): a flat inner-product FAISS file inside the build folder (dense.faiss,
  pieces.faiss), exact search, nothing to run.
- MilvusStore (rag/index/milvus.py, `pip install .[scale]`): a Milvus collection per build and kind,
  named in the manifest; Milvus Lite (a local .db folder) or a Milvus server.

A build's manifest says which store holds its vectors (`Manifest.vector_store`, absent for FAISS,
so FAISS indexes are byte for byte what they were before the seam).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.index.manifest import DENSE_FILE, PIECES_FILE, Manifest

if TYPE_CHECKING:
    from rag.config import Settings

CHUNKS, PIECES = "chunks", "pieces"
FAISS_FILES = {CHUNKS: DENSE_FILE, PIECES: PIECES_FILE}


class VectorStore(Protocol):
    """One build's vectors of one kind, normalized float32; row i is the i-th vector added.

    Four methods in txtai's manner (add, search, get, count); deleting is per build (`drop`), never per
    row, because a build never changes the stores of another.
    """

    dim: int

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (n, dim); their rows are count() .. count() + n - 1."""

    def search(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n rows of highest inner product with `query` (1, dim): (scores, rows), each (1, n),
        best first; FAISS-style, so rows of -1 pad a store smaller than n."""
        ...

    def get(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """The vectors of `rows` (all rows when None), in that order: what an incremental build reuses."""
        ...

    def count(self) -> int:
        """How many rows the store holds."""
        ...


class FaissStore:
    """A flat inner-product FAISS index (exact search), saved as one file of the build folder."""

    def __init__(self, index: Any) -> None:
        self.index = index  # a faiss.IndexFlatIP
        self.dim = int(index.d)

    @classmethod
    def empty(cls, dim: int) -> FaissStore:
        import faiss

        return cls(faiss.IndexFlatIP(dim))

    @classmethod
    def read(cls, path: Path) -> FaissStore:
        import faiss

        return cls(faiss.read_index(str(path)))

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    def add(self, vectors: np.ndarray) -> None:
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(query, dtype=np.float32), n)  # type: ignore[no-any-return]

    def get(self, rows: Sequence[int] | None = None) -> np.ndarray:
        if rows is None:
            return self.index.reconstruct_n(0, self.index.ntotal)  # type: ignore[no-any-return]
        if not len(rows):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))  # type: ignore[no-any-return]

    def count(self) -> int:
        return int(self.index.ntotal)


# ---------------------------------------------------------------- a build's stores


class BuildStores:
    """The writable stores of the build being staged, and what its manifest must record about them."""

    def __init__(self, kind: str, stores: dict[str, Any], record: dict[str, str], staging: Path) -> None:
        self.kind = kind
        self.stores = stores
        self.record = record  # Manifest.vector_store: {} for FAISS
        self._staging = staging

    def finish(self) -> None:
        """Make the vectors durable before the manifest that names them is written (FAISS: the files)."""
        for name, store in self.stores.items():
            if isinstance(store, FaissStore):
                store.save(self._staging / FAISS_FILES[name])
            else:
                store.finish()


def create_stores(settings: Settings, root: Path, staging: Path, dim: int, kinds: Sequence[str]) -> BuildStores:
    """Empty stores of the configured kind for a new build, named after it."""
    if settings.vector_store == "faiss":
        return BuildStores("faiss", {k: FaissStore.empty(dim) for k in kinds}, {}, staging)
    from rag.index import milvus

    uri, stored = milvus.resolve_uri(settings, root)
    stores = {k: milvus.MilvusStore.create(uri, milvus.collection_name(root, staging, k), dim) for k in kinds}
    record = {"kind": "milvus", "uri": stored, **{k: s.collection for k, s in stores.items()}}
    return BuildStores("milvus", stores, record, staging)


def vector_files(manifest: Manifest) -> frozenset[str]:
    """The vector files SHA256SUMS must list for this build (none when a database holds the vectors)."""
    return frozenset() if manifest.vector_store else frozenset({DENSE_FILE})


def open_store(directory: Path, manifest: Manifest, kind: str) -> VectorStore:
    """A published build's store of `kind`; missing or unreadable ones raise (the reader reports damage)."""
    if not manifest.vector_store:
        return FaissStore.read(directory / FAISS_FILES[kind])
    from rag.index import milvus

    record = manifest.vector_store
    if record.get("kind") != "milvus" or kind not in record:
        raise ValueError(f"the manifest names an unknown vector store {record}")
    return milvus.MilvusStore.open(milvus.stored_uri(record["uri"], directory.parent.parent), record[kind])


def close_store(store: VectorStore) -> None:
    """Let go of a store's connection (Milvus Lite lets one process at a time open its folder)."""
    close = getattr(store, "close", None)
    if close is not None:
        close()


def drop_unused(root: Path, settings: Settings | None, live: Manifest | None, previous: Manifest | None = None) -> int:
    """Drop this index's Milvus collections that the live build does not name: those of builds that were
    swapped out or never swapped in. Looks where the live build, the replaced one (`previous`) and the
    settings put vectors; connects only when one of them is Milvus, so FAISS users never import pymilvus."""
    stored = [m.vector_store["uri"] for m in (live, previous) if m is not None and m.vector_store.get("uri")]
    configured = settings is not None and settings.vector_store == "milvus"
    if not stored and not configured:
        return 0
    from rag.index import milvus

    uris = {milvus.stored_uri(uri, root) for uri in stored}
    if configured:
        assert settings is not None
        uris.add(milvus.resolve_uri(settings, root)[0])
    keep = {v for k, v in (live.vector_store if live else {}).items() if k in (CHUNKS, PIECES)}
    return sum(milvus.drop_collections(uri, milvus.index_prefix(root), keep) for uri in sorted(uris))
