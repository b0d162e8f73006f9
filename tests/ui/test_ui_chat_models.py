"""ui.chat_models (lazy loading, at most two chat models) and ui.indexing (updates with progress)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rag.answer.pipeline import Done, Pipeline
from rag.errors import ModelError
from rag.index.build import build
from rag.index.reader import Index
from rag.index.report import BuildReport
from rag.models import get_spec
from tests.fakes import CountingFactory, FakeEmbedder, FakeGenerator, isolate, tiny_settings
from ui.chat_models import ChatModels, offered_models
from ui.indexing import Progress, run_build


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, top_k=3, candidates=10, chat_model="qwen2.5-1.5b")
    build(s, CountingFactory(), get_spec(s.embed_model).sha256)
    return s


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace model loading with fakes; returns the names loaded, in order."""
    loaded: list[str] = []

    def fake_load(name: str, *args: object) -> FakeGenerator:
        if name == "missing":
            raise ModelError("Model 'missing' is not installed.", "Run: rag models fetch missing")
        loaded.append(name)
        return FakeGenerator([f"answer by {name}"] * 5, name=name)

    monkeypatch.setattr("rag.llm.generation.load_generator", fake_load)
    return loaded


def test_offered_models_are_default_and_fast_plus_the_configured_one() -> None:
    assert offered_models("qwen2.5-1.5b") == [("default", "qwen2.5-1.5b"), ("fast", "qwen2.5-0.5b")]
    assert offered_models("qwen2.5-0.5b") == [("default", "qwen2.5-1.5b"), ("fast", "qwen2.5-0.5b")]
    assert offered_models("smollm2-135m")[0] == ("configured", "smollm2-135m")


def test_models_load_when_first_chosen_and_at_most_two_stay(settings, loads) -> None:  # type: ignore[no-untyped-def]
    models = ChatModels(Pipeline(settings, embedder=FakeEmbedder()))
    assert loads == [] and models.loaded == []  # nothing loads until a question needs it

    models.pipeline("qwen2.5-1.5b")
    models.pipeline("qwen2.5-1.5b")
    assert loads == ["qwen2.5-1.5b"]
    fast = models.pipeline("qwen2.5-0.5b")
    assert fast.settings.chat_model == "qwen2.5-0.5b" and fast.generator is not None
    assert models.loaded == ["qwen2.5-1.5b", "qwen2.5-0.5b"]

    models.pipeline("smollm2-135m")  # a third: the least recently used one goes
    assert models.loaded == ["qwen2.5-0.5b", "smollm2-135m"]
    assert not models.is_loaded("qwen2.5-1.5b") and models.base.generator is None

    models.pipeline("qwen2.5-1.5b")  # and comes back when chosen again
    assert loads == ["qwen2.5-1.5b", "qwen2.5-0.5b", "smollm2-135m", "qwen2.5-1.5b"]
    assert models.loaded == ["smollm2-135m", "qwen2.5-1.5b"]


def test_each_model_answers_with_its_own_generator_and_shares_the_embedder(settings, loads) -> None:  # type: ignore[no-untyped-def]
    embedder = FakeEmbedder()
    models = ChatModels(Pipeline(settings, embedder=embedder))
    for name in ("qwen2.5-1.5b", "qwen2.5-0.5b"):
        pipeline = models.pipeline(name)
        assert pipeline.get_embedder() is embedder
        done = list(pipeline.ask("DeepSeek-V3 的训练成本是多少？"))[-1]
        assert isinstance(done, Done) and done.answer.raw_text == f"answer by {name}"


def test_an_injected_generator_counts_as_loaded(settings, loads) -> None:  # type: ignore[no-untyped-def]
    models = ChatModels(Pipeline(settings, embedder=FakeEmbedder(), generator=FakeGenerator(name="scripted")))
    assert models.loaded == ["qwen2.5-1.5b"]
    assert models.pipeline(None).generator.name == "scripted"  # type: ignore[union-attr]
    assert loads == []


def test_a_missing_model_fails_with_the_fix_and_leaves_the_others(settings, loads) -> None:  # type: ignore[no-untyped-def]
    models = ChatModels(Pipeline(settings, embedder=FakeEmbedder()))
    models.pipeline("qwen2.5-1.5b")
    with pytest.raises(ModelError, match="not installed"):
        models.pipeline("missing")
    assert "missing" not in models.loaded
    assert models.pipeline("qwen2.5-1.5b").generator is not None


# ---------------------------------------------------------------- ui.indexing


def test_run_build_reports_progress_then_the_report(settings) -> None:  # type: ignore[no-untyped-def]
    (Path(settings.corpus_dir) / "new.md").write_text("# 新文档\n\n灯塔在 1921 年被漆成紫色。\n", encoding="utf-8")
    items = list(run_build(settings, FakeEmbedder, poll_seconds=0.01))
    assert items[0] == Progress("start")
    assert isinstance(items[-1], BuildReport) and items[-1].added == ["new.md"]
    assert all(isinstance(i, Progress) for i in items[:-1])
    assert "new.md" in Index.load(Path(settings.index_dir)).manifest.files


def test_old_index_serves_until_the_new_one_is_swapped_in(settings) -> None:  # type: ignore[no-untyped-def]
    (Path(settings.corpus_dir) / "new.md").write_text("# 灯塔\n\n灯塔在 1921 年被漆成紫色。\n", encoding="utf-8")
    gate, entered = threading.Event(), threading.Event()

    class SlowEmbedder(FakeEmbedder):
        def encode_documents(self, texts, progress=None):  # type: ignore[no-untyped-def]
            entered.set()
            gate.wait(10)
            return super().encode_documents(texts, progress)

    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=FakeGenerator(["x"] * 3))
    builder = run_build(settings, SlowEmbedder, poll_seconds=0.01)
    assert next(builder) == Progress("start")
    assert entered.wait(10)
    assert "new.md" not in pipeline.get_index().manifest.files  # mid-build: the old index answers
    assert isinstance(list(pipeline.ask("DeepSeek-V3 的训练成本是多少？"))[-1], Done)
    gate.set()
    assert isinstance(list(builder)[-1], BuildReport)
    assert "new.md" in pipeline.get_index().manifest.files  # picked up on the next question


def test_run_build_raises_the_build_error(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from rag.errors import IndexStateError

    broken = replace(settings, corpus_dir=tmp_path / "no-such-folder")
    with pytest.raises(IndexStateError, match="does not exist"):
        list(run_build(broken, FakeEmbedder, poll_seconds=0.01))
