"""rag.llm.kvengine with the real tiny model (SmolLM2-135M): the decode loop and the whole cached path.

- the cached path streams text and counts only the question as read;
- an English answer never writes Chinese, on either path;
- `rag index --kv` builds the store and `rag ask` answers from it; `rag bench` measures both paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag.answer import kvstore, prompting
from rag.llm.kvengine import CachedBlockGenerator, KVEngine
from tests.llm.conftest import MODEL, QUESTION, A, tail_tokens


def test_generator_streams_text_and_counts_tokens(q8: KVEngine) -> None:
    engine = q8
    gen = CachedBlockGenerator(engine, MODEL, 0.0)
    blocks = [engine.compute_block(A, prompting.block_label(1))]
    pieces = list(gen.stream_blocks([prompting.block_label(1)], blocks, prompting.question_tail(QUESTION), 12))
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert 1 <= gen.usage.completion_tokens <= 12 and gen.usage.prompt_tokens == len(tail_tokens(engine))
    # The same blocks again give the same greedy answer (the cache was reset in between).
    again = list(gen.stream_blocks([prompting.block_label(1)], blocks, prompting.question_tail(QUESTION), 12))
    assert "".join(again) == "".join(pieces)


CHINESE = re.compile("[\u3000-\u303f\u3400-\u9fff\uff00-\uffef\ufffd]")


def test_an_english_answer_never_writes_chinese_on_either_path(llm, q8: KVEngine) -> None:  # type: ignore[no-untyped-def]
    # Asked to repeat Chinese, the tiny model does; told `english`, neither path writes a Chinese
    # character or a piece of one (which would show as U+FFFD).
    repeat = [{"role": "system", "content": "Repeat the user's text exactly."}, {"role": "user", "content": A}]
    assert CHINESE.search("".join(llm.stream(repeat, 16)))
    assert not CHINESE.search("".join(llm.stream(repeat, 16, english=True)))
    gen = CachedBlockGenerator(q8, MODEL, 0.0)
    blocks = [q8.compute_block(A, prompting.block_label(1))]
    label, tail = [prompting.block_label(1)], prompting.question_tail(QUESTION)
    assert CHINESE.search("".join(gen.stream_blocks(label, blocks, tail, 16)))
    assert not CHINESE.search("".join(gen.stream_blocks(label, blocks, tail, 16, english=True)))
    from rag.llm.generation import chinese_tokens

    assert chinese_tokens(q8.llm) is chinese_tokens(llm._llm)  # one model, its vocabulary read once


# ---------------------------------------------------------------- the command line, end to end


@pytest.mark.e2e
def test_rag_index_kv_builds_the_store_and_ask_uses_it(small_world, small_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil
    import subprocess

    from tests.conftest import RAG_BIN

    shutil.copytree(small_world.index_dir, tmp_path / "index", symlinks=True)
    shutil.rmtree(tmp_path / "index" / "kvcache", ignore_errors=True)  # another test's page may have built one
    env = dict(small_env, RAG_INDEX_DIR=str(tmp_path / "index"), RAG_KV_CACHE="1")  # the store is opt-in

    def rag(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [RAG_BIN, *args], check=False, env={**env, **extra}, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        return out

    plain = rag("index")
    assert "KV store: 0/" in plain.stdout and "rag index --kv" in plain.stdout  # says how, computes nothing
    built = rag("index", "--kv")
    assert "computed" in built.stdout and "(ready)" in built.stdout

    cached = json.loads(rag("ask", "--json", "How much did the training of DeepSeek-V3 cost?").stdout)
    # The tiny test model's answer may fail the citation check and be written again on the
    # ordinary path; the first try is the store's either way.
    assert cached["tries"][0] == "cached"
    if cached["path"] == "cached":
        assert 0 < cached["prompt_tokens"] < cached["cached_tokens"]
    for c in cached["citations"]:
        assert 1 <= c["number"] <= len(cached["passages"])

    off = json.loads(rag("ask", "--json", "How much did the training of DeepSeek-V3 cost?", RAG_KV_CACHE="0").stdout)
    assert off["path"] == "ordinary" and off["cached_tokens"] == 0


@pytest.mark.e2e
def test_bench_measures_both_paths(small_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil
    from dataclasses import replace

    from rag.index.reader import Index
    from rag_eval import bench

    shutil.copytree(small_world.index_dir, tmp_path / "index", symlinks=True)
    shutil.rmtree(tmp_path / "index" / "kvcache", ignore_errors=True)
    settings = replace(small_world, index_dir=tmp_path / "index", kv_cache=True)
    chunks = Index.load(settings.index_dir).chunks
    kvstore.update(settings, chunks, lambda: kvstore.open_engine(settings))
    questions = tmp_path / "q.jsonl"
    row = {"id": "q1", "question": "How much did the training of DeepSeek-V3 cost?", "evidence": [], "type": "factoid"}
    questions.write_text(json.dumps(row) + "\n", encoding="utf-8")

    report = bench.run_bench(
        settings, questions, limit=1, skip=("cold", "index", "retrieval", "answers", "conversation")
    )
    record = report.details["cached"]["records"][0]
    assert record["path"] == "cached"
    if record["tries"] == ["cached"]:  # not written again on the ordinary path (see Pipeline.ask)
        assert 0 < record["cached_prompt_tokens"] < record["ordinary_prompt_tokens"]
    assert record["cached_ttft"] > 0 and record["ordinary_ttft"] > 0
    names = {s.name for s in report.stats if s.section == "cached"}
    assert "  TTFT cached / ordinary, served cached" in names and any("KB per token" in n for n in names)
    assert "TTFT cached" in bench.format_table(report.stats)
