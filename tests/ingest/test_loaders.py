"""rag.ingest.loaders: decoding, front matter, PDFs and the corpus walk."""

from __future__ import annotations

import glob
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from rag.errors import DocumentError
from rag.ingest.chunking import ChunkerSettings, chunk_document
from rag.ingest.loaders import decode_text, file_sha256, iter_corpus, load_file, parse_text

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "corpus"

ZH = "大语言模型（LLM）是一种基于 Transformer 的神经网络。它通过预测下一个词来学习语言。"


def _write(tmp_path: Path, name: str, data: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def _load(path: Path, **kwargs):  # type: ignore[no-untyped-def]
    return load_file(path, path.name, **kwargs)


# ---------------------------------------------------------------- text decoding


@pytest.mark.parametrize("suffix", [".txt", ".md", ".markdown", ".TXT"])
def test_utf8_text_is_decoded(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path, f"doc{suffix}", ZH)
    doc = _load(path)
    assert doc.text == ZH
    assert doc.body_start == 0
    assert doc.page_starts == ()
    assert doc.sha256 == file_sha256(path)
    assert doc.path == f"doc{suffix}"


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    doc = _load(_write(tmp_path, "bom.txt", "\ufeff" + ZH))
    assert doc.text == ZH


@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_gbk_and_gb18030_fall_back(tmp_path: Path, encoding: str) -> None:
    raw = ZH.encode(encoding)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the test is only meaningful if UTF-8 fails
    doc = _load(_write(tmp_path, "windows.txt", raw))
    assert doc.text == ZH


def test_decode_text_directly() -> None:
    assert decode_text("中文".encode("gbk"), "x.txt") == "中文"
    assert decode_text("中文".encode(), "x.txt") == "中文"


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  "])
def test_empty_file_is_a_document_error(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(DocumentError, match="empty"):
        _load(_write(tmp_path, "empty.txt", content))


@pytest.mark.parametrize("content", ["\ufeff".encode(), "\u3000\n\u3000".encode()])
def test_blank_after_decoding_is_a_document_error(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(DocumentError):
        _load(_write(tmp_path, "blank.md", content))


def test_binary_file_with_nul_bytes_is_a_document_error(tmp_path: Path) -> None:
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    with pytest.raises(DocumentError, match="binary"):
        _load(_write(tmp_path, "image.txt", data))


def test_utf16_text_is_treated_as_binary(tmp_path: Path) -> None:
    # UTF-16 has NUL bytes for every ASCII character: reported, never mis-decoded.
    with pytest.raises(DocumentError):
        _load(_write(tmp_path, "utf16.txt", "hello world, 你好".encode("utf-16")))


def test_error_messages_carry_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DocumentError) as info:
        _load(_write(tmp_path, "empty.md", b""))
    assert info.value.hint
    assert "empty.md" in info.value.message


# ---------------------------------------------------------------- front matter and titles


YAML_DOC = "---\ntitle: '2025年大模型技术突破'\ntags: []\ndraft: false\n---\n\n# 正文标题\n\n这是正文。\n"
JSON_DOC = (
    '---\n{"dg-publish":true,"title":"大模型从零开始（零） 不完全断代史","tags":["LLM"]}\n---\n\n'
    "## 前奏\n\n正文第一段。\n"
)


@pytest.mark.parametrize(
    ("text", "title"),
    [
        (YAML_DOC, "2025年大模型技术突破"),
        (JSON_DOC, "大模型从零开始（零） 不完全断代史"),
        (
            "---\ntitle:  2025-06-08-大模型底层技术分析\ntags: \n    课程学习\n---\n# 标题\n正文。\n",
            "2025-06-08-大模型底层技术分析",
        ),
        ('---\ntitle: "Quoted"\n---\nbody\n', "Quoted"),
    ],
)
def test_front_matter_title_is_kept_and_body_start_after_it(tmp_path: Path, text: str, title: str) -> None:
    path = _write(tmp_path, "fm.md", text)
    doc = _load(path)
    assert doc.title == title
    assert doc.text == text  # the full file, front matter included
    head = text[: doc.body_start]
    assert head.startswith("---\n")
    assert head.rstrip("\n").endswith("---")
    assert "---" not in text[doc.body_start :].split("\n", 1)[0]
    assert text[doc.body_start :].strip()  # the body follows


def test_front_matter_without_title_uses_first_heading(tmp_path: Path) -> None:
    doc = _load(_write(tmp_path, "notitle.md", "---\ntags: [a]\n---\n\n# 真正的标题\n\n正文。\n"))
    assert doc.title == "真正的标题"
    assert doc.text[doc.body_start :].lstrip().startswith("# 真正的标题")


def test_title_from_heading_then_file_stem(tmp_path: Path) -> None:
    assert _load(_write(tmp_path, "h.md", "前言。\n\n## 第二级标题 ##\n正文。\n")).title == "第二级标题"
    assert _load(_write(tmp_path, "plain-notes.txt", ZH)).title == "plain-notes"


def test_json_front_matter_of_real_corpus_file() -> None:
    path = CORPUS / "llm-incomplete-history.md"
    doc = load_file(path, path.name)
    assert doc.title == "大模型从零开始（零） 不完全断代史"
    assert doc.text == path.read_text(encoding="utf-8")
    assert doc.text[: doc.body_start].count("---") == 2
    assert '"permalink"' not in doc.text[doc.body_start :]
    assert doc.text[doc.body_start :].lstrip().startswith("## 前奏")


def test_yaml_front_matter_of_real_corpus_file() -> None:
    path = CORPUS / "llm-breakthroughs-and-trends-2025.md"
    doc = load_file(path, path.name)
    assert doc.title == "2025年大模型技术突破与趋势"
    assert "draft: false" in doc.text[: doc.body_start]
    assert "draft: false" not in doc.text[doc.body_start :]


def test_only_front_matter_is_a_document_error(tmp_path: Path) -> None:
    with pytest.raises(DocumentError):
        _load(_write(tmp_path, "only.md", "---\ntitle: x\n---\n\n  \n"))


def test_dashes_later_in_the_file_are_not_front_matter(tmp_path: Path) -> None:
    text = "# 标题\n\n正文。\n\n---\n\ntitle: not front matter\n\n---\n"
    doc = _load(_write(tmp_path, "hr.md", text))
    assert doc.body_start == 0
    assert doc.title == "标题"


def test_parse_text_crlf_front_matter() -> None:
    text = "---\r\ntitle: Windows\r\n---\r\n正文内容。\r\n"
    doc = parse_text(text, "w.md", "0" * 64)
    assert doc.title == "Windows"
    assert doc.text[doc.body_start :] == "正文内容。\r\n"


# ---------------------------------------------------------------- size and type limits


def test_file_over_max_bytes_is_a_document_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.txt", "大" * 1000)  # 3000 bytes
    with pytest.raises(DocumentError, match="limit"):
        _load(path, max_bytes=2999)
    assert _load(path, max_bytes=3000).text == "大" * 1000


@pytest.mark.parametrize("name", ["slides.key", "table.numbers", "noext", "old.doc"])
def test_unsupported_suffix_is_a_document_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DocumentError, match="unsupported"):
        _load(_write(tmp_path, name, ZH))


def test_iter_corpus_sorts_and_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    files = [
        "b.md",
        "a.txt",
        "sub/c.pdf",
        "sub/d.markdown",
        "Z.TXT",
        ".hidden.md",
        ".git/config.md",
        "sub/.obsidian/e.md",
        "notes.pages",
        "image.png",
    ]
    for rel in files:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")
    (tmp_path / "folder.md").mkdir()  # a directory with a supported suffix is not a file
    found = list(iter_corpus(tmp_path))
    rels = [rel for _, rel in found]
    assert rels == ["Z.TXT", "a.txt", "b.md", "sub/c.pdf", "sub/d.markdown"]
    assert all(path == tmp_path / rel for path, rel in found)


def test_iter_corpus_of_the_real_corpus() -> None:
    rels = [rel for _, rel in iter_corpus(CORPUS)]
    assert len(rels) == 5
    assert rels == sorted(rels)


# ---------------------------------------------------------------- PDFs


def _ascii_pdf(pages: list[str], title: str | None = None) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def _cjk_font(chars: str) -> str | None:
    """A .ttf/.otf font file with glyphs for all `chars`, if this machine has one (fc-list, then the usual folders)."""
    from fontTools.ttLib import TTFont  # fpdf2 depends on fontTools

    candidates: list[str] = []
    if shutil.which("fc-list"):
        out = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
        candidates += [line.split(":")[0].strip() for line in out.splitlines() if line.strip()]
    for folder in ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts")):
        candidates += sorted(glob.glob(f"{folder}/**/*.[ot]tf", recursive=True))
    for path in dict.fromkeys(candidates):
        if not path.lower().endswith((".ttf", ".otf")):
            continue
        try:
            cmap = TTFont(path, lazy=True).getBestCmap() or {}
        except Exception:  # noqa: BLE001, S112 - an unreadable font is just not a candidate
            continue
        if all(ord(ch) in cmap for ch in chars if not ch.isspace()):
            return path
    return None


PAGES = [
    "Page one talks about transformers. It has two sentences.",
    "Page two is about tomato soup. Simmer and blend.",
    "Page three closes the report.",
]


def test_pdf_pages_and_page_starts(tmp_path: Path) -> None:
    path = _write(tmp_path, "report.pdf", _ascii_pdf(PAGES, title="Quarterly Report"))
    doc = _load(path)
    assert doc.title == "Quarterly Report"
    assert len(doc.page_starts) == 3
    assert doc.page_starts[0] == 0
    for i, start in enumerate(doc.page_starts):
        end = doc.page_starts[i + 1] - 2 if i + 1 < len(doc.page_starts) else len(doc.text)
        assert doc.text[start:end].strip() == PAGES[i]
        assert doc.page_at(start) == i + 1
        assert doc.page_at(end - 1) == i + 1
    assert doc.text == "\n\n".join(PAGES)


def test_pdf_without_title_uses_file_stem(tmp_path: Path) -> None:
    doc = _load(_write(tmp_path, "untitled-scan.pdf", _ascii_pdf(PAGES[:1])))
    assert doc.title == "untitled-scan"


def test_pdf_chunks_carry_page_numbers(tmp_path: Path) -> None:
    doc = _load(_write(tmp_path, "report.pdf", _ascii_pdf(PAGES)))
    # Each page (< 60 chars) ends at a line break, so with no overlap each chunk is one page.
    chunks = chunk_document(doc, ChunkerSettings(size=60, overlap=0))
    assert [c.page for c in chunks] == [1, 2, 3]
    for c in chunks:
        assert c.text == doc.text[c.start : c.end]
        assert c.text == PAGES[c.page - 1]
    # A chunk crossing a page break is labelled with the page it starts on.
    small = chunk_document(doc, ChunkerSettings(size=40, overlap=0))
    for c in small:
        assert c.page == doc.page_at(c.start)
        assert doc.page_starts[c.page - 1] <= c.start


def _cjk_pdf_without_font(pages: list[str]) -> bytes:
    """A hand-written PDF whose text is Chinese: a Type0 font with a ToUnicode map and no glyphs.

    pypdf extracts text through ToUnicode alone, so this tests the Chinese PDF
    path on machines with no CJK font (where fpdf2 cannot write Chinese).
    """
    chars = sorted({ch for page in pages for ch in page})
    cid = {ch: i + 1 for i, ch in enumerate(chars)}
    bfchar = "\n".join(f"<{cid[ch]:04X}> <{ord(ch):04X}>" for ch in chars)
    cmap = (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
        f"{len(chars)} beginbfchar\n{bfchar}\nendbfchar\n"
        "endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
    )
    n = len(pages)
    # objects: 1 catalog, 2 pages, 3 font, 4 descendant, 5 tounicode, then (page, content) pairs
    objs = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{6 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>",
        3: "<< /Type /Font /Subtype /Type0 /BaseFont /FakeCJK /Encoding /Identity-H "
        "/DescendantFonts [4 0 R] /ToUnicode 5 0 R >>",
        4: "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /FakeCJK "
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> "
        "/FontDescriptor << /Type /FontDescriptor /FontName /FakeCJK /Flags 4 /FontBBox [0 0 1000 1000] "
        "/ItalicAngle 0 /Ascent 880 /Descent -120 /CapHeight 700 /StemV 80 >> /DW 1000 >>",
    }
    streams = {5: cmap}
    for i, page in enumerate(pages):
        hexs = "".join(f"{cid[ch]:04X}" for ch in page)
        objs[6 + 2 * i] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {7 + 2 * i} 0 R >>"
        )
        streams[7 + 2 * i] = f"BT /F1 12 Tf 50 780 Td <{hexs}> Tj ET"
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for num in range(1, 6 + 2 * n):
        offsets[num] = len(out)
        if num in streams:
            data = streams[num].encode("latin-1")
            out += f"{num} 0 obj\n<< /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream\nendobj\n"
        else:
            out += f"{num} 0 obj\n{objs[num]}\nendobj\n".encode()
    xref = len(out)
    count = 6 + 2 * n
    out += f"xref\n0 {count}\n0000000000 65535 f \n".encode()
    for num in range(1, count):
        out += f"{offsets[num]:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {count} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


CJK_PAGES = [
    "第一页：大语言模型的发展史。它从统计语言模型开始。",
    "第二页：Transformer于2017年提出。",
    "第三页：总结。",
]


def test_chinese_pdf_page_starts_without_a_font(tmp_path: Path) -> None:
    doc = _load(_write(tmp_path, "中文报告.pdf", _cjk_pdf_without_font(CJK_PAGES)))
    assert doc.title == "中文报告"
    assert doc.text == "\n\n".join(CJK_PAGES)
    assert doc.page_starts == (0, len(CJK_PAGES[0]) + 2, len(CJK_PAGES[0]) + len(CJK_PAGES[1]) + 4)
    # Each page fits in 30 characters, so with no overlap each chunk is one page.
    chunks = chunk_document(doc, ChunkerSettings(size=30, overlap=0))
    assert [c.page for c in chunks] == [1, 2, 3]
    for c in chunks:
        assert c.text == doc.text[c.start : c.end] == CJK_PAGES[c.page - 1]
    assert [c.page for c in chunks if "2017" in c.text] == [2]
    assert [c.page for c in chunks if "统计语言模型" in c.text] == [1]


FPDF_CJK_PAGES = ["第一页：大语言模型的发展史。", "第二页：变换器架构于二〇一七年提出。"]


def test_chinese_pdf_page_numbers(tmp_path: Path) -> None:
    """A real Chinese PDF written by fpdf2 with an installed CJK font (scripts/setup.sh --dev installs one)."""
    font = _cjk_font("".join(FPDF_CJK_PAGES))
    if font is None:
        pytest.fail("No .ttf font with Chinese glyphs (fc-list :lang=zh). Run: scripts/setup.sh --dev")
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_font("cjk", "", font)
    pdf.set_font("cjk", size=12)
    for text in FPDF_CJK_PAGES:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    doc = _load(_write(tmp_path, "中文.pdf", bytes(pdf.output())))
    assert len(doc.page_starts) == 2
    assert "大语言模型" in doc.text
    chunks = chunk_document(doc, ChunkerSettings(size=30, overlap=0))
    assert [c.page for c in chunks] == [1, 2]
    assert any("二〇一七" in c.text and c.page == 2 for c in chunks)


def test_encrypted_pdf_is_a_document_error(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_ascii_pdf(PAGES))))
    writer.encrypt(user_password="secret", owner_password="owner")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(DocumentError, match="encrypted"):
        _load(_write(tmp_path, "locked.pdf", buf.getvalue()))


def test_pdf_encrypted_with_empty_user_password_opens(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_ascii_pdf(PAGES))))
    writer.encrypt(user_password="", owner_password="owner")
    buf = io.BytesIO()
    writer.write(buf)
    doc = _load(_write(tmp_path, "owner-only.pdf", buf.getvalue()))
    assert "tomato soup" in doc.text


@pytest.mark.parametrize("keep", [0.5, 0.2])
def test_truncated_pdf_is_a_document_error(tmp_path: Path, keep: float) -> None:
    data = _ascii_pdf(PAGES)
    with pytest.raises(DocumentError):
        _load(_write(tmp_path, "cut.pdf", data[: int(len(data) * keep)]))


@pytest.mark.parametrize("data", [b"", b"not a pdf at all", b"%PDF-1.4\n%%EOF\n"])
def test_garbage_pdf_is_a_document_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(DocumentError):
        _load(_write(tmp_path, "junk.pdf", data))


def test_pdf_without_text_is_a_document_error(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(10, 10, 50, 50)  # a "scanned" page: drawing, no text
    with pytest.raises(DocumentError, match="no extractable text"):
        _load(_write(tmp_path, "scan.pdf", bytes(pdf.output())))


# ---------------------------------------------------------------- known bugs (see the reasons)


@pytest.mark.parametrize("line", ["title:", "title: ", "title:\t"])
def test_empty_title_line_falls_back_to_heading(line: str) -> None:
    doc = parse_text(f"---\n{line}\ntags: [a]\n---\n\n# 真正的标题\n\n正文。\n", "t.md", "0" * 64)
    assert doc.title == "真正的标题"


def test_empty_front_matter_is_skipped() -> None:
    text = "---\n---\n\n# 标题\n\n正文。\n"
    doc = parse_text(text, "e.md", "0" * 64)
    assert doc.body_start == len("---\n---\n")


def test_title_ignores_hash_lines_in_code_fences() -> None:
    text = "安装说明。\n\n```bash\n# install the dependencies\npip install x\n```\n\n# 真正的标题\n\n正文。\n"
    assert parse_text(text, "f.md", "0" * 64).title == "真正的标题"


# ---------------------------------------------------------------- names and links (rag.index.build skips what these refuse)


def test_whitespace_only_after_decoding_says_empty_not_front_matter(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"is empty \(only white space\)"):
        _load(_write(tmp_path, "ideographic.md", "\u3000\n\u3000 \n"))


def test_printable_name_and_check_path(tmp_path: Path) -> None:
    import os

    from rag.ingest.loaders import check_path, printable_name

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    gbk_name = os.fsdecode("中文".encode("gbk") + b".txt")  # how Python sees a GBK name on a UTF-8 system
    assert printable_name("会议 纪要.md") == "会议 纪要.md"
    assert printable_name(gbk_name) == "\ufffd\ufffd\ufffd\ufffd.txt"
    with pytest.raises(DocumentError, match="not valid UTF-8") as info:
        check_path(corpus / gbk_name, gbk_name, corpus)
    assert "convmv" in info.value.hint
    (tmp_path / "outside.md").write_text("x", encoding="utf-8")
    (corpus / "link.md").symlink_to(tmp_path / "outside.md")
    with pytest.raises(DocumentError, match="outside the corpus folder"):
        check_path(corpus / "link.md", "link.md", corpus)
    (corpus / "real.md").write_text("x", encoding="utf-8")
    (corpus / "alias.md").symlink_to("real.md")
    check_path(corpus / "alias.md", "alias.md", corpus)  # a link inside the corpus is fine
    check_path(corpus / "real.md", "real.md", corpus)


def test_document_hash_is_of_the_bytes_read(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.md", ZH)
    assert _load(path).sha256 == file_sha256(path)
    pdf = _write(tmp_path, "r.pdf", _ascii_pdf(PAGES))
    assert _load(pdf).sha256 == file_sha256(pdf)


def test_fifo_with_a_text_name_is_not_a_corpus_file(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.txt")  # reading it would block the build forever
    (tmp_path / "a.txt").write_text(ZH, encoding="utf-8")
    assert [rel for _, rel in iter_corpus(tmp_path)] == ["a.txt"]
