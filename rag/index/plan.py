"""What a build must do, decided from file hashes alone before anything is read or embedded:
which corpus files are new, changed, removed, unchanged or still skipped, and whether the live
index's rows can be reused at all (same format, embedder, chunker and piece size)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import DocumentError, IndexStateError
from rag.index.manifest import FORMAT_VERSION, Manifest
from rag.index.reader import Index, index_exists
from rag.index.report import BuildReport
from rag.ingest.chunking import ChunkerSettings
from rag.ingest.loaders import check_path, file_sha256, iter_corpus, printable_name, size_problem

if TYPE_CHECKING:
    from rag.config import Settings


@dataclass
class Plan:
    """The decisions of one build; the report it was made with holds the added/updated/... lists."""

    files: dict[str, tuple[Path, str]]  # every readable corpus file -> (path, sha256), in corpus order
    to_read: list[str]  # the new and changed files, to read, chunk and embed
    previous: Index | None  # the live index, when its rows can be reused
    chunker: ChunkerSettings
    max_bytes: int
    same_store: bool = True  # the live build's vectors are in the configured store (else: copy them over)

    def nothing_changed(self, report: BuildReport) -> bool:
        """The live index already matches the corpus and the store setting: the build writes nothing and
        loads no model."""
        old_skipped = self.previous.manifest.skipped if self.previous else {}
        return (
            self.previous is not None
            and self.same_store
            and not report.changed
            and set(report.skipped) == set(old_skipped)
        )


def skip_key(sha256: str, max_bytes: int, reason: str) -> dict[str, str]:
    """A skipped file is retried when its content or the size limit changes."""
    return {"sha256": sha256, "max_bytes": str(max_bytes), "reason": reason}


def reason(exc: DocumentError) -> str:
    """A skipped file's reason as one line: what is wrong and what to do."""
    return f"{exc.message} {exc.hint}".strip()


def make_plan(settings: Settings, embed_sha256: str, full: bool, report: BuildReport) -> Plan:
    """Hash the corpus and compare it with the live index; fills report.added/updated/removed/unchanged/skipped."""
    chunker = ChunkerSettings(settings.chunk_size, settings.chunk_overlap)
    max_bytes = int(settings.max_file_mb * 1e6)

    def compatible(m: Manifest) -> bool:
        return (
            m.format_version == FORMAT_VERSION
            and m.embed_model == settings.embed_model
            and m.embed_sha256 == embed_sha256
            and m.chunker == chunker.as_dict()
            and m.piece_chars == settings.piece_chars
        )

    previous, why_not = (None, None) if full else load_previous(Path(settings.index_dir), compatible)
    if why_not:
        report.notes.append(why_not)
    files = scan_corpus(Path(settings.corpus_dir), report, max_bytes)
    to_read = classify(files, previous.manifest if previous else None, max_bytes, report)
    same = previous is None or in_configured_store(previous.manifest, settings)
    return Plan(files, to_read, previous, chunker, max_bytes, same)


def in_configured_store(manifest: Manifest, settings: Settings) -> bool:
    """The build's vectors are where `vector_store` and `milvus_uri` say; a switch rewrites the build
    into the new store, reusing every vector (no re-embedding)."""
    record = manifest.vector_store
    if settings.vector_store == "faiss" or not record:
        return settings.vector_store == "faiss" and not record
    from rag.index import milvus

    root = Path(settings.index_dir)
    return milvus.stored_uri(record.get("uri", ""), root) == milvus.resolve_uri(settings, root)[0]


def load_previous(root: Path, compatible: Callable[[Manifest], bool]) -> tuple[Index | None, str | None]:
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


def scan_corpus(corpus: Path, report: BuildReport, max_bytes: int | None = None) -> dict[str, tuple[Path, str]]:
    """Every indexable file -> (path, sha256), in corpus order; refused and unreadable ones go to report.skipped.

    Empty files and files over the size limit are refused by their size alone, before hashing, so a
    200 MB file costs nothing on each run. Hashing reads each file in 1 MB blocks, so memory stays
    flat for any size.
    """
    files: dict[str, tuple[Path, str]] = {}
    for path, rel in iter_corpus(corpus):
        name = printable_name(rel)
        try:
            check_path(path, rel, corpus)
            problem = size_problem(path.stat().st_size, name, max_bytes)
            if problem is not None:
                raise problem
            files[name] = (path, file_sha256(path))
        except DocumentError as exc:
            report.skipped[name] = reason(exc)
        except OSError as exc:
            report.skipped[name] = f"{name} cannot be read ({exc.strerror or exc}). Check its permissions."
    return files


def classify(files: dict[str, tuple[Path, str]], old: Manifest | None, max_bytes: int, report: BuildReport) -> list[str]:
    """Sort each file into unchanged, still skipped (same bytes, same limit), added or updated; returns the
    files to read. Files the old manifest lists but the corpus no longer has are removed."""
    old_files = old.files if old else {}
    old_skipped = old.skipped if old else {}
    to_read: list[str] = []
    for rel, (_, sha) in files.items():
        if rel in old_files and old_files[rel].sha256 == sha:
            report.unchanged.append(rel)
        elif rel in old_skipped and old_skipped[rel] == skip_key(sha, max_bytes, old_skipped[rel]["reason"]):
            report.skipped[rel] = old_skipped[rel]["reason"]
        else:
            (report.updated if rel in old_files else report.added).append(rel)
            to_read.append(rel)
    report.removed = sorted(set(old_files) - set(files))
    return to_read
