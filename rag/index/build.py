"""Bring the on-disk index in line with the corpus: plan -> read -> embed -> assemble -> write -> publish.

Each step is its own module (plan.py, read.py, embed.py, assemble.py, write.py, publish.py); this
one runs them in order under the build lock, and first clears what an interrupted build left.

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

from rag.errors import IndexStateError
from rag.index.assemble import assemble
from rag.index.embed import embed_new
from rag.index.lock import BuildLock
from rag.index.manifest import MANIFEST_FILE, Manifest
from rag.index.plan import Plan, make_plan
from rag.index.publish import clear_leftovers, live_build, pause_point
from rag.index.read import read_changed
from rag.index.report import BuildReport, Progress, notify
from rag.index.store import drop_unused
from rag.index.write import build_manifest, write_build

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index.embedding import Embedder

__all__ = ["Progress", "build", "write_build"]  # Progress and write_build live in report.py and write.py


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
    chunks, read = read_changed(plan, report, on_progress)
    embedded = embed_new(plan, chunks, read, settings.piece_chars, embedder_factory, report, on_progress)
    pause_point("embedded")
    rows = assemble(plan, report, embedded)
    notify(on_progress, "write", 0, 1)
    manifest = build_manifest(settings, embed_sha256, plan, report, rows, embedded.dim)
    write_build(settings, root, manifest, rows, plan.previous.manifest if plan.previous else None)
    notify(on_progress, "write", 1, 1)
    report.documents, report.chunks, report.wrote = len(rows.files), len(rows.chunks), True


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
