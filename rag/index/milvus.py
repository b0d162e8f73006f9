"""MilvusStore: a build's vectors in a Milvus collection (the only importer of pymilvus).

Each build writes new collections, `<index prefix>_<build id>_chunks` and `..._pieces`, named in its
manifest; the manifest is swapped in atomically as for FAISS, and the collections of older builds are
dropped only after the swap (store.drop_unused), so a reader sees one build's vectors, never a mix.

`milvus_uri` ending in `.db` is Milvus Lite: a folder on local disk served inside this process, which
one process at a time may open. An http(s):// URI is a Milvus server. The collections use a FLAT index
with inner product, exact like the FAISS default, so both stores return the same rows.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.errors import IndexStateError, RagError

if TYPE_CHECKING:
    from rag.config import Settings

INSTALL_HINT = 'pip install .[scale]  (or set vector_store = "faiss")'
ROW, VECTOR = "row", "vector"
INSERT_BATCH = 2000  # rows per insert call: keeps each gRPC message well under Milvus's 64 MB limit
QUERY_BATCH = 16384  # Milvus returns at most 16,384 entities per query or search


def _pymilvus() -> Any:
    """pymilvus, or a RagError that says how to install it."""
    try:
        import pymilvus
    except ImportError as exc:
        raise RagError('vector_store = "milvus" needs pymilvus, which is not installed.', INSTALL_HINT) from exc
    return pymilvus


def is_lite(uri: str) -> bool:
    return not re.match(r"^(https?|tcp|unix)://", uri)


def resolve_uri(settings: Settings, root: Path) -> tuple[str, str]:
    """(the URI to connect to, the URI to record in the manifest). Empty milvus_uri: <index_dir>/milvus.db.
    A Lite path inside the index folder is recorded relative to it, so the folder can be moved."""
    uri = settings.milvus_uri or str(root / "milvus.db")
    if not is_lite(uri):
        return uri, uri
    path = Path(uri).expanduser().resolve()
    try:
        return str(path), path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path), str(path)


def stored_uri(stored: str, root: Path) -> str:
    """The manifest's URI made usable again: a relative Lite path is relative to the index folder."""
    if not is_lite(stored) or Path(stored).is_absolute():
        return stored
    return str((root / stored).resolve())


def index_prefix(root: Path) -> str:
    """The collections of one index folder share this prefix, so several indexes can share a Milvus server."""
    return "rag_" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]


def collection_name(root: Path, staging: Path, kind: str) -> str:
    """`rag_<prefix>_<build id>_<kind>`; the build id is the staging folder's (publish.build_id)."""
    build = staging.name.removeprefix(".").removesuffix(".partial")
    return f"{index_prefix(root)}_{re.sub(r'[^0-9A-Za-z]', '_', build)}_{kind}"


# ---------------------------------------------------------------- connections


class _Clients:
    """One client per URI per process, counted: Milvus Lite serves its folder from this process and locks it,
    so the last user to close releases it for other processes (a build after `rag serve` stops, a test)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[Any, int]] = {}

    def acquire(self, uri: str) -> Any:
        with self._lock:
            if uri in self._open:
                client, users = self._open[uri]
                self._open[uri] = (client, users + 1)
                return client
            client = _connect(uri)
            self._open[uri] = (client, 1)
            return client

    def release(self, uri: str) -> None:
        with self._lock:
            client, users = self._open.get(uri, (None, 0))
            if users > 1:
                self._open[uri] = (client, users - 1)
                return
            self._open.pop(uri, None)
        if client is not None:
            client.close()
            if is_lite(uri):
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(uri)


_CLIENTS = _Clients()


def _connect(uri: str) -> Any:
    """A MilvusClient, with the two failures people meet turned into next steps."""
    pymilvus = _pymilvus()
    if is_lite(uri):
        try:
            import milvus_lite  # noqa: F401
        except ImportError as exc:
            raise RagError(f"milvus_uri {uri} is a Milvus Lite path, but milvus-lite is not installed.",
                           INSTALL_HINT) from exc  # fmt: skip
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        # Lite's in-process gRPC server logs a traceback for the one call it does not implement
        # (AllocTimestamp, which pymilvus tries while waiting for an index and then does without).
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    try:
        return pymilvus.MilvusClient(uri=uri)
    except Exception as exc:
        if is_lite(uri):
            raise IndexStateError(
                f"Milvus Lite could not open {uri} ({exc}); another process probably has it open "
                "(Milvus Lite allows one process at a time).",
                "Stop the other `rag` process (server or build) and retry, or use a Milvus server: "
                'milvus_uri = "http://host:19530".',
            ) from exc
        raise IndexStateError(
            f"Cannot reach Milvus at {uri} ({exc}).", "Start Milvus there, or fix milvus_uri."
        ) from exc


def drop_collections(uri: str, prefix: str, keep: set[str]) -> int:
    """Drop the collections named `<prefix>_...` at `uri` except `keep`; returns how many."""
    client = _CLIENTS.acquire(uri)
    try:
        gone = [n for n in client.list_collections() if n.startswith(prefix + "_") and n not in keep]
        for name in gone:
            client.drop_collection(name)
        return len(gone)
    finally:
        _CLIENTS.release(uri)


# ---------------------------------------------------------------- the store


class MilvusStore:
    """One collection: an INT64 primary key `row` (0, 1, ...) and a FLOAT_VECTOR `vector`, FLAT index, inner product."""

    def __init__(self, uri: str, collection: str, dim: int, rows: int) -> None:
        self.uri, self.collection, self.dim = uri, collection, dim
        self._rows = rows
        self._client: Any = _CLIENTS.acquire(uri)

    @classmethod
    def create(cls, uri: str, collection: str, dim: int) -> MilvusStore:
        """A new, empty collection (one of a build being staged)."""
        store = cls(uri, collection, dim, 0)
        pymilvus, client = _pymilvus(), store._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ROW, pymilvus.DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, pymilvus.DataType.FLOAT_VECTOR, dim=dim)
        params = client.prepare_index_params()
        params.add_index(VECTOR, index_type="FLAT", metric_type="IP")
        if client.has_collection(collection):  # a leftover of a build that died with this very name
            client.drop_collection(collection)
        client.create_collection(collection, schema=schema, index_params=params)
        return store

    @classmethod
    def open(cls, uri: str, collection: str) -> MilvusStore:
        """A published build's collection, loaded for search."""
        store = cls(uri, collection, 0, 0)
        try:
            client = store._client
            if not client.has_collection(collection):
                raise ValueError(f"collection {collection} is missing at {uri}")
            fields = client.describe_collection(collection)["fields"]
            store.dim = int(next(f for f in fields if f["name"] == VECTOR)["params"]["dim"])
            client.load_collection(collection)
            store._rows = int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
        except BaseException:
            store.close()
            raise
        return store

    def add(self, vectors: np.ndarray) -> None:
        for start in range(0, len(vectors), INSERT_BATCH):
            batch = np.asarray(vectors[start : start + INSERT_BATCH], dtype=np.float32)
            self._client.insert(
                self.collection, [{ROW: self._rows + i, VECTOR: v.tolist()} for i, v in enumerate(batch)]
            )
            self._rows += len(batch)

    def finish(self) -> None:
        """Seal what was inserted (flush) and load it for search, before the manifest naming it is written."""
        self._client.flush(self.collection)
        self._client.load_collection(self.collection)

    def search(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        n = min(n, QUERY_BATCH)
        scores, rows = np.full((1, n), -np.inf, dtype=np.float32), np.full((1, n), -1, dtype=np.int64)
        if self._rows and n:
            found = self._client.search(self.collection, data=[np.asarray(query[0], dtype=np.float32).tolist()],
                                        limit=n, search_params={"metric_type": "IP"}, output_fields=[ROW])[0]  # fmt: skip
            for i, hit in enumerate(found):
                scores[0, i], rows[0, i] = hit["distance"], (hit[ROW] if ROW in hit else hit["id"])
        return scores, rows

    def get(self, rows: Sequence[int] | None = None) -> np.ndarray:
        wanted = np.arange(self._rows) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        unique = np.unique(wanted)
        found: dict[int, list[float]] = {}
        for start in range(0, len(unique), QUERY_BATCH):
            ids = unique[start : start + QUERY_BATCH].tolist()
            for entity in self._client.get(self.collection, ids=ids, output_fields=[VECTOR]):
                found[int(entity[ROW])] = entity[VECTOR]
        for i, row in enumerate(wanted.tolist()):
            if row not in found:
                raise IndexStateError(f"Milvus collection {self.collection} lacks row {row}.", "Run: rag index --full")
            out[i] = found[row]
        return out

    def count(self) -> int:
        return self._rows

    def close(self) -> None:
        """Release this store's share of the connection (Lite: the folder's lock, with the last user)."""
        if self._client is not None:
            self._client = None
            _CLIENTS.release(self.uri)
