"""rag_eval.rgb and rag_eval.scale on hand-made tiny data, with the fake embedder and generator: seconds, no model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.answer.retrieval import RetrievalParams
from rag.ingest.chunking import ChunkerSettings
from rag_eval import rgb
from tests.fakes import FakeEmbedder, FakeGenerator, isolate, write_rgb_rows

CHUNKER = ChunkerSettings(480, 100)

# Three rows; row 1's positive is row 0's negative, and a passage repeats with extra spaces.
ROWS_JSON = [
    {"id": 0, "query": "寺庙踩踏事故死亡人数", "answer": ["12人"],
     "positive": ["瓦希诺德维寺发生踩踏事件，造成12人死亡、14人受伤。", "踩踏事故造成12人死亡。"],
     "negative": ["孟买车站步行桥踩踏事故造成23人死亡。", "新年庆祝活动吸引大批民众。"]},
    {"id": 1, "query": "孟买车站步行桥事故死亡人数", "answer": [["23人", "二十三人"]],
     "positive": ["孟买车站步行桥踩踏事故造成23人死亡。"],
     "negative": ["  踩踏事故造成12人死亡。  ", "铁路部门表示将加固桥梁。", ""]},
    {"id": 2, "query": "RCEP包括哪些国家", "answer": ["东盟", "中国", "日本"],
     "positive": ["RCEP成员包括东盟十国以及中国、日本、韩国、澳大利亚和新西兰。"],
     "negative": ["CPTPP由日本主导。", "欧盟与中国签署投资协定。", "东盟峰会在雅加达举行。",
                  "日本央行维持利率不变。", "中国外贸增长。"]},
]  # fmt: skip


@pytest.fixture
def rgb_file(tmp_path: Path) -> Path:
    path = tmp_path / "zh_refine.json"
    return write_rgb_rows(path, ROWS_JSON)


@pytest.fixture
def rows(rgb_file: Path) -> list[rgb.RgbRow]:
    return rgb.load_rows(rgb_file)


# ---------------------------------------------------------------- gold answers


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("12人", (("12人",),)),
        (["12人"], (("12人",),)),
        ([["4次", "四次"]], (("4次", "四次"),)),
        (["东盟", "中国"], (("东盟",), ("中国",))),
        ([["1313851", "131万"], "特斯拉"], (("1313851", "131万"), ("特斯拉",))),
        ([2022], (("2022",),)),
    ],
)
def test_parse_answer_turns_every_format_into_groups_of_alternatives(raw, expected) -> None:  # type: ignore[no-untyped-def]
    assert rgb.parse_answer(raw) == expected


@pytest.mark.parametrize("raw", [[], [[]], [{"a": 1}]])
def test_parse_answer_rejects_empty_and_odd_answers(raw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        rgb.parse_answer(raw)


@pytest.mark.parametrize(
    "answer, output, correct",
    [
        (["12人"], "事故造成 12 人死亡[1]。", True),  # whitespace is dropped, as the paper does for Chinese
        (["12人"], "事故造成１２人死亡。", True),  # full-width digits (NFKC)
        (["12人"], "事故造成14人受伤。", False),
        ([["4次", "四次"]], "预计加息四次。", True),  # any alternative of a group
        ([["4次", "四次"]], "预计加息三次。", False),
        (["东盟", "中国", "日本"], "包括东盟、中国和日本。", True),  # every group
        (["东盟", "中国", "日本"], "包括东盟和中国。", False),
        ([["1313851", "131万"], "特斯拉"], "特斯拉交付了131万辆。", True),
        ([["1313851", "131万"], "特斯拉"], "交付了131万辆。", False),
        (["GPT-4"], "OpenAI 发布了 gpt-4。", True),  # case-insensitive
    ],
)
def test_gold_matching_follows_the_papers_checkanswer(answer, output, correct) -> None:  # type: ignore[no-untyped-def]
    assert rgb.is_correct(rgb.parse_answer(answer), output) is correct


def test_gold_labels_are_per_group() -> None:
    gold = rgb.parse_answer(["东盟", ["中国", "China"], "日本"])
    assert rgb.gold_labels(gold, "东盟与 china") == [True, True, False]


# ---------------------------------------------------------------- loading and pooling


def test_load_rows_reads_the_file_and_honours_the_limit(rgb_file: Path) -> None:
    rows = rgb.load_rows(rgb_file)
    assert [r.id for r in rows] == ["0", "1", "2"]
    assert rows[1].answer == (("23人", "二十三人"),)
    assert [r.id for r in rgb.load_rows(rgb_file, limit=2)] == ["0", "1"]


def test_load_rows_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ROWS_JSON[0], ensure_ascii=False) + "\n" + '{"id": 1, "query": "x"}\n', encoding="utf-8")
    with pytest.raises(rgb.RgbFileError, match=r"bad\.json:2: not an RGB row"):
        rgb.load_rows(path)
    with pytest.raises(rgb.RgbFileError, match="Cannot read"):
        rgb.load_rows(tmp_path / "missing.json")


def test_pool_deduplicates_by_text_across_rows_and_maps_positives(rows: list[rgb.RgbRow]) -> None:
    pool = rgb.pool_passages(rows)
    every = [p.strip() for r in ROWS_JSON for p in (*r["positive"], *r["negative"]) if p.strip()]
    assert len(pool.texts) == len(set(every)) == len(every) - 2  # two passages repeat; the empty one is dropped
    assert len(set(pool.texts)) == len(pool.texts)
    assert "" not in pool.texts
    assert pool.texts[0] == ROWS_JSON[0]["positive"][0]  # first-seen order
    # Row 1's positive is the same passage as row 0's first negative; row 0's second positive is row 1's negative.
    assert pool.positives[0] == {0, 1}
    assert pool.positives[1] == {pool.texts.index("孟买车站步行桥踩踏事故造成23人死亡。")}
    assert pool.positives[1] == {2}
    assert pool.digest() == rgb.pool_passages(rows).digest()
    assert pool.digest() != rgb.pool_passages(rows[:2]).digest()


def test_passage_paths_round_trip() -> None:
    assert rgb.passage_path(42) == "rgb/00042.txt"
    assert rgb.passage_id(rgb.passage_path(7321)) == 7321


# ---------------------------------------------------------------- hits and MRR


def test_first_positive_rank() -> None:
    paths = [rgb.passage_path(i) for i in (3, 1, 1, 5)]
    assert rgb.first_positive_rank(paths, frozenset({1})) == 2
    assert rgb.first_positive_rank(paths, frozenset({5, 3})) == 1
    assert rgb.first_positive_rank(paths, frozenset({9})) is None
    assert rgb.first_positive_rank([], frozenset({1})) is None


def test_mode_metrics_hit_at_k_and_mrr_by_hand() -> None:
    m = rgb.ModeMetrics.of("x", [1, 3, None, 7, 12], ks=(1, 5, 10))
    assert m.rows == 5
    assert m.hit == {1: pytest.approx(1 / 5), 5: pytest.approx(2 / 5), 10: pytest.approx(3 / 5)}
    assert m.mrr == pytest.approx((1 + 1 / 3 + 1 / 7) / 5)  # rank 12 is past the MRR cut-off


# ---------------------------------------------------------------- the pooled index


class CountingFactory:
    def __init__(self) -> None:
        self.embedder = FakeEmbedder()
        self.calls = 0

    def __call__(self) -> FakeEmbedder:
        self.calls += 1
        return self.embedder


def test_pooled_index_is_built_in_batches_then_reused(rows, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rgb, "EMBED_BATCH", 4)
    pool = rgb.pool_passages(rows)
    factory = CountingFactory()
    index, info = rgb.ensure_pool_index(pool, tmp_path / "rgbidx", factory, "fake-bigram", "sha", CHUNKER, progress=False)
    assert not info.reused and factory.calls == 1
    assert info.passages == len(pool.texts) == len(index) == info.chunks  # short passages: one chunk each
    assert {rgb.passage_id(c.path) for c in index.chunks} == set(range(len(pool.texts)))
    # Vectors went to FAISS a batch at a time: no call saw more than the batch.
    calls = factory.embedder.document_calls
    assert len(calls) == -(-len(pool.texts) // 4) and max(len(c) for c in calls) == 4
    assert info.peak_rss_mb > 0

    again, info2 = rgb.ensure_pool_index(pool, tmp_path / "rgbidx", factory, "fake-bigram", "sha", CHUNKER, progress=False)
    assert info2.reused and factory.calls == 1  # the embedder was not even loaded
    assert info2.directory == info.directory and [c.id for c in again.chunks] == [c.id for c in index.chunks]

    # Other data or another embedder: a separate index next to it, the first one kept.
    _, other = rgb.ensure_pool_index(rgb.pool_passages(rows[:2]), tmp_path / "rgbidx", factory, "fake-bigram", "sha",
                                     CHUNKER, progress=False)  # fmt: skip
    assert not other.reused and other.directory != info.directory
    _, third = rgb.ensure_pool_index(pool, tmp_path / "rgbidx", factory, "fake-bigram", "sha", CHUNKER, progress=False)
    assert third.reused


def test_pooled_index_has_the_products_sentence_pieces(tmp_path: Path) -> None:
    """With piece_chars set, the pooled index is searched as the product's is: a passage's best sentence counts."""
    long = "新年庆祝活动吸引大批民众。" * 3 + "踩踏事故造成12人死亡。"  # the fact is one sentence of four
    rows = [rgb.RgbRow("0", "踩踏事故死亡人数", (("12人",),), (long,), ("铁路部门表示将加固桥梁。",))]
    pool = rgb.pool_passages(rows)
    factory = CountingFactory()
    index, info = rgb.ensure_pool_index(pool, tmp_path / "idx", factory, "fake-bigram", "sha", CHUNKER, piece_chars=14,
                                        progress=False)  # fmt: skip
    row = next(i for i, c in enumerate(index.chunks) if "踩踏" in c.text)
    assert info.pieces == 4 and index.pieces is not None and list(index.pieces.owners) == [row] * 4
    assert [t.split("\n")[-1] for t in factory.embedder.document_calls[-1]] == [
        "新年庆祝活动吸引大批民众。", "新年庆祝活动吸引大批民众。", "新年庆祝活动吸引大批民众。", "踩踏事故造成12人死亡。",
    ]  # fmt: skip
    # A different piece size is a different index; 0 builds none.
    _, without = rgb.ensure_pool_index(pool, tmp_path / "idx", factory, "fake-bigram", "sha", CHUNKER, progress=False)
    assert not without.reused and without.pieces == 0 and without.directory != info.directory

    vector = factory.embedder.encode_query("踩踏事故造成12人死亡")
    own, best = dict(index.dense_search(vector, 2)), dict(index.dense_search(vector, 2, pieces=10))
    assert best[row] > own[row] + 0.1  # the fact's own sentence is closer to the question than the whole passage
    report = rgb.evaluate_pool_retrieval(rows, pool, index, factory.embedder, RetrievalParams(piece_candidates=10),
                                         info)  # fmt: skip
    assert report.modes[1].hit[1] == 1.0
    assert "2 distinct passages -> 2 chunks and 4 sentence pieces" in rgb.format_retrieval_report(report)


def test_pool_retrieval_scores_all_three_modes(rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pool = rgb.pool_passages(rows)
    factory = CountingFactory()
    index, info = rgb.ensure_pool_index(pool, tmp_path / "idx", factory, "fake-bigram", "sha", CHUNKER, progress=False)
    report = rgb.evaluate_pool_retrieval(rows, pool, index, factory.embedder, RetrievalParams(), info, ks=(1, 5, 10))
    assert [m.mode for m in report.modes] == list(rgb.MODES)
    for m in report.modes:
        assert m.rows == 3 and 0.0 <= m.hit[1] <= m.hit[5] <= m.hit[10] <= 1.0
    fused = report.modes[2]
    assert fused.hit[10] == 1.0  # only 16 passages: every positive is in the top 10
    assert len(report.rows) == 3 and set(report.rows[0].first_rank) == set(rgb.MODES)
    assert [x.n for x in report.latencies] == [3] * 5
    text = rgb.format_retrieval_report(report)
    assert "fused" in text and "hit@5" in text and "Peak memory" in text


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("rate, positives, negatives", [(0.0, 1, 4), (0.4, 1, 4), (0.8, 1, 4), (1.0, 0, 5)])
def test_noise_tops_up_with_negatives_when_a_row_has_few_positives(rows, rate, positives, negatives) -> None:  # type: ignore[no-untyped-def]
    docs = rgb.noise_passages(rows[2], rate)  # row 2 has 1 positive and 5 negatives
    assert len(docs) == 5
    assert sum(p for _, p in docs) == positives and sum(not p for _, p in docs) == negatives


def test_noise_counts_follow_the_rate() -> None:
    row = rgb.RgbRow("9", "q", (("a",),), tuple(f"pos{i}" for i in range(6)), tuple(f"neg{i}" for i in range(6)))
    for rate, negatives in [(0.0, 0), (0.2, 1), (0.4, 2), (0.6, 3), (0.8, 4), (1.0, 5)]:
        docs = rgb.noise_passages(row, rate)
        assert sum(not p for _, p in docs) == negatives, rate  # 0.6 -> 3, not the paper's float-rounded 4
        # The first positives and negatives, in a shuffled order.
        assert sorted(t for t, p in docs if p) == [f"pos{i}" for i in range(5 - negatives)]
        assert sorted(t for t, p in docs if not p) == [f"neg{i}" for i in range(negatives)]
    with pytest.raises(ValueError):
        rgb.noise_passages(row, 1.5)


def test_noise_sampling_is_deterministic_and_seeded() -> None:
    row = rgb.RgbRow("9", "q", (("a",),), tuple(f"pos{i}" for i in range(6)), tuple(f"neg{i}" for i in range(6)))
    first = rgb.noise_passages(row, 0.4)
    assert all(rgb.noise_passages(row, 0.4) == first for _ in range(5))
    import random

    # The paper: random.seed(2333) before each row, then random.shuffle(positive[:3] + negative[:2]).
    paper = [("pos0", True), ("pos1", True), ("pos2", True), ("neg0", False), ("neg1", False)]
    random.seed(2333)
    random.shuffle(paper)
    assert first == paper
    orders = {tuple(rgb.noise_passages(row, 0.4, seed=s)) for s in range(10)}
    assert len(orders) > 1  # the seed matters


def test_parse_rates() -> None:
    assert rgb.parse_rates("0, 0.4,0.8,1.0,0.4") == [0.0, 0.4, 0.8, 1.0]
    for bad in ("", "a", "0,1.2"):
        with pytest.raises(rgb.RgbFileError):
            rgb.parse_rates(bad)


def test_noise_answers_go_through_the_pipeline(rows, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.fakes import tiny_settings

    isolate(monkeypatch, tmp_path)
    # One scripted reply a question: the retry that puts the most on-topic passage first would take the next one.
    settings = replace(tiny_settings(tmp_path), disabled_guards=("on_topic_retry",))
    generator = FakeGenerator([
        "瓦希诺德维寺踩踏事件造成12人死亡[1]。",  # row 0, noise 0: correct
        "事故造成二十三人死亡[1]。",  # row 1, noise 0: correct (an alternative)
        "RCEP 包括东盟和中国[1]。",  # row 2, noise 0: misses 日本
        "资料中没有相关信息。",  # row 0, noise 1: refusal
        "事故造成23人死亡[1]。",  # row 1, noise 1: a figure no passage holds
        "资料中没有相关信息。",  # row 2, noise 1
    ])  # fmt: skip
    report = rgb.evaluate_noise(rows, [0.0, 1.0], settings, generator)
    assert [(r.id, r.noise) for r in report.results] == [("0", 0.0), ("1", 0.0), ("2", 0.0), ("0", 1.0), ("1", 1.0), ("2", 1.0)]
    assert [r.correct_raw for r in report.results] == [True, True, False, False, True, False]
    # The product's own rules decide what is shown: "23" is in none of the noise passages, so the
    # invented-figure rule turns that answer into a refusal (raw text correct, shown answer not).
    assert [r.refused for r in report.results] == [False, False, False, True, True, True]
    assert [r.correct for r in report.results] == [True, True, False, False, False, False]
    clean, noisy = report.metrics
    assert (clean.n, clean.accuracy_raw, clean.refusal) == (3, pytest.approx(2 / 3), 0.0)
    assert (noisy.refusal, noisy.accuracy, noisy.accuracy_raw) == (1.0, 0.0, pytest.approx(1 / 3))
    # The model was given exactly the row's 5 passages, numbered, through the product's prompt.
    user = generator.calls[0]["messages"][1]["content"]  # type: ignore[index]
    docs = rgb.noise_passages(rows[0], 0.0)
    assert len(docs) == 4  # row 0 has only 2 positives and 2 negatives
    for n, (text, _) in enumerate(docs, start=1):
        assert f"[{n}]\n{text}" in user  # a question that asks one thing: the lean prompt, no heading to show
    assert "问题：寺庙踩踏事故死亡人数" in user
    assert report.results[3].passages and not any(p["positive"] for p in report.results[3].passages)
    # Every answer the model wrote has a first-token time (a refusal decided before generating has none).
    assert all("first_token" in r.timings for r in report.results if r.raw_answer)
    assert clean.ttft_median is not None
    table = rgb.format_noise_report(report)
    assert "(rejection)" in table and "TTFT p50" in table


# ---------------------------------------------------------------- the commands


def test_rgb_command_builds_once_and_prints_the_table(rgb_file: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rag.index.embedding
    from rag.cli import app

    isolate(monkeypatch, tmp_path)
    loads: list[str] = []

    def fake_load(name: str, models_dir: Path, threads: int | None = None, *_: object, **__: object) -> FakeEmbedder:
        loads.append(name)
        return FakeEmbedder()

    monkeypatch.setattr(rag.index.embedding, "load_embedder", fake_load)
    args = ["eval", "rgb", str(rgb_file), "--index-dir", str(tmp_path / "rgbidx"), "--json", str(tmp_path / "r.json"), "-q"]
    first = CliRunner().invoke(app, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "BM25 only" in first.stdout and "dense only" in first.stdout and "fused" in first.stdout
    assert "hit@1" in first.stdout and "MRR@10" in first.stdout and "p95" in first.stdout
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["index"]["passages"] == 11 and len(data["rows"]) == 3 and data["peak_rss_mb"] > 0
    second = CliRunner().invoke(app, args, catch_exceptions=False)
    assert second.exit_code == 0 and "reused" in second.stdout
    assert len(loads) == 2  # queries need the embedder each run, the build only the first time


def test_rgb_command_reports_a_bad_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rag.cli import app

    isolate(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, ["eval", "rgb", str(tmp_path / "nope.json")])
    assert result.exit_code == 1 and "Cannot read the RGB file" in result.output


def test_scale_command_on_a_small_synthetic_index(tmp_path: Path) -> None:
    from rag_eval.cli import eval_app

    out = tmp_path / "scale.json"
    result = CliRunner().invoke(eval_app, ["scale", "--chunks", "600", "--dim", "16", "--queries", "20", "--ann",
                                           "hnsw,ivf", "--json", str(out), "-q"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "600 synthetic chunks" in result.stdout and "fused: Retriever.rank" in result.stdout
    data = json.loads(out.read_text())
    assert [x["n"] for x in data["latencies"]] == [20, 20, 20, 20]  # chunks, chunks and pieces, BM25, fused
    assert "3,000 pieces" in result.stdout and data["pieces_memory_mb"] > 0  # 5 per chunk by default
    kinds = [a["index"] for a in data["ann"]]
    assert kinds[0].startswith("Flat") and any("HNSW" in k for k in kinds) and any("IVF" in k for k in kinds)
    assert data["ann"][0]["recall_at_10"] == 1.0
    bad = CliRunner().invoke(eval_app, ["scale", "--chunks", "50", "--queries", "5", "--ann", "lsh"])
    assert bad.exit_code == 1 and "unknown ANN" in bad.output
