"""Crash-safe publishing: a build is written into a staging folder, made durable, then swapped live.

Under the index directory:

    current -> builds/20261123T120000-1234   (symlink, swapped atomically)
    builds/.<id>.partial/                    a build being written; never read
    .current.<pid>                           the new link, before the rename that swaps it in

A crash at any point leaves the previous build serving; the next build clears what was left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from datetime import UTC, datetime
from pathlib import Path

from rag.index.manifest import CHUNKS_FILE, MANIFEST_FILE, Manifest, write_checksums
from rag.schema import Chunk

# Crash tests set this to a stage name (see pause_point); unset in normal use.
PAUSE_ENV = "RAG_INDEX_PAUSE_AT"


def pause_point(stage: str) -> None:
    """Crash-test hook: with RAG_INDEX_PAUSE_AT=<stage> the process stops itself here (SIGSTOP).

    A test then kills it at exactly this point; SIGCONT would resume the build unchanged.
    Stages: embedded, staged, renamed, swapped.
    """
    if os.environ.get(PAUSE_ENV) == stage:
        os.kill(os.getpid(), signal.SIGSTOP)


def new_staging(root: Path) -> Path:
    """An empty staging folder for the next build under `root` (fill it, then `publish` it)."""
    builds = root / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    staging = builds / f".{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}.partial"
    staging.mkdir()
    return staging


def build_id(staging: Path) -> str:
    """The name the staged build will have once published ('.20261123T...-12.partial' -> '20261123T...-12')."""
    return staging.name.removeprefix(".").removesuffix(".partial")


def publish(root: Path, staging: Path, manifest: Manifest, chunks: list[Chunk]) -> None:
    """Complete a staged build (its vectors and bm25/ already written) and swap it in atomically.

    Call with the build lock held. Chunks, manifest and checksums are written here,
    the checksums last: a build directory without them is never valid.
    """
    _write_chunks(staging / CHUNKS_FILE, chunks)
    (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    write_checksums(staging)
    _fsync_tree(staging)
    pause_point("staged")
    final = staging.parent / build_id(staging)
    staging.rename(final)
    _fsync_dir(staging.parent)
    pause_point("renamed")
    _swap_current(root, final.name)
    pause_point("swapped")
    # Readers that loaded an older build keep it in memory; one that is loading it right now retries (Index.load).
    clear_leftovers(root)


def _write_chunks(path: Path, chunks: list[Chunk]) -> None:
    """The chunk store: one JSON object per line, in row order."""
    with path.open("w", encoding="utf-8") as fh:
        for c in chunks:
            fh.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")


def _swap_current(root: Path, name: str) -> None:
    """Point `current` at builds/<name> with one rename, the only step that changes what readers see."""
    link_tmp = root / f".current.{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(Path("builds") / name)
    os.replace(link_tmp, root / "current")  # the atomic swap
    _fsync_dir(root)


def live_build(root: Path) -> Path | None:
    """The build directory `current` points at, or None before the first build."""
    link = root / "current"
    return link.resolve() if link.exists() else None


def clear_leftovers(root: Path) -> int:
    """Remove what interrupted builds left: staging folders, builds never swapped in, temporary links.

    Call with the build lock held. Returns how many builds were removed.
    """
    live = live_build(root)
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


def _fsync_dir(path: Path) -> None:
    """A rename is durable only once its directory is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Every byte of a staged build is on disk before the swap can point at it."""
    for p in path.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(path)
