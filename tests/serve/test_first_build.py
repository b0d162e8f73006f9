"""`rag serve` with no index yet: the page and /v1 are up while the first index is built in the background.

A real uvicorn server on 127.0.0.1 and the real build (rag.index.build), with a fake embedder that
holds the build in its embedding stage until the test lets it go, so "while building" is a state
the test controls, not a race. No assertion is about time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import httpx
import numpy as np
import pytest

from rag.answer.pipeline import Pipeline
from rag.config import Settings
from rag.index.background import BackgroundIndex, BuildProgress
from rag.models import get_spec
from tests.fakes import TINY_CORPUS, FakeEmbedder, FakeGenerator, write_corpus

pytestmark = pytest.mark.e2e

COST = "DeepSeek-V3 的训练成本是多少？"
REPLY = "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。"
CHAT = "smollm2-135m"  # installed with the test models: /v1 checks the model is there before answering


class HeldEmbedder(FakeEmbedder):
    """The bigram fake, whose passage embedding waits (after its first batch) until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.embedding = threading.Event()  # set once the build is inside its embedding stage

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        def held(n: int) -> None:
            if progress:
                progress(n)
            self.embedding.set()
            assert self.release.wait(120), "the test never let the build go on"

        return super().encode_documents(texts, held)


@pytest.fixture
def building(tmp_path, monkeypatch) -> Iterator[tuple[str, HeldEmbedder, BackgroundIndex]]:  # type: ignore[no-untyped-def]
    from rag.serve.app import serve
    from tests.fakes import isolate

    isolate(monkeypatch, tmp_path)
    settings = replace(Settings(), corpus_dir=write_corpus(tmp_path / "corpus", dict(TINY_CORPUS)),
                       index_dir=tmp_path / "index", top_k=3, candidates=10, kv_cache=False, chat_model=CHAT)  # fmt: skip
    embedder = HeldEmbedder()
    pipeline = Pipeline(settings, embedder=embedder, generator=FakeGenerator([REPLY]))
    indexing = BackgroundIndex(
        settings, lambda: embedder, get_spec(settings.embed_model).sha256, after=pipeline.get_index
    )
    from tests.serve.test_api import free_port

    assert not indexing.started  # `serve` starts the build once the page is up

    server = serve(settings, "127.0.0.1", free_port(), block=False, pipeline=pipeline, indexing=indexing)
    try:
        assert embedder.embedding.wait(60), "the build never reached its embedding stage"
        yield server.url, embedder, indexing
    finally:
        embedder.release.set()
        indexing.wait(60)
        server.close()


def ask_v1(url: str, question: str) -> httpx.Response:
    body = {"model": CHAT, "messages": [{"role": "user", "content": question}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def test_the_page_is_up_and_shows_the_build_while_the_first_index_is_built(building) -> None:  # type: ignore[no-untyped-def]
    url, _, indexing = building
    assert indexing.blocks_questions() and indexing.progress().stage == "embed"
    assert httpx.get(url + "/", timeout=30).status_code == 200
    state = httpx.get(url + "/v1/index", timeout=30).json()
    assert state["state"] == "building" and state["first_build"]["stage"] == "embed"
    assert state["first_build"]["documents"] == len(TINY_CORPUS) and state["first_build"]["texts"] > 0


def test_a_question_during_the_build_is_told_so_at_once_then_answered_after_it(building) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import Client

    url, embedder, indexing = building
    refused = ask_v1(url, COST)
    assert refused.status_code == 503 and refused.headers.get("retry-after")
    error = refused.json()["error"]
    assert error["code"] == "index_building" and "Building the index" in error["message"]

    chat, _sources, _box, *_ = Client(url + "/", verbose=False).predict(COST, [], 3, False, CHAT, "en", api_name="/ask")
    said = str(chat[-1]["content"])
    assert "still being built" in said and f"/{len(TINY_CORPUS)} documents read" in said

    embedder.release.set()
    assert indexing.wait(60).stage == "done"
    answered = ask_v1(url, COST)
    assert answered.status_code == 200 and "557.6" in answered.json()["choices"][0]["message"]["content"]


def test_progress_estimates_the_time_left_from_the_embedding_rate() -> None:
    p = BuildProgress(stage="embed", files_done=5, files_total=5, units_done=300, units_total=1200,
                      started=100.0, embed_started=100.0, embed_at=160.0)  # fmt: skip
    assert p.units_per_s() == 5.0 and p.eta_s(now=160.0) == 180.0
    line = p.line(now=160.0)
    assert "5/5 documents read, 300/1200 texts embedded" in line and "about 3 min left" in line
    assert BuildProgress(stage="read", files_total=5).eta_s() is None  # not embedding yet: unknown


def test_a_failed_first_build_says_why_and_stops_blocking_questions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rag.errors import IndexStateError

    def broken(*_args: object, **_kwargs: object):  # type: ignore[no-untyped-def]
        raise IndexStateError("Corpus folder x does not exist.", "Create it.")

    indexing = BackgroundIndex(replace(Settings(), index_dir=tmp_path), FakeEmbedder, "sha", build=broken)
    indexing.start()
    p = indexing.wait(30)
    assert p.stage == "failed" and "Corpus folder x does not exist. Create it." in p.line()
    assert not indexing.blocks_questions()


@pytest.mark.parametrize(("lang", "words"), [("en", ["2/5 documents read", "40/400 texts embedded", "left"]),
                                             ("zh", ["2/5 个文档", "40/400 个向量", "约剩"])])  # fmt: skip
def test_the_page_shows_documents_texts_and_the_time_left(lang: str, words: list[str]) -> None:
    from ui.app import _first_build_text

    now = time.monotonic()
    p = BuildProgress(stage="embed", files_done=2, files_total=5, units_done=40, units_total=400,
                      started=now - 20, embed_started=now - 10, embed_at=now)  # fmt: skip
    text = _first_build_text(p, lang)
    assert all(w in text for w in words), text
    failed = _first_build_text(BuildProgress(stage="failed", error="Corpus folder x does not exist."), lang)
    assert "Corpus folder x does not exist." in failed


def test_the_kv_store_build_pauses_while_the_shared_line_holds_a_question(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rag.answer.kvstore import BackgroundBuild
    from rag.serve.app import create_app

    settings = replace(Settings(), index_dir=tmp_path / "index", corpus_dir=tmp_path)
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=FakeGenerator([]))
    kv_build = BackgroundBuild(pipeline)
    app = create_app(settings, pipeline, kv_build)
    assert kv_build.busy() is False
    ticket = app.state.service.turns.join()
    assert kv_build.busy() is True
    ticket.release()
    assert kv_build.busy() is False
