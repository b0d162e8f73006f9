"""rag.answer.retrieval: reciprocal rank fusion and the hybrid retriever over a tiny index."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.answer.retrieval import RetrievalParams, Retriever, given_once, rrf, spread, zscore_fusion
from rag.index.build import build
from rag.index.reader import Index
from rag.ingest.chunking import clean_text
from rag.schema import Chunk, Hit
from tests.fakes import CountingFactory, FakeEmbedder, isolate, tiny_settings

# ---------------------------------------------------------------- rrf


def test_rrf_docstring_example() -> None:
    fused = rrf([[7, 3], [3, 9]], k=1)
    assert [item for item, _ in fused] == [3, 7, 9]
    assert [score for _, score in fused] == pytest.approx([1 / 3 + 1 / 2, 1 / 2, 1 / 3])


def test_rrf_default_k_is_60() -> None:
    fused = dict(rrf([[1, 2], [2]]))
    assert fused[1] == pytest.approx(1 / 61)
    assert fused[2] == pytest.approx(1 / 62 + 1 / 61)


def test_rrf_single_list_keeps_its_order() -> None:
    assert [i for i, _ in rrf([[5, 1, 9, 2]])] == [5, 1, 9, 2]


def test_rrf_ties_keep_first_seen_order() -> None:
    # 4 and 8 are each first in one list: equal scores, 4 was seen first.
    assert [i for i, _ in rrf([[4], [8]], k=10)] == [4, 8]
    assert [i for i, _ in rrf([[8], [4]], k=10)] == [8, 4]
    # Mirrored lists: 1 and 3 tie exactly (1/6 + 1/8 each, above 2's 2/7); 1 was seen first.
    fused = rrf([[1, 2, 3], [3, 2, 1]], k=5)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == fused[1][1]
    assert [i for i, _ in rrf([[3, 2, 1], [1, 2, 3]], k=5)] == [3, 1, 2]


def test_rrf_is_deterministic() -> None:
    rankings = [[3, 1, 4, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8], [5, 9, 3]]
    assert rrf(rankings, k=2) == rrf(rankings, k=2)


def test_rrf_weights() -> None:
    assert [i for i, _ in rrf([[1], [2]], k=1, weights=[1.0, 2.0])] == [2, 1]
    assert [i for i, _ in rrf([[1], [2]], k=1, weights=[3.0, 2.0])] == [1, 2]
    fused = dict(rrf([[1, 2], [2, 1]], k=1, weights=[2.0, 0.5]))
    assert fused[1] == pytest.approx(2 / 2 + 0.5 / 3)
    assert fused[2] == pytest.approx(2 / 3 + 0.5 / 2)


def test_rrf_zero_weight_ignores_a_list_but_keeps_its_items() -> None:
    fused = rrf([[1, 2], [3]], k=1, weights=[1.0, 0.0])
    assert [i for i, _ in fused] == [1, 2, 3]
    assert fused[-1][1] == 0.0


@pytest.mark.parametrize("rankings", [[], [[]], [[], []]])
def test_rrf_empty(rankings: list[list[int]]) -> None:
    assert rrf(rankings) == []


def test_rrf_item_in_both_lists_beats_top_of_one() -> None:
    fused = rrf([[10, 20], [30, 20]], k=60)
    assert fused[0][0] == 20


def test_zscore_fusion_docstring_example() -> None:
    fused = zscore_fusion([[(7, 0.9), (3, 0.5), (4, 0.1)], [(3, 2.0), (7, 1.0)]])
    assert [item for item, _ in fused] == [3, 7, 4]
    assert [round(score, 2) for _, score in fused] == [1.0, 0.22, -2.22]


def test_zscore_fusion_keeps_a_clear_winner_that_rank_fusion_loses() -> None:
    # Dense sees item 1 far ahead of everything; BM25 puts it third behind two near-ties.
    dense = [(1, 0.90), (2, 0.40), (3, 0.39), (4, 0.38)]
    lexical = [(2, 10.0), (3, 9.9), (1, 9.8), (4, 1.0)]
    assert rrf([[r for r, _ in dense], [r for r, _ in lexical]])[0][0] == 2
    assert zscore_fusion([dense, lexical])[0][0] == 1


def test_zscore_fusion_edge_cases() -> None:
    assert zscore_fusion([[], []]) == []
    assert zscore_fusion([[(5, 1.0)], []]) == [(5, 0.0)]  # one candidate, no floor: no spread, z = 0
    # A floor (BM25: 0 for a non-matching passage) lets a lone match stand out.
    lone = zscore_fusion([[(1, 0.30), (2, 0.32)], [(1, 4.0)]], floors=[None, 0.0])
    assert lone[0][0] == 1
    same = zscore_fusion([[(1, 0.5), (2, 0.5)], [(2, 3.0), (1, 3.0)]])
    assert [item for item, _ in same] == [1, 2]  # ties keep first-seen order
    weighted = zscore_fusion([[(1, 1.0), (2, 0.0)], [(2, 1.0), (1, 0.0)]], weights=[1.0, 0.0])
    assert weighted[0][0] == 1


def test_spread_caps_a_source_within_the_first_slots() -> None:
    source = {1: "a", 2: "a", 3: "a", 4: "b", 5: "a", 6: "c"}.__getitem__
    items = [(i, 1.0 / i) for i in range(1, 7)]
    assert [i for i, _ in spread(items, source, cap=2, depth=4)] == [1, 2, 4, 6, 3, 5]
    assert [i for i, _ in spread(items, source, cap=1, depth=2)] == [1, 4, 2, 3, 5, 6]
    assert spread(items, source, cap=0, depth=4) == items  # 0 = no limit
    one_source = [(i, 0.0) for i in (1, 2, 3, 5)]
    assert spread(one_source, source, cap=1, depth=3) == one_source  # nothing else to bring up


def test_given_once_gives_no_text_twice() -> None:
    def piece(path: str, start: int, end: int) -> Chunk:
        return Chunk(id=f"{path}{start}-{end}", path=path, title="t", headings=(), start=start, end=end, text="x" * (end - start))

    # chunk rows 0-3; row 0 (a 0-60) runs on into row 1 (a 50-90): its passage spans 0-90
    chunks = [piece("a", 0, 60), piece("a", 50, 90), piece("b", 50, 90), piece("a", 85, 120)]
    passages = [piece("a", 0, 90), chunks[1], chunks[2], chunks[3]]
    first_then_continuation = given_once([(0, 0.9), (1, 0.8), (2, 0.7), (3, 0.6)], chunks, passages.__getitem__)
    assert [(row, p.start, p.end) for row, _, p in first_then_continuation] == [(0, 0, 90), (2, 50, 90), (3, 85, 120)]
    continuation_first = given_once([(1, 0.9), (0, 0.8), (2, 0.7)], chunks, passages.__getitem__)
    assert [(row, p.start, p.end) for row, _, p in continuation_first] == [(1, 50, 90), (0, 0, 60), (2, 50, 90)]


def test_retriever_gives_a_chunk_cut_mid_sentence_joined_with_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    text = "# 报告\n\n" + "这一段讲训练方法，" * 12 + "最后说到 GPT-1 采用仅解码器的结构。\n\n另一段讲别的事情。" * 3
    settings = tiny_settings(tmp_path, {"r.md": text}, chunk_size=80, chunk_overlap=0)
    build(settings, CountingFactory(), "e" * 64)
    index = Index.load(Path(settings.index_dir))
    cut = next(i for i, c in enumerate(index.chunks) if not clean_text(c.text).endswith("。"))
    # the passage KV store computes blocks for the joined passage and for the chunk alone
    assert index.passage(cut, 400) in index.readable(400) and index.chunks[cut] in index.readable(400)
    assert index.readable(0) == index.chunks
    for limit, joined in ((0, False), (400, True)):
        hits = _retriever(index, join_max_chars=limit).rank(index.chunks[cut].text, 10)
        texts = [h.chunk.text for h in hits]
        assert any(t.startswith(index.chunks[cut].text) and (len(t) > len(index.chunks[cut].text)) is joined for t in texts)
        # no text is given twice: no passage lies inside one ranked before it
        spans = [(h.chunk.start, h.chunk.end) for h in hits]
        assert not any(a <= c and d <= b for i, (c, d) in enumerate(spans) for a, b in spans[:i])


def test_retriever_spreads_over_documents(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    query = "DeepSeek-V3 训练成本 架构 MoE"
    free = _retriever(index, per_doc_cap=0).rank(query, 3)
    capped = _retriever(index, per_doc_cap=1, diverse_depth=3).rank(query, 3)
    assert len({h.chunk.path for h in capped}) >= min(3, len({c.path for c in index.chunks}))
    assert capped[0].chunk.id == free[0].chunk.id


# ---------------------------------------------------------------- the retriever


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    isolate(monkeypatch, tmp_path)
    settings = tiny_settings(tmp_path)
    build(settings, CountingFactory(), "e" * 64)
    index = Index.load(Path(settings.index_dir))
    return settings, index


def _retriever(index: Index, **params: float) -> Retriever:
    return Retriever(index, FakeEmbedder(), RetrievalParams(**params))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "path", "needle"),
    [
        ("DeepSeek-V3 的训练花了多少钱？", "deepseek.md", "557.6"),
        ("DeepSeek-V3 采用什么架构？", "deepseek.md", "MoE"),
        ("Transformer 是谁提出的？", "transformer.txt", "谷歌"),
        ("How do I make tomato soup?", "cooking.md", "tomatoes"),
    ],
)
def test_right_chunk_first(world, query: str, path: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    hits = _retriever(index).search(query, 3)
    assert hits
    assert hits[0].chunk.path == path
    assert needle in hits[0].chunk.text
    unspread = _retriever(index, per_doc_cap=0).search(query, 3)
    assert [h.score for h in unspread] == sorted((h.score for h in unspread), reverse=True)


def test_hits_carry_both_scores(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    hits = _retriever(index).rank("DeepSeek-V3 训练成本", 10)
    assert len(hits) == len(index.chunks)  # every chunk is a dense candidate in a tiny index
    assert all(h.dense_score is not None for h in hits)
    assert hits[0].lexical_score is not None and hits[0].lexical_score > 0
    assert any(h.lexical_score is None for h in hits)  # the soup recipe shares no words
    assert all(isinstance(h.chunk, Chunk) for h in hits)


def test_rank_respects_k_and_candidates(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    assert len(_retriever(index).rank("模型", 2)) == 2
    narrow = _retriever(index, candidates=1).rank("DeepSeek-V3 训练成本", 10)
    assert 1 <= len(narrow) <= 2  # at most one from each list


def test_search_k_zero(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    assert _retriever(index).search("DeepSeek-V3", 0) == []


def test_no_evidence_gives_no_hits(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    retriever = _retriever(index, min_dense_score=0.99)
    query = "量子计算机的冷却系统"  # no shared word, no close vector
    ranked = retriever.rank(query, 3)
    assert ranked, "rank always returns the closest passages"
    assert all(h.lexical_score is None for h in ranked)
    assert not retriever.has_evidence(ranked)
    assert retriever.search(query, 3) == []


def test_lexical_match_is_evidence_even_with_low_dense_scores(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    retriever = _retriever(index, min_dense_score=0.99)
    hits = retriever.search("garlic", 3)
    assert hits and hits[0].chunk.path == "cooking.md"


def _hit(dense: float | None, lexical: float | None) -> Hit:
    return Hit(Chunk("id", "a.md", "t", (), 0, 1, "x"), 0.1, dense, lexical)


@pytest.mark.parametrize(
    ("hits", "expected"),
    [
        ([], False),
        ([_hit(0.3, None)], True),
        ([_hit(0.25, None)], True),  # the threshold itself counts
        ([_hit(0.2, None), _hit(0.1, None)], False),
        ([_hit(0.1, None), _hit(None, 2.5)], True),
        ([_hit(None, None)], False),
        ([_hit(0.1, 0.0)], False),
    ],
)
def test_has_evidence(hits: list[Hit], expected: bool, world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    assert _retriever(index, min_dense_score=0.25).has_evidence(hits) is expected


def test_params_from_settings(world) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    settings, _ = world
    s = replace(
        settings, candidates=12, rrf_k=7, dense_weight=0.5, lexical_weight=2.0, min_dense_score=0.4,
        fusion="rrf", per_doc_cap=3, top_k=4, join_max_chars=650, piece_candidates=300,
    )  # fmt: skip
    assert RetrievalParams.from_settings(s) == RetrievalParams(12, 7, 0.5, 2.0, 0.4, "rrf", 3, 4, 650, 300)
    assert RetrievalParams.from_settings(replace(s, piece_chars=0)).piece_candidates == 0  # no pieces to look up


def test_weights_change_the_order(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    query = "Transformer 2017"
    lexical_only = _retriever(index, dense_weight=0.0).rank(query, 3)
    assert lexical_only[0].chunk.path == "transformer.txt"
    assert lexical_only[0].lexical_score is not None


def test_unknown_entities_are_names_the_mined_vocabulary_and_passages_lack() -> None:
    from rag.index.entities import unknown_entities

    vocabulary = {"张伟": 3, "北京大学": 1}
    knows = lambda text: text in "张伟在北京大学读书"  # noqa: E731
    assert unknown_entities("张伟在北京大学读书吗？", vocabulary, knows) == []
    assert unknown_entities("李娜在清华大学读书吗？", vocabulary, knows) != []
    assert unknown_entities("李娜在清华大学读书吗？", {"acme": 2}, knows) == []  # no Chinese names to check against


@pytest.mark.parametrize(
    ("query", "parts"),
    [
        ("会议在哪里举行？谁主持了会议？", ["会议在哪里举行？", "谁主持了会议？"]),
        ("How heavy is it? And how long?", ["How heavy is it?", "And how long?"]),
        ("它是什么？为什么？", ["它是什么？为什么？"]),  # "为什么？" asks nothing of its own
        ("一个问题，没有问号", ["一个问题，没有问号"]),
    ],
)
def test_question_parts_one_per_question_mark(query: str, parts: list[str]) -> None:
    from rag.answer.retrieval import question_parts

    assert question_parts(query) == parts


def test_take_in_turn_gives_each_ranking_its_best_first() -> None:
    from rag.answer.retrieval import take_in_turn

    def hits(*ids: str) -> list[Hit]:
        return [Hit(Chunk(i, "a.md", "t", (), 0, 1, i), 1.0) for i in ids]

    merged = take_in_turn([hits("a1", "a2", "shared"), hits("shared", "b2")], 4)
    assert [h.chunk.id for h in merged] == ["a1", "shared", "a2", "b2"]


def test_a_two_part_question_finds_the_passage_of_each_part(world) -> None:  # type: ignore[no-untyped-def]
    _, index = world
    query = "DeepSeek-V3 的训练花了多少钱？How do I make tomato soup?"
    paths = {h.chunk.path for h in _retriever(index).rank(query, 2)}
    assert paths == {"deepseek.md", "cooking.md"}
    assert _retriever(index).rank("DeepSeek-V3 的训练花了多少钱？", 2) == _retriever(index, split_questions=False).rank(
        "DeepSeek-V3 的训练花了多少钱？", 2
    )  # one question: ranked as before
