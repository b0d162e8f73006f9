"""Uploaded files -> the corpus folder, checked and safely named. No Gradio here.

An upload never leaves the corpus folder and never replaces a file unless
the reader confirmed it: the name is cut to its last component and cleaned
(`../../etc/passwd.md` -> `passwd.md`, `.hidden.md` -> `hidden.md`), the
type is checked by suffix *and* content, and the size against max_file_mb.
The file is written under a hidden temporary name and then linked into
place, which fails if the name was taken in the meantime.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rag.errors import DocumentError
from rag.ingest.loaders import SUPPORTED_SUFFIXES, decode_text

# Quick content checks before a file is saved; the build's loaders check everything else.
OFFICE_SUFFIXES = (".docx", ".xlsx", ".pptx")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".csv", ".html", ".htm")
UPLOAD_TYPES = " ".join(SUPPORTED_SUFFIXES)  # as the page lists them: ".txt .md ... .htm"
MAX_NAME_BYTES = 200  # well under the 255-byte limit of common file systems, in UTF-8
_UNSAFE = re.compile(r'[<>:"/\\|?*]')
_SPACES = re.compile(r"\s+")


class UploadStatus(Enum):
    ADDED = "added"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"  # same name, same bytes: nothing to do
    EXISTS = "exists"  # same name, other bytes, no confirmation to overwrite
    BAD_TYPE = "bad_type"
    TOO_BIG = "too_big"
    EMPTY = "empty"
    NOT_PDF = "not_pdf"
    NOT_OFFICE = "not_office"  # a .docx/.xlsx/.pptx that is not one (or is password-protected)
    NOT_TEXT = "not_text"
    FAILED = "failed"  # the file system refused (permissions, a folder of that name, ...)


@dataclass(frozen=True)
class UploadResult:
    original: str  # the name the browser sent
    name: str  # the name in the corpus ('' if refused before naming)
    status: UploadStatus
    size: int = 0
    detail: str = ""

    @property
    def changed_corpus(self) -> bool:
        return self.status in (UploadStatus.ADDED, UploadStatus.REPLACED)


def safe_name(original: str) -> str:
    """A plain file name for the corpus folder, keeping the reader's name where it is safe.

    >>> safe_name("../../etc/passwd.md"), safe_name("C:\\\\docs\\\\报告 v2.PDF"), safe_name(".env.txt")
    ('passwd.md', '报告 v2.pdf', 'env.txt')
    """
    name = re.split(r"[/\\]", original)[-1]
    name = _SPACES.sub(" ", unicodedata.normalize("NFC", name))
    # Control and format characters (e.g. U+202E, which shows "gpj.md" as "dm.jpg") go.
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf"))
    name = _UNSAFE.sub("_", name).strip(" .")
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    stem = stem.strip(" .") or "upload"
    suffix = f".{suffix.lower()}" if suffix else ""
    while len((stem + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem.rstrip(" .") + suffix


def _check_content(data: bytes, suffix: str, original: str) -> UploadStatus | None:
    if not data.strip():
        return UploadStatus.EMPTY
    if suffix == ".pdf":
        return None if b"%PDF-" in data[:1024] else UploadStatus.NOT_PDF
    if suffix in OFFICE_SUFFIXES:  # Word, Excel and PowerPoint files are zip packages; an encrypted one is not
        return None if zipfile.is_zipfile(io.BytesIO(data)) else UploadStatus.NOT_OFFICE
    if suffix not in TEXT_SUFFIXES:
        return None  # a format with no quick check here: the build reads it and reports a bad file
    try:
        decode_text(data, original)
    except DocumentError:
        return UploadStatus.NOT_TEXT
    return None


def save_upload(source: Path, original: str, corpus_dir: Path, max_bytes: int, overwrite: bool = False) -> UploadResult:
    """Check one uploaded file and place it in `corpus_dir`; the result says what happened."""
    name = safe_name(original)
    suffix = Path(name).suffix
    if suffix not in SUPPORTED_SUFFIXES:
        return UploadResult(original, "", UploadStatus.BAD_TYPE)
    size = source.stat().st_size
    if size > max_bytes:
        return UploadResult(original, name, UploadStatus.TOO_BIG, size)
    data = source.read_bytes()
    problem = _check_content(data, suffix, original)
    if problem is not None:
        return UploadResult(original, name, problem, size)

    corpus = corpus_dir.resolve()
    target = corpus / name
    if target.parent != corpus:  # cannot happen after safe_name; checked because it matters
        return UploadResult(original, name, UploadStatus.FAILED, size, "unsafe name")
    existed = target.exists() or target.is_symlink()
    if existed and target.is_file() and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
        return UploadResult(original, name, UploadStatus.UNCHANGED, size)
    if existed and not overwrite:
        return UploadResult(original, name, UploadStatus.EXISTS, size)

    corpus.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=corpus)  # hidden: never indexed
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite and existed:
            if target.is_dir() and not target.is_symlink():
                return UploadResult(original, name, UploadStatus.FAILED, size, "a folder has that name")
            os.replace(tmp, target)  # replaces a link itself, never the file it points to
        else:
            os.link(tmp, target)  # fails if the name appeared meanwhile: never a silent overwrite
    except FileExistsError:
        return UploadResult(original, name, UploadStatus.EXISTS, size)
    except OSError as exc:
        return UploadResult(original, name, UploadStatus.FAILED, size, exc.strerror or str(exc))
    finally:
        tmp.unlink(missing_ok=True)
    return UploadResult(original, name, UploadStatus.REPLACED if existed else UploadStatus.ADDED, size)
