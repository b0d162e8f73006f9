"""The on-disk index: FAISS vectors + chunk store + BM25 + manifest.

Layout under the index directory:

    current -> builds/20261123T120000-1234   (symlink, swapped atomically)
    builds/<id>/manifest.json                format version, embedder, chunker, files
    builds/<id>/chunks.jsonl                 one Chunk per line, row order = vector order
    builds/<id>/dense.faiss                  inner-product index of normalized vectors
    builds/<id>/bm25/                        bm25s state over jieba tokens
    .lock                                    held while a build runs

A build writes a complete new directory, then swaps the `current` link with
one rename, so a crash at any point leaves the previous index serving.
Updates are incremental: files whose sha256 matches the manifest keep their
chunks and vectors; only new and changed files are read and embedded.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.chunking import ChunkerSettings, chunk_document, search_text
from rag.errors import DocumentError, IndexStateError
from rag.lexical import LexicalIndex, tokenize
from rag.loaders import file_sha256, iter_corpus, load_file
from rag.schema import Chunk

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.embedding import Embedder

FORMAT_VERSION = 1
REBUILD_HINT = "Run: rag index --full"


@dataclass
class FileEntry:
    sha256: str
    title: str
    chunk_ids: list[str]
    indexed_at: str


@dataclass
class Manifest:
    format_version: int
    embed_model: str
    embed_sha256: str
    dim: int
    chunker: dict[str, Any]
    files: dict[str, FileEntry]
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> {sha256, max_bytes, reason}
    built_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["files"] = {k: FileEntry(**v) for k, v in data["files"].items()}
        return cls(**data)


@dataclass
class BuildReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason
    documents: int = 0
    chunks: int = 0
    embedded: int = 0  # chunks embedded in this run
    seconds: float = 0.0
    wrote: bool = False  # False when nothing changed

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def _skip_key(sha256: str, max_bytes: int, reason: str) -> dict[str, str]:
    """A skipped file is retried when its content or the size limit changes."""
    return {"sha256": sha256, "max_bytes": str(max_bytes), "reason": reason}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- loading


class Index:
    """A loaded, read-only index."""

    def __init__(self, directory: Path, manifest: Manifest, chunks: list[Chunk], dense, lexical: LexicalIndex):  # type: ignore[no-untyped-def]
        self.directory = directory
        self.manifest = manifest
        self.chunks = chunks
        self._dense = dense
        self._lexical = lexical

    def __len__(self) -> int:
        return len(self.chunks)

    @classmethod
    def load(cls, root: Path, embed_model: str | None = None, embed_sha256: str | None = None) -> Index:
        """Load the live build under `root`, refusing one made for another embedder or format."""
        import faiss

        current = root / "current"
        if not current.exists():
            raise IndexStateError(f"No index found in {root}.", "Run: rag index")
        directory = current.resolve()
        try:
            manifest = Manifest.from_json((directory / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise IndexStateError(f"The index manifest in {directory} is unreadable ({exc}).", REBUILD_HINT) from exc
        if manifest.format_version != FORMAT_VERSION:
            raise IndexStateError(
                f"The index was built in format {manifest.format_version}; this version reads format {FORMAT_VERSION}.",
                "Run: rag index",
            )
        if embed_model and (manifest.embed_model != embed_model or (embed_sha256 and manifest.embed_sha256 != embed_sha256)):
            raise IndexStateError(
                f"The index was built with embedding model '{manifest.embed_model}', but '{embed_model}' is configured.",
                "Run: rag index  (or set embed_model back)",
            )
        try:
            chunks = [Chunk.from_dict(json.loads(line)) for line in (directory / "chunks.jsonl").open(encoding="utf-8")]
            dense = faiss.read_index(str(directory / "dense.faiss"))
            lexical = LexicalIndex.load(directory / "bm25", len(chunks))
        except Exception as exc:  # noqa: BLE001 - any failure here means a damaged index
            raise IndexStateError(f"The index in {directory} is damaged ({exc.__class__.__name__}: {exc}).", REBUILD_HINT) from exc
        expected = sum(len(f.chunk_ids) for f in manifest.files.values())
        if not (dense.ntotal == len(chunks) == expected) or (chunks and dense.d != manifest.dim):
            raise IndexStateError(
                f"The index in {directory} is inconsistent ({dense.ntotal} vectors, {len(chunks)} chunks, "
                f"manifest lists {expected}).",
                REBUILD_HINT,
            )
        return cls(directory, manifest, chunks, dense, lexical)

    def dense_search(self, vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        if not self.chunks:
            return []
        scores, rows = self._dense.search(vector.reshape(1, -1).astype(np.float32), min(n, len(self.chunks)))
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]

    def lexical_search(self, query: str, n: int) -> list[tuple[int, float]]:
        return self._lexical.search(tokenize(query), n)

    def vectors(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros((0, self.manifest.dim), dtype=np.float32)
        return self._dense.reconstruct_n(0, self._dense.ntotal)


def index_exists(root: Path) -> bool:
    return (root / "current").exists()


# ---------------------------------------------------------------- building


class BuildLock:
    """One build at a time. flock is released by the OS when a holder dies, so a
    dead process never leaves a lock behind; the info file only names the holder."""

    def __init__(self, root: Path, wait: bool = False) -> None:
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(root / ".lock"))
        self._info = root / ".lock.info"
        self._wait = wait

    def __enter__(self) -> BuildLock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=-1 if self._wait else 0)
        except Timeout:
            holder = self._info.read_text() if self._info.exists() else "another process"
            raise IndexStateError(
                f"Another index build is running ({holder.strip()}).",
                "Wait for it to finish, or run: rag index --wait",
            ) from None
        self._info.write_text(f"pid {os.getpid()}, started {_now()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._info.unlink(missing_ok=True)
        self._lock.release()


def _load_previous(root: Path, manifest_check: Callable[[Manifest], bool]) -> Index | None:
    if not index_exists(root):
        return None
    try:
        previous = Index.load(root)
    except IndexStateError:
        return None  # a damaged index is rebuilt from scratch
    return previous if manifest_check(previous.manifest) else None


def build(
    settings: Settings,
    embedder_factory: Callable[[], Embedder],
    embed_sha256: str,
    full: bool = False,
    wait: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> BuildReport:
    """Bring the index in line with the corpus; returns what changed.

    `embedder_factory` is only called when there is something to embed, so a
    no-change run never loads the model.
    """
    t0 = time.perf_counter()
    root, corpus = Path(settings.index_dir), Path(settings.corpus_dir)
    chunker = ChunkerSettings(settings.chunk_size, settings.chunk_overlap)
    if not corpus.is_dir():
        raise IndexStateError(f"Corpus folder {corpus} does not exist.", "Create it and put .txt/.md/.pdf files in it.")

    report = BuildReport()
    with BuildLock(root, wait=wait):
        def compatible(m: Manifest) -> bool:
            return (
                m.format_version == FORMAT_VERSION
                and m.embed_model == settings.embed_model
                and m.embed_sha256 == embed_sha256
                and m.chunker == chunker.as_dict()
            )

        previous = None if full else _load_previous(root, compatible)
        old_files = previous.manifest.files if previous else {}
        old_skipped = previous.manifest.skipped if previous else {}
        max_bytes = int(settings.max_file_mb * 1e6)

        # 1. What changed?
        current: dict[str, tuple[Path, str]] = {}
        for path, rel in iter_corpus(corpus):
            try:
                current[rel] = (path, file_sha256(path))
            except OSError as exc:
                report.skipped[rel] = f"cannot be read: {exc}"
        to_read: list[str] = []
        for rel, (_, sha) in current.items():
            if rel in old_files and old_files[rel].sha256 == sha:
                report.unchanged.append(rel)
            elif rel in old_skipped and old_skipped[rel] == _skip_key(sha, max_bytes, old_skipped[rel]["reason"]):
                report.skipped[rel] = old_skipped[rel]["reason"]
            else:
                (report.updated if rel in old_files else report.added).append(rel)
                to_read.append(rel)
        report.removed = sorted(set(old_files) - set(current))
        newly_skipped_same = set(report.skipped) == set(old_skipped)
        if previous and not report.changed and newly_skipped_same and not to_read:
            report.documents, report.chunks = len(old_files), len(previous.chunks)
            report.seconds = time.perf_counter() - t0
            return report

        # 2. Read and chunk new and changed files; a bad file is skipped, never fatal.
        new_chunks: dict[str, list[Chunk]] = {}
        titles: dict[str, str] = {}
        for i, rel in enumerate(to_read):
            path, sha = current[rel]
            if on_progress:
                on_progress("read", i, len(to_read))
            try:
                doc = load_file(path, rel, max_bytes=max_bytes, sha256=sha)
                chunks = chunk_document(doc, chunker)
                if not chunks:
                    raise DocumentError(f"{rel} has no text to index.", "")
            except DocumentError as exc:
                report.skipped[rel] = exc.message
                for bucket in (report.added, report.updated):
                    if rel in bucket:
                        bucket.remove(rel)
                if rel in old_files:
                    report.removed.append(rel)  # its old chunks go; the broken new version is reported
                continue
            new_chunks[rel], titles[rel] = chunks, doc.title

        # 3. Embed only what is new.
        texts = [search_text(c) for rel in new_chunks for c in new_chunks[rel]]
        new_vectors = np.zeros((0, 0), dtype=np.float32)
        dim = previous.manifest.dim if previous else 0
        if texts:
            embedder = embedder_factory()
            dim = embedder.dim
            done = 0

            def progress(n: int) -> None:
                nonlocal done
                done += n
                if on_progress:
                    on_progress("embed", done, len(texts))

            new_vectors = embedder.encode_documents(texts, progress=progress)
            report.embedded = len(texts)
        elif not previous:
            embedder = embedder_factory()  # an empty first build still records the dimension
            dim = embedder.dim

        # 4. Assemble rows in corpus order: reused rows from the old index, new rows after embedding.
        old_rows = {c.id: i for i, c in enumerate(previous.chunks)} if previous else {}
        old_vectors = previous.vectors() if previous and report.unchanged else None
        chunks_out: list[Chunk] = []
        vector_parts: list[np.ndarray] = []
        files: dict[str, FileEntry] = {}
        new_offset = 0
        for rel in current:  # iter_corpus order: the order new chunks were embedded in
            if rel in report.unchanged and previous is not None and old_vectors is not None:
                entry = old_files[rel]
                rows = [old_rows[cid] for cid in entry.chunk_ids]
                chunks_out.extend(previous.chunks[r] for r in rows)
                vector_parts.append(old_vectors[rows])
                files[rel] = entry
            elif rel in new_chunks:
                chunks = new_chunks[rel]
                chunks_out.extend(chunks)
                vector_parts.append(new_vectors[new_offset : new_offset + len(chunks)])
                new_offset += len(chunks)
                files[rel] = FileEntry(current[rel][1], titles[rel], [c.id for c in chunks], _now())
        vectors = np.concatenate(vector_parts) if vector_parts else np.zeros((0, dim), dtype=np.float32)

        manifest = Manifest(
            format_version=FORMAT_VERSION,
            embed_model=settings.embed_model,
            embed_sha256=embed_sha256,
            dim=dim,
            chunker=chunker.as_dict(),
            files=files,
            skipped={rel: _skip_key(current[rel][1] if rel in current else "", max_bytes, why)
                     for rel, why in report.skipped.items()},  # fmt: skip
            built_at=_now(),
        )
        if on_progress:
            on_progress("write", 0, 1)
        _write_build(root, manifest, chunks_out, vectors)
        report.documents, report.chunks, report.wrote = len(files), len(chunks_out), True
        report.seconds = time.perf_counter() - t0
        return report


def _write_build(root: Path, manifest: Manifest, chunks: list[Chunk], vectors: np.ndarray) -> None:
    import faiss

    builds = root / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    build_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{os.getpid()}"
    staging = builds / f".{build_id}.partial"
    staging.mkdir()

    with (staging / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for c in chunks:
            fh.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
    dense = faiss.IndexFlatIP(manifest.dim)
    if len(vectors):
        dense.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(dense, str(staging / "dense.faiss"))
    LexicalIndex.build([tokenize(search_text(c)) for c in chunks]).save(staging / "bm25")
    # The manifest goes last: a build directory without one is never valid.
    (staging / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    _fsync_tree(staging)

    final = builds / build_id
    staging.rename(final)
    link_tmp = root / f".current.{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(Path("builds") / build_id)
    os.replace(link_tmp, root / "current")  # the atomic swap
    _fsync_dir(root)
    _remove_old_builds(builds, keep=final)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _remove_old_builds(builds: Path, keep: Path) -> None:
    # Readers that loaded an older build keep their open files; only the directory goes.
    for d in builds.iterdir():
        if d != keep:
            shutil.rmtree(d, ignore_errors=True)
