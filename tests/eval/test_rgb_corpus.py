"""rag_eval.rgb_corpus, answer groups and `--corpus`: a foreign corpus end to end, with fakes (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.errors import RagError
from rag.schema import Answer, Chunk, Citation, Hit
from rag_eval import rgb, rgb_corpus
from rag_eval.metrics import EvalQuestion, evaluate_answers, load_questions
from tests.fakes import FakeEmbedder, isolate, write_rgb_rows

ROWS = [
    {"id": 0, "query": "桥梁事故死亡人数", "answer": [["12人", "十二人"]],
     "positive": ["大批民众聚集。事故造成12人死亡、14人受伤。", "警方证实12人丧生。"],
     "negative": ["车站事故造成23人死亡。", "新年活动吸引民众。"]},
    {"id": 1, "query": "会议在哪座城市举行", "answer": ["雅加达"],
     "positive": ["峰会在雅加达举行。"], "negative": ["峰会讨论了贸易。", "各国领导人出席。"]},
    {"id": 2, "query": "今年的总票房是多少", "answer": ["300亿"],
     "positive": ["全年总票房达300亿元。"], "negative": ["电影市场回暖。", "观众人数增加。"]},
    # Its answer is in row 0's positives: it cannot be a question the corpus does not answer.
    {"id": 3, "query": "事故中有多少人受伤", "answer": ["14人"],
     "positive": ["事故造成14人受伤。"], "negative": ["医院收治伤者。"]},
]  # fmt: skip


@pytest.fixture
def rows(tmp_path: Path) -> list[rgb.RgbRow]:
    path = tmp_path / "zh_refine.json"
    write_rgb_rows(path, ROWS)
    return rgb.load_rows(path)


def test_answerable_rows_bring_positives_and_noise_held_rows_only_noise(rows: list[rgb.RgbRow]) -> None:
    corpus = rgb_corpus.build_corpus(rows[:1] + rows[2:], answerable=1, unanswerable=2, noise=1, max_positive=5)
    texts = set(corpus.passages)
    assert {"大批民众聚集。事故造成12人死亡、14人受伤。", "警方证实12人丧生。", "车站事故造成23人死亡。"} <= texts
    assert "全年总票房达300亿元。" not in texts and "电影市场回暖。" in texts  # row 2 held: its positive left out
    held = [q for q in corpus.questions if q["type"] == "unanswerable"]
    assert [q["question"] for q in held] == ["今年的总票房是多少"]  # row 3's answer (14人) is in the corpus
    answerable = corpus.questions[0]
    assert answerable["groups"] == [["12人", "十二人"]]
    assert [e["quote"] for e in answerable["evidence"]] == ["事故造成12人死亡、14人受伤。", "警方证实12人丧生。"]


def test_evidence_quotes_are_the_sentences_naming_an_alternative() -> None:
    gold = (("12人",), ("14人",))
    assert rgb_corpus.evidence_quotes(gold, "大批民众聚集。造成12人死亡。另有14人受伤。") == ["造成12人死亡。", "另有14人受伤。"]
    long = "甲" * 200 + "造成12人死亡" + "乙" * 200
    (quote,) = rgb_corpus.evidence_quotes(((("12人",),)), long)
    assert "12人" in quote and len(quote) <= rgb_corpus.QUOTE_CHARS and quote in long


def test_written_corpus_is_a_folder_and_a_question_file(rows: list[rgb.RgbRow], tmp_path: Path) -> None:
    corpus = rgb_corpus.build_corpus(rows, answerable=2, unanswerable=1, noise=1)
    questions = rgb_corpus.write_corpus(corpus, tmp_path / "out", "zh", {"seed": 0})
    files = sorted((tmp_path / "out" / "corpus").glob("*.txt"))
    assert len(files) == len(corpus.passages) and files[0].name == "zh-00000.txt"
    loaded = load_questions(questions)
    assert all(q.answerable == bool(q.groups) for q in loaded)
    assert json.loads((tmp_path / "out" / "corpus.json").read_text())["passages"] == len(files)


def test_two_part_questions_ask_two_answerable_ones_at_once(rows: list[rgb.RgbRow], tmp_path: Path) -> None:
    corpus = rgb_corpus.build_corpus(rows, answerable=3, unanswerable=0, noise=1)
    rgb_corpus.write_corpus(corpus, tmp_path / "out", "zh", {"seed": 0}, pairs=1)
    (pair,) = load_questions(tmp_path / "out" / "pairs.jsonl")
    parts = [q for q in corpus.questions if q["id"] in pair.id.split("+")]
    assert len(parts) == 2 and pair.question.count("？") == 2
    assert list(pair.groups) == [tuple(g) for q in parts for g in q["groups"]]  # every part's answer is asked for
    assert len(pair.evidence) == sum(len(q["evidence"]) for q in parts)


def test_output_inside_the_repository_is_refused(rows: list[rgb.RgbRow]) -> None:
    corpus = rgb_corpus.build_corpus(rows, answerable=1, unanswerable=0)
    with pytest.raises(rgb_corpus.CorpusOutError, match="inside the repository"):
        rgb_corpus.write_corpus(corpus, rgb_corpus.REPO / "rgb-copy", "zh", {})


# ---------------------------------------------------------------- answer groups


def _chunk(text: str) -> Chunk:
    return Chunk(id=text[:8], path="a.txt", title="a", headings=(), start=0, end=len(text), text=text)


def test_groups_accuracy_part_credit_and_the_note_left_out() -> None:
    from rag.answer.hygiene import UNSUPPORTED_NOTE

    passage = _chunk("The event drew 312 volunteers, who collected 4.8 tonnes.")
    q = [
        EvalQuestion("a", "How many came, and what did they collect?", "", (), (), "multi", (("312",), ("4.8", "4,8"))),
        EvalQuestion("b", "How many came?", "", (), (), "factoid", (("312", "three hundred and twelve"),)),
        EvalQuestion("u", "Who organised it?", "", (), (), "unanswerable"),
    ]
    answers = {
        "How many came, and what did they collect?": "312 volunteers came[1].",
        # only the note names it: not presented as the answer, so not counted
        "How many came?": f"It was well attended.\n\n{UNSUPPORTED_NOTE['en']}\n312 people came.",
        "Who organised it?": "The documents do not contain information about this.",
    }

    def ask(question: str) -> Answer:
        refused = question == "Who organised it?"
        cited = [] if refused or "note" in question else [Citation(1, passage)]
        return Answer(question, question, answers[question], cited, [Hit(passage, 1.0)], refused=refused)

    report = evaluate_answers(q, ask)
    m = report.overall
    assert [r.part_credit for r in report.results[:2]] == [0.5, 0.0]
    assert m.key_term_accuracy == 0.0 and m.part_credit == 0.25
    assert m.accuracy_anywhere == 0.5  # b's figure is shown, under the note
    assert m.refusal_accuracy == 1.0 and m.false_refusal_rate == 0.0
    assert m.citation_precision_independent == 1.0  # the cited passage holds an alternative


def test_groups_in_a_question_file(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    row = {"id": "x", "question": "Which?", "groups": [["a", "b"], "c"], "evidence": [], "type": "factoid"}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (question,) = load_questions(path)
    assert question.groups == (("a", "b"), ("c",)) and question.answerable
    path.write_text(json.dumps({**row, "groups": [[]]}) + "\n", encoding="utf-8")
    with pytest.raises(RagError, match="groups"):
        load_questions(path)


# ---------------------------------------------------------------- the commands


def test_corpus_from_rgb_then_retrieval_on_that_corpus(rows: list[rgb.RgbRow], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rag.index.embedding
    from rag.cli import app

    isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(rag.index.embedding, "load_document_embedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setattr(rag.index.embedding, "load_embedder", lambda *a, **k: FakeEmbedder())
    source = tmp_path / "zh_refine.json"
    write_rgb_rows(source, ROWS)
    made = CliRunner().invoke(app, ["eval", "corpus-from-rgb", str(tmp_path / "rgb"), "--rgb-file", str(source),
                                    "--rows", "2", "--unanswerable", "1", "--noise", "1"])  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "answerable" in made.stdout and "--corpus" in made.stdout
    index = tmp_path / "idx"
    ran = CliRunner().invoke(app, ["eval", "retrieval", str(tmp_path / "rgb" / "questions.jsonl"), "--corpus",
                                   str(tmp_path / "rgb" / "corpus"), "--index-dir", str(index), "-q"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert "hit@5" in ran.stdout and (index / "current").exists()
    assert not (tmp_path / "index").exists()  # the product's own index folder is never touched


def test_corpus_that_is_not_a_folder_is_an_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rag.cli import app

    isolate(monkeypatch, tmp_path)
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "x", "question": "q", "evidence": [], "type": "t"}) + "\n")
    ran = CliRunner().invoke(app, ["eval", "answers", str(tmp_path / "q.jsonl"), "--corpus", str(tmp_path / "nope")])
    assert ran.exit_code == 1 and "is not a folder" in ran.output
