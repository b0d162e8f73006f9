"""rag_eval.stores: `rag eval scale --stores faiss,milvus` on a few hundred random vectors (Milvus Lite, real)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner


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
