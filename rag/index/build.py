"""Bring the on-disk index in line with the corpus: plan -> read -> embed -> assemble -> write -> publish.

Updates are incremental: files whose sha256 matches the manifest keep their chunks and vectors (and
their pieces'); only new and changed files are read and embedded (plan.py decides, assemble.py
reuses). A build writes a complete new directory and swaps it in with one rename (publish.py), so a
crash at any point leaves the previous index serving. One build at a time (lock.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.errors import DocumentError, IndexStateError
from rag.index.assemble import Embedded, Rows, assemble
from rag.index import entities
from rag.index.lexical import LexicalIndex, tokenize
from rag.index.lock import BuildLock
from rag.index.manifest import FORMAT_VERSION, MANIFEST_FILE, PIECE_OWNERS_FILE, Manifest, now
from rag.index.plan import Plan, make_plan, reason, skip_key
from rag.index.publish import clear_leftovers, live_build, new_staging, pause_point, publish
from rag.index.report import BuildReport
from rag.index.store import CHUNKS, PIECES, close_store, create_stores, drop_unused
from rag.ingest.chunking import chunk_document, piece_texts, search_text
from rag.ingest.loaders import load_file
from rag.schema import Chunk

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index.embedding import Embedder

Progress = Callable[[str, int, int], None]  # (stage: "read" | "embed" | "write", done, total)


def build(
    settings: Settings,
    embedder_factory: Callable[[], Embedder],
    embed_sha256: str,
    full: bool = False,
    wait: bool = False,
    on_progress: Progress | None = None,
) -> BuildReport:
    """Bring the index in line with the corpus; returns what changed.

    `embedder_factory` is only called when there is something to embed, so a
    no-change run never loads the model.
    """
    t0 = time.perf_counter()
    root, corpus = Path(settings.index_dir), Path(settings.corpus_dir)
    if not corpus.is_dir():
        raise IndexStateError(f"Corpus folder {corpus} does not exist.", "Create it and put documents in it (.txt, .md, .pdf, .docx, .xlsx, .csv, .pptx, .html).")
    report = BuildReport()
    with BuildLock(root, wait=wait) as lock:
        _clear_interrupted(settings, root, lock, report)
        plan = make_plan(settings, embed_sha256, full, report)
        try:
            _update(settings, root, embed_sha256, plan, embedder_factory, report, on_progress)
        finally:
            if plan.previous is not None:
                plan.previous.close()  # its rows are copied; Milvus Lite's folder is free for other processes
        report.seconds = time.perf_counter() - t0
    return report


def _update(
    settings: Settings,
    root: Path,
    embed_sha256: str,
    plan: Plan,
    embedder_factory: Callable[[], Embedder],
    report: BuildReport,
    on_progress: Progress | None,
) -> None:
    """Carry out the plan: read, embed, assemble and write a new build, unless nothing changed."""
    if plan.previous is not None and plan.nothing_changed(report):
        report.documents, report.chunks = len(plan.previous.manifest.files), len(plan.previous.chunks)
        return
    chunks, read = _read_changed(plan, report, on_progress)
    embedded = _embed(plan, chunks, read, settings.piece_chars, embedder_factory, report, on_progress)
    pause_point("embedded")
    rows = assemble(plan, report, embedded)
    _notify(on_progress, "write", 0, 1)
    manifest = _manifest(settings, embed_sha256, plan, report, rows, embedded.dim)
    write_build(settings, root, manifest, rows, plan.previous.manifest if plan.previous else None)
    _notify(on_progress, "write", 1, 1)
    report.documents, report.chunks, report.wrote = len(rows.files), len(rows.chunks), True


def _notify(on_progress: Progress | None, stage: str, done: int, total: int) -> None:
    if on_progress:
        on_progress(stage, done, total)


def _clear_interrupted(settings: Settings, root: Path, lock: BuildLock, report: BuildReport) -> None:
    """Remove what a killed build left (folders, and vectors in Milvus no live build names), and tell the user
    it happened (their index in use is complete)."""
    if lock.stale_holder:
        report.notes.append(
            f"Cleared a stale lock: the build by {lock.stale_holder} stopped before finishing. "
            "Its unfinished work was removed; the index in use is complete."
        )
    leftovers = clear_leftovers(root)
    _drop_stale_vectors(settings, root)
    if leftovers and not lock.stale_holder:
        report.notes.append(f"Removed {leftovers} unfinished build folder(s) left by an interrupted run.")


def _drop_stale_vectors(settings: Settings, root: Path) -> None:
    """Drop Milvus collections no live build names (a build killed before or just after its swap left them).
    When the live manifest is unreadable, which collections are live is unknown, so none are dropped."""
    live = live_build(root)
    try:
        manifest = Manifest.from_json((live / MANIFEST_FILE).read_text(encoding="utf-8")) if live else None
    except (OSError, ValueError, TypeError, KeyError):
        return
    drop_unused(root, settings, manifest)


def _read_changed(
    plan: Plan, report: BuildReport, on_progress: Progress | None
) -> tuple[dict[str, list[Chunk]], dict[str, tuple[str, str]]]:
    """Read and chunk new and changed files; a bad file is skipped, never fatal.

    Returns (path -> chunks, path -> (title, sha256 of the bytes actually read)).
    """
    chunks_of: dict[str, list[Chunk]] = {}
    read: dict[str, tuple[str, str]] = {}
    for i, rel in enumerate(plan.to_read):
        _notify(on_progress, "read", i, len(plan.to_read))
        try:
            doc = load_file(plan.files[rel][0], rel, max_bytes=plan.max_bytes)
            chunks = chunk_document(doc, plan.chunker)
            if not chunks:
                raise DocumentError(f"{rel} has no text to index.", "Add text to the file or remove it.")
        except (DocumentError, OSError, MemoryError) as exc:
            _skip_unreadable(rel, exc, plan, report)
            continue
        chunks_of[rel], read[rel] = chunks, (doc.title, doc.sha256)
    if plan.to_read:
        _notify(on_progress, "read", len(plan.to_read), len(plan.to_read))
    return chunks_of, read


def _skip_unreadable(rel: str, exc: Exception, plan: Plan, report: BuildReport) -> None:
    """A file that fails to read is reported as skipped; if it was indexed before, its old chunks go."""
    if isinstance(exc, DocumentError):
        report.skipped[rel] = reason(exc)
    elif isinstance(exc, MemoryError):
        report.skipped[rel] = f"{rel} is too large to read into memory. Split it or lower max_file_mb."
    else:
        assert isinstance(exc, OSError)
        report.skipped[rel] = f"{rel} cannot be read ({exc.strerror or exc}). Check its permissions."
    for bucket in (report.added, report.updated):
        if rel in bucket:
            bucket.remove(rel)
    if plan.previous is not None and rel in plan.previous.manifest.files:
        report.removed.append(rel)  # its old chunks go; the broken new version is reported


def _embed(
    plan: Plan,
    chunks_of: dict[str, list[Chunk]],
    read: dict[str, tuple[str, str]],
    piece_chars: int,
    embedder_factory: Callable[[], Embedder],
    report: BuildReport,
    on_progress: Progress | None,
) -> Embedded:
    """Embed only what is new: the chunks, then their sentence pieces. The model is loaded only if needed."""
    chunks = [c for rel in chunks_of for c in chunks_of[rel]]
    pieces_of = [piece_texts(c, piece_chars) for c in chunks]
    piece_list = [t for texts_of_chunk in pieces_of for t in texts_of_chunk]
    vectors = piece_vectors = np.zeros((0, 0), dtype=np.float32)
    dim = plan.previous.manifest.dim if plan.previous else 0
    if chunks or not plan.previous:  # an empty first build still records the dimension
        embedder = embedder_factory()
        dim = embedder.dim
    if chunks:
        done, total = 0, len(chunks) + len(piece_list)

        def progress(n: int) -> None:
            nonlocal done
            done += n
            _notify(on_progress, "embed", done, total)

        vectors = embedder.encode_documents([search_text(c) for c in chunks], progress=progress)
        if piece_list:
            piece_vectors = embedder.encode_documents(piece_list, progress=progress)
        report.embedded, report.pieces_embedded = len(chunks), len(piece_list)
    return Embedded(chunks_of, read, vectors, [len(p) for p in pieces_of], piece_vectors, dim)


def _manifest(settings: Settings, embed_sha256: str, plan: Plan, report: BuildReport, rows: Rows, dim: int) -> Manifest:
    """The new build's manifest; skipped files are keyed by content and size limit so they are retried on change."""
    skipped = {rel: skip_key(plan.files[rel][1] if rel in plan.files else "", plan.max_bytes, why)
               for rel, why in report.skipped.items()}  # fmt: skip
    return Manifest(
        format_version=FORMAT_VERSION,
        embed_model=settings.embed_model,
        embed_sha256=embed_sha256,
        dim=dim,
        chunker=plan.chunker.as_dict(),
        files=rows.files,
        skipped=skipped,
        built_at=now(),
        piece_chars=settings.piece_chars,
    )


def write_build(settings: Settings, root: Path, manifest: Manifest, rows: Rows, previous: Manifest | None = None) -> None:
    """Write the vectors (through the configured store) and BM25 state into a staging folder, then publish it
    (chunks, manifest naming the stores, swap); the vectors of replaced builds are dropped only after the swap."""
    staging = new_staging(root)
    kinds = [CHUNKS, PIECES] if manifest.piece_chars > 0 else [CHUNKS]
    stores = create_stores(settings, root, staging, manifest.dim, kinds)
    try:
        stores.stores[CHUNKS].add(rows.vectors)
        if manifest.piece_chars > 0:
            stores.stores[PIECES].add(rows.piece_vectors)
            np.save(staging / PIECE_OWNERS_FILE, rows.owners)
        stores.finish()
    finally:
        for store in stores.stores.values():
            close_store(store)
    LexicalIndex.build([tokenize(search_text(c)) for c in rows.chunks]).save(staging / "bm25")
    entities.save(staging, entities.mine(search_text(c) for c in rows.chunks))
    manifest.vector_store = stores.record
    publish(root, staging, manifest, rows.chunks)
    drop_unused(root, settings, manifest, previous)
