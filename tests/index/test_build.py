"""rag.index.build (with plan and assemble): first build, incremental updates, broken inputs, with a fake embedder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from rag.errors import IndexStateError
from rag.index.build import build
from rag.index.manifest import FORMAT_VERSION
from rag.index.reader import Index, index_exists
from rag.ingest.chunking import ChunkerSettings, chunk_document, piece_texts, search_text
from rag.ingest.loaders import load_file
from tests.fakes import TINY_CORPUS, CountingFactory, FakeEmbedder, bigram_vector, isolate, tiny_settings
from tests.index.common import FILES, ROOT, SHA, build_with, expected_chunks, live_dir

# ---------------------------------------------------------------- first build


def test_first_build_creates_a_loadable_index(settings) -> None:  # type: ignore[no-untyped-def]
    events: list[tuple[str, int, int]] = []
    report, factory = build_with(settings, on_progress=lambda *e: events.append(e))
    root = Path(settings.index_dir)
    assert index_exists(root)
    assert report.wrote and report.changed
    assert sorted(report.added) == sorted(FILES)
    assert report.updated == report.removed == report.unchanged == []
    assert report.skipped == {}
    assert report.documents == len(FILES)
    assert factory.calls == 1
    assert factory.embedder.encode_documents_calls == 2  # the chunks, then their sentence pieces

    expected = expected_chunks(settings)
    assert report.chunks == report.embedded == len(expected)
    pieces = [t for c in expected for t in piece_texts(c, settings.piece_chars)]
    assert report.pieces_embedded == len(pieces) > 0

    index = Index.load(root, "embeddinggemma-300m", SHA)
    assert index.chunks == expected
    assert len(index) == len(expected)
    vectors = index.vectors()
    assert vectors.shape == (len(expected), 32)
    assert index.manifest.dim == 32
    assert index.manifest.format_version == FORMAT_VERSION
    assert index.manifest.embed_model == settings.embed_model
    assert index.manifest.embed_sha256 == SHA
    assert index.manifest.chunker == ChunkerSettings(80, 20).as_dict()
    assert set(index.manifest.files) == set(FILES)
    for rel, entry in index.manifest.files.items():
        assert entry.chunk_ids == [c.id for c in expected if c.path == rel]
    assert {e[0] for e in events} >= {"read", "embed", "write"}
    embeds = [e for e in events if e[0] == "embed"]
    assert embeds[-1][1] == embeds[-1][2] == len(expected) + len(pieces)


def test_layout_on_disk(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    root = Path(settings.index_dir)
    assert (root / "current").is_symlink()
    target = live_dir(settings)
    assert target.parent == (root / "builds").resolve()
    for name in ("manifest.json", "chunks.jsonl", "dense.faiss", "bm25"):
        assert (target / name).exists()
    assert [p.name for p in (root / "builds").iterdir()] == [target.name]  # no partial or old builds left
    assert not (root / ".lock.info").exists()
    lines = (target / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(expected_chunks(settings))
    assert "大模型简史" in lines[0] or any("大模型简史" in line for line in lines)  # stored as UTF-8, not escaped


def test_missing_corpus_folder(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    with pytest.raises(IndexStateError, match="does not exist"):
        build(replace(settings, corpus_dir=tmp_path / "no-such-corpus"), CountingFactory(), SHA)


# ---------------------------------------------------------------- incremental updates


def test_second_build_without_changes_writes_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    target = live_dir(settings)
    manifest_before = (target / "manifest.json").read_text(encoding="utf-8")

    def must_not_load() -> FakeEmbedder:
        raise AssertionError("the embedder factory was called for a no-change build")

    report = build(settings, must_not_load, SHA)
    assert not report.wrote and not report.changed
    assert sorted(report.unchanged) == sorted(FILES)
    assert report.embedded == 0
    assert report.documents == len(FILES)
    assert report.chunks == len(expected_chunks(settings))
    assert live_dir(settings) == target
    assert (target / "manifest.json").read_text(encoding="utf-8") == manifest_before


def test_touching_a_file_without_changing_it_writes_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    path = Path(settings.corpus_dir) / "cooking.md"
    os.utime(path, (time.time() + 100, time.time() + 100))
    report, factory = build_with(settings)
    assert not report.wrote and factory.calls == 0


def test_editing_one_file_reembeds_only_its_chunks(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    before = Index.load(Path(settings.index_dir))
    path = Path(settings.corpus_dir) / "transformer.txt"
    path.write_text(TINY_CORPUS["transformer.txt"] + "后来的 BERT 和 GPT 都基于 Transformer 架构。\n", encoding="utf-8")

    report, factory = build_with(settings)
    assert report.wrote
    assert report.updated == ["transformer.txt"]
    assert report.added == report.removed == []
    assert sorted(report.unchanged) == sorted(set(FILES) - {"transformer.txt"})
    assert factory.calls == 1
    new_chunks = chunk_document(load_file(path, "transformer.txt"), ChunkerSettings(80, 20))
    new_pieces = [t for c in new_chunks for t in piece_texts(c, settings.piece_chars)]
    assert factory.embedder.embedded_texts == [search_text(c) for c in new_chunks] + new_pieces
    assert report.embedded == len(new_chunks)
    assert report.pieces_embedded == len(new_pieces)

    after = Index.load(Path(settings.index_dir))
    assert [c for c in after.chunks if c.path == "transformer.txt"] == new_chunks
    assert [c for c in after.chunks if c.path != "transformer.txt"] == [
        c for c in before.chunks if c.path != "transformer.txt"
    ]
    old_rows = {c.id: v for c, v in zip(before.chunks, before.vectors())}
    for c, v in zip(after.chunks, after.vectors()):
        if c.path != "transformer.txt":
            np.testing.assert_array_equal(v, old_rows[c.id])  # reused, not recomputed
    old_pieces = {c.id: [] for c in before.chunks}
    for v, row in zip(*before.piece_vectors()):
        old_pieces[before.chunks[row].id].append(v)
    new_pieces_of = {c.id: [] for c in after.chunks}
    for v, row in zip(*after.piece_vectors()):
        new_pieces_of[after.chunks[row].id].append(v)
    for c in after.chunks:
        if c.path != "transformer.txt":
            np.testing.assert_array_equal(np.array(new_pieces_of[c.id]), np.array(old_pieces[c.id]))


def test_deleting_a_file_removes_its_chunks(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    (Path(settings.corpus_dir) / "history.md").unlink()
    report, factory = build_with(settings)
    assert report.wrote and report.removed == ["history.md"]
    assert factory.calls == 0  # nothing new to embed
    index = Index.load(Path(settings.index_dir))
    assert "history.md" not in index.manifest.files
    assert all(c.path != "history.md" for c in index.chunks)
    assert index.vectors().shape[0] == len(index.chunks) == report.chunks
    assert index.lexical_search("ChatGPT 用户数", 5) == [] or all(
        index.chunks[r].path != "history.md" for r, _ in index.lexical_search("ChatGPT 用户数", 5)
    )


def test_adding_a_file(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    (Path(settings.corpus_dir) / "new" / "rlhf.md").parent.mkdir()
    (Path(settings.corpus_dir) / "new" / "rlhf.md").write_text(
        "# RLHF\n\n基于人类反馈的强化学习（RLHF）用奖励模型对齐语言模型的输出。\n", encoding="utf-8"
    )
    report, factory = build_with(settings)
    assert report.added == ["new/rlhf.md"]
    assert len(report.unchanged) == len(FILES)
    assert all("RLHF" in t or "强化学习" in t for t in factory.embedder.embedded_texts)
    index = Index.load(Path(settings.index_dir))
    assert "new/rlhf.md" in index.manifest.files
    assert index.chunks == expected_chunks(settings)


def test_incremental_result_equals_full_rebuild(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    corpus = Path(settings.corpus_dir)
    build_with(settings)
    (corpus / "transformer.txt").write_text("Transformer 由谷歌提出。\n它基于自注意力。\n", encoding="utf-8")
    build_with(settings)
    (corpus / "cooking.md").unlink()
    (corpus / "zz-new.md").write_text(
        "# 新文件\n\n混合专家模型把参数分给多个专家，每次只激活一部分。\n", encoding="utf-8"
    )
    build_with(settings)
    incremental = Index.load(Path(settings.index_dir))

    full_settings = replace(settings, index_dir=tmp_path / "full-index")
    report, _ = build_with(full_settings, full=True)
    assert report.embedded == len(incremental.chunks)
    full = Index.load(Path(full_settings.index_dir))
    assert [c.id for c in incremental.chunks] == [c.id for c in full.chunks]
    assert incremental.chunks == full.chunks
    np.testing.assert_allclose(incremental.vectors(), full.vectors(), atol=1e-6)
    assert {k: v.chunk_ids for k, v in incremental.manifest.files.items()} == {
        k: v.chunk_ids for k, v in full.manifest.files.items()
    }


def test_full_flag_reembeds_everything(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    report, factory = build_with(settings, full=True)
    assert report.wrote
    assert sorted(report.added) == sorted(FILES)
    assert report.embedded == len(expected_chunks(settings))
    assert factory.calls == 1


def test_changed_chunk_settings_rebuild_everything(settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    build_with(settings)
    report, factory = build_with(replace(settings, chunk_size=200, chunk_overlap=40))
    assert sorted(report.added) == sorted(FILES)
    assert factory.calls == 1
    index = Index.load(Path(settings.index_dir))
    assert index.manifest.chunker["size"] == 200


def test_changed_piece_size_rebuilds_everything(settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    build_with(settings)
    report, _ = build_with(replace(settings, piece_chars=0))
    assert sorted(report.added) == sorted(FILES)
    index = Index.load(Path(settings.index_dir))
    assert index.pieces is None and index.manifest.piece_chars == 0
    assert not (live_dir(settings) / "pieces.faiss").exists()
    assert index.dense_search(index.vectors()[0], 1, pieces=500)[0][0] == 0  # no pieces: chunks alone


def test_changed_embedder_hash_rebuilds_everything(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    report = build(settings, CountingFactory(), "f" * 64)
    assert sorted(report.added) == sorted(FILES)
    assert Index.load(Path(settings.index_dir)).manifest.embed_sha256 == "f" * 64


def test_vectors_match_chunks_with_nested_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    files = {
        "notes.md": "# 笔记\n\n番茄汤的做法：番茄、洋葱和大蒜一起煮二十分钟，然后打成浓汤。\n",
        "notes/a.md": "# 模型\n\nDeepSeek-V3 的训练成本为 557.6 万美元，使用 FP8 混合精度。\n",
        "notes-2024.md": "# 2024\n\nLLaMA 3 在 2024 年 4 月发布，有 8B 和 70B 两个版本。\n",
    }
    s = tiny_settings(tmp_path, files)
    build(s, CountingFactory(), SHA)
    index = Index.load(Path(s.index_dir))
    for chunk, vector in zip(index.chunks, index.vectors()):
        np.testing.assert_allclose(vector, bigram_vector(search_text(chunk)), atol=1e-6, err_msg=chunk.path)


# ---------------------------------------------------------------- broken inputs


def test_broken_file_is_skipped_and_reported(settings) -> None:  # type: ignore[no-untyped-def]
    corpus = Path(settings.corpus_dir)
    (corpus / "broken.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    (corpus / "empty.md").write_bytes(b"")
    report, _ = build_with(settings)
    assert set(report.skipped) == {"broken.txt", "empty.md"}
    assert "binary" in report.skipped["broken.txt"]
    assert "empty" in report.skipped["empty.md"]
    assert sorted(report.added) == sorted(FILES)
    index = Index.load(Path(settings.index_dir))
    assert set(index.manifest.files) == set(FILES)
    assert set(index.manifest.skipped) == {"broken.txt", "empty.md"}

    # Unchanged broken files are remembered: no rewrite, still reported.
    again, factory = build_with(settings)
    assert not again.wrote and factory.calls == 0
    assert set(again.skipped) == {"broken.txt", "empty.md"}

    # A fixed file is indexed.
    (corpus / "broken.txt").write_text("修好的文件，现在有正常的中文内容。", encoding="utf-8")
    fixed, _ = build_with(settings)
    assert fixed.added == ["broken.txt"]
    assert set(fixed.skipped) == {"empty.md"}
    assert any(c.path == "broken.txt" for c in Index.load(Path(settings.index_dir)).chunks)


def test_file_that_breaks_loses_its_chunks(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    (Path(settings.corpus_dir) / "cooking.md").write_bytes(b"\x00" * 100)
    report, _ = build_with(settings)
    assert "cooking.md" in report.skipped
    assert "cooking.md" in report.removed
    index = Index.load(Path(settings.index_dir))
    assert all(c.path != "cooking.md" for c in index.chunks)
    assert "cooking.md" not in index.manifest.files


def test_oversized_file_is_skipped(settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    (Path(settings.corpus_dir) / "huge.txt").write_text("大" * 2000, encoding="utf-8")  # 6000 bytes
    report, _ = build_with(replace(settings, max_file_mb=0.005))
    assert "huge.txt" in report.skipped and "limit" in report.skipped["huge.txt"]


def test_raising_max_file_mb_indexes_a_previously_oversized_file(settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    (Path(settings.corpus_dir) / "huge.txt").write_text("大" * 2000, encoding="utf-8")  # 6000 bytes
    first, _ = build_with(replace(settings, max_file_mb=0.005))
    assert "huge.txt" in first.skipped
    again, _ = build_with(replace(settings, max_file_mb=1.0))
    assert "huge.txt" not in again.skipped
    assert again.added == ["huge.txt"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_empty_corpus_builds_an_empty_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, {"broken.txt": b"\x00\x00"})
    report = build(s, CountingFactory(), SHA)
    assert report.chunks == 0 and "broken.txt" in report.skipped
    index = Index.load(Path(s.index_dir))
    assert len(index) == 0 and index.manifest.dim == 32
    assert index.dense_search(bigram_vector("问题"), 3) == []


# ---------------------------------------------------------------- incremental == full rebuild, on the real corpus


DEV_QUESTIONS = ROOT.parent / "shared" / "eval" / "dev.jsonl"
# Asked always; the dev questions (../shared/eval/dev.jsonl) are added when that folder is present.
OWN_QUESTIONS = [
    "DeepSeek-V3 的训练成本是多少？",
    "什么是混合专家（MoE）架构？",
    "Transformer 架构是哪一年提出的？",
    "GPQA Diamond 是什么样的评测基准？",
    "Which company proposed the Transformer architecture?",
    "ChatGPT 是什么时候发布的？",
    "RLHF 是什么？",
    "量子计算机的冷却系统",
]


def _questions() -> list[str]:
    if not DEV_QUESTIONS.exists():
        return OWN_QUESTIONS
    dev = [json.loads(line)["question"] for line in DEV_QUESTIONS.read_text(encoding="utf-8").splitlines() if line]
    assert len(dev) >= 50
    return OWN_QUESTIONS + dev


def test_incremental_updates_retrieve_exactly_like_a_full_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After adds, edits, deletes, a rename and a file turning bad and good again, every question's top 10 is
    the same as from a fresh full build of the same corpus."""
    import shutil
    from dataclasses import replace

    from rag.answer.retrieval import RetrievalParams, Retriever

    isolate(monkeypatch, tmp_path)
    real = sorted(p for p in (ROOT / "corpus").iterdir() if not p.name.startswith("."))  # .examples.txt is no document
    assert len(real) == 5
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in real[:3]:
        shutil.copy(path, corpus / path.name)
    s = tiny_settings(tmp_path, {})  # default chunking, as in use
    factory = CountingFactory()

    def update() -> None:
        build(s, factory, SHA)

    update()
    shutil.copy(real[3], corpus / real[3].name)  # add
    (corpus / "sub dir").mkdir()
    shutil.copy(real[4], corpus / "sub dir" / real[4].name)
    update()
    edited = corpus / real[0].name  # edit: a new paragraph in the middle and a line at the end
    text = edited.read_text(encoding="utf-8")
    middle = text.index("\n\n", len(text) // 2)
    inserted = "\n\n增量索引测试：这一段是后来插入的。\n"
    edited.write_text(text[:middle] + inserted + text[middle:] + "\n末尾追加的一行。\n", "utf-8")
    update()
    (corpus / real[1].name).unlink()  # delete
    (corpus / real[2].name).rename(corpus / f"renamed {real[2].name}")  # rename = delete + add
    update()
    (corpus / "sub dir" / real[4].name).write_bytes(b"\x00broken")  # a file turns bad: its chunks go
    update()
    shutil.copy(real[4], corpus / "sub dir" / real[4].name)  # and good again
    update()
    edited.write_text(edited.read_text(encoding="utf-8").replace("增量索引测试", "再次编辑"), "utf-8")  # first in order
    update()
    assert factory.embedder.encode_documents_calls == 12  # each step embedded only its own changes (and their pieces)

    incremental = Index.load(Path(s.index_dir))
    full_settings = replace(s, index_dir=tmp_path / "full-index")
    build(full_settings, CountingFactory(), SHA, full=True)
    full = Index.load(Path(full_settings.index_dir))

    assert incremental.chunks == full.chunks  # same chunk set, same order
    assert {k: (v.sha256, v.chunk_ids) for k, v in incremental.manifest.files.items()} == {
        k: (v.sha256, v.chunk_ids) for k, v in full.manifest.files.items()
    }
    np.testing.assert_allclose(incremental.vectors(), full.vectors(), atol=1e-6)
    (pieces_a, owners_a), (pieces_b, owners_b) = incremental.piece_vectors(), full.piece_vectors()
    assert owners_a.tolist() == owners_b.tolist() and len(owners_a) > 3 * len(full.chunks)
    np.testing.assert_allclose(pieces_a, pieces_b, atol=1e-6)
    params = RetrievalParams.from_settings(s)
    a, b = Retriever(incremental, FakeEmbedder(), params), Retriever(full, FakeEmbedder(), params)
    for question in _questions():
        got, want = a.rank(question, 10), b.rank(question, 10)
        assert [h.chunk.id for h in got] == [h.chunk.id for h in want], question
        assert [h.score for h in got] == pytest.approx([h.score for h in want]), question
