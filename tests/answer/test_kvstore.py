"""rag.answer.kvstore and the cached path of rag.answer.pipeline, with fakes (no model): store, status, rebuilds, fallback."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer import kvstore, prompting
from rag.answer.pipeline import Done, Pipeline, Restart, Token
from rag.index.build import build
from rag.index.reader import Index
from rag.llm.generation import Usage
from rag.llm.kvengine import Block
from rag.models import get_spec
from tests.fakes import TINY_CORPUS, CountingFactory, FakeEmbedder, FakeGenerator, isolate, tiny_settings


class FakeEngine:
    """Stands in for rag.llm.kvengine.KVEngine when building: a block's 'state' is its text, twice."""

    def __init__(self, prefix_sha256: str = "p" * 64) -> None:
        self.prefix_sha256 = prefix_sha256
        self.room = 10_000  # context size: fits() says whether blocks fit
        self.n_prefix = 7
        self.lock = threading.Lock()
        self.computed: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text)

    def fits(self, blocks: Sequence[Block], answer_tokens: int) -> bool:
        return sum(len(b.tokens) for b in blocks) + answer_tokens <= self.room

    def compute_block(self, text: str, first_label: str) -> Block:
        self.computed.append(text)
        return Block(text, [ord(c) for c in text], self.n_prefix + len(first_label), text.encode("utf-8") * 2)


class FakeCachedGenerator:
    """Stands in for rag.llm.kvengine.CachedBlockGenerator: records what it was given, replays a reply."""

    def __init__(self, reply: str, engine: FakeEngine) -> None:
        self.reply = reply
        self.engine = engine
        self.calls: list[tuple[list[str], list[Block], str]] = []
        self.english: list[bool] = []
        self._usage = Usage()

    @property
    def usage(self) -> Usage:
        return self._usage

    def stream_blocks(self, labels: Sequence[str], blocks: Sequence[Block], tail: str, max_tokens: int,
                      stop: threading.Event | None = None, english: bool = False) -> Iterator[str]:  # fmt: skip
        self.calls.append((list(labels), list(blocks), tail))
        self.english.append(english)
        self._usage = Usage(prompt_tokens=len("".join(labels)) + len(tail), completion_tokens=0)
        for i in range(0, len(self.reply), 3):
            if stop is not None and stop.is_set():
                return
            self._usage.completion_tokens += 1
            yield self.reply[i : i + 3]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, top_k=3, candidates=10, kv_block_tokens=120, kv_cache=True)
    build(s, CountingFactory(), get_spec(s.embed_model).sha256)
    return s


def chunks_of(settings) -> list:  # type: ignore[no-untyped-def]
    return Index.load(Path(settings.index_dir)).chunks


# ---------------------------------------------------------------- the store


def test_block_file_round_trip(tmp_path: Path) -> None:
    store = kvstore.KVStore(tmp_path / "kv")
    block = Block("《t》 h\n正文", [5, 6, 7], 42, bytes(range(256)) * 10)
    size = store.save("abc", block)
    assert size < len(block.state)  # compressed
    assert store.load("abc") == block
    assert store.keys() == {"abc"} and store.has("abc") and not store.has("nope")
    store.path("abc").write_bytes(b"garbage")
    assert store.load("abc") is None  # a damaged block is a missing block, never a wrong one


def test_block_text_is_a_fixed_function_of_the_chunk() -> None:
    text = prompting.block_text("报告", ("一", "二", "三"), " 第一句。\n\n第二句。 ")
    assert text.startswith("《报告》 二 > 三\n")
    assert text == prompting.block_text("报告", ("一", "二", "三"), " 第一句。\n\n第二句。 ")
    assert prompting.block_label(1) == "[1] " and prompting.block_label(3) == "\n\n[3] "


def test_build_computes_missing_blocks_then_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    chunks = chunks_of(settings)
    assert kvstore.status(settings, chunks).blocks == 0
    engine = FakeEngine()
    first = kvstore.build_store(settings, chunks, engine)
    assert first.computed == len(chunks) and first.kept == 0 and first.bytes > 0
    st = kvstore.status(settings, chunks)
    assert st.complete and st.blocks == st.total == len(chunks)
    assert "ready" in st.line()

    again = kvstore.update(settings, chunks, lambda: pytest.fail("no model needed when nothing is missing"))
    assert again.computed == 0 and again.kept == len(chunks)


def test_blocks_are_cut_to_the_token_cap(settings) -> None:  # type: ignore[no-untyped-def]
    engine = FakeEngine()
    kvstore.build_store(replace(settings, kv_block_tokens=40), chunks_of(settings), engine)
    assert engine.computed and all(len(t) <= 40 for t in engine.computed)


def test_update_computes_only_new_or_changed_chunks_and_drops_removed(settings) -> None:  # type: ignore[no-untyped-def]
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    before = kvstore.KVStore(kvstore.store_dir(settings)).keys()

    corpus = Path(settings.corpus_dir)
    (corpus / "cooking.md").unlink()
    (corpus / "transformer.txt").write_text(TINY_CORPUS["transformer.txt"] + "它于 2017 年发表。\n", encoding="utf-8")
    build(settings, CountingFactory(), get_spec(settings.embed_model).sha256)
    chunks = chunks_of(settings)

    engine = FakeEngine()
    report = kvstore.update(settings, chunks, lambda: engine)
    changed = [c for c in chunks if c.path == "transformer.txt"]
    assert report.computed == len(changed) and len(engine.computed) == len(changed)
    assert report.removed >= 2  # cooking.md's block and the old transformer.txt block
    after = kvstore.KVStore(kvstore.store_dir(settings)).keys()
    assert after == {kvstore.block_key(c, settings.kv_block_tokens) for c in chunks}
    assert len(before & after) == len(chunks) - len(changed)


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "0" * 64},  # another GGUF file
        {"kv_type": "f16"},  # another cache type
        {"prompt_sha256": "1" * 64},  # the system prompt changed
        {"runtime": "0.0.1"},  # another llama-cpp-python
        {"prefix_sha256": "2" * 64},  # the prefix tokenized differently (another template or tokenizer)
    ],
)
def test_a_store_made_for_another_model_or_prompt_is_refused_and_rebuilt(settings, change) -> None:  # type: ignore[no-untyped-def]
    chunks = chunks_of(settings)
    engine = FakeEngine()
    kvstore.build_store(settings, chunks, engine)
    store = kvstore.KVStore(kvstore.store_dir(settings))
    meta = store.meta()
    assert meta is not None
    store.write_meta(replace(meta, **change))

    lookup = kvstore.BlockLookup(settings, engine.prefix_sha256)
    assert lookup.blocks(chunks[:1]) is None  # never used wrongly
    if "prefix_sha256" not in change:  # detectable without the model
        assert not kvstore.status(settings, chunks).complete

    rebuilt_with = FakeEngine()
    report = kvstore.update(settings, chunks, lambda: rebuilt_with, prefix_sha256=rebuilt_with.prefix_sha256)
    assert report.rebuilt and report.computed == len(chunks) == len(rebuilt_with.computed)
    assert lookup.blocks(chunks[:1]) is not None
    assert kvstore.status(settings, chunks).complete


def test_status_is_off_when_disabled(settings) -> None:  # type: ignore[no-untyped-def]
    st = kvstore.status(replace(settings, kv_cache=False), chunks_of(settings))
    assert not st.complete and "off" in st.line()


# ---------------------------------------------------------------- the cached path in the pipeline

COST_REPLY = "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。"


def cached_pipeline(settings, reply: str = COST_REPLY) -> tuple[Pipeline, FakeGenerator, FakeCachedGenerator]:  # type: ignore[no-untyped-def]
    engine = FakeEngine()
    ordinary = FakeGenerator([COST_REPLY])
    cached = FakeCachedGenerator(reply, engine)
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=ordinary, cached_generator=cached,  # type: ignore[arg-type]
                        block_lookup=kvstore.BlockLookup(settings, engine.prefix_sha256))  # fmt: skip
    return pipeline, ordinary, cached


def answer_of(pipeline: Pipeline, question: str, **kwargs) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    events = list(pipeline.ask(question, **kwargs))
    assert isinstance(events[-1], Done)
    return "".join(e.text for e in events if isinstance(e, Token)), events[-1].answer


def block_of(hit) -> str:  # type: ignore[no-untyped-def]
    return prompting.trim_block(prompting.block_text(hit.chunk.title, hit.chunk.headings, hit.chunk.text), 120, len)


@pytest.mark.parametrize("order", ["best_first", "best_last"])
def test_all_passages_cached_uses_the_blocks(settings, order: str) -> None:  # type: ignore[no-untyped-def]
    settings = replace(settings, kv_order=order)
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    ranked = Pipeline(settings, embedder=FakeEmbedder()).retriever().rank("DeepSeek-V3 的训练成本是多少？", 3)
    assert ranked[0].chunk.path == "deepseek.md"
    placed = prompting.block_order(len(ranked), order)
    top_number = next(n for i, n in placed if i == 0)  # the number the best passage gets
    reply = f"DeepSeek-V3 的完整训练仅花费 557.6万美元[{top_number}]。"
    pipeline, ordinary, cached = cached_pipeline(settings, reply)
    streamed, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")

    assert answer.path == "cached" and not ordinary.calls and len(cached.calls) == 1
    labels, blocks, tail = cached.calls[0]
    # Placed in `order`; the first label opens the passages, the others follow a blank line.
    assert labels == [prompting.block_label(n, first=j == 0) for j, (_, n) in enumerate(placed)]
    assert [b.text for b in blocks] == [block_of(ranked[i]) for i, _ in placed]
    assert tail == "\n\n问题：DeepSeek-V3 的训练成本是多少？"
    # Passage n is answer.hits[n-1], whatever the placement: citations and their checking work as usual.
    assert [h.chunk for h in answer.hits] == [ranked[i].chunk for i, _ in sorted(placed, key=lambda p: p[1])]
    assert streamed == reply and f"557.6万美元[{top_number}]" in answer.text
    assert answer.citations[0].number == top_number and answer.citations[0].chunk.path == "deepseek.md"
    assert answer.cached_tokens == sum(len(b.tokens) for b in blocks) and answer.prompt_tokens < answer.cached_tokens


def test_a_question_whose_passages_are_not_all_cached_falls_back(settings) -> None:  # type: ignore[no-untyped-def]
    chunks = chunks_of(settings)
    kvstore.build_store(settings, chunks, FakeEngine())
    pipeline, ordinary, cached = cached_pipeline(settings)
    _, first = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert first.path == "cached"
    missing = first.hits[-1].chunk  # one retrieved passage leaves the store
    kvstore.KVStore(kvstore.store_dir(settings)).path(kvstore.block_key(missing, settings.kv_block_tokens)).unlink()

    ordinary.queue(COST_REPLY)
    streamed, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert answer.path == "ordinary" and len(ordinary.calls) == 1 and len(cached.calls) == 1
    assert streamed == COST_REPLY and "557.6万美元[1]" in answer.text and answer.cached_tokens == 0


@pytest.mark.parametrize(
    "reply",
    [
        "资料中没有相关信息。",  # a refusal
        "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。火星上有三个月亮[1]。",  # an unsupported sentence
        "FP8[1]",  # nothing the checker can check
    ],
)
def test_a_cached_answer_the_checker_rejects_is_written_again_from_the_whole_prompt(settings, reply: str) -> None:  # type: ignore[no-untyped-def]
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, ordinary, cached = cached_pipeline(settings, reply)
    events = list(pipeline.ask("DeepSeek-V3 的训练成本是多少？"))
    answer = events[-1].answer
    assert len(cached.calls) == 1 and len(ordinary.calls) == 1
    assert answer.path == "ordinary" and answer.tries == ["cached", "ordinary"]
    restart = next(i for i, e in enumerate(events) if isinstance(e, Restart))
    assert "".join(e.text for e in events[restart:] if isinstance(e, Token)) == COST_REPLY
    assert "557.6万美元[1]" in answer.text and not answer.unsupported and not answer.refused
    assert answer.timings["first_token"] < answer.timings["answer_first_token"] < answer.timings["total"]


def test_an_accepted_cached_answer_is_the_only_try(settings) -> None:  # type: ignore[no-untyped-def]
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, ordinary, _ = cached_pipeline(settings, "DeepSeek-V3 的完整训练仅花费 557.6万美元[3]。")
    _, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert answer.tries == ["cached"] and not ordinary.calls and not answer.unsupported


def test_without_kv_several_cached_a_two_part_question_gets_the_whole_prompt(settings) -> None:  # type: ignore[no-untyped-def]
    settings = replace(settings, kv_several_cached=False)
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, ordinary, cached = cached_pipeline(settings)
    _, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？用了什么精度？")
    assert answer.path == "ordinary" and not cached.calls and len(ordinary.calls) == 1
    assert "《" in ordinary.calls[0]["messages"][1]["content"]  # whole passages with their source line


def test_a_two_part_question_takes_the_blocks_by_default(settings) -> None:  # type: ignore[no-untyped-def]
    assert settings.kv_several_cached
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, ordinary, cached = cached_pipeline(settings, "DeepSeek-V3 的完整训练仅花费 557.6万美元[3]。")
    _, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？用了什么精度？")
    assert answer.tries[0] == "cached" and len(cached.calls) == 1


def test_an_english_question_is_answered_in_english_on_the_cached_path_too(settings) -> None:  # type: ignore[no-untyped-def]
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, _, cached = cached_pipeline(settings, "DeepSeek-V3 cost 557.6万美元 to train [3].")
    answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    answer_of(pipeline, "What did DeepSeek-V3 cost to train?")
    assert cached.english[0] is False and cached.english[1] is True


def test_path_ordinary_and_kv_cache_off_never_use_the_blocks(settings) -> None:  # type: ignore[no-untyped-def]
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, _, cached = cached_pipeline(settings)
    _, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？", path="ordinary")
    assert answer.path == "ordinary" and not cached.calls

    off, _, cached2 = cached_pipeline(replace(settings, kv_cache=False))
    _, answer = answer_of(off, "DeepSeek-V3 的训练成本是多少？")
    assert answer.path == "ordinary" and not cached2.calls


def test_passages_that_do_not_fit_the_kv_context_fall_back(settings) -> None:  # type: ignore[no-untyped-def]
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, ordinary, cached = cached_pipeline(settings)
    cached.engine.room = 10  # e.g. more passages chosen on the page than the context was sized for
    _, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert answer.path == "ordinary" and not cached.calls and len(ordinary.calls) == 1


def test_stop_ends_the_cached_stream(settings) -> None:  # type: ignore[no-untyped-def]
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    pipeline, _, _ = cached_pipeline(settings, reply="甲乙丙丁" * 30)
    stop = threading.Event()
    pieces = []
    for event in pipeline.ask("DeepSeek-V3 的训练成本是多少？", stop=stop):
        if isinstance(event, Token):
            pieces.append(event.text)
            stop.set()
    assert len(pieces) == 1


def test_without_a_llama_model_the_cached_path_is_unavailable(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=FakeGenerator([COST_REPLY]))
    _, answer = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert answer.path == "ordinary" and pipeline.kv_unavailable


# ---------------------------------------------------------------- the page's background build


def test_background_build_fills_the_store_then_answers_switch_to_it(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline, _, _ = cached_pipeline(settings)
    _, before = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert before.path == "ordinary"  # answers at once, before the store exists

    job = kvstore.BackgroundBuild(pipeline)
    assert job.start()
    job.wait(timeout=10)
    assert not job.running and job.error == ""
    assert job.status().complete and "ready" in job.line()
    assert job.report is not None and job.report.computed == len(chunks_of(settings))

    _, after = answer_of(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert after.path == "cached"
    assert job.start()  # again after an index update: nothing left to compute
    job.wait(timeout=10)
    assert job.report is not None and job.report.computed == 0


def test_background_build_says_why_it_cannot_run(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=FakeGenerator([]))
    job = kvstore.BackgroundBuild(pipeline)
    job.start()
    job.wait(timeout=10)
    assert "llama.cpp" in job.error and "error" in job.line()
    assert not kvstore.BackgroundBuild(Pipeline(replace(settings, kv_cache=False))).start()  # off: never starts


def test_eval_answers_rejects_an_unknown_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from rag.cli import app

    isolate(monkeypatch, tmp_path)
    questions = tmp_path / "q.jsonl"
    questions.write_text("", encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", "answers", str(questions), "--path", "fast"])
    assert result.exit_code == 1 and "auto, cached, ordinary or both" in result.output


def test_index_command_reports_the_store_and_how_to_build_it(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from rag.cli import app

    monkeypatch.setenv("RAG_KV_BLOCK_TOKENS", str(settings.kv_block_tokens))
    monkeypatch.setenv("RAG_KV_CACHE", "1")

    base = ["--corpus", str(settings.corpus_dir), "--index", str(settings.index_dir)]
    result = CliRunner().invoke(app, [*base, "index"], catch_exceptions=False)
    assert result.exit_code == 0
    assert f"KV store: 0/{len(chunks_of(settings))} passages" in result.output and "rag index --kv" in result.output
    kvstore.build_store(settings, chunks_of(settings), FakeEngine())
    again = CliRunner().invoke(app, [*base, "index"], catch_exceptions=False)
    assert "(ready)" in again.output
    monkeypatch.setenv("RAG_KV_BLOCK_TOKENS", "64")  # blocks of another size: not used, and said so
    other = CliRunner().invoke(app, [*base, "index"], catch_exceptions=False)
    assert "made with other settings" in other.output


def test_index_kv_with_the_store_off_says_how_to_turn_it_on(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from rag.cli import app

    monkeypatch.setenv("RAG_KV_CACHE", "0")
    base = ["--corpus", str(settings.corpus_dir), "--index", str(settings.index_dir)]
    result = CliRunner().invoke(app, [*base, "index", "--kv"])
    assert result.exit_code == 1 and "kv_cache = true" in result.output


def test_the_store_stops_at_its_disk_limit_and_says_so(settings) -> None:  # type: ignore[no-untyped-def]
    chunks = chunks_of(settings)
    small = replace(settings, kv_store_max_mb=0)
    report = kvstore.build_store(small, chunks, FakeEngine())
    assert report.limited and report.computed == 0
    st = kvstore.status(small, chunks)
    assert st.at_limit and not st.complete and "disk limit" in st.line()
    engine = FakeEngine()
    assert kvstore.update(small, chunks, lambda: engine).limited and engine.computed == []  # no model loaded


def test_background_build_computes_on_its_own_engine_and_waits_while_a_question_is_answered(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline, _, cached = cached_pipeline(settings)
    own = FakeEngine()
    busy = threading.Event()
    busy.set()  # a question holds the line
    job = kvstore.BackgroundBuild(pipeline, busy=busy.is_set, own_engine=lambda: own)
    assert job.start()
    job.wait(timeout=0.5)
    assert job.running and own.computed == []  # waiting for the question, not computing
    busy.clear()
    job.wait(timeout=30)
    assert not job.running and job.error == "" and not job.shared_engine
    assert len(own.computed) == len(chunks_of(settings)) and cached.engine.computed == []  # the answering engine was left alone


def test_background_build_falls_back_to_the_answering_engine_when_its_own_cannot_load(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline, _, cached = cached_pipeline(settings)

    def no_memory() -> FakeEngine:
        raise MemoryError("no room for a second context")

    job = kvstore.BackgroundBuild(pipeline, own_engine=no_memory)
    job.start()
    job.wait(timeout=30)
    assert job.error == "" and job.shared_engine and len(cached.engine.computed) == len(chunks_of(settings))
