"""rag.ingest.chunking: invariants over the real corpus and synthetic documents."""

from __future__ import annotations

import itertools
import re
from functools import cache
from pathlib import Path

import pytest

from rag.ingest.chunking import (
    ChunkerSettings,
    chunk_document,
    clean_heading,
    clean_text,
    following,
    joined,
    passage,
    piece_texts,
    runs_on,
    search_text,
)
from rag.ingest.loaders import load_file, parse_text
from rag.schema import Chunk, Document

ROOT = Path(__file__).resolve().parents[2]
CORPUS_FILES = sorted(p.name for p in (ROOT / "corpus").iterdir() if p.is_file() and not p.name.startswith("."))  # .examples.txt is not a document
SETTINGS = [(360, 80), (120, 30), (60, 0), (500, 200), (40, 39)]

_HEADING_LINE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE_LINE = re.compile(r"^[ \t]*(```|~~~)")


@cache
def corpus_doc(name: str) -> Document:
    return load_file(ROOT / "corpus" / name, name)


def doc_of(text: str, path: str = "doc.md") -> Document:
    return parse_text(text, path, "0" * 64)


def reference_headings(doc: Document) -> list[tuple[int, tuple[str, ...]]]:
    """(offset, heading path) at each markdown heading of the body, skipping fenced code. Written independently."""
    out: list[tuple[int, tuple[str, ...]]] = []
    stack: list[tuple[int, str]] = []
    in_fence = False
    offset = 0
    for line in doc.text.splitlines(keepends=True):
        start, offset = offset, offset + len(line)
        if start < doc.body_start:
            continue
        body = line.rstrip("\r\n")
        if _FENCE_LINE.match(body):
            in_fence = not in_fence
            continue
        m = _HEADING_LINE.match(body)
        if m and not in_fence:
            level = len(m.group(1))
            stack = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, clean_heading(m.group(2)))]
            out.append((start, tuple(t for _, t in stack)))
    return out


def path_at(headings: list[tuple[int, tuple[str, ...]]], offset: int) -> tuple[str, ...]:
    path: tuple[str, ...] = ()
    for start, p in headings:
        if start <= offset:
            path = p
    return path


def check_invariants(doc: Document, chunks: list[Chunk], size: int, overlap: int) -> None:
    assert chunks, "a document with text gives at least one chunk"
    for c in chunks:
        assert c.text.strip(), "no empty chunks"
        assert c.text == c.text.strip(), "chunks are trimmed"
        assert c.text == doc.text[c.start : c.end]
        assert len(c.text) <= size
        assert c.start >= doc.body_start, "front matter is never inside a chunk"
        assert c.path == doc.path and c.title == doc.title
        assert c.page == doc.page_at(c.start)
    ids = [c.id for c in chunks]
    assert len(ids) == len(set(ids)), "chunk ids are unique"
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start >= prev.start and nxt.end >= prev.end, "chunks follow the document order"
        assert prev.end - nxt.start <= overlap, "neighbours share at most `overlap` characters"


def uncovered(doc: Document, chunks: list[Chunk]) -> list[tuple[int, int]]:
    """Maximal runs of body characters that no chunk covers and that are not whitespace."""
    covered = bytearray(len(doc.text))
    for c in chunks:
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    gaps, i = [], doc.body_start
    while i < len(doc.text):
        if not covered[i] and not doc.text[i].isspace():
            j = i
            while j < len(doc.text) and not covered[j]:
                j += 1
            gaps.append((i, j))
            i = j
        else:
            i += 1
    return gaps


# ---------------------------------------------------------------- the real corpus


def test_corpus_has_the_five_files() -> None:
    assert len(CORPUS_FILES) == 5


@pytest.mark.parametrize(("size", "overlap"), SETTINGS)
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_invariants(name: str, size: int, overlap: int) -> None:
    doc = corpus_doc(name)
    chunks = chunk_document(doc, ChunkerSettings(size, overlap))
    check_invariants(doc, chunks, size, overlap)


@pytest.mark.parametrize(("size", "overlap"), SETTINGS)
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_coverage(name: str, size: int, overlap: int) -> None:
    """Every character of the body is in some chunk, except markup that carries no text.

    A chunk that would hold only a footnote digit ('⁶'), '**' or an image link is
    dropped on purpose (its cleaned text is empty); nothing else may fall between chunks.
    """
    doc = corpus_doc(name)
    chunks = chunk_document(doc, ChunkerSettings(size, overlap))
    for a, b in uncovered(doc, chunks):
        gap = doc.text[max(a - 1, 0) : b]  # one character back: an image's '!' may end the previous chunk
        assert clean_text(gap) == "" or clean_text(gap[1:]) == "", f"{name}[{a}:{b}] is in no chunk: {gap!r}"


_IMAGE_ONLY = re.compile(r"(?:!?\[[^\]]*\]\([^)]*\)\s*)+")


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_default_settings_cover_every_character(name: str) -> None:
    doc = corpus_doc(name)
    for a, b in uncovered(doc, chunk_document(doc, ChunkerSettings(480, 100))):
        gap = doc.text[max(a - 1, 0) : b]
        assert _IMAGE_ONLY.fullmatch(gap.strip()) or _IMAGE_ONLY.fullmatch(gap[1:].strip()), gap


def _nested_neighbours(chunks: list[Chunk]) -> list[tuple[str, str]]:
    return [
        (a.text, b.text)
        for a, b in itertools.pairwise(chunks)
        if (a.start <= b.start and b.end <= a.end) or (b.start <= a.start and a.end <= b.end)
    ]


@pytest.mark.parametrize(("size", "overlap"), [(360, 80), (300, 60), (200, 50), (500, 200), (60, 0)])
def test_corpus_no_chunk_is_contained_in_a_neighbour(size: int, overlap: int) -> None:
    for name in CORPUS_FILES:
        assert _nested_neighbours(chunk_document(corpus_doc(name), ChunkerSettings(size, overlap))) == [], name


def test_overlap_never_yields_a_chunk_made_only_of_repeated_text() -> None:
    text = "甲" * 10 + "。" + "乙" * 6 + "。" + "丙" * 25
    # chunk 1 = 甲…。乙…。 (18); stepping back 7 for the overlap leaves no room for the 20-char
    # piece of 丙, so chunk 2 = 乙…。 alone, which chunk 1 already holds.
    doc = doc_of(text, "nested.txt")
    chunks = chunk_document(doc, ChunkerSettings(size=20, overlap=8))
    check_invariants(doc, chunks, 20, 8)
    assert _nested_neighbours(chunks) == []


def test_corpus_no_nested_chunks_at_size_120() -> None:
    for name in CORPUS_FILES:
        assert _nested_neighbours(chunk_document(corpus_doc(name), ChunkerSettings(120, 30))) == [], name


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_ids_are_stable_across_runs(name: str) -> None:
    first = chunk_document(corpus_doc(name), ChunkerSettings(360, 80))
    again = chunk_document(load_file(ROOT / "corpus" / name, name), ChunkerSettings(360, 80))
    assert [c.id for c in first] == [c.id for c in again]
    assert first == again
    moved = chunk_document(load_file(ROOT / "corpus" / name, "sub/" + name), ChunkerSettings(360, 80))
    assert not {c.id for c in first} & {c.id for c in moved}, "the id depends on the file's path"


@pytest.mark.parametrize(("size", "overlap"), [(360, 80), (120, 30), (60, 0)])
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_heading_paths_follow_markdown_headings(name: str, size: int, overlap: int) -> None:
    doc = corpus_doc(name)
    ref = reference_headings(doc)
    titles = {t for _, p in ref for t in p}
    for c in chunk_document(doc, ChunkerSettings(size, overlap)):
        assert set(c.headings) <= titles
        # The path in force where the chunk starts, or at a heading inside it, or (for a
        # heading-only section merged into the next one) at one of the next headings.
        inside = [p for start, p in ref if c.start <= start < c.end]
        after = [p for start, p in ref if start >= c.end][:4]
        assert c.headings in [path_at(ref, c.start), *inside, *after], (c.start, c.text[:40], c.headings)


def test_corpus_front_matter_is_not_in_chunks() -> None:
    for name in CORPUS_FILES:
        doc = corpus_doc(name)
        chunks = chunk_document(doc, ChunkerSettings(360, 80))
        assert all(c.start >= doc.body_start for c in chunks)
        joined = "\n".join(c.text for c in chunks)
        assert '"dg-publish"' not in joined
        assert "draft: false" not in joined


def test_corpus_pdf_footnote_digits_are_cleaned_for_search() -> None:
    doc = corpus_doc("llm-popular-science-report.txt")
    chunks = chunk_document(doc, ChunkerSettings(360, 80))
    assert any("¹" in c.text for c in chunks)  # kept in the exact span ...
    assert not any(re.search("[¹²³⁴⁵⁶⁷⁸⁹⁰]", search_text(c)) for c in chunks)  # ... but not searched


# ---------------------------------------------------------------- synthetic documents


FENCED = """# 总标题

这是前言部分，介绍本文的主要内容和背景知识，篇幅足够长，不会和下一节合并在一起。

## 第一节 安装

安装步骤如下，请按顺序执行每一条命令，并检查输出是否正确，以免出现问题。

```bash
# 这不是标题，只是注释
pip install rag-chat
## 也不是标题
```

### 小节 配置

配置文件放在工作目录下，名字叫做 rag.toml，可以覆盖所有的默认设置项目内容。

~~~
# 波浪线围栏里的注释
~~~

## 第二节 **使用** [说明](https://example.com)

运行命令即可开始提问，回答会附带引用编号，方便核对来源和原文的具体内容。
"""


def _chunk_with(chunks: list[Chunk], needle: str) -> Chunk:
    found = [c for c in chunks if needle in c.text]
    assert found, needle
    return found[0]


@pytest.mark.parametrize(("size", "overlap"), [(400, 50), (120, 30), (60, 10)])
def test_heading_paths_ignore_hashes_in_code_fences(size: int, overlap: int) -> None:
    doc = doc_of(FENCED)
    chunks = chunk_document(doc, ChunkerSettings(size, overlap))
    check_invariants(doc, chunks, size, overlap)
    assert _chunk_with(chunks, "安装步骤").headings == ("总标题", "第一节 安装")
    assert _chunk_with(chunks, "pip install").headings == ("总标题", "第一节 安装")
    assert _chunk_with(chunks, "配置文件").headings == ("总标题", "第一节 安装", "小节 配置")
    assert _chunk_with(chunks, "波浪线").headings == ("总标题", "第一节 安装", "小节 配置")
    assert _chunk_with(chunks, "运行命令").headings == ("总标题", "第二节 使用 说明")
    assert _chunk_with(chunks, "前言").headings == ("总标题",)
    all_titles = {t for c in chunks for t in c.headings}
    assert not any("注释" in t or "也不是" in t for t in all_titles)
    assert uncovered(doc, chunks) == []


def test_section_starts_at_its_heading() -> None:
    chunks = chunk_document(doc_of(FENCED), ChunkerSettings(400, 50))
    starts = [c.text.split("\n", 1)[0] for c in chunks]
    assert "## 第一节 安装" in starts
    assert "### 小节 配置" in starts
    assert not any(c.text.count("## 第一节") and c.text.count("## 第二节") for c in chunks), "sections never mix"


def test_heading_only_section_merges_into_next() -> None:
    text = "# 书名\n\n## 第一章\n\n" + "第一章的正文内容。" * 8 + "\n"
    chunks = chunk_document(doc_of(text), ChunkerSettings(400, 50))
    assert len(chunks) == 1
    assert chunks[0].text.startswith("# 书名")
    assert chunks[0].headings == ("书名", "第一章")


def test_sibling_heading_replaces_deeper_path() -> None:
    body = "正文内容足够长，需要超过四十个字符，这样这个部分就不会与下一节合并，句子继续写下去。\n\n"
    text = f"# A\n\n{body}## B\n\n{body}### C\n\n{body}## D\n\n{body}# E\n\n{body}"
    paths = [c.headings for c in chunk_document(doc_of(text), ChunkerSettings(400, 50))]
    assert paths == [("A",), ("A", "B"), ("A", "B", "C"), ("A", "D"), ("E",)]


def test_text_before_first_heading_has_empty_path() -> None:
    intro = "没有标题的开头部分，写得足够长一些，这样它会成为独立的一段，而不会被合并到后面的章节。\n\n"
    text = intro + "# 标题\n\n" + "标题下面的正文内容，同样写得足够长，超过四十个字符的最小长度限制。\n"
    chunks = chunk_document(doc_of(text, "intro.txt"), ChunkerSettings(400, 50))
    assert chunks[0].headings == ()
    assert chunks[-1].headings == ("标题",)


def test_front_matter_never_in_chunks_synthetic() -> None:
    text = "---\ntitle: 测试\n# not a heading: inside front matter\n---\n\n" + "正文句子。" * 30
    doc = doc_of(text)
    assert doc.title == "测试"
    for size, overlap in SETTINGS:
        chunks = chunk_document(doc, ChunkerSettings(size, overlap))
        check_invariants(doc, chunks, size, overlap)
        assert all("title" not in c.text and c.headings == () for c in chunks)
        assert uncovered(doc, chunks) == []


@pytest.mark.parametrize(("size", "overlap"), [(10, 0), (10, 9), (25, 5), (7, 3)])
def test_long_sentence_is_cut_at_size(size: int, overlap: int) -> None:
    text = "这是一个没有任何标点符号而且非常非常长的句子它会被切成若干段以满足长度限制" * 3
    doc = doc_of(text, "long.txt")
    chunks = chunk_document(doc, ChunkerSettings(size, overlap))
    check_invariants(doc, chunks, size, overlap)
    assert uncovered(doc, chunks) == []
    assert max(len(c.text) for c in chunks) == size


def test_overlap_repeats_trailing_sentences() -> None:
    sentences = [f"第{i}句话的内容。" for i in range(1, 10)]  # 8 characters each
    doc = doc_of("".join(sentences), "s.txt")
    chunks = chunk_document(doc, ChunkerSettings(size=32, overlap=16))
    check_invariants(doc, chunks, 32, 16)
    s = sentences
    assert [c.text for c in chunks] == ["".join(s[0:4]), "".join(s[2:6]), "".join(s[4:8]), "".join(s[6:9])]
    no_overlap = chunk_document(doc, ChunkerSettings(size=32, overlap=0))
    assert [c.text for c in no_overlap] == ["".join(s[0:4]), "".join(s[4:8]), s[8]]
    short_overlap = chunk_document(doc, ChunkerSettings(size=32, overlap=15))  # one sentence (8) fits, two do not
    assert short_overlap[1].text == "".join(s[3:7])


@pytest.mark.parametrize("mark", ["。", "！", "？", "；", "!", "?", "”", "\n"])
def test_sentence_ends(mark: str) -> None:
    text = "甲" * 10 + ("。”" if mark == "”" else mark) + "乙" * 10
    chunks = chunk_document(doc_of(text, "m.txt"), ChunkerSettings(size=15, overlap=0))
    assert chunks[0].text.startswith("甲" * 10) and "乙" not in chunks[0].text
    assert chunks[-1].text == "乙" * 10


def test_docstring_example() -> None:
    chunks = chunk_document(doc_of("## A\n甲。乙。丙。", "a.md"), ChunkerSettings(size=5, overlap=2))
    assert all(len(c.text) <= 5 for c in chunks)
    assert [c.text for c in chunks] == ["## A", "甲。乙。", "乙。丙。"]
    assert all(c.headings == ("A",) for c in chunks)


def test_duplicate_and_markup_only_chunks_are_dropped() -> None:
    doc = doc_of("¹²³\n" + "正文。" * 3, "d.txt")
    chunks = chunk_document(doc, ChunkerSettings(size=4, overlap=0))
    assert all(clean_text(c.text) for c in chunks)
    assert not any(c.text == "¹²³" for c in chunks)


@pytest.mark.parametrize(
    "text",
    [
        "单独一句话。",
        "   \n\n  前后有空白的文本。  \n\n  ",
        "# 只有标题\n",
        "English only text. No Chinese here! Does it chunk? Yes.",
        "```\n# 代码\nprint(1)\n```\n",
        "```\n# 未闭合的代码块\n正文。\n",
    ],
)
@pytest.mark.parametrize(("size", "overlap"), [(360, 80), (12, 4)])
def test_small_documents(text: str, size: int, overlap: int) -> None:
    doc = doc_of(text)
    chunks = chunk_document(doc, ChunkerSettings(size, overlap))
    check_invariants(doc, chunks, size, overlap)
    assert uncovered(doc, chunks) == []


def test_ids_are_stable_and_depend_on_span_and_text() -> None:
    doc = doc_of(FENCED)
    a = chunk_document(doc, ChunkerSettings(120, 30))
    b = chunk_document(doc_of(FENCED), ChunkerSettings(120, 30))
    assert [c.id for c in a] == [c.id for c in b]
    assert all(re.fullmatch(r"[0-9a-f]{16}", c.id) for c in a)
    edited = chunk_document(doc_of(FENCED.replace("运行命令", "执行命令")), ChunkerSettings(120, 30))
    assert [c.id for c in edited][:-1] == [c.id for c in a][:-1]
    assert edited[-1].id != a[-1].id


def test_chunk_roundtrips_through_dict() -> None:
    for c in chunk_document(doc_of(FENCED), ChunkerSettings(120, 30)):
        assert Chunk.from_dict(c.to_dict()) == c


# ---------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("GPT-3¹²³ 发布于 2020 年。⁴⁵", "GPT-3 发布于 2020 年。"),
        ("这是 **重点** 内容和 __强调__。", "这是 重点 内容和 强调。"),
        ("参见[论文原文](https://arxiv.org/abs/1706.03762)。", "参见论文原文。"),
        ("[空链接]()和[**粗体链接**](http://x.y)", "空链接和粗体链接"),
        ("多个   空格\t和\u3000全角空格", "多个 空格 和 全角空格"),
        ("第一段。\n\n\n第二段。\n \n第三段。", "第一段。\n第二段。\n第三段。"),
        ("  \n 两端空白 \n ", "两端空白"),
        ("¹²³", ""),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_keeps_plain_brackets_and_numbers() -> None:
    assert clean_text("成本为557.6万元[注]，见（附录）[A]。") == "成本为557.6万元[注]，见（附录）[A]。"


def test_clean_text_drops_footnote_references_which_look_like_citation_markers() -> None:
    # A passage's own "[1]" would read to the model as passage 1 (rag/ingest/clean.py).
    assert clean_text("成本为557.6万元[1]，见附录[2, 3]。") == "成本为557.6万元，见附录。"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("**粗体标题**", "粗体标题"), ("[链接标题](http://a.b)", "链接标题"), ("  普通标题  ", "普通标题")],
)
def test_clean_heading(raw: str, clean: str) -> None:
    assert clean_heading(raw) == clean


def test_search_text_adds_title_and_heading_path() -> None:
    chunk = Chunk("id", "a.md", "文档标题", ("第一节", "小节"), 0, 10, "**重点**内容¹")
    assert search_text(chunk) == "文档标题 > 第一节 > 小节\n重点内容"
    assert search_text(Chunk("id", "a.md", "文档标题", (), 0, 4, "内容")) == "文档标题\n内容"


# ---------------------------------------------------------------- passages: a chunk cut mid-sentence joined with the next


def _piece(path: str, start: int, text: str, headings: tuple[str, ...] = ("H",)) -> Chunk:
    return Chunk(id=f"{path}:{start}", path=path, title="T", headings=headings, start=start, end=start + len(text), text=text)


@pytest.mark.parametrize(
    ("text", "open_"),
    [
        ("甲说，", True),
        ("它通过人与反馈强", True),  # a PDF page break inside a word
        ("结论如下：", True),
        ("乙。", False),
        ("乙。⁹", False),  # a footnote digit after the full stop is cleaned first
        ("（见上文）", False),
        ("| a | b |", False),  # a table row is finished
        ("```", False),
        ("Done.", False),
    ],
)
def test_runs_on_is_a_chunk_that_stops_mid_sentence(text: str, open_: bool) -> None:
    assert runs_on(_piece("a.md", 0, text), _piece("a.md", 20, "下文。")) is open_


def test_runs_on_only_within_one_section_of_one_document() -> None:
    first = _piece("a.md", 0, "甲说，")
    assert runs_on(first, _piece("a.md", 5, "乙。"))
    assert not runs_on(first, _piece("a.md", 5, "乙。", headings=("Other",)))
    assert not runs_on(first, _piece("b.md", 5, "乙。"))


def test_joined_keeps_the_overlap_once_and_spans_both() -> None:
    doc = doc_of("## H\n" + "甲说，乙说。" * 30, "a.md")
    chunks = [c for c in chunk_document(doc, ChunkerSettings(size=60, overlap=20)) if c.text != "## H"]
    a, b = chunks[0], chunks[1]
    assert b.start < a.end  # they overlap
    passage = joined(a, b)
    assert (passage.start, passage.end) == (a.start, b.end)
    assert passage.text == doc.text[a.start : b.end]
    assert passage.id not in {a.id, b.id} and passage.headings == a.headings


def test_joined_across_a_gap_stands_a_line_break_in_for_what_the_chunker_skipped() -> None:
    a, b = _piece("a.md", 0, "甲说，"), _piece("a.md", 5, "乙。")
    passage = joined(a, b)
    assert passage.text == "甲说，\n\n乙。" and (passage.start, passage.end) == (0, 7)
    assert joined(a, _piece("a.md", 4, "乙。")).text == "甲说，\n乙。"


def passages(chunks: list[Chunk], max_chars: int) -> list[Chunk]:
    after = following(chunks)
    return [passage(c, chunks[after[i]] if i in after else None, max_chars) for i, c in enumerate(chunks)]


def test_passages_join_each_cut_chunk_with_the_next_within_the_limit() -> None:
    cut, rest, other = _piece("a.md", 0, "甲说，"), _piece("a.md", 5, "乙。"), _piece("a.md", 9, "丙，")
    chunks = [other, rest, cut, _piece("b.md", 0, "丁，")]  # row order is not document order
    assert following(chunks) == {2: 1, 1: 0}
    out = passages(chunks, max_chars=100)
    assert out[2].text == "甲说，\n\n乙。"  # cut mid-sentence: joined with the chunk after it
    assert out[1] is rest  # finished its sentence
    assert out[0] is other and out[3] is chunks[3]  # nothing follows them in their document
    assert passages(chunks, max_chars=6)[2] is cut  # the two would span 7 characters
    assert passages(chunks, max_chars=0) == chunks


def _chunk(text: str, headings: tuple[str, ...] = ()) -> Chunk:
    return Chunk(id="c", path="a.md", title="T", headings=headings, start=0, end=len(text), text=text)


def test_piece_texts_docstring_example() -> None:
    assert piece_texts(_chunk("甲。乙。丙丙丙丙。"), 4) == ["T\n甲。乙。", "T\n丙丙丙丙。"]


def test_piece_texts_carry_the_heading_path_and_split_at_lines() -> None:
    text = "模型列表：\n- GPT-4o：多模态。\n- o1：推理模型，会先思考再回答。"
    assert piece_texts(_chunk(text, ("模型", "OpenAI")), 12) == [
        "T > 模型 > OpenAI\n模型列表：",
        "T > 模型 > OpenAI\n- GPT-4o：多模态。",
        "T > 模型 > OpenAI\n- o1：推理模型，会先思考再回答。",
    ]


@pytest.mark.parametrize(
    ("text", "max_chars"),
    [("甲。乙。", 0), ("甲。乙。", 50), ("一句很长的话没有句号", 3), ("", 10), ("甲。\n\n", 1)],
)
def test_no_pieces_when_off_or_the_chunk_is_one_piece(text: str, max_chars: int) -> None:
    assert piece_texts(_chunk(text), max_chars) == []


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_pieces_cover_the_chunk_text_in_order_within_the_size(name: str) -> None:
    doc = load_file(ROOT / "corpus" / name, name)
    for chunk in chunk_document(doc, ChunkerSettings(480, 100)):
        pieces = piece_texts(chunk, 50)
        context = search_text(chunk).split("\n", 1)[0]
        bodies = [p.removeprefix(context + "\n") for p in pieces]
        assert all(p.startswith(context + "\n") for p in pieces)
        if pieces:
            assert re.sub(r"\s", "", "".join(bodies)) == re.sub(r"\s", "", clean_text(chunk.text))
        for body in bodies:  # a piece over the size (line breaks not counted) is one sentence longer on its own
            assert len(re.sub(r"\s", "", body)) <= 50 or not re.search(r"[。！？!?\n]", body[:-1])


# ---------------------------------------------------------------- sections a loader gives


def test_loader_sections_give_heading_paths_and_a_short_part_keeps_its_own() -> None:
    """A Word heading followed at once by its sub-heading joins it (as in markdown); a short slide
    does not take the next slide's title, and an untitled slide has no heading path."""
    from rag.schema import Section

    parts = [("章", ""), ("章 > 节", "节里的正文有足够多的字，讲的是备用电源的容量与测试周期。"),
             ("短页", "短。"), ("", "没有标题的一页，正文同样足够长，讲的是下季度的招聘计划安排。")]  # fmt: skip
    text, sections, starts = "", [], []
    for path, body in parts:
        start = len(text) + (2 if text else 0)
        text += ("\n\n" if text else "") + (path.split(" > ")[-1] + "\n\n" + body if path else body)
        sections.append(Section(start, tuple(path.split(" > ")) if path else ()))
        starts.append(start)
    doc = Document(path="d.docx", title="D", text=text, sha256="x", sections=tuple(sections),
                   page_starts=tuple(starts))  # fmt: skip
    chunks = chunk_document(doc, ChunkerSettings(size=200, overlap=20))
    assert [(c.headings, c.page) for c in chunks] == [(("章", "节"), 1), (("短页",), 3), ((), 4)]
    assert chunks[0].text.startswith("章") and "节里的正文" in chunks[0].text
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
