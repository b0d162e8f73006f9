"""rag_eval.ablation and `rag eval ablation` / `answers --without`: what each guard adds, measured with fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.guards import GUARDS, Guards
from rag.schema import Answer
from rag_eval.ablation import Scores, format_ablation, run_ablation
from rag_eval.metrics import AnswerMetrics, EvalQuestion, Evidence, evaluate_answers

ANSWERABLE = EvalQuestion("a1", "Tern 3 多重？", "", ("12 公斤",), (Evidence("t.md", "Tern 3 重 12 公斤"),), "factoid")
ALSO = EvalQuestion("a2", "Tern 3 多长？", "", ("150 厘米",), (Evidence("t.md", "Tern 3 长 150 厘米"),), "factoid")
UNANSWERABLE = EvalQuestion("u1", "Tern 3 的设计师是谁？", "", (), (), "unanswerable")
QUESTIONS = [ANSWERABLE, ALSO, UNANSWERABLE]


def scripted(calls: list[tuple[frozenset[str], str]]):  # type: ignore[no-untyped-def]
    """A stand-in pipeline whose answers depend on the guards, the way the real rules do:
    "echo" turns the unanswerable question's made-up answer into a refusal; "focus_retry" turns a
    refusal of a2 into its answer; "invented" never fires. Returns (answer, score) for run_ablation."""

    def ask_with(g: Guards):  # type: ignore[no-untyped-def]
        def ask(question: str) -> Answer:
            calls.append((g.disabled, question))
            if question == UNANSWERABLE.question:
                if g.when("echo", True):
                    return Answer(question, question, "资料中没有相关信息。", [], [], refused=True)
                return Answer(question, question, "Tern 3 的设计师是 Tern 3 的设计师。", [], [])
            if question == ALSO.question and not g.when("focus_retry", True):
                return Answer(question, question, "资料中没有相关信息。", [], [], refused=True)
            g.when("invented", False)
            terms = ANSWERABLE.must_include if question == ANSWERABLE.question else ALSO.must_include
            return Answer(question, question, f"答案是 {terms[0]}。", [], [])

        return ask

    def answer(g: Guards, i: int):  # type: ignore[no-untyped-def]
        return evaluate_answers([QUESTIONS[i]], ask_with(g)).results[0]

    def score(results):  # type: ignore[no-untyped-def]
        return Scores.of_answers(AnswerMetrics.of(results))

    return answer, score


def whole_runs(calls: list[tuple[frozenset[str], str]]):  # type: ignore[no-untyped-def]
    """Scores of answering every question with guards `disabled`: what the ablation must agree with."""
    answer, score = scripted(calls)
    return lambda disabled: score([answer(Guards.without(disabled), i) for i in range(len(QUESTIONS))])


def test_each_guard_that_fired_is_run_again_only_where_it_fired() -> None:
    calls: list[tuple[frozenset[str], str]] = []
    seen: list[str] = []
    answer, score = scripted(calls)
    report = run_ablation(answer, score, len(QUESTIONS), ["echo", "focus_retry", "invented"],
                          lambda name, *_: seen.append(name))  # fmt: skip
    assert seen == ["", "echo", "focus_retry"]
    everything = [(frozenset(), q.question) for q in QUESTIONS]
    # Without echo only u1 is asked again, without focus_retry only a2; "invented" never fired: not run.
    assert calls == [*everything, ({"echo"}, UNANSWERABLE.question), ({"focus_retry"}, ALSO.question)]
    assert report.fired_on == [{}, {"focus_retry": 1}, {"echo": 1}]
    assert report.changed == {"echo": [2], "focus_retry": [1]}
    assert report.fired["echo"] == 1 and report.fired["focus_retry"] == 1 and report.fired["invented"] == 0
    rows = {r.guard: r for r in report.rows(["echo", "focus_retry", "invented"])}
    assert rows["echo"].asked == 1 and rows["invented"].asked == 0
    assert rows["echo"].deltas["refusal"] == pytest.approx(1.0)  # it refuses the unanswerable question
    assert rows["echo"].deltas["key terms"] == 0.0
    assert rows["focus_retry"].deltas["key terms"] == pytest.approx(0.5)  # it answers a2
    assert rows["focus_retry"].deltas["false refusal"] == pytest.approx(-0.5)
    assert not rows["invented"].ran and set(rows["invented"].deltas.values()) <= {0.0, None}  # None: no citations


def test_merged_scores_are_those_of_answering_every_question_again() -> None:
    answer, score = scripted([])
    report = run_ablation(answer, score, len(QUESTIONS))
    whole = whole_runs([])
    assert report.baseline == whole([])
    for name, scores in report.without.items():
        assert scores == whole([name]), name


def test_a_guard_that_fires_on_every_question_asks_every_question_again() -> None:
    calls: list[tuple[frozenset[str], str]] = []

    def answer(g: Guards, i: int) -> str:
        calls.append((g.disabled, QUESTIONS[i].id))
        return "fixed" if g.when("english_tokens", True) else "loose"

    report = run_ablation(answer, lambda rs: Scores(rs.count("fixed") / len(rs), None, None, None), 3, ["english_tokens"])
    assert len(calls) == 6 and report.touched("english_tokens") == [0, 1, 2]
    assert report.without["english_tokens"].key_terms == 0.0 and report.baseline.key_terms == 1.0
    assert report.changed == {"english_tokens": [0, 1, 2]}


def test_the_table_names_every_guard_asked_for() -> None:
    answer, score = scripted([])
    report = run_ablation(answer, score, len(QUESTIONS), ["echo", "invented"])
    table = format_ablation(report, ["echo", "invented"])
    assert "guard" in table and "key terms Δ" in table and "citation precision Δ" in table and "asked again" in table
    echo = next(line for line in table.splitlines() if line.startswith("echo"))
    assert "+1.000" in echo
    assert "0 (not run)" in next(line for line in table.splitlines() if line.startswith("invented"))
    data = report.to_dict()
    assert [r["guard"] for r in data["rows"]] == list(GUARDS)
    json.dumps(data)  # the --json report is plain data


def test_rgb_rows_with_a_positive_passage_are_answerable_and_noise_1_rows_are_not() -> None:
    from rag_eval.rgb import NoiseResult

    def row(noise: float, correct: bool, refused: bool) -> NoiseResult:
        return NoiseResult("1", noise, "q", [["x"]], [], "a", "a", correct, correct, refused, {})

    results = [row(0.4, True, False), row(0.4, False, True), row(1.0, False, True), row(1.0, False, False)]
    assert Scores.of_rgb(results) == Scores(key_terms=0.5, refusal=0.5, false_refusal=0.5, citation_precision=None)


@pytest.fixture
def question_file(tmp_path: Path) -> Path:
    path = tmp_path / "q.jsonl"
    row = {"id": "a1", "question": "Tern 3 多重？", "must_include": ["12"], "evidence": [{"quote": "12 公斤"}], "type": "f"}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["answers", "ablation"])
def test_an_unknown_guard_name_is_an_error_that_lists_the_names(command: str, question_file: Path) -> None:
    from rag_eval.cli import eval_app

    option = "--without" if command == "answers" else "--guards"
    result = CliRunner().invoke(eval_app, [command, str(question_file), option, "echo,no_such_guard"])
    assert result.exit_code == 1
    assert "no_such_guard" in result.output and "focus_retry" in result.output and "evidence_threshold" in result.output


def test_answers_without_a_guard_prints_what_fired(
    question_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.answer import pipeline as pipeline_module
    from rag_eval.cli import eval_app

    seen: list[frozenset[str]] = []

    class Scripted(pipeline_module.Pipeline):
        def get_generator(self):  # type: ignore[no-untyped-def]
            return None

        def ask(self, question, history=(), k=None, stop=None, path="auto"):  # type: ignore[no-untyped-def]
            seen.append(self.guards.disabled)
            self.guards.fired("invented")
            yield pipeline_module.Done(Answer(question, question, "它重 12 公斤。", [], []))

    monkeypatch.setattr(pipeline_module, "Pipeline", Scripted)
    monkeypatch.delenv("RAG_DISABLED_GUARDS", raising=False)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(eval_app, ["answers", str(question_file), "--without", "echo, focus_retry", "-q",
                                           "--json", str(out)], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen == [{"echo", "focus_retry"}]
    assert "guards off: echo, focus_retry; guards fired: invented 1" in result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["disabled_guards"] == ["echo", "focus_retry"] and data["guards_fired"] == {"invented": 1}


def test_the_ablation_report_keeps_each_answer_with_every_guard_on(
    question_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay at other thresholds (rag eval refusal-sweep) reads the answers, not only the scores."""
    from rag.answer import pipeline as pipeline_module
    from rag_eval.cli import eval_app

    class Scripted(pipeline_module.Pipeline):
        def get_generator(self):  # type: ignore[no-untyped-def]
            return None

        def ask(self, question, history=(), k=None, stop=None, path="auto"):  # type: ignore[no-untyped-def]
            self.guards.fired("invented")
            yield pipeline_module.Done(Answer(question, question, "它重 12 公斤。", [], []))

    monkeypatch.setattr(pipeline_module, "Pipeline", Scripted)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(eval_app, ["ablation", str(question_file), "-q", "--no-replay", "--json", str(out)],
                                catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [q["answer"] for q in data["questions"]] == ["它重 12 公斤。"]
    assert "answerable_score" in data["questions"][0]
