"""rag.answer.answerable and the answerable_check guard: the chat model's yes/no, faked."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.answer.answerable import answerable_score, judge_messages
from rag.answer.pipeline import Done, Pipeline
from rag.index.build import build
from rag.models import get_spec
from tests.fakes import CountingFactory, FakeEmbedder, FakeGenerator, isolate, tiny_settings


class JudgingGenerator(FakeGenerator):
    """A FakeGenerator that also scores yes/no: P(yes) from a function of the user message."""

    def __init__(self, replies, score=lambda user: 0.9) -> None:  # type: ignore[no-untyped-def]
        super().__init__(replies)
        self.score = score
        self.judged: list[str] = []

    def yes_probability(self, messages: list[dict[str, str]]) -> float:
        user = messages[-1]["content"]
        self.judged.append(user)
        return self.score(user)


def test_messages_name_passage_question_and_answer_without_markers() -> None:
    messages = judge_messages("2021年的票房是多少？", "2020年的票房是12亿元[1]。", "2020年 票房\n 12亿元")
    assert messages[0]["role"] == "system" and "yes or no" in messages[0]["content"]
    user = messages[1]["content"]
    assert "Passage:\n2020年 票房 12亿元" in user
    assert "Question: 2021年的票房是多少？" in user
    assert "Proposed answer: 2020年的票房是12亿元。" in user and "[1]" not in user


def test_score_is_the_best_passage_and_stops_once_one_is_enough() -> None:
    scores = {"a": 0.2, "b": 0.7, "c": 0.99}
    asked: list[str] = []

    def judge(messages):  # type: ignore[no-untyped-def]
        passage = messages[1]["content"].split("\n")[1]
        asked.append(passage)
        return scores[passage]

    assert answerable_score("q", "ans", ["a", "b", "c"], judge) == 0.7
    assert asked == ["a", "b"]  # c not asked: b was enough
    asked.clear()
    assert answerable_score("q", "ans", ["a", "a", " ", "c"], judge, enough=1.0) == 0.99
    assert asked == ["a", "c"]  # each passage once, blanks never
    assert answerable_score("q", "ans", [], judge) is None


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, top_k=3, candidates=10, answerable_min=0.5)
    build(s, CountingFactory(), get_spec(s.embed_model).sha256)
    return s


REPLY = "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。"
QUESTION = "DeepSeek-V3 的训练成本是多少？"


def answer_of(pipeline: Pipeline):  # type: ignore[no-untyped-def]
    events = list(pipeline.ask(QUESTION))
    assert isinstance(events[-1], Done)
    return events[-1].answer


def test_a_passage_judged_not_to_answer_refuses_and_is_counted(settings) -> None:  # type: ignore[no-untyped-def]
    generator = JudgingGenerator([REPLY], score=lambda user: 0.1)
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=generator)
    answer = answer_of(pipeline)
    assert answer.refused and answer.answerable_score == pytest.approx(0.1)
    assert pipeline.guards.counts["answerable_check"] == 1
    assert "557.6" in generator.judged[0] and QUESTION in generator.judged[0]  # the cited passage was asked about
    assert "answerable_check" in answer.timings


def test_a_passage_judged_to_answer_keeps_the_answer(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=JudgingGenerator([REPLY], score=lambda u: 0.8))
    answer = answer_of(pipeline)
    assert not answer.refused and "557.6" in answer.text and answer.answerable_score == pytest.approx(0.8)
    assert not pipeline.guards.counts["answerable_check"]


def test_off_or_threshold_zero_or_no_scorer_never_refuses(settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from rag.guards import Guards

    low = lambda u: 0.01  # noqa: E731
    off = Pipeline(settings, embedder=FakeEmbedder(), generator=JudgingGenerator([REPLY], low),
                   guards=Guards.without(["answerable_check"]))  # fmt: skip
    assert not answer_of(off).refused and off.generator.judged == []  # type: ignore[union-attr]
    measuring = Pipeline(replace(settings, answerable_min=0.0), embedder=FakeEmbedder(), generator=JudgingGenerator([REPLY], low))
    answer = answer_of(measuring)
    assert not answer.refused and answer.answerable_score == pytest.approx(0.01)  # scored, not refused
    plain = Pipeline(settings, embedder=FakeEmbedder(), generator=FakeGenerator([REPLY]))
    answer = answer_of(plain)
    assert not answer.refused and answer.answerable_score is None
