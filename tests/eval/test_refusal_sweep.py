"""`rag eval refusal-sweep`: replaying a scored answers report at other thresholds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rag_eval.refusal_sweep import (
    ReportError,
    SweepRow,
    answered_scores,
    load_rows,
    missing_terms,
    refused_at,
    sweep,
    term_check,
)


def row(id: str, answerable: bool, score: float | None, *, refused: bool = False, has_terms: bool = True,
        question: str = "How tall is the tower?", cited: str = "The tower is 40 metres tall.") -> dict[str, Any]:  # fmt: skip
    """One question as `rag eval answers --json` writes it (only the keys a replay reads, and a few more)."""
    return {
        "id": id, "type": "fact" if answerable else "unanswerable", "question": question, "answerable": answerable,
        "answer": "" if refused else "40 metres [1].", "refused": refused, "has_terms": has_terms,
        "answerable_score": score, "citations": [{"number": 1, "text": cited}] if cited else [],
        "passages": [{"number": 1, "text": "First passage shown."}],
    }  # fmt: skip


def report(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"seconds": 1.0, "overall": {}, "questions": list(rows)}


REPORT = report(
    row("a1", True, 0.9),
    row("a2", True, 0.3),
    row("a3", True, None, refused=True, has_terms=False),  # refused by the run, before the check
    row("a4", True, 0.6, has_terms=False),
    row("u1", False, 0.3),
    row("u2", False, 0.1),
)


def test_an_answer_scored_0_3_is_refused_at_0_45_but_not_at_0_25() -> None:
    rows = {r.id: r for r in load_rows(REPORT)}
    assert refused_at(rows["a2"], 0.45) and not refused_at(rows["a2"], 0.25)
    assert not refused_at(rows["a2"], 0.3)  # refused below the threshold, not at it


def test_answers_the_run_refused_stay_refused_at_every_threshold() -> None:
    rows = {r.id: r for r in load_rows(REPORT)}
    assert all(refused_at(rows["a3"], t) for t in (0.0, 0.25, 0.5))
    assert [s for s, _, _ in answered_scores(list(rows.values()))] == [0.1, 0.3, 0.3, 0.6, 0.9]


def test_the_sweep_gives_accuracy_refusal_and_false_refusal_at_each_threshold() -> None:
    table = sweep(load_rows(REPORT), (0.0, 0.25, 0.45, 0.7))
    assert table == [
        SweepRow(0.0, accuracy=2 / 4, refusal=0.0, false_refusal=1 / 4),
        SweepRow(0.25, accuracy=2 / 4, refusal=1 / 2, false_refusal=1 / 4),
        SweepRow(0.45, accuracy=1 / 4, refusal=1.0, false_refusal=2 / 4),
        SweepRow(0.7, accuracy=1 / 4, refusal=1.0, false_refusal=3 / 4),
    ]


def test_a_report_without_unanswerable_questions_has_no_refusal_rate() -> None:
    assert sweep(load_rows(report(row("a1", True, 0.9))), (0.5,)) == [SweepRow(0.5, 1.0, None, 0.0)]


def test_the_key_term_check_refuses_answers_whose_citations_miss_a_term_of_the_question() -> None:
    def terms(question: str) -> set[str]:  # a stand-in for the jieba extractor
        return {w for w in question.lower().rstrip("?").split() if w.isdigit() or w[0].isupper()}

    rows = load_rows(report(
        row("a1", True, 0.9, question="What opened in 1921?", cited="The bridge opened in 1921."),
        row("a2", True, 0.9, question="What opened in 1930?", cited="The bridge opened in 1921."),
        row("u1", False, 0.9, question="Who built it in 1877?", cited="It was built of stone."),
        row("u2", False, 0.9, question="Who built it in 1877?", cited="", refused=True),
    ))  # fmt: skip
    assert missing_terms(rows[1], terms) == ("1930",)
    check = term_check(rows, terms)
    assert (check.rates.accuracy, check.rates.refusal, check.rates.false_refusal) == (0.5, 1.0, 0.5)
    assert [(m.id, m.missing) for m in check.misses] == [("a2", ("1930",)), ("u1", ("1877",))]


def test_without_citations_the_first_passage_shown_is_checked() -> None:
    (r,) = load_rows(report(row("a1", True, 0.9, question="Anything about passage?", cited="")))
    assert missing_terms(r, lambda q: {"firstpassage"}) == ()  # normalised: lower case, spaces removed


def test_the_jieba_terms_are_numbers_latin_words_titles_and_proper_nouns() -> None:
    from rag_eval.refusal_sweep import constraint_terms

    terms = constraint_terms("《海边小记》的作者在 2019 年用 Python 写了什么？")
    assert {"2019", "python", "海边小记"} <= terms


@pytest.mark.parametrize("data", [{}, {"questions": []}, {"overall": {}}, []])
def test_a_report_without_questions_is_an_error_that_says_how_to_make_one(data: Any) -> None:
    with pytest.raises(ReportError) as exc:
        load_rows(data)
    assert "RAG_ANSWERABLE_MIN=0" in exc.value.hint


def test_a_report_whose_answers_were_not_scored_is_an_error() -> None:
    with pytest.raises(ReportError, match="answerable_score") as exc:
        load_rows(report(row("a1", True, None), row("u1", False, None)))
    assert "RAG_ANSWERABLE_MIN=0" in exc.value.hint


def test_a_question_row_missing_a_key_is_an_error() -> None:
    bad = row("a1", True, 0.5)
    del bad["citations"]
    with pytest.raises(ReportError, match="Question 1"):
        load_rows(report(bad))


def test_the_command_prints_the_table_and_the_scores(tmp_path: Path) -> None:
    from rag_eval.cli import eval_app

    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT), encoding="utf-8")
    result = CliRunner().invoke(eval_app, ["refusal-sweep", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "6 questions; accuracy / refusal / false refusal"
    assert "answerable_min 0.00: 0.500 / 0.000 / 0.250" in lines
    assert "answerable_min 0.25: 0.500 / 0.500 / 0.250" in lines
    assert "answerable_min 0.45: 0.250 / 1.000 / 0.500" in lines
    assert "  0.300 UNANSWERABLE u1" in lines and "  0.900 answerable   a1" in lines
    assert "key-term check" not in result.output


def test_the_command_with_terms_adds_the_key_term_check(tmp_path: Path) -> None:
    from rag_eval.cli import eval_app

    path = tmp_path / "report.json"
    data = report(row("a1", True, 0.9, question="Opened in 1921?", cited="Gate 3 opened in 1921."),
                  row("u1", False, 0.9, question="Opened in 1877?", cited="Gate 3 opened in 1921."))  # fmt: skip
    path.write_text(json.dumps(data), encoding="utf-8")
    result = CliRunner().invoke(eval_app, ["refusal-sweep", str(path), "--terms"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "key-term check: 1.000 / 1.000 / 0.000" in result.output
    assert "  UNANSWERABLE u1 misses ['1877']" in result.output


@pytest.mark.parametrize("content", ['{"questions": [{"id": "a1"}]}', "not json", None])
def test_the_command_fails_clearly_on_a_report_it_cannot_replay(tmp_path: Path, content: str | None) -> None:
    from rag_eval.cli import eval_app

    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(eval_app, ["refusal-sweep", str(path)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "RAG_ANSWERABLE_MIN=0" in result.output


def test_the_command_says_to_score_the_answers_when_no_score_is_in_the_report(tmp_path: Path) -> None:
    from rag_eval.cli import eval_app

    path = tmp_path / "report.json"
    path.write_text(json.dumps(report(row("a1", True, None))), encoding="utf-8")
    result = CliRunner().invoke(eval_app, ["refusal-sweep", str(path)])
    assert result.exit_code == 1
    assert "answerable_score" in result.output and "RAG_ANSWERABLE_MIN=0 rag eval answers" in result.output
