"""rag.index.reader: loading a build, its searches, and refusing stale or damaged indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag.errors import IndexStateError
from rag.index.manifest import FORMAT_VERSION
from rag.index.reader import Index
from rag.ingest.chunking import piece_texts, search_text
from tests.fakes import bigram_vector
from tests.index.common import FILES, SHA, build_with, live_dir


# ---------------------------------------------------------------- loading and searching
def test_vectors_belong_to_their_chunks(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    index = Index.load(Path(settings.index_dir))
    for chunk, vector in zip(index.chunks, index.vectors()):
        np.testing.assert_allclose(vector, bigram_vector(search_text(chunk)), atol=1e-6)


def test_piece_vectors_belong_to_their_chunks(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    index = Index.load(Path(settings.index_dir))
    vectors, owners = index.piece_vectors()
    expected = [(row, t) for row, c in enumerate(index.chunks) for t in piece_texts(c, settings.piece_chars)]
    assert owners.tolist() == [row for row, _ in expected]
    for vector, (_, text) in zip(vectors, expected, strict=True):
        np.testing.assert_allclose(vector, bigram_vector(text), atol=1e-6)


def test_a_chunk_scores_its_best_sentence_piece(settings) -> None:  # type: ignore[no-untyped-def]
    """A query matching one sentence of a chunk scores that sentence's piece, higher than the whole chunk."""
    build_with(settings)
    index = Index.load(Path(settings.index_dir))
    vectors, owners = index.piece_vectors()
    row, query = int(owners[0]), vectors[0]  # the query is the chunk's first piece
    whole = float(index.vectors()[row] @ query)
    assert whole < 0.999
    chunks_only = dict(index.dense_search(query, len(index)))
    with_pieces = dict(index.dense_search(query, len(index), pieces=1000))
    assert chunks_only[row] == pytest.approx(whole, abs=1e-5)
    assert with_pieces[row] == pytest.approx(1.0, abs=1e-5)
    assert index.dense_search(query, 1, pieces=1000)[0][0] == row
    for other, score in with_pieces.items():  # never below the chunk's own score
        assert score >= chunks_only[other] - 1e-6


def test_dense_and_lexical_search_of_loaded_index(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    index = Index.load(Path(settings.index_dir))
    chunk = next(c for c in index.chunks if "1750" in c.text)
    row = index.chunks.index(chunk)
    dense = index.dense_search(bigram_vector(search_text(chunk)), 3)
    assert dense[0][0] == row and dense[0][1] == pytest.approx(1.0, abs=1e-5)
    lexical = index.lexical_search("GPT-3 的参数量是多少", 3)
    assert lexical[0][0] == row


def test_load_without_an_index(tmp_path: Path) -> None:
    with pytest.raises(IndexStateError) as info:
        Index.load(tmp_path / "nothing")
    assert "rag index" in info.value.hint


# ---------------------------------------------------------------- refusing stale or damaged indexes


def test_load_refuses_another_embed_model(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    root = Path(settings.index_dir)
    with pytest.raises(IndexStateError) as info:
        Index.load(root, embed_model="other")
    assert "rag index" in info.value.hint
    assert "other" in info.value.message
    with pytest.raises(IndexStateError) as info:
        Index.load(root, embed_model=settings.embed_model, embed_sha256="0" * 64)
    assert "rag index" in info.value.hint
    assert len(Index.load(root, settings.embed_model, SHA)) > 0


def _edit_manifest(settings, **changes: object) -> None:  # type: ignore[no-untyped-def]
    path = live_dir(settings) / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0])
def test_load_refuses_another_format_version(settings, version: int) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    _edit_manifest(settings, format_version=version)
    with pytest.raises(IndexStateError) as info:
        Index.load(Path(settings.index_dir))
    assert "rag index" in info.value.hint
    assert str(version) in info.value.message


def test_build_replaces_an_index_of_another_format(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    _edit_manifest(settings, format_version=FORMAT_VERSION + 1)
    report, factory = build_with(settings)
    assert sorted(report.added) == sorted(FILES) and factory.calls == 1
    assert Index.load(Path(settings.index_dir)).manifest.format_version == FORMAT_VERSION


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_faiss_file(settings, keep: float) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    dense = live_dir(settings) / "dense.faiss"
    data = dense.read_bytes()
    dense.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(IndexStateError) as info:
        Index.load(Path(settings.index_dir))
    assert "rag index --full" in str(info.value)
    # and the next build repairs it from scratch
    report, factory = build_with(settings)
    assert report.wrote and factory.calls == 1
    assert len(Index.load(Path(settings.index_dir))) == report.chunks


@pytest.mark.parametrize("damage", ["manifest", "chunks", "bm25", "missing-chunk-line"])
def test_other_damage_is_reported(settings, damage: str) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    target = live_dir(settings)
    if damage == "manifest":
        (target / "manifest.json").write_text("{not json", encoding="utf-8")
    elif damage == "chunks":
        (target / "chunks.jsonl").write_text('{"id": 1}\n', encoding="utf-8")
    elif damage == "bm25":
        for p in (target / "bm25").iterdir():
            p.unlink()
    else:
        lines = (target / "chunks.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (target / "chunks.jsonl").write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(IndexStateError) as info:
        Index.load(Path(settings.index_dir))
    assert "rag index" in info.value.hint


