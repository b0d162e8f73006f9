"""The read step of a build: load and chunk the files the plan names as new or changed.

A file that cannot be read is skipped and reported, never fatal: the rest of the corpus is indexed,
and the file is retried once its content or the size limit changes (plan.skip_key).
"""

from __future__ import annotations

from rag.errors import DocumentError
from rag.index.plan import Plan, reason
from rag.index.report import BuildReport, Progress, notify
from rag.ingest.chunking import chunk_document
from rag.ingest.loaders import load_file
from rag.schema import Chunk


def read_changed(
    plan: Plan, report: BuildReport, on_progress: Progress | None
) -> tuple[dict[str, list[Chunk]], dict[str, tuple[str, str]]]:
    """Read and chunk new and changed files; a bad file is skipped, never fatal.

    Returns (path -> chunks, path -> (title, sha256 of the bytes actually read)).
    """
    chunks_of: dict[str, list[Chunk]] = {}
    read: dict[str, tuple[str, str]] = {}
    for i, rel in enumerate(plan.to_read):
        notify(on_progress, "read", i, len(plan.to_read))
        try:
            doc = load_file(plan.files[rel][0], rel, max_bytes=plan.max_bytes)
            chunks = chunk_document(doc, plan.chunker)
            if not chunks:
                raise DocumentError(f"{rel} has no text to index.", "Add text to the file or remove it.")
        except (DocumentError, OSError, MemoryError) as exc:
            skip_unreadable(rel, exc, plan, report)
            continue
        chunks_of[rel], read[rel] = chunks, (doc.title, doc.sha256)
    if plan.to_read:
        notify(on_progress, "read", len(plan.to_read), len(plan.to_read))
    return chunks_of, read


def skip_unreadable(rel: str, exc: Exception, plan: Plan, report: BuildReport) -> None:
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
