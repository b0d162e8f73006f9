"""Files -> Document, through one table: FORMATS maps a file suffix to its loader.

.txt and .md are read as UTF-8, else in the encoding charset-normalizer finds
(GBK and GB18030 are common for Chinese files saved on Windows). PDFs are read
page by page with pypdf, keeping where each page starts. YAML front matter is
skipped (its title becomes the document title) but stays in `text`, so every
character span still indexes into the file itself. Word, PowerPoint, Excel,
CSV and HTML are read by their libraries in formats.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rag.errors import DocumentError
from rag.ingest import formats
from rag.ingest.chunking import first_heading
from rag.ingest.encoding import decode_text
from rag.schema import Document, location_unit

__all__ = ["FORMATS", "SUPPORTED_SUFFIXES", "decode_text", "load_file", "location_unit"]

_FRONT_MATTER = re.compile(r"\A\ufeff?---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)
_TITLE_LINE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
        what = "has no text after its front matter" if match else "is empty (only white space)"
        raise DocumentError(f"{rel_path} {what}.", "Add text to the file or remove it from the corpus.")
    return Document(path=rel_path, title=title, text=text, sha256=sha256, body_start=body_start)


def load_text(data: bytes, rel_path: str, sha256: str) -> Document:
    return parse_text(decode_text(data, rel_path), rel_path, sha256)


def load_pdf(data: bytes, rel_path: str, sha256: str) -> Document:
    """A PDF as text with page starts, so citations can name the page; a locked, broken or image-only PDF is refused with the fix."""
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # repairs of damaged files are not news; failures are
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = bool(reader.decrypt(""))  # many "protected" PDFs open with an empty password
            except Exception:  # noqa: BLE001 - pypdf raises various types for crypto it lacks
                ok = False
            if not ok:
                raise DocumentError(
                    f"{rel_path} is encrypted.", "Save an unencrypted copy of the PDF into the corpus."
                )
        pages = [(page.extract_text() or "") for page in reader.pages]
    except DocumentError:
        raise
    except Exception as exc:
        raise DocumentError(
            f"{rel_path} is not a readable PDF ({exc.__class__.__name__}: {exc}).",
            "Re-export or re-download the PDF, then run `rag index` again.",
        ) from exc

    page_starts, parts, offset = [], [], 0
    for raw in pages:
        # Broken font maps can yield NULs and lone surrogates, which no file or JSON can hold.
        text = raw.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
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
        meta = reader.metadata
        meta_title = meta.get("/Title") if meta is not None else None
    except Exception:  # noqa: BLE001 - broken metadata must not lose the text
        meta_title = None
    return Document(
        path=rel_path,
        title=str(meta_title) if meta_title else Path(rel_path).stem,
        text=joined,
        sha256=sha256,
        page_starts=tuple(page_starts),
    )


@dataclass(frozen=True)
class Format:
    """How files of one suffix are read."""

    load: Callable[[bytes, str, str], Document]  # (bytes, corpus-relative path, sha256) -> Document


# The loader registry. A new format is a loader function (in formats.py, importing its library
# lazily) and one line here; see CONTRIBUTING.md.
FORMATS: dict[str, Format] = {
    ".txt": Format(load_text),
    ".md": Format(load_text),
    ".markdown": Format(load_text),
    ".pdf": Format(load_pdf),
    ".docx": Format(formats.load_docx),
    ".pptx": Format(formats.load_pptx),  # pages are slides, sheets: see rag.schema.LOCATION_UNITS
    ".xlsx": Format(formats.load_xlsx),
    ".csv": Format(formats.load_csv),
    ".html": Format(formats.load_html),
    ".htm": Format(formats.load_html),
}
SUPPORTED_SUFFIXES = tuple(FORMATS)


def size_problem(size: int, rel_path: str, max_bytes: int | None) -> DocumentError | None:
    """Why a file of `size` bytes is not read at all: it is empty, or over the size limit."""
    if size == 0:
        return DocumentError(f"{rel_path} is empty (0 bytes).", "Add content to the file or remove it from the corpus.")
    if max_bytes is not None and size > max_bytes:
        return DocumentError(
            f"{rel_path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB limit.",
            "Split the file, or raise max_file_mb in rag.toml (or RAG_MAX_FILE_MB).",
        )
    return None


def load_file(path: Path, rel_path: str, max_bytes: int | None = None) -> Document:
    """Read one file into a Document, or raise DocumentError saying why not.

    The file is read once; `Document.sha256` is the hash of exactly those bytes,
    so a file edited while it is being indexed is seen as changed next time.
    """
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DocumentError(
            f"{rel_path}: unsupported file type '{suffix}'.",
            f"Supported types: {', '.join(SUPPORTED_SUFFIXES)}.",
        )
    problem = size_problem(path.stat().st_size, rel_path, max_bytes)
    if problem is not None:
        raise problem
    data = path.read_bytes()
    return FORMATS[suffix].load(data, rel_path, hashlib.sha256(data).hexdigest())


def printable_name(rel_path: str) -> str:
    """The path as valid UTF-8: undecodable bytes in a file name (e.g. a GBK name from an old zip) become U+FFFD."""
    return rel_path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_path(path: Path, rel_path: str, corpus_dir: Path) -> None:
    """Refuse files the index cannot name or should not read, before reading them."""
    if printable_name(rel_path) != rel_path:
        raise DocumentError(
            f"{printable_name(rel_path)}: the file name is not valid UTF-8.",
            "Rename the file (e.g. with convmv -f gbk -t utf8), then run `rag index` again.",
        )
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(corpus_dir.resolve()):
            raise DocumentError(
                f"{rel_path} is a link to {target}, outside the corpus folder.",
                "Copy the file into the corpus folder instead of linking to it.",
            )


def iter_corpus(corpus_dir: Path) -> Iterator[tuple[Path, str]]:
    """(absolute path, corpus-relative path) of each supported file, sorted, skipping hidden ones.

    Only regular files (or links to them) count, so a FIFO named x.txt never blocks a build.
    """
    for path in sorted(corpus_dir.rglob("*")):
        rel = path.relative_to(corpus_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in FORMATS:
            yield path, rel.as_posix()
