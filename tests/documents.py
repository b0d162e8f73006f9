"""Word, PowerPoint, Excel, CSV and HTML files the tests build themselves, with their libraries.

Each builder takes the content as plain data, so a test says what the document holds:
`docx_bytes([("h1", "标题"), ("p", "正文。"), ("table", [["名称", "数量"], ["苹果", "3"]])])`.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import Any

Block = tuple[str, Any]  # ("h1".."h6" | "p" | "table", text or rows)


def docx_bytes(blocks: Sequence[Block], title: str = "") -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    for kind, value in blocks:
        if kind.startswith("h"):
            document.add_heading(value, level=int(kind[1:]))
        elif kind == "table":
            table = document.add_table(rows=len(value), cols=len(value[0]))
            for r, row in enumerate(value):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = str(cell)
        else:
            document.add_paragraph(value)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def pptx_bytes(slides: Sequence[tuple[str, Sequence[str]]], table: Sequence[Sequence[str]] = ()) -> bytes:
    """Slides of (title, body paragraphs); a title of "" makes a slide without a title. `table` goes on one
    more slide, titled "表格"."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for title, paragraphs in slides:
        if title:
            slide = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
            slide.shapes.title.text = title
            slide.placeholders[1].text = "\n".join(paragraphs)
        else:
            slide = deck.slides.add_slide(deck.slide_layouts[6])  # blank
            box = slide.shapes.add_textbox(Inches(1), Inches(1), Inches(8), Inches(4))
            box.text_frame.text = "\n".join(paragraphs)
    if table:
        slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
        slide.shapes.title.text = "表格"
        grid = slide.shapes.add_table(len(table), len(table[0]), Inches(1), Inches(2), Inches(8), Inches(2)).table
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = str(cell)
    buf = io.BytesIO()
    deck.save(buf)
    return buf.getvalue()


def xlsx_bytes(sheets: dict[str, Sequence[Sequence[object]]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def html_page(title: str, blocks: Sequence[Block]) -> str:
    """A web page: the blocks as the article, between a menu, a cookie banner and a footer (boilerplate)."""
    body = []
    for kind, value in blocks:
        if kind == "table":
            cells = [[f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row]
                     for row, tag in zip(value, ["th"] + ["td"] * (len(value) - 1), strict=True)]  # fmt: skip
            rows = "".join(f"<tr>{''.join(row)}</tr>" for row in cells)
            body.append(f"<table>{rows}</table>")
        else:
            tag = kind if kind.startswith("h") else "p"
            body.append(f"<{tag}>{html.escape(value)}</{tag}>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/shop'>Shop</a> | <a href='/login'>Log in</a></nav>"
        "<div class='cookie'>We use cookies to improve your experience. Accept all cookies?</div>"
        f"<main><article>{''.join(body)}</article></main>"
        "<footer>Copyright 2024 Example Ltd. All rights reserved. Privacy policy. Terms of use.</footer>"
        "</body></html>"
    )


def encrypted(office_bytes: bytes, password: str = "secret") -> bytes:
    """The same Office file, password-protected as Word and Excel do it (ECMA-376 agile encryption)."""
    from msoffcrypto.format.ooxml import OOXMLFile

    out = io.BytesIO()
    OOXMLFile(io.BytesIO(office_bytes)).encrypt(password, out)
    return out.getvalue()
