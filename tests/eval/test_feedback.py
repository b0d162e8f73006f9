"""Thumbs-up answers as a question set for `rag eval`; thumbs-down ones listed for review."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rag.conversations import ConversationStore
from rag.schema import Answer, Chunk, Citation
from rag_eval.feedback import feedback_questions, figures, is_conversations_file, load_feedback_questions

COST = Chunk("c1", "deepseek.md", "DeepSeek-V3", ("训练成本",), 0, 30, "完整训练仅花费 557.6万美元，使用 FP8。")


def rated_store(path: Path) -> ConversationStore:
    store = ConversationStore(path)
    conv = store.create("训练成本是多少？", "default")
    good = Answer("训练成本是多少？", "", "训练仅花费 557.6万美元[1]，用了 2048 块 GPU。", [Citation(1, COST)], [])
    bad = Answer("谁发明了电话？", "", "贝尔在 1876 年发明了电话。", [], [])
    refusal = Answer("今天天气如何？", "", "资料中没有相关信息。", [], [], refused=True)
    for number, (question, answer, rating) in enumerate(
        [("训练成本是多少？", good, 1), ("谁发明了电话？", bad, -1), ("今天天气如何？", refusal, 1)], start=1
    ):
        m = store.add_message(conv.id, number, question, answer, "default")
        store.rate(m.id, rating)
    return store


def test_figures_are_the_numbers_an_answer_states() -> None:
    assert figures("训练仅花费 557.6万美元[1]，用了 2048 块 GPU，共 2048 块。") == ("557.6", "2048")
    assert figures("DeepSeek-V3 uses FP8 [2].") == ()


def test_thumbs_up_rows_become_questions_and_thumbs_down_rows_are_to_review(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    rated_store(path).close()
    assert is_conversations_file(path) and not is_conversations_file(Path(__file__))
    questions, review = load_feedback_questions(path)
    cost, weather = questions
    assert (cost.question, cost.must_include, cost.type) == ("训练成本是多少？", ("557.6", "2048"), "feedback")
    assert [(e.doc, e.quote) for e in cost.evidence] == [("deepseek.md", COST.text)] and cost.answerable
    assert not weather.answerable and weather.must_include == ()  # a liked refusal: refusing is right
    assert [r.question for r in review] == ["谁发明了电话？"]


def test_the_latest_rating_of_a_question_wins(tmp_path: Path) -> None:
    store = rated_store(tmp_path / "c.sqlite3")
    rows = store.feedback()
    later = [*rows, type(rows[0])(**{**rows[0].__dict__, "message": 99, "rating": -1})]
    assert [q.question for q in feedback_questions(later)] == ["今天天气如何？"]


def test_rag_eval_feedback_lists_both_and_writes_a_question_file(tmp_path: Path) -> None:
    from rag_eval.cli import eval_app
    from rag_eval.metrics import load_questions

    path = tmp_path / "conversations.sqlite3"
    rated_store(path).close()
    out = tmp_path / "feedback.jsonl"
    result = CliRunner().invoke(eval_app, ["feedback", str(path), "--jsonl", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 questions from thumbs-up answers" in result.output and "1 thumbs-down answers to review" in result.output
    assert "谁发明了电话？" in result.output and "贝尔在 1876 年发明了电话" in result.output
    assert [q.question for q in load_questions(out)] == ["训练成本是多少？", "今天天气如何？"]
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[0])["must_include"] == ["557.6", "2048"]
