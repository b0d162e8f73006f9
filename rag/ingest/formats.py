"""Structured files -> Document: Word, PowerPoint, Excel, CSV and HTML, each read by its library.

The structure is kept in the Document, not flattened away: a heading starts a `Section` whose
heading path the chunker gives its chunks; a table row becomes one line that names its columns
("名称: 螺栓; 数量: 3"), so a passage can quote a row with its header; a slide or sheet starts a
page, so a citation says "slide 3" or "sheet 2". Each library is imported inside its loader, so a
corpus of markdown never loads them. A file a library cannot open raises DocumentError saying what
to do; the build skips it and indexes the rest.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rag.errors import DocumentError
from rag.ingest.encoding import decode_text
from rag.schema import Document, Section

# An encrypted Office file is an OLE compound file holding the encrypted package, not a zip; so is
# an old .doc/.xls/.ppt saved under a new name. Its first 8 bytes say so.
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_WORD_HEADING = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_HTML_HEADING = re.compile(r"^h([1-6])$")
# What each Office format is, for messages: (what it is called, the program that saves it).
_OFFICE = {".docx": ("Word", "Word or LibreOffice"), ".xlsx": ("Excel", "Excel or LibreOffice"),
           ".pptx": ("PowerPoint", "PowerPoint or LibreOffice")}  # fmt: skip

T = TypeVar("T")


def one_line(text: str) -> str:
    """Runs of white space (line breaks in a cell, a title) as one space."""
    return _WHITESPACE.sub(" ", text).strip()


def column_name(i: int) -> str:
    """A spreadsheet's name for the i-th column (0-based), for a table whose header cell is empty.

    >>> column_name(0), column_name(25), column_name(26)
    ('A', 'Z', 'AA')
    """
    name = ""
    i += 1
    while i:
        i, rest = divmod(i - 1, 26)
        name = chr(65 + rest) + name
    return name


def row_lines(rows: Iterable[Sequence[str]]) -> Iterator[str]:
    """A table as lines a passage can quote: the first non-empty row is the header, each later row one
    line "header: value; header: value" (empty cells left out). A table of one row is that row.

    >>> list(row_lines([["名称", "数量", ""], ["螺栓", "3", "x"], ["", "", ""]]))
    ['名称: 螺栓; 数量: 3; C: x']
    """
    header: list[str] | None = None
    body = False
    for raw in rows:
        cells = [one_line(c) for c in raw]
        if not any(cells):
            continue
        if header is None:
            header = cells
            continue
        body = True
        names = header + [""] * (len(cells) - len(header))
        yield "; ".join(f"{names[i] or column_name(i)}: {v}" for i, v in enumerate(cells) if v)
    if header is not None and not body:
        yield "; ".join(c for c in header if c)


@dataclass
class TextBuilder:
    """Builds a Document's text block by block (blocks are separated by a blank line), recording where
    each heading's section and each page (slide, sheet) starts."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    sections: list[Section] = field(default_factory=list)
    page_starts: list[int] = field(default_factory=list)
    stack: list[tuple[int, str]] = field(default_factory=list)  # (level, heading) from the outermost

    def next_start(self) -> int:
        return self.length + 2 if self.parts else 0

    def block(self, text: str) -> int | None:
        """Add a paragraph (or any block); returns where it starts (None if it had no text)."""
        text = text.strip()
        if not text:
            return None
        start = self.next_start()
        if self.parts:
            self.parts.append("\n\n")
        self.parts.append(text)
        self.length = start + len(text)
        return start

    def heading(self, level: int, text: str) -> None:
        """A heading of `level` (1 outermost): its text is a block, and its section starts there."""
        text = one_line(text)
        if not text:
            return
        self.stack = [(lvl, t) for lvl, t in self.stack if lvl < level] + [(level, text)]
        start = self.block(text)
        assert start is not None
        self.sections.append(Section(start, tuple(t for _, t in self.stack)))

    def table(self, rows: Iterable[Sequence[str]]) -> None:
        self.block("\n".join(row_lines(rows)))

    def page(self, headings: tuple[str, ...] | None = None) -> None:
        """A page, slide or sheet starts here. With `headings` its heading path starts afresh (a slide's
        title, a sheet's name, or () for none); without, the headings around it go on (a Word page)."""
        start = self.next_start()
        self.page_starts.append(start)
        if headings is not None:
            self.stack = [(i + 1, h) for i, h in enumerate(headings)]
            self.sections.append(Section(start, headings))

    def document(self, rel_path: str, sha256: str, title: str | None) -> Document:
        text = "".join(self.parts)
        if not text.strip():
            raise DocumentError(
                f"{rel_path} has no text to index.", "Add text to it, or remove it from the corpus."
            )
        return Document(
            path=rel_path,
            title=one_line(title or "") or Path(rel_path).stem,
            text=text,
            sha256=sha256,
            page_starts=tuple(self.page_starts),
            sections=tuple(self.sections),
        )


def _first_heading(b: TextBuilder) -> str | None:
    return b.sections[0].headings[-1] if b.sections and b.sections[0].headings else None


def _open_office(data: bytes, rel_path: str, opener: Callable[[io.BytesIO], T]) -> T:
    """The library's object for an Office file, or DocumentError: password-protected, or not readable."""
    suffix = Path(rel_path).suffix.lower()
    kind, program = _OFFICE[suffix]
    if data.startswith(_OLE_MAGIC):
        raise DocumentError(
            f"{rel_path} is password-protected (or an old {kind} 97-2003 file renamed to {suffix}).",
            f"Open it in {program}, remove the password or save it as {suffix}, and add that copy instead.",
        )
    try:
        return opener(io.BytesIO(data))
    except Exception as exc:  # each library raises its own types for a damaged file
        raise unreadable(rel_path, kind, program, exc) from exc


def unreadable(rel_path: str, kind: str, program: str, exc: Exception) -> DocumentError:
    suffix = Path(rel_path).suffix.lower()
    detail = one_line(f"{exc.__class__.__name__}: {exc}")[:160]
    return DocumentError(
        f"{rel_path} is not a readable {kind} file ({detail}).",
        f"Open it in {program} and save it again as {suffix} (or re-download it), then run `rag index` again.",
    )


def _guarded(rel_path: str, read: Callable[[], Document]) -> Document:
    """Run a loader's reading step; a library error in the middle of a damaged file becomes DocumentError."""
    suffix = Path(rel_path).suffix.lower()
    kind, program = _OFFICE.get(suffix, (suffix.lstrip(".").upper(), "the program that made it"))
    try:
        return read()
    except DocumentError:
        raise
    except Exception as exc:  # as above: a library error of any type
        raise unreadable(rel_path, kind, program, exc) from exc


# ---------------------------------------------------------------- Word


def load_docx(data: bytes, rel_path: str, sha256: str) -> Document:
    """Paragraphs and tables in document order; Heading 1-9 (标题 1-9) styles make the heading path; the
    page breaks Word recorded when it last saved the file (if any) make the pages."""
    import docx
    from docx.table import Table

    document = _open_office(data, rel_path, docx.Document)

    def read() -> Document:
        b, pages, title_style = TextBuilder(), [0], None
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                b.table([cell.text for cell in row.cells] for row in item.rows)
                continue
            if item.rendered_page_breaks and b.parts:
                pages.append(b.next_start())
            style = item.style.name if item.style is not None else ""
            level = _WORD_HEADING.match(style or "")
            if level:
                b.heading(int(level.group(1)), item.text)
            else:
                if style == "Title" and title_style is None:
                    title_style = item.text
                b.block(item.text)
        if len(pages) > 1:
            b.page_starts = pages
        title = document.core_properties.title or title_style or _first_heading(b)
        return b.document(rel_path, sha256, title)

    return _guarded(rel_path, read)


# ---------------------------------------------------------------- PowerPoint


def _shape_blocks(shapes: Any, b: TextBuilder, skip: int | None = None) -> None:
    for shape in shapes:
        if shape.shape_id == skip:  # the title, already added
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            b.table([cell.text for cell in row.cells] for row in shape.table.rows)
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            b.block("\n".join(p.text for p in shape.text_frame.paragraphs if p.text.strip()))
        elif hasattr(shape, "shapes"):  # a group
            _shape_blocks(shape.shapes, b)


def load_pptx(data: bytes, rel_path: str, sha256: str) -> Document:
    """One page per slide: its title is the heading path, then its text boxes, tables and speaker notes."""
    from pptx import Presentation

    deck = _open_office(data, rel_path, Presentation)

    def read() -> Document:
        b = TextBuilder()
        for slide in deck.slides:
            title_shape = slide.shapes.title
            title = one_line(title_shape.text_frame.text) if title_shape is not None and title_shape.has_text_frame else ""
            b.page((title,) if title else ())
            b.block(title)
            _shape_blocks(slide.shapes, b, skip=title_shape.shape_id if title_shape is not None else None)
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                b.block(slide.notes_slide.notes_text_frame.text)
        first = next((s.headings[0] for s in b.sections if s.headings), None)
        return b.document(rel_path, sha256, deck.core_properties.title or first)

    return _guarded(rel_path, read)


# ---------------------------------------------------------------- spreadsheets


def cell_text(value: object) -> str:
    """A cell's value as a reader writes it: 3.0 -> "3", a midnight datetime -> its date.

    >>> cell_text(3.0), cell_text(dt.datetime(2024, 5, 1)), cell_text(None)
    ('3', '2024-05-01', '')
    """
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def load_xlsx(data: bytes, rel_path: str, sha256: str) -> Document:
    """One page per sheet, its name the heading path; each row one line with its header (the sheet's
    first non-empty row). Formulas give the value Excel last computed."""
    from openpyxl import load_workbook

    book = _open_office(data, rel_path, lambda fh: load_workbook(fh, read_only=True, data_only=True))

    def read() -> Document:
        b = TextBuilder()
        try:
            for sheet in book.worksheets:
                b.page((one_line(sheet.title),))
                b.table([cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True))
        finally:
            book.close()
        title = book.properties.title if book.properties is not None else None
        return b.document(rel_path, sha256, title)

    return _guarded(rel_path, read)


def load_csv(data: bytes, rel_path: str, sha256: str) -> Document:
    """Each row one line with its header (the first row); the delimiter (, ; tab |) is sniffed."""
    text = decode_text(data, rel_path)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    b = TextBuilder()
    try:
        b.table(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as exc:
        raise DocumentError(
            f"{rel_path} is not a readable CSV file ({exc}).", "Save it again as CSV (UTF-8), then run `rag index` again."
        ) from exc
    return b.document(rel_path, sha256, None)


# ---------------------------------------------------------------- HTML


def load_html(data: bytes, rel_path: str, sha256: str) -> Document:
    """The page's main text as trafilatura finds it (menus, footers, ads and comments dropped), with
    its headings as the heading path and its tables as rows."""
    import trafilatura
    from lxml import etree

    text = decode_text(data, rel_path)
    xml = trafilatura.extract(
        text, output_format="xml", include_tables=True, include_comments=False, with_metadata=True,
        favor_recall=True, include_formatting=False,
    )  # fmt: skip
    if not xml:
        raise DocumentError(
            f"{rel_path} has no main text that could be found (an empty page, or one built by scripts).",
            "Save the page's text as .txt or .md (or print it to PDF) and add that instead.",
        )
    root = etree.fromstring(xml.encode("utf-8"))
    b = TextBuilder()
    main = root.find("main")
    for el in (main if main is not None else root).iterchildren():
        _html_block(el, b)
    return b.document(rel_path, sha256, root.get("title"))


def _html_block(el: Any, b: TextBuilder) -> None:
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag == "head":
        level = _HTML_HEADING.match(el.get("rend", "") or "")
        b.heading(int(level.group(1)) if level else 2, "".join(el.itertext()))
    elif tag == "table":
        b.table([["".join(c.itertext()) for c in row.iterfind("cell")] for row in el.iterfind("row")])
    elif tag == "list":
        b.block("\n".join(one_line("".join(item.itertext())) for item in el.iterfind("item")))
    elif tag == "div":
        for child in el.iterchildren():
            _html_block(child, b)
    elif tag:
        b.block("".join(el.itertext()))
