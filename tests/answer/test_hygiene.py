"""rag/answer/hygiene.py: each sentence said once; unsupported sentences under a marked note."""

from __future__ import annotations

import pytest

from rag.answer.citations import CheckedAnswer
from rag.answer.hygiene import UNSUPPORTED_NOTE, answer_body, drop_repeats, set_aside_unsupported


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("甲于 2024 年发布[1]。甲于 2024 年发布。它很快[2]。", "甲于 2024 年发布[1]。它很快[2]。"),
        ("The pump runs at 40 rpm[1]. The pump runs at 40 rpm [1]. It is quiet.", "The pump runs at 40 rpm[1]. It is quiet."),
        ("它支持文本、图像、文本[2]。", "它支持文本、图像[2]。"),
        ("Colours: red; blue; red; green.", "Colours: red; blue; green."),
        ("Options:\n1. Red apples[1]\n2. Green pears\n3. Red apples\n4. Blue plums.",
         "Options:\n1. Red apples[1]\n2. Green pears\n3. Blue plums."),
        ("- 苹果\n- 梨\n- 苹果", "- 苹果\n- 梨"),
    ],
)  # fmt: skip
def test_drop_repeats(raw: str, clean: str) -> None:
    assert drop_repeats(raw) == clean


@pytest.mark.parametrize(
    "text",
    ["是。是。", "It has 4 wheels. It has 5 wheels.", "第一段。\n\n第二段。", "A、B、C。", "Yes. Yes, it does."],
)
def test_text_without_repeats_is_unchanged(text: str) -> None:
    assert drop_repeats(text) == text


def test_unsupported_sentences_move_under_the_note() -> None:
    checked = CheckedAnswer(
        "X has 4 wheels[1]. It is blue and tall.\n1. Alpha is 3[1]\n2. Beta is green\n3. Gamma is 5[1]",
        [], ["It is blue and tall", "Beta is green"], 4,
    )  # fmt: skip
    out = set_aside_unsupported(checked, "en").text
    body, note = out.split("\n\n" + UNSUPPORTED_NOTE["en"] + "\n")
    assert body == "X has 4 wheels[1].\n1. Alpha is 3[1]\n2. Gamma is 5[1]"
    assert note == "It is blue and tall.\nBeta is green"
    assert answer_body(out) == body


def test_an_answer_with_every_sentence_supported_is_unchanged() -> None:
    checked = CheckedAnswer("甲是乙[1]。", [], [], 1)
    assert set_aside_unsupported(checked, "zh") is checked


def test_a_wholly_unsupported_answer_is_only_the_note() -> None:
    out = set_aside_unsupported(CheckedAnswer("甲公司成立于2020年。", [], ["甲公司成立于2020年"], 1), "zh").text
    assert out == f"{UNSUPPORTED_NOTE['zh']}\n甲公司成立于2020年。"
    assert answer_body(out) == ""
