"""Files -> Document.

.txt and .md are read as UTF-8, falling back to GB18030 (a superset of GBK,
common for Chinese files saved on Windows). PDFs are read page by page with
pypdf, keeping where each page starts. YAML front matter is skipped (its
title becomes the document title) but stays in `text`, so every character
span still indexes into the file itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rag.chunking import first_heading
from rag.errors import DocumentError
from rag.schema import Document

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".pdf")

_FRONT_MATTER = re.compile(r"\A\ufeff?---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.S | re.M)
_TITLE_LINE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.M)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def decode_text(data: bytes, name: str) -> str:
    if not data.strip():
        raise DocumentError(f"{name} is empty.", "Add text to the file or remove it from the corpus.")
    if b"\x00" in data[:8192]:
        raise DocumentError(
            f"{name} looks like a binary file, not text.",
            "Convert it to .txt, .md or .pdf, or remove it from the corpus.",
        )
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DocumentError(
        f"{name} is neither UTF-8 nor GB18030 text.",
        "Re-save it as UTF-8 and run `rag index` again.",
    )


def _front_matter_title(block: str) -> str | None:
    stripped = block.strip()
    if stripped.startswith("{"):  # some note apps write JSON front matter
        try:
            value = json.loads(stripped).get("title")
            return str(value) if value else None
        except (ValueError, AttributeError):
            return None
    match = _TITLE_LINE.search(block)
    if not match:
        return None
    return match.group(1).strip().strip("'\"") or None


def parse_text(text: str, rel_path: str, sha256: str) -> Document:
    body_start, title = 0, None
    match = _FRONT_MATTER.match(text)
    if match:
        body_start = match.end()
        title = _front_matter_title(match.group(1))
    if not title:
        title = first_heading(text, body_start) or Path(rel_path).stem
    if not text[body_start:].strip():
        raise DocumentError(f"{rel_path} has no text after its front matter.", "Add text or remove the file.")
    return Document(path=rel_path, title=title, text=text, sha256=sha256, body_start=body_start)


def load_pdf(path: Path, rel_path: str, sha256: str) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")  # many "protected" PDFs open with an empty password
            except Exception:  # noqa: BLE001 - pypdf raises various types for crypto it lacks
                ok = 0
            if not ok:
                raise DocumentError(
                    f"{rel_path} is encrypted.", "Save an unencrypted copy of the PDF into the corpus."
                )
        pages = [(page.extract_text() or "") for page in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(
            f"{rel_path} is not a readable PDF ({exc.__class__.__name__}: {exc}).",
            "Re-export or re-download the PDF, then run `rag index` again.",
        ) from exc

    page_starts, parts, offset = [], [], 0
    for text in pages:
        page_starts.append(offset)
        parts.append(text)
        offset += len(text) + 2
    joined = "\n\n".join(parts)
    if not joined.strip():
        raise DocumentError(
            f"{rel_path} has no extractable text (a scanned PDF?).",
            "Run OCR on it (e.g. ocrmypdf) and add the result instead.",
        )
    meta_title = None
    try:
        meta_title = (reader.metadata or {}).get("/Title")
    except Exception:  # noqa: BLE001 - broken metadata must not lose the text
        meta_title = None
    return Document(
        path=rel_path,
        title=str(meta_title) if meta_title else Path(rel_path).stem,
        text=joined,
        sha256=sha256,
        page_starts=tuple(page_starts),
    )


def load_file(path: Path, rel_path: str, max_bytes: int | None = None, sha256: str | None = None) -> Document:
    """Read one file into a Document, or raise DocumentError saying why not."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            f"{rel_path}: unsupported file type '{suffix}'.",
            f"Supported types: {', '.join(SUPPORTED_SUFFIXES)}.",
        )
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DocumentError(
            f"{rel_path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit.",
            "Split the file, or raise max_file_mb in rag.toml (or RAG_MAX_FILE_MB).",
        )
    sha = sha256 or file_sha256(path)
    if suffix == ".pdf":
        return load_pdf(path, rel_path, sha)
    return parse_text(decode_text(path.read_bytes(), rel_path), rel_path, sha)


def iter_corpus(corpus_dir: Path) -> Iterator[tuple[Path, str]]:
    """(absolute path, corpus-relative path) of each supported file, sorted, skipping hidden ones."""
    for path in sorted(corpus_dir.rglob("*")):
        rel = path.relative_to(corpus_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
            yield path, rel.as_posix()
