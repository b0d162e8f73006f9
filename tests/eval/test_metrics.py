"""Retrieval metrics on hand-made questions and a fake ranker (no models, no index)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.schema import Chunk, Hit
from rag_eval.metrics import (
    EvalFileError,
    EvalQuestion,
    Evidence,
    covers,
    evaluate_retrieval,
    format_misses,
    format_table,
    load_questions,
    parse_ks,
)


def chunk(text: str, path: str = "corpus-a.md", start: int = 0) -> Chunk:
    return Chunk(id=f"{path}:{start}", path=path, title=path, headings=(), start=start, end=start + len(text), text=text)


def q(
    qid: str, quotes: list[str], qtype: str = "factoid", docs: list[str] | None = None, must: tuple[str, ...] = ()
) -> EvalQuestion:
    docs = docs or ["000_seed.txt"] * len(quotes)
    return EvalQuestion(
        id=qid,
        question=f"question {qid}",
        answer="",
        must_include=must,
        evidence=tuple(Evidence(d, quote) for d, quote in zip(docs, quotes)),
        type=qtype,
    )


def fake_ranker(rankings: dict[str, list[Chunk]], calls: list[tuple[str, int]] | None = None):  # type: ignore[no-untyped-def]
    """rank_fn returning, for 'question <id>', the given chunks as Hits with descending scores."""

    def rank(question: str, k: int) -> list[Hit]:
        if calls is not None:
            calls.append((question, k))
        chunks = rankings[question.removeprefix("question ")]
        return [Hit(c, score=1.0 / (i + 1), dense_score=0.5, lexical_score=None) for i, c in enumerate(chunks)][:k]

    return rank


FILLER = [chunk(f"无关的段落 {i}。", "other.md", 1000 + i) for i in range(12)]


# ---------------------------------------------------------------- matching


def test_whitespace_differences_still_match() -> None:
    assert covers("DBRX 采用 MoE架构：1320 亿\n参数，每个token激活", "MoE 架构：1320亿参数")
    assert covers("Claude\tSonnet\u30004.5 于 2025年9月", "Claude Sonnet 4.5")
    assert not covers("MoE架构：1320亿参数", "MoE架构：1320亿个参数")


def test_quote_split_across_two_chunks_is_a_miss() -> None:
    quote = "每个token激活360亿参数"
    left = chunk("DBRX 总参数1320亿，每个token激活", start=0)
    right = chunk("360亿参数，训练数据 12T token。", start=20)
    assert not covers(left.text, quote) and not covers(right.text, quote)
    report = evaluate_retrieval([q("a", [quote])], fake_ranker({"a": [left, right, *FILLER]}), ks=[1, 5, 10])
    r = report.questions[0]
    assert r.first_rank is None
    assert report.overall.hit == {1: 0.0, 5: 0.0, 10: 0.0}
    assert report.overall.recall[10] == 0.0
    assert report.overall.mrr == 0.0
    assert [m.id for m in report.misses(5)] == ["a"]
    # What was retrieved instead is in the report.
    assert [p.text for p in r.top(2)] == [left.text, right.text]


def test_quote_split_is_reported_as_unreachable_when_corpus_given() -> None:
    quote = "每个token激活360亿参数"
    left, right = chunk("总参数1320亿，每个token激活"), chunk("360亿参数。", start=20)
    report = evaluate_retrieval([q("a", [quote])], fake_ranker({"a": [left, right]}), ks=[5], corpus=[left, right])
    assert report.questions[0].quotes[0].in_index is False
    assert report.unreachable == [("a", quote)]
    assert "no indexed chunk contains" in format_misses(report, k=5)


def test_match_is_by_content_not_by_seed_file_name() -> None:
    # The question names the seed file; the corpus file has another name.
    c = chunk("2025年9月 - Claude Sonnet 4.5 发布", path="llm-milestones-2024-2025.md")
    question = q("a", ["2025年9月 - Claude Sonnet 4.5"], docs=["000_6f273427e8c15a0e.txt"])
    report = evaluate_retrieval([question], fake_ranker({"a": [c]}), ks=[1], corpus=[c])
    assert report.overall.hit[1] == 1.0
    assert report.questions[0].quotes[0].found_in == ["llm-milestones-2024-2025.md"]


# ---------------------------------------------------------------- metrics


def test_multi_doc_question_with_one_of_two_quotes_retrieved() -> None:
    quotes = ["DBRX总参数1320亿", "Mixtral 8x7B 每次激活两个专家"]
    found = chunk("Databricks 的 DBRX总参数1320亿。", path="a.md")
    report = evaluate_retrieval(
        [q("m", quotes, "multi_doc", docs=["000.txt", "001.txt"])],
        fake_ranker({"m": [FILLER[0], found, *FILLER[1:]]}),
        ks=[1, 3, 10],
    )
    r = report.questions[0]
    assert [qr.rank for qr in r.quotes] == [2, None]
    assert r.recall_at(3) == 0.5 and r.hit_at(3) and not r.hit_at(1)
    assert report.overall.recall == {1: 0.0, 3: 0.5, 10: 0.5}
    assert report.overall.hit == {1: 0.0, 3: 1.0, 10: 1.0}
    assert report.overall.mrr == pytest.approx(0.5)
    assert r.passages[1].covers == [0]


def test_unanswerable_question_counts_in_no_denominator() -> None:
    answer_chunk = chunk("GPT-3 提升到1750亿参数，只提供API服务")
    questions = [q("a", ["1750亿参数，只提供API服务"]), q("u", [], "unanswerable")]
    calls: list[tuple[str, int]] = []
    report = evaluate_retrieval(questions, fake_ranker({"a": [answer_chunk], "u": FILLER}, calls), ks=[1, 5])
    o = report.overall
    assert (o.questions, o.quotes, o.excluded) == (1, 1, 1)
    assert o.hit == {1: 1.0, 5: 1.0} and o.recall == {1: 1.0, 5: 1.0} and o.mrr == 1.0
    assert report.misses(5) == []
    # It is still ranked and its passages kept, for inspecting refusals.
    assert len(report.questions[1].passages) == 10
    u = report.by_type["unanswerable"]
    assert (u.questions, u.quotes, u.excluded, u.mrr) == (0, 0, 1, 0.0)
    assert report.to_dict()["questions"][1]["hit"] is None
    # Depth is max(ks, 10) so MRR@10 is always defined.
    assert calls == [("question a", 10), ("question u", 10)]


def test_mrr_uses_first_covering_rank_and_cutoff_10() -> None:
    target = "目标句子在这里出现"
    hit_at = {"r1": 1, "r2": 2, "r4": 4, "r11": 11}
    rankings = {}
    for qid, rank in hit_at.items():
        ranked = [chunk(f"填充 {qid} {i}", "f.md", i) for i in range(15)]
        ranked[rank - 1] = chunk(f"前文。{target}。后文", "t.md", 99)
        rankings[qid] = ranked
    # Two quotes: MRR takes whichever is covered first.
    two = [chunk("填充"), chunk("第二句话在这里"), chunk("第一句话在这里")]
    rankings["two"] = two
    questions = [q(qid, [target]) for qid in hit_at] + [q("two", ["第一句话在这里", "第二句话在这里"])]
    report = evaluate_retrieval(questions, fake_ranker(rankings), ks=[1, 3, 5, 10, 20])
    rr = {r.id: r.reciprocal_rank() for r in report.questions}
    assert rr == {"r1": 1.0, "r2": 0.5, "r4": 0.25, "r11": 0.0, "two": 0.5}
    assert report.overall.mrr == pytest.approx((1 + 0.5 + 0.25 + 0 + 0.5) / 5)
    assert report.depth == 20
    assert report.questions[3].first_rank == 11 and report.overall.hit[20] == 1.0
    assert report.overall.hit[10] == pytest.approx(4 / 5)
    # Recall counts quotes: 4 single-quote questions + both quotes of 'two' = 6.
    assert report.overall.quotes == 6
    assert report.overall.recall[3] == pytest.approx(4 / 6)  # r1, r2, both of 'two'


def test_per_type_breakdown_and_table() -> None:
    good, bad = chunk("甲乙丙丁戊己庚辛"), chunk("完全无关")
    questions = [
        q("f1", ["甲乙丙丁"], "factoid"),
        q("f2", ["子丑寅卯"], "factoid"),
        q("d1", ["戊己庚辛"], "definition"),
        q("u1", [], "unanswerable"),
    ]
    rank = fake_ranker({"f1": [good], "f2": [bad], "d1": [bad, good], "u1": [bad]})
    report = evaluate_retrieval(questions, rank, ks=[1, 5])
    assert list(report.by_type) == ["factoid", "definition", "unanswerable"]
    f, d = report.by_type["factoid"], report.by_type["definition"]
    assert (f.questions, f.hit[1], f.recall[5], f.mrr) == (2, 0.5, 0.5, 0.5)
    assert (d.questions, d.hit[1], d.hit[5], d.mrr) == (1, 0.0, 1.0, 0.5)
    assert report.overall.questions == 3 and report.overall.hit[5] == pytest.approx(2 / 3)
    assert report.overall.mrr == pytest.approx((1 + 0 + 0.5) / 3)

    table = format_table(report)
    lines = table.splitlines()
    assert lines[0].split() == ["n", "hit@1", "hit@5", "recall@1", "recall@5", "MRR@10", "terms@5"]
    overall = lines[2].split()
    assert overall == ["overall", "3", "0.333", "0.667", "0.333", "0.667", "0.500", "-"]  # no key terms given
    assert lines[3].split()[:2] == ["factoid", "2"]
    assert lines[5].split()[:2] == ["unanswerable", "(1)"]
    misses = format_misses(report, k=5)
    assert "f2 [factoid]" in misses and "d1" not in misses


def test_key_terms_in_the_top_k_counted_beside_the_quotes() -> None:
    # The quote's own passage is ranked 6th, but passages 2 and 4 together state the answer.
    date, model = chunk("ChatGPT 于 2022年11月30日 上线。", "a.md"), chunk("它基于 GPT-3.5。", "b.md")
    quoted = chunk("2022年底的 ChatGPT（基于GPT-3.5）", "c.md")
    ranked = [FILLER[0], date, FILLER[1], model, FILLER[2], quoted]
    questions = [
        q("x", ["2022年底的 ChatGPT（基于GPT-3.5）"], "multi_doc", must=("11月30日", "３.５")),  # NFKC: ３ is 3
        q("y", ["不在任何段落里的一句话"], must=("不在任何段落",)),
        q("z", ["2022年底的"], must=()),  # no key terms: not counted in terms@k
        q("u", [], "unanswerable", must=()),
    ]
    rank = fake_ranker({"x": ranked, "y": ranked, "z": ranked, "u": ranked})
    report = evaluate_retrieval(questions, rank, ks=[3, 5, 10])
    x, y, z, u = report.questions
    assert (x.terms_at(3), x.terms_at(5), x.recall_at(5), x.recall_at(10)) == (False, True, 0.0, 1.0)
    assert (y.terms_at(10), z.terms_at(5), u.terms_at(5)) == (False, None, None)
    assert report.overall.terms == {3: 0.0, 5: 0.5, 10: 0.5}
    assert report.by_type["unanswerable"].terms == {3: None, 5: None, 10: None}
    assert format_table(report).splitlines()[2].split()[-1] == "0.500"
    assert "terms@5" not in format_table(report, terms_k=4)
    data = report.to_dict()
    assert data["overall"]["terms"]["5"] == 0.5 and data["questions"][0]["terms"] == {"3": False, "5": True, "10": True}
    misses = format_misses(report, k=5)
    assert "x [multi_doc] question x  (first covering rank 6; key terms in the top 5: yes)" in misses
    assert "y [factoid] question y  (not in top 10; key terms in the top 5: no)" in misses


def test_misses_list_quotes_left_outside_the_top_k() -> None:
    near, far = chunk("第一条证据在此。"), chunk("第二条证据在彼。", "b.md")
    ranked = [near, *FILLER[:5], far]
    report = evaluate_retrieval([q("p", ["第一条证据", "第二条证据"], "multi_doc", must=("在此",))], fake_ranker({"p": ranked}))
    misses = format_misses(report, k=5)
    assert "Missed at hit@5: 0 of 1" in misses
    assert "evidence quotes outside the top 5: 1 question(s)" in misses
    assert "p [multi_doc] question p  (key terms in the top 5: yes)" in misses
    assert "evidence: '第二条证据' rank 7" in misses and "'第一条证据'" not in misses


def test_report_json_holds_every_passage() -> None:
    c = chunk("MoE架构：1320亿参数", path="x.md", start=7)
    report = evaluate_retrieval([q("a", ["MoE架构"])], fake_ranker({"a": [c]}), ks=[1])
    data = json.loads(json.dumps(report.to_dict(), ensure_ascii=False))
    p = data["questions"][0]["passages"][0]
    assert (p["rank"], p["file"], p["start"], p["end"], p["text"]) == (1, "x.md", 7, 7 + len(c.text), c.text)
    assert p["score"] == 1.0 and p["dense_score"] == 0.5 and p["lexical_score"] is None
    assert p["covers"] == [0]
    assert data["overall"]["hit"] == {"1": 1.0} and data["misses"] == {"1": []}


# ---------------------------------------------------------------- loading


def _line(**over: object) -> str:
    obj = {
        "id": "dev-001",
        "question": "DBRX 有多少参数？",
        "answer": "1320亿",
        "must_include": ["1320亿"],
        "evidence": [{"doc": "000_x.txt", "quote": "MoE架构：1320亿参数"}],
        "type": "factoid",
    }
    obj.update(over)
    return json.dumps(obj, ensure_ascii=False)


def test_load_questions(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    path.write_text(_line() + "\n\n" + _line(id="dev-002", evidence=[], must_include=[], type="unanswerable") + "\n")
    qs = load_questions(path)
    assert [x.id for x in qs] == ["dev-001", "dev-002"]
    assert qs[0].evidence == (Evidence("000_x.txt", "MoE架构：1320亿参数"),)
    assert qs[0].must_include == ("1320亿",) and qs[0].answerable and not qs[1].answerable


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"id": "dev-002", "question": "x", ', "not valid JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        (_line(id="dev-002", question=None), "'question' must be str"),
        (_line(id="dev-002", evidence=[{"doc": "a.txt"}]), "evidence[0]"),
        (_line(id="dev-002", evidence=[{"doc": "a.txt", "quote": "  "}]), "empty quote"),
        (json.dumps({"id": "dev-002", "question": "x", "evidence": []}), "missing field 'type'"),
        (_line(), "duplicate id 'dev-001'"),
    ],
)
def test_malformed_line_names_the_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = tmp_path / "dev.jsonl"
    path.write_text(_line() + "\n" + bad_line + "\n" + _line(id="dev-003") + "\n", encoding="utf-8")
    with pytest.raises(EvalFileError) as info:
        load_questions(path)
    assert f"{path}:2" in info.value.message
    assert expected in info.value.message


def test_missing_file_and_bad_ks(tmp_path: Path) -> None:
    with pytest.raises(EvalFileError, match="Cannot read"):
        load_questions(tmp_path / "nope.jsonl")
    assert parse_ks("10, 1,3,5,3") == [1, 3, 5, 10]
    for bad in ("", "0,1", "a,b"):
        with pytest.raises(EvalFileError):
            parse_ks(bad)



# ---------------------------------------------------------------- answers


def _answer(text: str, chunks: list[Chunk], cited: list[int], refused: bool = False, **kw):  # type: ignore[no-untyped-def]
    from rag.schema import Answer, Citation

    hits = [Hit(c, score=1.0) for c in chunks]
    return Answer(
        question="q", query="q", text=text, hits=hits, refused=refused,
        citations=[Citation(n, hits[n - 1].chunk) for n in cited],
        timings={"first_token": kw.get("ttft", 1.0), "total": kw.get("total", 2.0)},
        factual_sentences=kw.get("factual", 1), unsupported=kw.get("unsupported", []),
    )  # fmt: skip


def test_answer_metrics_on_hand_made_answers() -> None:
    from rag_eval.metrics import evaluate_answers

    cost = chunk("DeepSeek-V3 训练成本仅557.6万美元。")
    other = chunk("Transformer 于 2017 年提出。", "b.md")
    questions = [
        EvalQuestion("a1", "成本？", "", ("557.6万美元",), (Evidence("x", "训练成本仅557.6万美元"),), "factoid"),
        EvalQuestion("a2", "年份？", "", ("2017",), (Evidence("x", "于 2017 年提出"),), "factoid"),
        EvalQuestion("u1", "不知道？", "", (), (), "unanswerable"),
        EvalQuestion("u2", "也不知道？", "", (), (), "unanswerable"),
    ]
    answers = {
        "成本？": _answer("训练成本为５５７.６万美元[1]。", [cost, other], [1], ttft=1.0),
        # wrong citation: passage 2 neither covers the quote nor holds the sentence's terms
        "年份？": _answer("资料中没有相关信息。", [cost, other], [], refused=True, ttft=3.0),
        "不知道？": _answer("资料中没有相关信息。", [cost], [], refused=True),
        "也不知道？": _answer("GPT-4 有 1.8 万亿参数[1]。", [cost], [1], unsupported=["GPT-4 有 1.8 万亿参数"]),
    }
    report = evaluate_answers(questions, lambda question: answers[question])
    m = report.overall
    assert m.key_term_accuracy == 0.5  # NFKC: full-width digits count
    assert m.refusal_accuracy == 0.5
    assert m.false_refusal_rate == 0.5
    assert m.citation_precision == 0.5  # [1] of a1 precise, [1] of u2 not
    assert m.citation_precision_independent == 0.5  # a1's passage holds its quote; u2 has no quote or term
    assert m.cited_share == 1.0  # the only non-refused answerable answer has a citation
    assert m.unsupported_rate == 1 / 4
    assert m.ttft_median == 1.0
    assert report.by_type["unanswerable"].refusal_accuracy == 0.5
    data = report.to_dict()
    assert data["questions"][0]["citations"][0]["text"] == cost.text


def test_independent_citation_precision_ignores_the_products_support_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when the product's own support test passes everything, the independent figure does not move."""
    import rag.answer.citations as citations
    from rag_eval.metrics import citation_is_grounded, evaluate_answers, format_answer_table

    monkeypatch.setattr(citations, "support", lambda terms, passage: 1.0)
    manual = chunk("The Model K7 kettle boils one litre in 140 seconds.")
    unrelated = chunk("The warranty lasts two years.", "b.md")
    q = EvalQuestion("k1", "How long does the kettle take?", "", ("140 seconds",), (), "factoid")
    answer = _answer("It takes 140 seconds [1][2].", [manual, unrelated], [1, 2])
    report = evaluate_answers([q], lambda question: answer)
    assert report.overall.citation_precision == 1.0  # the product's test, forced to pass
    assert report.overall.citation_precision_independent == 0.5  # only the manual holds the reference term
    assert [c["grounded"] for c in report.results[0].citations] == [True, False]
    assert "cite-indep" in format_answer_table(report) and "cite-own" in format_answer_table(report)
    assert citation_is_grounded("Ｔｈｅ pump runs at ４０ rpm", ["runs at 40 rpm"], []) is True  # NFKC, spaces


def test_contains_terms_is_nfkc_and_whitespace_insensitive() -> None:
    from rag_eval.metrics import contains_terms

    assert contains_terms("成本 557.6 万美元", ["557.6万美元"])
    assert contains_terms("ＭｏＥ 架构", ["MoE"])
    assert not contains_terms("560万美元", ["557.6万美元"])
