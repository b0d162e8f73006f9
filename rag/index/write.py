"""The write step of a build: the manifest, the vectors through the configured store, the BM25 state and
the entity list, all into a staging folder that publish.py makes durable and swaps live."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.index import entities
from rag.index.assemble import Rows
from rag.index.lexical import LexicalIndex, tokenize
from rag.index.manifest import FORMAT_VERSION, PIECE_OWNERS_FILE, Manifest, now
from rag.index.plan import Plan, skip_key
from rag.index.publish import new_staging, publish
from rag.index.report import BuildReport
from rag.index.store import CHUNKS, PIECES, close_store, create_stores, drop_unused
from rag.ingest.chunking import search_text

if TYPE_CHECKING:
    from rag.config import Settings


def build_manifest(
    settings: Settings, embed_sha256: str, plan: Plan, report: BuildReport, rows: Rows, dim: int
) -> Manifest:
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


def write_build(
    settings: Settings, root: Path, manifest: Manifest, rows: Rows, previous: Manifest | None = None
) -> None:
    """Write the vectors (through the configured store) and BM25 state into a staging folder, then publish it
    (chunks, manifest naming the stores, swap); the vectors of replaced builds are dropped only after the swap."""
    staging = new_staging(root)
    manifest.vector_store = _write_vectors(settings, root, staging, manifest, rows)
    LexicalIndex.build([tokenize(search_text(c)) for c in rows.chunks]).save(staging / "bm25")
    entities.save(staging, entities.mine(search_text(c) for c in rows.chunks))
    publish(root, staging, manifest, rows.chunks)
    drop_unused(root, settings, manifest, previous)


def _write_vectors(settings: Settings, root: Path, staging: Path, manifest: Manifest, rows: Rows) -> dict[str, str]:
    """Add the chunks' (and the pieces') vectors to new stores; returns the record the manifest keeps of them.

    The stores are closed whatever happens, so a failed write holds no file or connection open.
    """
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
    return stores.record
