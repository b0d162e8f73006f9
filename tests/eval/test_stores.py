"""rag_eval.stores: `rag eval scale --stores` on a few hundred random vectors and `rag eval rgb --stores` on a
tiny pooled RGB index with the fake embedder (Milvus Lite, real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.answer.retrieval import RetrievalParams
from rag.ingest.chunking import ChunkerSettings
from rag_eval import rgb
from tests.fakes import FakeEmbedder, isolate, write_rgb_rows

# Two rows sharing a passage (row 1's positive is row 0's negative), so relevance is per row, not per passage.
RGB_ROWS = [
    {"id": 0, "query": "寺庙踩踏事故死亡人数", "answer": ["12人"],
     "positive": ["瓦希诺德维寺发生踩踏事件，造成12人死亡。", "踩踏事故造成12人死亡。"],
     "negative": ["孟买车站步行桥踩踏事故造成23人死亡。", "新年庆祝活动吸引大批民众。"]},
    {"id": 1, "query": "孟买车站步行桥事故死亡人数", "answer": ["23人"],
     "positive": ["孟买车站步行桥踩踏事故造成23人死亡。"],
     "negative": ["铁路部门表示将加固桥梁。", "日本央行维持利率不变。", "中国外贸增长。"]},
]  # fmt: skip


@pytest.fixture
def rgb_file(tmp_path: Path) -> Path:
    path = tmp_path / "zh_refine.json"
    return write_rgb_rows(path, RGB_ROWS)


def test_store_comparison_prints_both_stores_on_the_same_vectors(tmp_path: Path) -> None:
    from rag_eval.cli import eval_app

    out = tmp_path / "stores.json"
    result = CliRunner().invoke(eval_app, ["scale", "--stores", "faiss,milvus", "--chunks", "400", "--dim", "16",
                                           "--queries", "20", "--json", str(out)], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "400 random unit vectors" in result.stdout and "MRR@10" in result.stdout
    data = json.loads(out.read_text())
    faiss, milvus = data["results"]
    assert (faiss["store"], milvus["store"]) == ("faiss", "milvus")
    assert milvus["same_top10_as_faiss"] == 1.0  # both exact: the same rows, query by query
    assert milvus["hit_at_5"] == faiss["hit_at_5"] and milvus["mrr_at_10"] == faiss["mrr_at_10"]
    assert faiss["p50_ms"] is not None and milvus["p95_ms"] is not None


def test_an_unknown_store_is_refused() -> None:
    from rag_eval.cli import eval_app

    bad = CliRunner().invoke(eval_app, ["scale", "--stores", "faiss,chroma", "--chunks", "50", "--queries", "5"])
    assert bad.exit_code == 1 and "unknown store" in bad.output


def test_rgb_stores_score_as_the_dense_only_mode_does(rgb_file: Path, tmp_path: Path) -> None:
    """On the pooled index's own vectors FAISS through the seam is the dense-only mode; Milvus finds the same."""
    from rag_eval.stores import format_store_report, run_rgb_store_compare

    rows = rgb.load_rows(rgb_file)
    pool = rgb.pool_passages(rows)
    embedder = FakeEmbedder()
    index, info = rgb.ensure_pool_index(pool, tmp_path / "idx", lambda: embedder, "fake-bigram", "sha",
                                        ChunkerSettings(480, 100), progress=False)  # fmt: skip
    report = run_rgb_store_compare(rows, pool, index, embedder, ["milvus", "faiss"])
    faiss, milvus = report.results
    assert (faiss.store, milvus.store) == ("faiss", "milvus") and (report.chunks, report.queries) == (len(index), 2)
    dense = rgb.evaluate_pool_retrieval(rows, pool, index, embedder, RetrievalParams(), info, ks=(5,)).modes[1]
    assert (faiss.hit_at_5, faiss.mrr_at_10) == (dense.hit[5], pytest.approx(dense.mrr))
    assert milvus.same_top10_as_faiss == 1.0 and (milvus.hit_at_5, milvus.mrr_at_10) == (faiss.hit_at_5, faiss.mrr_at_10)
    assert "RGB pooled index" in format_store_report(report)


def test_rgb_command_compares_stores_and_refuses_an_unknown_one(rgb_file: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rag.index.embedding
    from rag.cli import app

    isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(rag.index.embedding, "load_embedder", lambda *_, **__: FakeEmbedder())
    base = ["eval", "rgb", str(rgb_file), "--index-dir", str(tmp_path / "idx"), "-q"]
    out = tmp_path / "stores.json"
    result = CliRunner().invoke(app, [*base, "--stores", "faiss,milvus", "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "RGB vector stores" in result.stdout and "top 10 = FAISS" in result.stdout
    data = json.loads(out.read_text())
    assert data["vectors"] == "rgb" and [r["store"] for r in data["results"]] == ["faiss", "milvus"]

    bad = CliRunner().invoke(app, [*base[:3], "--index-dir", str(tmp_path / "other"), "--stores", "faiss,chroma"])
    assert bad.exit_code == 1 and "Unknown --stores" in bad.output
    assert not (tmp_path / "other").exists()  # refused before anything was built
