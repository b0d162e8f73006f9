"""ui.render and ui.text: answers and sources as HTML, and the bilingual page text. No Gradio, no models."""

from __future__ import annotations

import re

import pytest

from rag.schema import Answer, Chunk, Citation, Hit
from ui import render
from ui.render import Exchange
from ui.text import TEXT, say

COST = Chunk(
    id="c1", path="deepseek.md", title="DeepSeek-V3 技术报告", headings=("DeepSeek-V3 技术报告", "训练成本"),
    start=0, end=90,
    text="## 训练成本\n\nDeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。训练在 2048 块 H800 GPU 上完成。",
)  # fmt: skip
ARCH = Chunk(
    id="c2", path="deepseek.md", title="DeepSeek-V3 技术报告", headings=("DeepSeek-V3 技术报告", "架构"),
    start=90, end=150, text="DeepSeek-V3 采用混合专家（MoE）架构，总参数 6710 亿。",
)  # fmt: skip
PDF = Chunk(id="c3", path="papers/attention.pdf", title="Attention", headings=(), start=0, end=40,
            text="The Transformer was introduced in 2017. It uses self-attention.", page=3)  # fmt: skip
HITS = [Hit(COST, 0.03, 0.8, 3.0), Hit(ARCH, 0.02, 0.7, None)]


def cited_answer(text: str = "训练仅花费 557.6万美元[1]。它采用混合专家架构[2]。", unsupported=()) -> Answer:  # type: ignore[no-untyped-def]
    return Answer(
        "DeepSeek-V3 的训练成本是多少？", "DeepSeek-V3 的训练成本是多少？", text,
        [Citation(1, COST), Citation(2, ARCH)], HITS, unsupported=list(unsupported),
        timings={"retrieval": 0.1, "first_token": 0.5, "generation": 1.5, "total": 1.7},
    )  # fmt: skip


# ---------------------------------------------------------------- the answer in the chat


def test_each_marker_links_to_its_passage_in_this_turn() -> None:
    out = render.answer_html(cited_answer(), turn=4, lang="zh")
    assert re.findall(r'href="#src-(\d+)-(\d+)"', out) == [("4", "1"), ("4", "2")]
    assert '<a class="cite" href="#src-4-1" title="deepseek.md">[1]</a>' in out


def test_markers_without_a_citation_stay_plain_text() -> None:
    answer = cited_answer("见 [7]。")
    assert render.answer_html(answer, 1, "zh") == "见 [7]。"


def test_unsupported_sentences_are_marked_in_the_answer() -> None:
    answer = cited_answer("训练仅花费 557.6万美元[1]。火星上有三个月亮。", unsupported=["火星上有三个月亮"])
    out = render.answer_html(answer, 1, "en")
    assert '<span class="unsupported" title="No passage supports this">火星上有三个月亮</span>。' in out


def test_sentences_set_aside_show_under_a_marked_note() -> None:
    from rag.answer.hygiene import UNSUPPORTED_NOTE

    text = f"训练仅花费 557.6万美元[1]。\n\n{UNSUPPORTED_NOTE['zh']}\n火星上有三个月亮。"
    out = render.answer_html(cited_answer(text, unsupported=["火星上有三个月亮"]), 1, "zh")
    assert f'<b class="unsupported-note">⚠ {UNSUPPORTED_NOTE["zh"]}</b>' in out
    assert out.index("unsupported-note") < out.index('<span class="unsupported"')


def test_model_output_cannot_inject_html() -> None:
    out = render.answer_html(cited_answer("<script>alert(1)</script> 成本[1]。"), 1, "zh")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert render.streaming_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"


def test_stopped_answer_says_so() -> None:
    assert render.answer_html(cited_answer("成本[1]"), 1, "zh", stopped=True).endswith("*（已停止）*")
    assert render.answer_html_stopped("en") == "*(stopped)*"


def test_plain_answer_recovers_the_words_for_follow_ups() -> None:
    html_answer = render.answer_html(cited_answer("A &lt; B 成本[1]。火星。", unsupported=["火星"]), 2, "zh")
    assert render.plain_answer(html_answer) == "A &lt; B 成本。火星。"
    assert render.plain_answer([{"type": "text", "text": "成本<a href='#src-1-1'>[1]</a>"}]) == "成本"
    assert render.plain_answer(None) == ""


# ---------------------------------------------------------------- passages and highlights


@pytest.mark.parametrize(
    "text",
    ["成本为557.6万美元。使用 FP8。 Then more. End", "第一行\n第二行！第三？", "no end", "", "版本 v2.5 发布。"],
)
def test_split_sentences_joins_back_to_the_passage(text: str) -> None:
    assert "".join(render.split_sentences(text)) == text


def test_split_sentences_keeps_decimals_whole() -> None:
    assert render.split_sentences("成本为557.6万美元。使用 FP8。 Then more. End") == [
        "成本为557.6万美元。", "使用 FP8。", " Then more.", " End",
    ]  # fmt: skip


def test_a_table_row_is_one_sentence_but_a_semicolon_in_prose_still_ends_one() -> None:
    rows = "Part: turbine blades; Warehouse: North; Quantity: 14\nPart: anchor chain; Warehouse: East"
    assert render.split_sentences(rows) == ["Part: turbine blades; Warehouse: North; Quantity: 14\n",
                                            "Part: anchor chain; Warehouse: East"]  # fmt: skip
    assert render.split_sentences("He came; she left.") == ["He came;", " she left."]
    out = render.highlighted_passage(rows, ["The turbine blades are in the North warehouse[1]."])
    assert re.findall(r"<mark>(.*?)</mark>", out) == ["Part: turbine blades; Warehouse: North; Quantity: 14"]


def test_location_says_slide_or_sheet_for_those_files() -> None:
    def where(path: str, lang: str) -> str:
        return render.passage_html(Chunk("x", path, "T", ("H",), 0, 4, "text", page=2), lang)

    assert "第 2 页" in where("a.pdf", "zh") and "slide 2" in where("b.pptx", "en")
    assert "第 2 个工作表" in where("c.xlsx", "zh") and "sheet 2" in where("c.xlsx", "en")


def test_the_sentence_supporting_the_claim_is_highlighted() -> None:
    out = render.highlighted_passage(COST.text, ["训练仅花费 557.6万美元[1]。"])
    assert re.findall(r"<mark>(.*?)</mark>", out) == [
        "DeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。"
    ]
    assert re.sub(r"</?mark>", "", out) == COST.text  # nothing else changes


def test_highlight_needs_the_claims_numbers() -> None:
    out = render.highlighted_passage(COST.text, ["训练在 2048 块 H800 GPU 上完成[1]。"])
    assert re.findall(r"<mark>(.*?)</mark>", out) == ["训练在 2048 块 H800 GPU 上完成。"]


def test_no_highlight_when_nothing_matches() -> None:
    assert "<mark>" not in render.highlighted_passage(COST.text, ["完全无关的话"])


def test_passage_shows_file_heading_page_and_escaped_text() -> None:
    out = render.passage_html(PDF, "zh", number=2, turn=5, claims=["The Transformer was introduced in 2017[2]."])
    assert 'id="src-5-2"' in out
    assert "papers/attention.pdf" in out and "第 3 页" in out and "字符 0–40" in out
    assert "<mark>The Transformer was introduced in 2017.</mark>" in out
    assert "Attention" in out  # no headings: the title stands in
    assert "<b" not in render.passage_html(Chunk("x", "a.md", "t", (), 0, 3, "<b>"), "zh")


# ---------------------------------------------------------------- the sources panel


def test_sources_list_each_citation_with_highlight() -> None:
    out = render.sources_html([Exchange(1, "q", cited_answer())], "zh")
    assert out.count('class="src cited"') == 2
    assert 'id="src-1-1"' in out and 'id="src-1-2"' in out
    assert "<mark>DeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。</mark>" in out
    assert "训练成本" in out and "引用来源" in out


def test_refusal_shows_related_passages_not_citations() -> None:
    refusal = Answer("火星？", "火星？", "资料中没有相关信息。", [], [], refused=True, related=HITS)
    out = render.sources_html([Exchange(1, "火星？", refusal)], "zh")
    assert "相关段落" in out and "引用来源" not in out
    assert 'id="src-' not in out and "<mark>" not in out
    assert out.count('class="related"') == 2


def test_answer_citing_nothing_shows_the_passages_it_was_given() -> None:
    answer = Answer("q", "q", "Some words.", [], HITS)
    out = render.sources_html([Exchange(1, "q", answer)], "en")
    assert "Passages given to the model" in out and "deepseek.md" in out and 'id="src-' not in out


def test_unsupported_sentences_are_listed() -> None:
    out = render.sources_html([Exchange(1, "q", cited_answer(unsupported=["火星上有三个月亮"]))], "zh")
    assert "以下句子在资料中找不到依据" in out and "<li>火星上有三个月亮</li>" in out


def test_details_show_query_every_score_and_timings() -> None:
    answer = cited_answer()
    answer.query = "上一个问题 它呢？"
    out = render.sources_html([Exchange(1, "它呢？", answer)], "en", show_details=True)
    assert "Search query" in out and "上一个问题 它呢？" in out
    assert out.count("<tr>") == 1 + len(HITS)
    assert "0.0300" in out and "0.800" in out and "3.00" in out and "–" in out  # a passage BM25 did not find
    assert "retrieval 0.10 s" in out and "total 1.70 s" in out
    assert "Retrieval details" not in render.sources_html([Exchange(1, "q", answer)], "en")


def test_newest_turn_first_and_open_older_ones_closed() -> None:
    turns = [Exchange(n, f"question {n}", cited_answer()) for n in (1, 2, 3)]
    out = render.sources_html(turns, "en")
    assert [int(n) for n in re.findall(r'id="turn-(\d+)"', out)] == [3, 2, 1]
    assert re.findall(r'<details class="turn" id="turn-\d+"( open)?>', out) == [" open", "", ""]


def test_only_recent_turns_are_kept() -> None:
    turns = [Exchange(n, "q", cited_answer()) for n in range(1, render.KEEP_TURNS + 5)]
    out = render.sources_html(turns, "zh")
    assert len(re.findall(r'id="turn-', out)) == render.KEEP_TURNS and 'id="turn-1"' not in out


def test_empty_panel_and_status_line() -> None:
    assert "回答的引用来源会显示在这里" in render.sources_html([], "zh")
    assert render.sources_html([], "en", status="Searching…") == '<p class="status">Searching…</p>'


def test_status_html_escapes_and_shows_progress() -> None:
    out = render.status_html(["<b>x</b>"], done=3, total=10)
    assert "&lt;b&gt;" in out and '<progress value="3" max="10">' in out


# ---------------------------------------------------------------- the page text


def test_both_languages_have_every_text_with_the_same_placeholders() -> None:
    assert set(TEXT["zh"]) == set(TEXT["en"])
    for key in TEXT["zh"]:
        zh, en = (set(re.findall(r"\{(\w+)", TEXT[lang][key])) for lang in ("zh", "en"))
        assert zh == en, key


def test_say_fills_values_and_defaults_to_chinese() -> None:
    assert say("en", "page", n=3) == "page 3"
    assert say("fr", "send") == say(None, "send") == "发送"
