"""The question encoder: an ONNX export of the real test embedder (MiniLM), run by onnxruntime.

It must give the vectors sentence-transformers gives, be used only when it was
exported from the very model configured; passages go through it too (with the document prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag.index.embedding import (
    OnnxDocumentEmbedder,
    OnnxQueryEmbedder,
    SentenceTransformerEmbedder,
    document_prompt,
    embed_distinct,
    ensure_query_encoder,
    load_document_embedder,
    load_embedder,
    query_encoder_dir,
)

pytestmark = pytest.mark.e2e
MODEL = "minilm-l6"
QUESTIONS = [
    "DeepSeek-V3 的训练成本是多少？",
    "Who proposed the Transformer architecture?",
    "word " * 400,  # longer than the model reads: cut where sentence-transformers cuts it
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the real test embedder (linked) and a fresh export of it."""
    from rag.config import load_settings
    from rag.models import get_spec, is_installed, model_dir

    real = load_settings().models_dir
    if not is_installed(get_spec(MODEL), real):
        pytest.fail("The test models are missing. Run: scripts/setup.sh --dev  (or: rag models fetch --tests)")
    here = tmp_path_factory.mktemp("models")
    (here / MODEL).symlink_to(model_dir(get_spec(MODEL), real), target_is_directory=True)
    assert ensure_query_encoder(MODEL, here) is True
    assert ensure_query_encoder(MODEL, here) is False  # current: not made again
    return here


@pytest.fixture(scope="module")
def reference(models_dir: Path) -> SentenceTransformerEmbedder:
    return load_document_embedder(MODEL, models_dir)


def test_questions_get_the_vectors_sentence_transformers_gives(models_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    fast = load_embedder(MODEL, models_dir, threads=2)
    assert isinstance(fast, OnnxQueryEmbedder) and fast.dim == reference.dim
    for question in QUESTIONS:
        got, want = fast.encode_query(question), reference.encode_query(question)
        assert got.dtype == np.float32 and got.shape == (reference.dim,)
        assert float(np.abs(got - want).max()) < 1e-5
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


def test_passages_get_the_vectors_sentence_transformers_gives_through_the_same_export(models_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    fast = load_embedder(MODEL, models_dir, onnx_passages=True)
    # Lengths that differ within a batch (padding), a repeat, and one past the model's length limit.
    texts = ["混合专家模型只激活部分参数。", "The Transformer relies on self-attention.", "短。", "word " * 400,
             "The Transformer relies on self-attention."] * 5  # fmt: skip
    done: list[int] = []
    vectors = fast.encode_documents(texts, progress=done.append)
    assert isinstance(fast, OnnxQueryEmbedder) and isinstance(fast.documents(), OnnxDocumentEmbedder)
    np.testing.assert_allclose(vectors, reference.encode_documents(texts), atol=1e-5)
    assert sum(done) == len(texts) and vectors.dtype == np.float32
    off = load_embedder(MODEL, models_dir, onnx_passages=False)
    assert isinstance(off, OnnxQueryEmbedder) and isinstance(off.documents(), SentenceTransformerEmbedder)


def test_passages_in_bfloat16_stay_close_to_float32_and_unit_length(models_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    texts = ["混合专家模型只激活部分参数。", "The Transformer relies on self-attention.", "短。"]
    half = load_document_embedder(MODEL, models_dir, dtype="bfloat16")
    assert isinstance(half, SentenceTransformerEmbedder) and half.dtype == "bfloat16"
    got, want = half.encode_documents(texts), reference.encode_documents(texts)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * want).sum(axis=1).min()) > 0.99


def test_auto_dtype_is_bfloat16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rag.index import embedding

    real_read = Path.read_text

    def cpuinfo(flags: str):  # type: ignore[no-untyped-def]
        return lambda self, *a, **k: f"flags\t: fpu {flags} sse2\n" if str(self) == "/proc/cpuinfo" else real_read(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", cpuinfo("avx512f amx_bf16 amx_tile"))
    assert embedding.resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(Path, "read_text", cpuinfo("avx2 avx512f"))
    assert embedding.resolve_dtype("auto") == "float32"
    assert embedding.resolve_dtype("bfloat16") == "bfloat16" and embedding.resolve_dtype("float32") == "float32"


def test_each_distinct_text_is_embedded_once() -> None:
    calls: list[list[str]] = []

    def encode(texts, progress):  # type: ignore[no-untyped-def]
        calls.append(list(texts))
        if progress:
            progress(len(texts))
        return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    done: list[int] = []
    got = embed_distinct(["aa", "b", "aa", "ccc", "b"], encode, done.append)
    assert calls == [["aa", "b", "ccc"]] and sum(done) == 5
    assert got[:, 0].tolist() == [2.0, 1.0, 2.0, 3.0, 1.0]


def test_the_document_prompt_is_the_one_sentence_transformers_uses(tmp_path: Path) -> None:
    assert document_prompt(tmp_path) == ""  # no config: no prompt
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "q: ", "document": "title: none | text: "}}), encoding="utf-8"
    )
    assert document_prompt(tmp_path) == "title: none | text: "


def test_an_export_of_another_model_or_format_is_not_used(models_dir: Path) -> None:
    info_file = query_encoder_dir(MODEL, models_dir) / "export.json"
    good = info_file.read_text(encoding="utf-8")
    try:
        for change in ({"model_sha256": "0" * 64}, {"format": -1}):
            info_file.write_text(json.dumps({**json.loads(good), **change}), encoding="utf-8")
            assert isinstance(load_embedder(MODEL, models_dir), SentenceTransformerEmbedder)
    finally:
        info_file.write_text(good, encoding="utf-8")
    assert isinstance(load_embedder(MODEL, models_dir), OnnxQueryEmbedder)
    assert isinstance(load_embedder(MODEL, models_dir, onnx_queries=False), SentenceTransformerEmbedder)


def test_without_an_export_questions_go_through_sentence_transformers(models_dir: Path, tmp_path: Path) -> None:
    (tmp_path / MODEL).symlink_to((models_dir / MODEL).resolve(), target_is_directory=True)
    assert isinstance(load_embedder(MODEL, tmp_path), SentenceTransformerEmbedder)


def test_a_failed_export_does_not_stop_the_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import rag.index.embedding
    import rag.models
    from rag.cli import app

    def broken(name: str, models_dir: Path) -> bool:
        raise RuntimeError("onnxscript is missing")

    monkeypatch.setattr(rag.models, "fetch", lambda name, *a, **k: Path("/models") / name)
    monkeypatch.setattr(rag.index.embedding, "ensure_query_encoder", broken)
    result = CliRunner().invoke(app, ["models", "fetch", MODEL])
    assert result.exit_code == 0, result.output
    assert "could not export the question encoder" in result.output and "onnxscript is missing" in result.output
    assert f"rag models fetch {MODEL}" in result.output
