"""The on-disk index: FAISS vectors + chunk store + BM25 + manifest.

Layout under the index directory:

    current -> builds/20261123T120000-1234   (symlink, swapped atomically)
    builds/<id>/manifest.json                format version, embedder, chunker, files
    builds/<id>/chunks.jsonl                 one Chunk per line, row order = vector order
    builds/<id>/dense.faiss                  inner-product index of normalized vectors
    builds/<id>/pieces.faiss, pieces.npy     vectors of each chunk's sentence pieces, and the row each belongs to
    builds/<id>/bm25/                        bm25s state over jieba tokens
    builds/<id>/SHA256SUMS                   every file's sha256, written last (`sha256sum -c` format)
    .lock, .lock.info                        flock held while a build runs; who holds it

A build writes a complete new directory, then swaps the `current` link with
one rename, so a crash at any point leaves the previous index serving.
Loading checks SHA256SUMS before FAISS sees a byte, so a truncated or edited
file is reported with the fix (`rag index --full`) instead of crashing.
Updates are incremental: files whose sha256 matches the manifest keep their
chunks and vectors (and their pieces'); only new and changed files are read and embedded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from rag.ingest.chunking import ChunkerSettings, chunk_document, following, passage, piece_texts, search_text
from rag.errors import DocumentError, IndexStateError
from rag.index.lexical import LexicalIndex, tokenize
from rag.ingest.loaders import check_path, file_sha256, iter_corpus, load_file, printable_name
from rag.schema import Chunk

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index.embedding import Embedder

FORMAT_VERSION = 2  # 2: BM25 tokens include Chinese character bigrams
REBUILD_HINT = "Run: rag index --full"
CHECKSUMS = "SHA256SUMS"
# The vector files of a build; rag_eval/rgb.py writes its pooled index in the same layout.
DENSE_FILE = "dense.faiss"
PIECES_FILE = "pieces.faiss"
PIECE_OWNERS_FILE = "pieces.npy"
# Crash tests set this to a stage name (see _pause_point); unset in normal use.
PAUSE_ENV = "RAG_INDEX_PAUSE_AT"


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
    piece_chars: int = 0  # the chunks' sentence pieces were embedded too (pieces.faiss); 0: none

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
    pieces_embedded: int = 0  # and their sentence pieces
    seconds: float = 0.0
    wrote: bool = False  # False when nothing changed
    notes: list[str] = field(default_factory=list)  # things the user should know (a stale lock, a damaged index)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> list[str]:
        """What changed and how long it took, as lines for a person (skipped files and notes come separately).

        Example: ['Updated the index in 2.1 s: 6 documents, 130 chunks (embedded 14).',
                  '  added       1  new.md', '  updated     0', '  removed     0', '  unchanged   5']
        """
        if not self.wrote:
            return [f"No changes: {self.documents} documents, {self.chunks} chunks (checked in {self.seconds:.2f} s)."]
        head = f"Updated the index in {self.seconds:.1f} s: {self.documents} documents, {self.chunks} chunks"
        pieces = f", and {self.pieces_embedded} sentence pieces" if self.pieces_embedded else ""
        lines = [f"{head} (embedded {self.embedded}{pieces})."]
        for label, paths in (("added", self.added), ("updated", self.updated), ("removed", self.removed)):
            shown = ", ".join(paths[:10]) + (f", … and {len(paths) - 10} more" if len(paths) > 10 else "")
            lines.append(f"  {label:<9} {len(paths):>3}  {shown}".rstrip())
        lines.append(f"  {'unchanged':<9} {len(self.unchanged):>3}")
        return lines


def _skip_key(sha256: str, max_bytes: int, reason: str) -> dict[str, str]:
    """A skipped file is retried when its content or the size limit changes."""
    return {"sha256": sha256, "max_bytes": str(max_bytes), "reason": reason}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- loading


@dataclass
class Pieces:
    """Vectors of the chunks' sentence pieces (chunking.piece_texts) and the row of the chunk each belongs to."""

    dense: Any  # a faiss index
    owners: np.ndarray  # int64, one row per piece vector

    def __len__(self) -> int:
        return int(self.dense.ntotal)


class Index:
    """A loaded, read-only index."""

    def __init__(self, directory: Path, manifest: Manifest, chunks: list[Chunk], dense, lexical: LexicalIndex,  # type: ignore[no-untyped-def]
                 pieces: Pieces | None = None) -> None:  # fmt: skip
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
        import faiss

        try:
            manifest = Manifest.from_json((directory / "manifest.json").read_text(encoding="utf-8"))
        except Exception as exc:
            raise IndexStateError(f"The index manifest in {directory} is unreadable ({exc}).", REBUILD_HINT) from exc
        if manifest.format_version != FORMAT_VERSION:
            raise IndexStateError(
                f"The index was built in format {manifest.format_version}; this version reads format {FORMAT_VERSION}.",
                "Run: rag index",
            )
        _verify_checksums(directory)
        if embed_model and (manifest.embed_model != embed_model or (embed_sha256 and manifest.embed_sha256 != embed_sha256)):
            raise IndexStateError(
                f"The index was built with embedding model '{manifest.embed_model}', but '{embed_model}' is configured.",
                "Run: rag index  (or set embed_model back)",
            )
        try:
            chunks = [Chunk.from_dict(json.loads(line)) for line in (directory / "chunks.jsonl").open(encoding="utf-8")]
            dense = faiss.read_index(str(directory / DENSE_FILE))
            lexical = LexicalIndex.load(directory / "bm25", len(chunks))
        except Exception as exc:
            raise IndexStateError(f"The index in {directory} is damaged ({exc.__class__.__name__}: {exc}).", REBUILD_HINT) from exc
        listed = [cid for entry in manifest.files.values() for cid in entry.chunk_ids]
        if not (dense.ntotal == len(chunks) == len(listed)) or dense.d != manifest.dim:
            raise IndexStateError(
                f"The index in {directory} is inconsistent ({dense.ntotal} vectors of size {dense.d}, {len(chunks)} "
                f"chunks, manifest lists {len(listed)} of size {manifest.dim}).",
                REBUILD_HINT,
            )
        if listed != [c.id for c in chunks]:
            raise IndexStateError(f"The index in {directory} is inconsistent (manifest and chunk store disagree).", REBUILD_HINT)
        return cls(directory, manifest, chunks, dense, lexical, _load_pieces(directory, manifest, len(chunks)))

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
        return self._lexical.search(tokenize(query), n)

    def knows(self, text: str) -> bool:
        """The passages write `text` (see LexicalIndex.knows)."""
        return self._lexical.knows(text)

    def vectors(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros((0, self.manifest.dim), dtype=np.float32)
        return self._dense.reconstruct_n(0, self._dense.ntotal)

    def piece_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, owner rows) of every sentence piece; empty without pieces."""
        if self.pieces is None or not len(self.pieces):
            return np.zeros((0, self.manifest.dim), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return self.pieces.dense.reconstruct_n(0, len(self.pieces)), self.pieces.owners


def _load_pieces(directory: Path, manifest: Manifest, rows: int) -> Pieces | None:
    if manifest.piece_chars <= 0:
        return None
    import faiss

    try:
        dense = faiss.read_index(str(directory / PIECES_FILE))
        owners = np.load(directory / PIECE_OWNERS_FILE).astype(np.int64)
    except Exception as exc:
        raise IndexStateError(f"The index in {directory} is damaged ({exc.__class__.__name__}: {exc}).", REBUILD_HINT) from exc
    if dense.ntotal != len(owners) or (len(owners) and (owners.min() < 0 or owners.max() >= rows)) or (
        dense.ntotal and dense.d != manifest.dim
    ):
        raise IndexStateError(
            f"The index in {directory} is inconsistent ({dense.ntotal} piece vectors for {len(owners)} pieces "
            f"of {rows} chunks).",
            REBUILD_HINT,
        )
    return Pieces(dense, owners)


def index_exists(root: Path) -> bool:
    return (root / "current").exists()


def _write_checksums(directory: Path) -> None:
    lines = [
        f"{file_sha256(p)}  {p.relative_to(directory).as_posix()}\n"
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    ]
    (directory / CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def _verify_checksums(directory: Path) -> None:
    """Every file listed in SHA256SUMS is present and unchanged. Builds made before checksums pass unchecked."""
    sums = directory / CHECKSUMS
    if not sums.exists():
        return

    def damaged(what: str) -> IndexStateError:
        return IndexStateError(f"The index in {directory} is damaged: {what}.", REBUILD_HINT)

    listed: dict[str, str] = {}  # file name -> sha256
    try:
        for line in sums.read_text(encoding="utf-8").splitlines():
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                raise ValueError(f"bad line {line[:80]!r}")
            listed[name] = digest
    except (OSError, ValueError) as exc:
        raise damaged(f"{CHECKSUMS} is unreadable ({exc})") from exc
    for name in sorted({"manifest.json", "chunks.jsonl", DENSE_FILE} - set(listed)):
        raise damaged(f"{CHECKSUMS} does not list {name}")
    for name, digest in listed.items():
        path = directory / name
        try:
            if ".." in Path(name).parts or not path.is_file():
                raise damaged(f"{name} is missing")
            if file_sha256(path) != digest:
                raise damaged(f"{name} was truncated or changed after the build (its sha256 differs from {CHECKSUMS})")
        except OSError as exc:
            raise damaged(f"{name} is unreadable ({exc})") from exc


# ---------------------------------------------------------------- building


class BuildLock:
    """One build at a time.

    flock is released by the OS when its holder dies, so a killed build never
    blocks the next one. The info file names the holder; finding it already
    there on entry means the last holder died mid-build (a stale lock), which
    `stale_holder` reports and the entry clears.
    """

    def __init__(self, root: Path, wait: bool = False) -> None:
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(root / ".lock"))
        self._info = root / ".lock.info"
        self._wait = wait
        self.stale_holder: str | None = None

    def __enter__(self) -> Self:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=-1 if self._wait else 0)
        except Timeout:
            raise IndexStateError(
                f"Another index build is running ({_read_holder(self._info)}).",
                "Wait for it to finish, or run: rag index --wait",
            ) from None
        if self._info.exists():
            self.stale_holder = _read_holder(self._info)
        self._info.write_text(f"pid {os.getpid()}, started {_now()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._info.unlink(missing_ok=True)
        self._lock.release()


def _read_holder(info: Path) -> str:
    try:
        return info.read_text().strip() or "another process"
    except OSError:
        return "another process"


def lock_holder(root: Path) -> str | None:
    """Who holds the build lock of the index in `root` ('pid 123, started ...'), or None when it is free."""
    from filelock import FileLock, Timeout

    if not (root / ".lock").exists():
        return None
    probe = FileLock(str(root / ".lock"))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return _read_holder(root / ".lock.info")
    probe.release()
    return None


def _clear_leftovers(root: Path) -> int:
    """Remove what interrupted builds left: staging folders, builds never swapped in, temporary links.

    Call with the build lock held. Returns how many builds were removed.
    """
    link = root / "current"
    live = link.resolve() if link.exists() else None
    removed = 0
    builds = root / "builds"
    if builds.is_dir():
        for d in builds.iterdir():
            if d.resolve() == live:
                continue
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
            removed += 1
    for tmp in root.glob(".current.*"):
        tmp.unlink(missing_ok=True)
    return removed


def _pause_point(stage: str) -> None:
    """Crash-test hook: with RAG_INDEX_PAUSE_AT=<stage> the process stops itself here (SIGSTOP).

    A test then kills it at exactly this point; SIGCONT would resume the build unchanged.
    Stages: embedded, staged, renamed, swapped.
    """
    if os.environ.get(PAUSE_ENV) == stage:
        os.kill(os.getpid(), signal.SIGSTOP)


def _load_previous(root: Path, compatible: Callable[[Manifest], bool]) -> tuple[Index | None, str | None]:
    """The live index if it can be reused, else None and why not (None when there is none)."""
    if not index_exists(root):
        return None, None
    try:
        previous = Index.load(root)
    except IndexStateError as exc:
        return None, f"The previous index could not be used ({exc.message}); rebuilt it from scratch."
    if not compatible(previous.manifest):
        return None, "The previous index was made with another embedding model or chunking; rebuilt it from scratch."
    return previous, None


def _reason(exc: DocumentError) -> str:
    return f"{exc.message} {exc.hint}".strip()


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
    with BuildLock(root, wait=wait) as lock:
        if lock.stale_holder:
            report.notes.append(
                f"Cleared a stale lock: the build by {lock.stale_holder} stopped before finishing. "
                "Its unfinished work was removed; the index in use is complete."
            )
        leftovers = _clear_leftovers(root)
        if leftovers and not lock.stale_holder:
            report.notes.append(f"Removed {leftovers} unfinished build folder(s) left by an interrupted run.")

        def compatible(m: Manifest) -> bool:
            return (
                m.format_version == FORMAT_VERSION
                and m.embed_model == settings.embed_model
                and m.embed_sha256 == embed_sha256
                and m.chunker == chunker.as_dict()
                and m.piece_chars == settings.piece_chars
            )

        previous, why_not = (None, None) if full else _load_previous(root, compatible)
        if why_not:
            report.notes.append(why_not)
        old_files = previous.manifest.files if previous else {}
        old_skipped = previous.manifest.skipped if previous else {}
        max_bytes = int(settings.max_file_mb * 1e6)

        # 1. What changed? Hashing reads each file in 1 MB blocks, so memory stays flat for any size.
        current: dict[str, tuple[Path, str]] = {}
        for path, rel in iter_corpus(corpus):
            name = printable_name(rel)
            try:
                check_path(path, rel, corpus)
                current[name] = (path, file_sha256(path))
            except DocumentError as exc:
                report.skipped[name] = _reason(exc)
            except OSError as exc:
                report.skipped[name] = f"{name} cannot be read ({exc.strerror or exc}). Check its permissions."
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
        if previous and not report.changed and set(report.skipped) == set(old_skipped):
            report.documents, report.chunks = len(old_files), len(previous.chunks)
            report.seconds = time.perf_counter() - t0
            return report

        # 2. Read and chunk new and changed files; a bad file is skipped, never fatal.
        new_chunks: dict[str, list[Chunk]] = {}
        read: dict[str, tuple[str, str]] = {}  # path -> (title, sha256 of the bytes actually read)
        for i, rel in enumerate(to_read):
            if on_progress:
                on_progress("read", i, len(to_read))
            try:
                doc = load_file(current[rel][0], rel, max_bytes=max_bytes)
                chunks = chunk_document(doc, chunker)
                if not chunks:
                    raise DocumentError(f"{rel} has no text to index.", "Add text to the file or remove it.")
            except (DocumentError, OSError, MemoryError) as exc:
                if isinstance(exc, DocumentError):
                    report.skipped[rel] = _reason(exc)
                elif isinstance(exc, MemoryError):
                    report.skipped[rel] = f"{rel} is too large to read into memory. Split it or lower max_file_mb."
                else:
                    report.skipped[rel] = f"{rel} cannot be read ({exc.strerror or exc}). Check its permissions."
                for bucket in (report.added, report.updated):
                    if rel in bucket:
                        bucket.remove(rel)
                if rel in old_files:
                    report.removed.append(rel)  # its old chunks go; the broken new version is reported
                continue
            new_chunks[rel], read[rel] = chunks, (doc.title, doc.sha256)
        if on_progress and to_read:
            on_progress("read", len(to_read), len(to_read))

        # 3. Embed only what is new: the chunks, then their sentence pieces.
        texts = [search_text(c) for rel in new_chunks for c in new_chunks[rel]]
        pieces_of = [piece_texts(c, settings.piece_chars) for rel in new_chunks for c in new_chunks[rel]]
        piece_list = [t for texts_of_chunk in pieces_of for t in texts_of_chunk]
        new_vectors = np.zeros((0, 0), dtype=np.float32)
        new_piece_vectors = np.zeros((0, 0), dtype=np.float32)
        dim = previous.manifest.dim if previous else 0
        if texts:
            embedder = embedder_factory()
            dim = embedder.dim
            done, total = 0, len(texts) + len(piece_list)

            def progress(n: int) -> None:
                nonlocal done
                done += n
                if on_progress:
                    on_progress("embed", done, total)

            new_vectors = embedder.encode_documents(texts, progress=progress)
            if piece_list:
                new_piece_vectors = embedder.encode_documents(piece_list, progress=progress)
            report.embedded, report.pieces_embedded = len(texts), len(piece_list)
        elif not previous:
            embedder = embedder_factory()  # an empty first build still records the dimension
            dim = embedder.dim
        _pause_point("embedded")

        # 4. Assemble rows in corpus order: reused rows from the old index, new rows after embedding.
        #    The order (and so every row) is the same as a full rebuild of the same corpus would give.
        old_rows = {c.id: i for i, c in enumerate(previous.chunks)} if previous else {}
        old_vectors = previous.vectors() if previous and report.unchanged else None
        old_piece_vectors, old_owners = previous.piece_vectors() if previous and report.unchanged else (None, None)
        old_pieces_of: dict[int, list[int]] = {}  # old row -> its pieces, in order
        for i, row in enumerate(old_owners if old_owners is not None else []):
            old_pieces_of.setdefault(int(row), []).append(i)
        new_piece_starts = np.cumsum([0, *(len(p) for p in pieces_of)])
        chunks_out: list[Chunk] = []
        vector_parts: list[np.ndarray] = []
        piece_parts: list[np.ndarray] = []
        piece_owners: list[int] = []  # the new row of each piece vector
        files: dict[str, FileEntry] = {}
        new_offset = 0
        for rel in current:  # iter_corpus order: the order new chunks were embedded in
            if rel in report.unchanged and previous is not None and old_vectors is not None:
                entry = old_files[rel]
                rows = [old_rows[cid] for cid in entry.chunk_ids]
                kept = [(previous.chunks[r], old_pieces_of.get(r, [])) for r in rows]
                vector_parts.append(old_vectors[rows])
                piece_source = old_piece_vectors
                files[rel] = entry
            elif rel in new_chunks:
                end = new_offset + len(new_chunks[rel])
                kept = [(c, list(range(new_piece_starts[k], new_piece_starts[k + 1])))
                        for k, c in zip(range(new_offset, end), new_chunks[rel], strict=True)]  # fmt: skip
                vector_parts.append(new_vectors[new_offset:end])
                piece_source = new_piece_vectors
                new_offset = end
                title, sha = read[rel]
                files[rel] = FileEntry(sha, title, [c.id for c in new_chunks[rel]], _now())
            else:
                continue
            ids: list[int] = []
            for chunk, chunk_pieces in kept:
                piece_owners.extend([len(chunks_out)] * len(chunk_pieces))
                ids.extend(chunk_pieces)
                chunks_out.append(chunk)
            if ids and piece_source is not None:
                piece_parts.append(piece_source[ids])
        vectors = np.concatenate(vector_parts) if vector_parts else np.zeros((0, dim), dtype=np.float32)
        piece_vectors = np.concatenate(piece_parts) if piece_parts else np.zeros((0, dim), dtype=np.float32)
        owners = np.array(piece_owners, dtype=np.int64)

        manifest = Manifest(
            format_version=FORMAT_VERSION,
            embed_model=settings.embed_model,
            embed_sha256=embed_sha256,
            dim=dim,
            chunker=chunker.as_dict(),
            files=files,
            skipped={rel: _skip_key(current[rel][1] if rel in current else "", max_bytes, why)
                     for rel, why in report.skipped.items()},
            built_at=_now(),
            piece_chars=settings.piece_chars,
        )
        if on_progress:
            on_progress("write", 0, 1)
        _write_build(root, manifest, chunks_out, vectors, (piece_vectors, owners))
        if on_progress:
            on_progress("write", 1, 1)
        report.documents, report.chunks, report.wrote = len(files), len(chunks_out), True
        report.seconds = time.perf_counter() - t0
        return report


def _write_build(
    root: Path, manifest: Manifest, chunks: list[Chunk], vectors: np.ndarray, pieces: tuple[np.ndarray, np.ndarray]
) -> None:
    import faiss

    def write_flat(name: str, rows: np.ndarray) -> None:
        index = faiss.IndexFlatIP(manifest.dim)
        if len(rows):
            index.add(np.ascontiguousarray(rows, dtype=np.float32))
        faiss.write_index(index, str(staging / name))

    staging = new_staging(root)
    write_flat(DENSE_FILE, vectors)
    if manifest.piece_chars > 0:
        piece_vectors, owners = pieces
        write_flat(PIECES_FILE, piece_vectors)
        np.save(staging / PIECE_OWNERS_FILE, owners)
    LexicalIndex.build([tokenize(search_text(c)) for c in chunks]).save(staging / "bm25")
    publish(root, staging, manifest, chunks)


def new_staging(root: Path) -> Path:
    """An empty staging folder for the next build under `root` (fill it, then `publish` it)."""
    builds = root / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    staging = builds / f".{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}.partial"
    staging.mkdir()
    return staging


def publish(root: Path, staging: Path, manifest: Manifest, chunks: list[Chunk]) -> None:
    """Complete a staged build (its dense.faiss and bm25/ already written) and swap it in atomically.

    Call with the build lock held. Chunks, manifest and checksums are written here,
    the checksums last: a build directory without them is never valid.
    """
    with (staging / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for c in chunks:
            fh.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
    (staging / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    _write_checksums(staging)
    _fsync_tree(staging)
    _pause_point("staged")

    builds = staging.parent
    build_id = staging.name.removeprefix(".").removesuffix(".partial")
    final = builds / build_id
    staging.rename(final)
    _fsync_dir(builds)
    _pause_point("renamed")
    link_tmp = root / f".current.{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(Path("builds") / build_id)
    os.replace(link_tmp, root / "current")  # the atomic swap
    _fsync_dir(root)
    _pause_point("swapped")
    # Readers that loaded an older build keep it in memory; one that is loading it right now retries (Index.load).
    _clear_leftovers(root)


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
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(path)
