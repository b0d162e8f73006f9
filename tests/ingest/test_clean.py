"""rag/ingest/clean.py: markers that are not prose leave what is read; prose and the file's text stay."""

from __future__ import annotations

import pytest

from rag.ingest.chunking import ChunkerSettings, chunk_document, clean_text, search_text
from rag.ingest.clean import strip_markers
from rag.schema import Document


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("它于 2024 年发布 [EXAMPLE.COM](#)。", "它于 2024 年发布。"),
        ("It was released in May [example.org].", "It was released in May."),
        ("支持多种语言 [NEWS.EXAMPLE.CO.UK](https://news.example.co.uk/a)，此外", "支持多种语言，此外"),
        ("用于生成文本 EN.EXAMPLE.ORG EN.EXAMPLE.ORG。下一句", "用于生成文本。下一句"),
        ("The pump runs at 40 rpm.[3] It is quiet.[4, 5]", "The pump runs at 40 rpm. It is quiet."),
        ("A disputed claim.[citation needed] Next.", "A disputed claim. Next."),
        ("第一页的结尾。\n- 12 -\n第二页的开头。", "第一页的结尾。\n第二页的开头。"),
        ("end of page.\nPage 3 of 10\nnext page", "end of page.\nnext page"),
        ("上一页。\n第 3 页 共 10 页\n下一页。", "上一页。\n下一页。"),
        ("line one\r\nline two\rline three", "line one\nline two\nline three"),
    ],
)
def test_strip_markers(raw: str, clean: str) -> None:
    assert strip_markers(raw) == clean


@pytest.mark.parametrize(
    "prose",
    [
        "Visit example.com for the form.",  # an address someone is told to use, in lower case
        "The U.S. market grew 5.2% in 2023.",
        "版本 V2.5 支持 128k 上下文。",
        "Water boils at 100 °C at sea level; the list [A] and [注] stay.",
        "E = mc^2 holds.",
        "共有 12 个\n步骤",  # a number inside a line of prose is not a page number
    ],
)
def test_prose_is_left_alone(prose: str) -> None:
    assert strip_markers(prose) == prose


def test_the_chunk_keeps_the_original_text_and_only_the_reading_is_cleaned() -> None:
    text = "# Notes\n\nThe kettle holds 1.7 litres [EXAMPLE.COM](#).[2]\n\nPage 1 of 2\n\nIt boils in four minutes.\n"
    doc = Document(path="notes.md", title="Notes", text=text, sha256="x")
    chunks = chunk_document(doc, ChunkerSettings(480, 100))
    assert all(text[c.start : c.end] == c.text for c in chunks)  # the source panel shows the file as it is
    assert any("[EXAMPLE.COM]" in c.text for c in chunks)
    read = "\n".join(search_text(c) for c in chunks)
    assert "EXAMPLE" not in read and "[2]" not in read and "Page 1" not in read
    assert "1.7 litres." in clean_text(chunks[0].text)
