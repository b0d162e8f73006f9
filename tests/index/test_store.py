"""rag.index.store: the vector-store seam. The same assertions run against FaissStore and MilvusStore
(Milvus Lite, a real local database in tmp_path): the stores alone with random vectors, then whole
builds, incremental updates and deletes through rag.index.build with the fake embedder."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag.errors import IndexStateError, RagError
from rag.index.manifest import DENSE_FILE, PIECES_FILE
from rag.index.reader import Index
from rag.index.store import FaissStore
from rag.ingest.chunking import piece_texts, search_text
from tests.fakes import TINY_CORPUS, bigram_vector
from tests.index.common import FILES, build_with, live_dir

STORES = ["faiss", "milvus"]
DIM = 16


def _unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _new_store(kind: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An empty store and a function that seals it and opens it again as a reader would."""
    if kind == "faiss":
        store = FaissStore.empty(DIM)

        def reopen():  # type: ignore[no-untyped-def]
            store.save(tmp_path / "v.faiss")
            return FaissStore.read(tmp_path / "v.faiss")

        return store, reopen
    from rag.index.milvus import MilvusStore

    uri = str(tmp_path / "milvus.db")
    store = MilvusStore.create(uri, "t_chunks", DIM)

    def reopen():  # type: ignore[no-untyped-def]
        store.finish()
        store.close()
        return MilvusStore.open(uri, "t_chunks")

    return store, reopen


def _close(store) -> None:  # type: ignore[no-untyped-def]
    getattr(store, "close", lambda: None)()


# ---------------------------------------------------------------- the stores alone


@pytest.mark.parametrize("kind", STORES)
def test_a_store_returns_what_was_added(kind: str, tmp_path: Path) -> None:
    vectors = _unit(300)
    store, reopen = _new_store(kind, tmp_path)
    store.add(vectors[:120])
    store.add(vectors[120:])  # rows continue where the first batch ended
    assert store.count() == 300
    store = reopen()
    try:
        assert store.count() == 300 and store.dim == DIM
        np.testing.assert_allclose(store.get(), vectors, atol=1e-6)
        np.testing.assert_allclose(store.get([7, 2, 7]), vectors[[7, 2, 7]], atol=1e-6)
        for q in (3, 150, 299):
            scores, rows = store.search(vectors[q : q + 1], 10)
            exact = np.argsort(-(vectors @ vectors[q]))[:10]
            assert rows.shape == scores.shape == (1, 10)
            assert rows[0].tolist() == exact.tolist()
            np.testing.assert_allclose(scores[0], (vectors @ vectors[q])[exact], atol=1e-5)
    finally:
        _close(store)


@pytest.mark.parametrize("kind", STORES)
def test_a_small_store_pads_its_results(kind: str, tmp_path: Path) -> None:
    store, reopen = _new_store(kind, tmp_path)
    store.add(_unit(3))
    store = reopen()
    try:
        _, rows = store.search(_unit(1, seed=1), 5)
        assert sorted(rows[0][:3].tolist()) == [0, 1, 2] and rows[0][3:].tolist() == [-1, -1]
    finally:
        _close(store)


# ---------------------------------------------------------------- whole builds through the seam


@pytest.fixture(params=STORES)
def store_settings(request: pytest.FixtureRequest, settings):  # type: ignore[no-untyped-def]
    return replace(settings, vector_store=request.param)


def _collections(settings) -> list[str]:  # type: ignore[no-untyped-def]
    """The Milvus collections of this index, read the way the product reads them."""
    from rag.index import milvus

    root = Path(settings.index_dir)
    client = milvus._CLIENTS.acquire(milvus.resolve_uri(settings, root)[0])
    try:
        return sorted(n for n in client.list_collections() if n.startswith(milvus.index_prefix(root)))
    finally:
        milvus._CLIENTS.release(milvus.resolve_uri(settings, root)[0])


def _load(settings) -> Index:  # type: ignore[no-untyped-def]
    return Index.load(Path(settings.index_dir))


def test_a_build_holds_the_same_rows_in_either_store(store_settings) -> None:  # type: ignore[no-untyped-def]
    report, _ = build_with(store_settings)
    index = _load(store_settings)
    try:
        assert len(index) == report.chunks > 0 and set(index.manifest.files) == set(FILES)
        for chunk, vector in zip(index.chunks, index.vectors(), strict=True):
            np.testing.assert_allclose(vector, bigram_vector(search_text(chunk)), atol=1e-6)
        vectors, owners = index.piece_vectors()
        expected = [(row, t) for row, c in enumerate(index.chunks) for t in piece_texts(c, store_settings.piece_chars)]
        assert owners.tolist() == [row for row, _ in expected] and len(vectors) == len(expected)
        chunk = next(c for c in index.chunks if "1750" in c.text)
        hits = index.dense_search(bigram_vector(search_text(chunk)), 3, pieces=50)
        assert hits[0][0] == index.chunks.index(chunk) and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    finally:
        index.close()


def test_both_stores_rank_alike(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    milvus_settings = replace(settings, vector_store="milvus", index_dir=tmp_path / "milvus-index")
    build_with(settings)
    build_with(milvus_settings)
    faiss_index, milvus_index = _load(settings), _load(milvus_settings)
    try:
        assert faiss_index.chunks == milvus_index.chunks
        for text in ("GPT-3 拥有多少参数", "ChatGPT 的用户数", "注意力机制"):
            query = bigram_vector(text)
            a, b = faiss_index.dense_search(query, 8, pieces=40), milvus_index.dense_search(query, 8, pieces=40)
            assert [r for r, _ in a] == [r for r, _ in b]
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
    finally:
        milvus_index.close()


def test_updates_and_deletes_in_either_store(store_settings) -> None:  # type: ignore[no-untyped-def]
    build_with(store_settings)
    corpus = Path(store_settings.corpus_dir)
    (corpus / "transformer.txt").write_text(TINY_CORPUS["transformer.txt"] + "后来的 BERT 都基于它。\n", encoding="utf-8")
    (corpus / "history.md").unlink()
    report, factory = build_with(store_settings)
    assert report.updated == ["transformer.txt"] and report.removed == ["history.md"] and factory.calls == 1
    index = _load(store_settings)
    try:
        assert report.embedded == sum(c.path == "transformer.txt" for c in index.chunks)  # only the edited file
        assert "history.md" not in index.manifest.files and not any(c.path == "history.md" for c in index.chunks)
        assert any("BERT 都基于它" in c.text for c in index.chunks)
        for chunk, vector in zip(index.chunks, index.vectors(), strict=True):
            np.testing.assert_allclose(vector, bigram_vector(search_text(chunk)), atol=1e-6)
        live = index.manifest.vector_store
    finally:
        index.close()
    if store_settings.vector_store == "milvus":
        assert _collections(store_settings) == sorted([live["chunks"], live["pieces"]])  # the old build's are gone


def test_the_manifest_names_the_milvus_collections(settings) -> None:  # type: ignore[no-untyped-def]
    milvus_settings = replace(settings, vector_store="milvus")
    build_with(milvus_settings)
    directory = live_dir(milvus_settings)
    record = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))["vector_store"]
    assert record["kind"] == "milvus" and record["uri"] == "milvus.db"  # inside the index folder, relative
    assert directory.name.replace("-", "_") in record["chunks"] and record["chunks"].endswith("_chunks")
    assert not (directory / DENSE_FILE).exists() and not (directory / PIECES_FILE).exists()
    assert (Path(settings.index_dir) / "milvus.db").is_dir()


def test_a_faiss_manifest_is_as_before(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    assert "vector_store" not in json.loads((live_dir(settings) / "manifest.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("first", "second"), [("faiss", "milvus"), ("milvus", "faiss")])
def test_switching_stores_copies_the_vectors_without_embedding(settings, first: str, second: str) -> None:  # type: ignore[no-untyped-def]
    build_with(replace(settings, vector_store=first))
    before = _load(settings)
    vectors = before.vectors()
    before.close()
    report, factory = build_with(replace(settings, vector_store=second))
    assert report.wrote and report.embedded == 0 and factory.calls == 0
    after = _load(settings)
    try:
        assert bool(after.manifest.vector_store) == (second == "milvus")
        np.testing.assert_allclose(after.vectors(), vectors, atol=1e-6)
    finally:
        after.close()
    if second == "faiss":  # the Milvus build is dropped once the FAISS one is live
        assert _collections(replace(settings, vector_store="milvus")) == []


def test_a_dropped_collection_is_reported_and_rebuilt(settings) -> None:  # type: ignore[no-untyped-def]
    from rag.index import milvus

    milvus_settings = replace(settings, vector_store="milvus")
    build_with(milvus_settings)
    uri = milvus.resolve_uri(milvus_settings, Path(settings.index_dir))[0]
    live = json.loads((live_dir(settings) / "manifest.json").read_text(encoding="utf-8"))["vector_store"]
    milvus.drop_collections(uri, milvus.index_prefix(Path(settings.index_dir)), keep={live["pieces"]})
    with pytest.raises(IndexStateError) as info:
        _load(settings)
    assert "rag index --full" in str(info.value)
    report, factory = build_with(milvus_settings)
    assert report.wrote and factory.calls == 1 and any("from scratch" in n for n in report.notes)
    _load(settings).close()


def test_without_pymilvus_the_error_says_how_to_install(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus now raises ImportError
    with pytest.raises(RagError) as info:
        build_with(replace(settings, vector_store="milvus"))
    assert "pymilvus" in info.value.message and "pip install .[scale]" in info.value.hint
