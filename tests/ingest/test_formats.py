"""rag.ingest.formats: Word, PowerPoint, Excel, CSV and HTML keep their headings, rows and locations.

Every file is built by the test (tests/documents.py), in tmp_path.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from rag.errors import DocumentError
from rag.ingest.chunking import ChunkerSettings, chunk_document
from rag.ingest.formats import cell_text, column_name, row_lines
from rag.ingest.loaders import FORMATS, SUPPORTED_SUFFIXES, load_file, location_unit
from rag.schema import LOCATION_UNITS, Chunk
from tests.documents import docx_bytes, encrypted, html_page, pptx_bytes, xlsx_bytes

SETTINGS = ChunkerSettings(size=480, overlap=100)


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _chunks(path: Path, settings: ChunkerSettings = SETTINGS) -> list[Chunk]:
    return chunk_document(load_file(path, path.name), settings)


def _chunk_with(chunks: list[Chunk], words: str) -> Chunk:
    return next(c for c in chunks if words in c.text)


# ---------------------------------------------------------------- the registry


def test_every_suffix_has_one_loader_and_a_location_unit() -> None:
    assert set(SUPPORTED_SUFFIXES) == set(FORMATS) >= {".docx", ".html", ".htm", ".xlsx", ".csv", ".pptx"}
    assert all(s == s.lower() and s.startswith(".") for s in FORMATS)
    assert [location_unit(p) for p in ("a.pdf", "b.PPTX", "c.xlsx", "d.md")] == ["page", "slide", "sheet", "page"]
    assert set(LOCATION_UNITS) <= set(FORMATS)  # a unit is named only for a format that is read


def test_row_lines_cell_text_and_column_names() -> None:
    assert list(row_lines([["名称", "数量", ""], ["苹果", "3", "x"], ["", "", ""], ["梨", "", ""]])) == [
        "名称: 苹果; 数量: 3; C: x",
        "名称: 梨",
    ]
    assert list(row_lines([["只有", "一行"]])) == ["只有; 一行"]
    assert list(row_lines([["多行\n表头", "b"], ["值", "2"]])) == ["多行 表头: 值; b: 2"]
    assert [cell_text(v) for v in (3.0, 2.5, None, True, dt.datetime(2024, 5, 1), dt.datetime(2024, 5, 1, 8, 30))] == [
        "3", "2.5", "", "True", "2024-05-01", "2024-05-01 08:30:00",
    ]  # fmt: skip
    assert [column_name(i) for i in (0, 25, 26, 701, 702)] == ["A", "Z", "AA", "ZZ", "AAA"]


# ---------------------------------------------------------------- Word


MANUAL = [
    ("h1", "机房设备手册"),
    ("p", "本手册说明机房里的供电与网络设备，以及它们的检修周期和负责人。"),
    ("h2", "供电"),
    ("p", "备用电源容量为 480 千瓦，满载时可支撑四小时，每季度做一次放电测试。"),
    ("table", [["设备", "数量", "检修周期"], ["精密空调", "6", "每月"], ["电池柜", "12", "每季度"]]),
    ("h2", "网络"),
    ("p", "核心交换机两台，互为备份；任何一台故障时，另一台在一秒内接管全部流量，业务不会中断。"),
    ("h3", "布线"),
    ("p", "所有机柜之间使用六类网线，线缆每五年更换一次，更换记录保存在运维系统中。"),
]


def test_docx_headings_become_the_heading_path_and_tables_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "机房 手册.docx", docx_bytes(MANUAL))
    doc = load_file(path, path.name)
    assert doc.title == "机房设备手册" and doc.path == "机房 手册.docx"
    assert doc.page_starts == ()  # a file Word never laid out has no page breaks to go by
    chunks = _chunks(path, ChunkerSettings(size=120, overlap=20))
    assert _chunk_with(chunks, "480 千瓦").headings == ("机房设备手册", "供电")
    assert _chunk_with(chunks, "一秒内接管").headings == ("机房设备手册", "网络")
    assert _chunk_with(chunks, "六类网线").headings == ("机房设备手册", "网络", "布线")
    row = _chunk_with(chunks, "电池柜")
    assert "设备: 电池柜; 数量: 12; 检修周期: 每季度" in row.text.splitlines()
    assert row.headings == ("机房设备手册", "供电")
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text


def test_docx_title_property_wins_and_page_breaks_word_recorded_become_pages(tmp_path: Path) -> None:
    import docx
    from docx.oxml import OxmlElement

    path = _write(tmp_path, "report.docx", docx_bytes([("p", "First page text about the budget review."),
                                                       ("p", "Second page text about the hiring plan.")],
                                                      title="Quarterly report"))  # fmt: skip
    document = docx.Document(str(path))
    second = document.paragraphs[1].runs[0]._r
    second.insert(0, OxmlElement("w:lastRenderedPageBreak"))  # what Word writes where it broke the page
    document.save(str(path))

    doc = load_file(path, path.name)
    assert doc.title == "Quarterly report"
    assert len(doc.page_starts) == 2
    assert load_file(_write(tmp_path, "t.docx", docx_bytes([("h0", "Plan 2025"), ("h1", "Goals")])), "t.docx").title == "Plan 2025"
    assert doc.page_at(doc.text.index("hiring")) == 2 and doc.page_at(0) == 1


# ---------------------------------------------------------------- PowerPoint


def test_pptx_slides_are_locations_and_titles_the_heading_path(tmp_path: Path) -> None:
    deck = pptx_bytes(
        [("季度回顾", ["本季度收入增长百分之十二，主要来自华东地区的新客户。"]),
         ("", ["这张幻灯片没有标题，只有一段说明文字，讲的是下季度的招聘计划。"])],
        table=[["地区", "销量"], ["华东", "300"], ["华南", "120"]],
    )  # fmt: skip
    path = _write(tmp_path, "回顾.pptx", deck)
    doc = load_file(path, path.name)
    assert doc.title == "季度回顾" and len(doc.page_starts) == 3
    assert doc.text.count("季度回顾") == 1  # the title once, not again as a text box
    chunks = _chunks(path)
    first, untitled, table = (_chunk_with(chunks, w) for w in ("收入增长", "招聘计划", "华南"))
    assert (first.page, first.headings) == (1, ("季度回顾",))
    assert (untitled.page, untitled.headings) == (2, ())  # not the previous slide's title
    assert (table.page, table.headings) == (3, ("表格",))
    assert "地区: 华南; 销量: 120" in table.text.splitlines()


def test_pptx_speaker_notes_are_read(tmp_path: Path) -> None:
    from pptx import Presentation

    path = _write(tmp_path, "talk.pptx", pptx_bytes([("Plan", ["Hiring."])]))
    deck = Presentation(str(path))
    deck.slides[0].notes_slide.notes_text_frame.text = "Mention the new office in Chengdu."
    deck.save(str(path))
    assert _chunk_with(_chunks(path), "Chengdu").page == 1


# ---------------------------------------------------------------- spreadsheets


def test_xlsx_sheets_are_locations_and_each_row_is_quoted_with_its_header(tmp_path: Path) -> None:
    book = xlsx_bytes({
        "库存": [["名称", "数量", "单价", "入库日期"], ["苹果", 3, 2.5, dt.datetime(2024, 5, 1)], ["香蕉", 5.0, None, None]],
        "人员": [[None, None], ["姓名", "部门"], ["张三", "财务"]],  # the header is the first non-empty row
    })  # fmt: skip
    path = _write(tmp_path, "仓库.xlsx", book)
    doc = load_file(path, path.name)
    assert doc.title == "仓库" and len(doc.page_starts) == 2
    chunks = _chunks(path)
    stock, people = _chunk_with(chunks, "苹果"), _chunk_with(chunks, "张三")
    assert stock.text.splitlines() == ["名称: 苹果; 数量: 3; 单价: 2.5; 入库日期: 2024-05-01", "名称: 香蕉; 数量: 5"]
    assert (stock.page, stock.headings) == (1, ("库存",))
    assert (people.page, people.headings, people.text) == (2, ("人员",), "姓名: 张三; 部门: 财务")


def test_long_sheet_is_chunked_at_row_ends_and_every_row_keeps_its_header(tmp_path: Path) -> None:
    rows = [["工号", "姓名", "城市"]] + [[f"E{i:04d}", f"员工{i}", "成都" if i % 2 else "杭州"] for i in range(400)]
    path = _write(tmp_path, "staff.xlsx", xlsx_bytes({"Sheet1": rows}))
    chunks = _chunks(path, ChunkerSettings(size=300, overlap=40))
    assert len(chunks) > 10
    for c in chunks:
        assert c.headings == ("Sheet1",) and c.page == 1
        assert all(line.startswith("工号: E") and "; 城市: " in line for line in c.text.splitlines())
    assert any(line == "工号: E0399; 姓名: 员工399; 城市: 成都" for c in chunks for line in c.text.splitlines())


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_csv_in_gbk_or_utf8_with_any_delimiter(tmp_path: Path, encoding: str, delimiter: str) -> None:
    text = "\n".join(delimiter.join(r) for r in [["名称", "数量"], ["苹果", "3"], ["香蕉", "5"]]) + "\n"
    path = _write(tmp_path, "水果 清单.csv", text.encode(encoding))
    (chunk,) = _chunks(path)
    assert chunk.text.splitlines() == ["名称: 苹果; 数量: 3", "名称: 香蕉; 数量: 5"]
    assert chunk.title == "水果 清单" and chunk.page is None


def test_gbk_txt_is_decoded_by_detection_even_when_short(tmp_path: Path) -> None:
    for text in ("中文", "名称：苹果", "备用电源容量为 480 千瓦。"):
        assert load_file(_write(tmp_path, "短.txt", text.encode("gbk")), "短.txt").text == text
    big5 = "繁體中文的文件，內容很短。"
    assert load_file(_write(tmp_path, "big5.txt", big5.encode("big5")), "big5.txt").text == big5


# ---------------------------------------------------------------- HTML


ARTICLE = [
    ("h1", "Vardø lighthouse"),
    ("p", "The lighthouse stands at the northern tip of the island and guided fishing boats home for a century."),
    ("h2", "Maintenance"),
    ("p", "It was painted bright purple in 1921 and has been repainted every ten years since then by volunteers."),
    ("table", [["Year", "Event"], ["1921", "Painted purple"], ["1990", "Automated"]]),
]


@pytest.mark.parametrize("suffix", [".html", ".htm"])
def test_html_keeps_the_article_drops_boilerplate_and_follows_headings(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path, f"灯塔{suffix}", html_page("Lighthouse page", ARTICLE))
    doc = load_file(path, path.name)
    for boilerplate in ("cookies", "Log in", "All rights reserved"):
        assert boilerplate not in doc.text
    chunks = _chunks(path, ChunkerSettings(size=150, overlap=20))
    assert _chunk_with(chunks, "bright purple").headings == ("Vardø lighthouse", "Maintenance")
    assert "Year: 1990; Event: Automated" in _chunk_with(chunks, "Automated").text.splitlines()


def test_gbk_html_is_decoded(tmp_path: Path) -> None:
    page = html_page("说明", [("h1", "机房说明"), ("p", "机房的备用电源容量为四百八十千瓦，满载时可以支撑四个小时，每个季度测试一次。" * 2)])
    path = _write(tmp_path, "gbk.html", page.replace("utf-8", "gbk").encode("gbk"))
    assert "四百八十千瓦" in load_file(path, path.name).text


# ---------------------------------------------------------------- bad files


def _docx() -> bytes:
    return docx_bytes(MANUAL)


def _xlsx() -> bytes:
    return xlsx_bytes({"S": [["a", "b"], [1, 2]]})


def _pptx() -> bytes:
    return pptx_bytes([("T", ["Body text."])])


BAD = {
    # case: (file name, content, words its reason must contain)
    "encrypted-docx": ("locked.docx", lambda: encrypted(_docx()), ["password-protected", "remove the password"]),
    "encrypted-xlsx": ("locked.xlsx", lambda: encrypted(_xlsx()), ["password-protected", "Excel"]),
    "truncated-docx": ("cut.docx", lambda: _docx()[:2000], ["not a readable Word file", "save it again"]),
    "truncated-xlsx": ("cut.xlsx", lambda: _xlsx()[:1500], ["not a readable Excel file"]),
    "truncated-pptx": ("cut.pptx", lambda: _pptx()[:5000], ["not a readable PowerPoint file"]),
    "text-named-docx": ("notes.docx", lambda: b"just some text, not a Word file", ["not a readable Word file"]),
    "zero-byte-docx": ("empty.docx", lambda: b"", ["empty (0 bytes)"]),
    "zero-byte-xlsx": ("empty.xlsx", lambda: b"", ["empty (0 bytes)"]),
    "empty-docx": ("blank.docx", lambda: docx_bytes([]), ["no text to index"]),
    "binary-named-csv": ("data.csv", lambda: b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)), ["binary"]),
    "html-without-text": ("app.html", lambda: "<html><body><div id='app'></div><script>x()</script></body></html>",
                          ["no main text"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_is_a_one_line_document_error_that_says_what_to_do(tmp_path: Path, case: str) -> None:
    name, content, words = BAD[case]
    data = content()
    path = _write(tmp_path, name, data)
    with pytest.raises(DocumentError) as info:
        load_file(path, name)
    reason = f"{info.value.message} {info.value.hint}"
    assert "\n" not in reason and name in reason and info.value.hint
    for word in words:
        assert word in reason, reason
