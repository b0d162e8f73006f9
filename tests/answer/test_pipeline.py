"""rag.answer.pipeline: ask() end to end with a fake embedder, a scripted generator and a tiny index."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.pipeline import (
    MAX_QUESTION_CHARS,
    Done,
    Pipeline,
    Restart,
    Retrieved,
    Token,
    Turn,
    clean_question,
    standalone_query,
)
from rag.answer.prompting import FOCUS_NOTE, REFUSAL, passage_header
from rag.errors import IndexStateError, QuestionError
from rag.index.build import build
from rag.models import get_spec
from rag.schema import Answer
from tests.fakes import CountingFactory, FakeEmbedder, FakeGenerator, isolate, tiny_settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, top_k=3, candidates=10)
    build(s, CountingFactory(), get_spec(s.embed_model).sha256)
    return s


def make(settings, *replies: str, **kwargs) -> Pipeline:  # type: ignore[no-untyped-def]
    return Pipeline(settings, embedder=FakeEmbedder(), generator=FakeGenerator(list(replies), **kwargs))


def run(pipeline: Pipeline, question: str, **kwargs) -> tuple[list, Answer]:  # type: ignore[no-untyped-def]
    events = list(pipeline.ask(question, **kwargs))
    assert isinstance(events[-1], Done)
    return events, events[-1].answer


COST_REPLY = "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。它使用 FP8 混合精度训练[1]。"


# ---------------------------------------------------------------- the happy path


def test_ask_yields_retrieved_tokens_done(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = make(settings, COST_REPLY)
    events, answer = run(pipeline, "DeepSeek-V3 的训练成本是多少？")

    assert isinstance(events[0], Retrieved)
    tokens = events[1:-1]
    assert len(tokens) > 1 and all(isinstance(e, Token) for e in tokens)
    assert "".join(t.text for t in tokens) == COST_REPLY
    assert sum(isinstance(e, Done) for e in events) == 1

    retrieved = events[0]
    assert retrieved.query == "DeepSeek-V3 的训练成本是多少？"
    assert 1 <= len(retrieved.hits) <= settings.top_k
    assert retrieved.hits[0].chunk.path == "deepseek.md"
    assert "557.6" in retrieved.hits[0].chunk.text

    assert not answer.refused
    assert answer.question == answer.query == "DeepSeek-V3 的训练成本是多少？"
    assert answer.raw_text == COST_REPLY
    assert "557.6万美元[1]" in answer.text
    assert answer.hits == retrieved.hits
    assert [c.number for c in answer.citations] == [1]
    assert answer.unsupported == []
    assert answer.completion_tokens == len(tokens)
    assert answer.prompt_tokens > 0
    assert {"retrieval", "first_token", "generation", "total"} <= set(answer.timings)
    assert all(v >= 0 for v in answer.timings.values())


def test_prompt_holds_the_numbered_passages(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = make(settings, COST_REPLY)
    _, answer = run(pipeline, "DeepSeek-V3 的训练成本是多少？")
    call = pipeline.generator.calls[0]  # type: ignore[union-attr]
    assert call["max_tokens"] == settings.max_answer_tokens
    system, user = call["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    for n, h in enumerate(answer.hits, start=1):
        assert f"\n\n{passage_header(n, h, brief=True)}\n" in user["content"]  # a question that asks one thing
    assert user["content"].endswith("问题：DeepSeek-V3 的训练成本是多少？")


def test_a_question_that_asks_two_things_gets_whole_passages_with_their_source(settings) -> None:  # type: ignore[no-untyped-def]
    long_doc = "DeepSeek-V3 的训练成本为 557.6万美元。" + "它的架构细节如下，这句话只是为了让段落变长。" * 20
    (settings.corpus_dir / "long.md").write_text(f"# 长文档\n\n{long_doc}\n", encoding="utf-8")
    build(settings, CountingFactory(), get_spec(settings.embed_model).sha256)
    pipeline = make(settings, COST_REPLY, COST_REPLY)
    one = run(pipeline, "DeepSeek-V3 的训练成本是多少？")[1]
    two = run(pipeline, "DeepSeek-V3 的训练成本是多少？用了什么架构？")[1]
    lean, whole = (c["messages"][1]["content"] for c in pipeline.generator.calls)  # type: ignore[union-attr]
    assert all(f"[{n}] 《{h.chunk.title}》" in whole for n, h in enumerate(two.hits, start=1))
    assert not any("《" in line for line in lean.splitlines() if line.startswith("["))
    cut = [len(block.split("\n", 1)[1]) for block in lean.split("\n\n")[1:-1]]  # passages [1..n], headers off
    assert cut[0] <= settings.lean_first_chars and max(cut[1:]) <= settings.lean_later_chars
    assert max(len(block.split("\n", 1)[1]) for block in whole.split("\n\n")[1:-1]) > settings.lean_later_chars
    assert len(one.hits) > 1


@pytest.mark.parametrize(
    "reply",
    [
        COST_REPLY,
        "DeepSeek-V3 的完整训练仅花费 557.6万美元[7]。Transformer 由谷歌在 2017 年提出[2]。",
        "【3】【2】【1】 DeepSeek-V3 采用混合专家架构[9]。",
        "The training cost 557.6万美元 [1][2][3][4][5].",
    ],
)
def test_citations_point_to_passages_given(settings, reply: str) -> None:  # type: ignore[no-untyped-def]
    _, answer = run(make(settings, reply), "DeepSeek-V3 的训练成本和架构？")
    assert answer.hits
    for c in answer.citations:
        assert 1 <= c.number <= len(answer.hits)
        assert c.chunk == answer.hits[c.number - 1].chunk
    from rag.answer.citations import parse_markers

    assert all(1 <= n <= len(answer.hits) for n in parse_markers(answer.text))


def test_english_question_gets_english_label_and_refusal(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = make(settings, "The documents do not contain information about this.")
    _, answer = run(pipeline, "How do I make tomato soup?")
    assert answer.refused
    assert answer.text == REFUSAL["en"]
    user = pipeline.generator.calls[0]["messages"][1]["content"]  # type: ignore[union-attr]
    assert user.endswith("Question：How do I make tomato soup?")


def test_only_an_english_question_takes_chinese_away_from_the_model(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = make(settings, "It cost 557.6万美元 [1].", "仅花费 557.6万美元[1]。")
    run(pipeline, "What did DeepSeek-V3 cost to train?")
    run(pipeline, "DeepSeek-V3 的训练成本是多少？")
    assert [c["english"] for c in pipeline.generator.calls] == [True, False]  # type: ignore[union-attr]


# ---------------------------------------------------------------- refusals


def test_model_refusal_gives_refused_and_related(settings) -> None:  # type: ignore[no-untyped-def]
    # Refused twice: first with all passages, then with the on-topic passage [1] alone.
    _, answer = run(make(settings, "资料中没有相关信息。", "资料中没有相关信息。"), "DeepSeek-V3 的训练成本是多少？")
    assert answer.refused
    assert answer.text == REFUSAL["zh"]
    assert answer.citations == []
    assert answer.related and answer.related == answer.hits
    assert answer.raw_text == "资料中没有相关信息。"


def test_self_refusal_with_an_on_topic_first_passage_is_asked_again_with_it_alone(settings) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator(["资料中没有相关信息。", COST_REPLY])
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=generator)
    events, answer = run(pipeline, "DeepSeek-V3 的训练成本是多少？")
    restarts = [i for i, e in enumerate(events) if isinstance(e, Restart)]
    assert len(restarts) == 1
    after = "".join(e.text for e in events[restarts[0] :] if isinstance(e, Token))
    assert after == COST_REPLY  # what the reader sees after the restart is the new answer
    assert len(generator.calls) == 2
    second_user = generator.calls[1]["messages"][1]["content"]  # type: ignore[index]
    assert "[1]" in second_user and "[2]" not in second_user
    assert second_user.endswith(FOCUS_NOTE["zh"])
    assert not answer.refused and [c.number for c in answer.citations] == [1]
    assert answer.hits == events[0].hits[:1]
    assert answer.timings["first_token"] <= answer.timings["total"]


def test_self_refusal_is_asked_again_with_the_most_on_topic_passage_whatever_its_rank(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rag.answer.retrieval import Retriever

    rank = Retriever.rank
    monkeypatch.setattr(Retriever, "rank", lambda self, q, k: (r := rank(self, q, k))[1:2] + r[:1] + r[2:])  # best second
    reply = "DeepSeek-V3 采用混合专家（MoE）架构[1]。"
    generator = FakeGenerator(["资料中没有相关信息。", reply])
    events, answer = run(Pipeline(settings, embedder=FakeEmbedder(), generator=generator), "DeepSeek-V3 的架构是不是混合专家？")
    plain = events[0].hits[1]
    assert "混合专家" in plain.chunk.text and "混合专家" not in events[0].hits[0].chunk.text
    assert len(generator.calls) == 2 and answer.hits == [plain]
    assert not answer.refused and [c.number for c in answer.citations] == [1]


def test_self_refusal_off_topic_is_not_asked_again(settings) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator(["资料中没有相关信息。", COST_REPLY])
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=generator)
    events, answer = run(pipeline, "DeepSeek-V3 的训练用了多少张 GPU，电费一共花了多少钱？")
    assert not any(isinstance(e, Restart) for e in events)
    assert len(generator.calls) == 1 and answer.refused


def test_empty_model_reply_is_a_refusal(settings) -> None:  # type: ignore[no-untyped-def]
    _, answer = run(make(settings, "   "), "DeepSeek-V3 的训练成本是多少？")
    assert answer.refused and answer.text == REFUSAL["zh"]


def test_no_evidence_refuses_without_calling_the_model(settings) -> None:  # type: ignore[no-untyped-def]
    strict = replace(settings, min_dense_score=0.999)
    generator = FakeGenerator(["不应被调用"])
    pipeline = Pipeline(strict, embedder=FakeEmbedder(), generator=generator)
    events, answer = run(pipeline, "量子计算机的冷却系统")
    assert isinstance(events[0], Retrieved) and events[0].hits == []
    assert [e.text for e in events if isinstance(e, Token)] == [REFUSAL["zh"]]
    assert answer.refused and answer.text == REFUSAL["zh"]
    assert answer.hits == [] and answer.citations == []
    assert 1 <= len(answer.related) <= 3
    assert generator.calls == []


def test_name_no_passage_mentions_refuses_without_calling_the_model(settings) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator(["Ollama 可以运行 DeepSeek-V3[1]。"])
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=generator)
    events, answer = run(pipeline, "Ollama 能运行 DeepSeek-V3 吗？")
    assert isinstance(events[0], Retrieved) and events[0].hits == []
    assert answer.refused and answer.related and generator.calls == []
    # English questions are all Latin words: the check does not apply to them.
    _, english = run(make(settings, COST_REPLY), "What did DeepSeek-V3 cost to train?")
    assert not english.refused


def test_company_no_document_names_refuses_without_calling_the_model(settings) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator(["苹果公司的大模型叫 DeepSeek-V3[1]。"])
    pipeline = Pipeline(settings, embedder=FakeEmbedder(), generator=generator)
    events, answer = run(pipeline, "苹果公司的大模型是哪个？")
    assert isinstance(events[0], Retrieved) and events[0].hits == []
    assert answer.refused and generator.calls == []
    # 谷歌 is in the documents: the question goes to the model.
    _, answered = run(make(settings, "Transformer 架构由谷歌在 2017 年提出[1]。"), "谷歌在哪一年提出了 Transformer？")
    assert not answered.refused


@pytest.mark.parametrize(
    ("question", "reply"),
    [
        ("DeepSeek-V3 的训练用了什么硬件？", "训练 DeepSeek-V3 的是 4096 张 A100 GPU[1]。"),  # no passage gives these
        ("谁创立了 DeepSeek-V3 这家公司？", "DeepSeek-V3 这家公司由 DeepSeek-V3 公司创立。"),  # only restates
    ],
)
def test_answers_that_cannot_stand_become_refusals(settings, question: str, reply: str) -> None:  # type: ignore[no-untyped-def]
    _, answer = run(make(settings, reply), question)
    assert answer.refused and answer.text == REFUSAL["zh"] and answer.raw_text == reply


def test_a_count_of_something_else_becomes_a_refusal(settings) -> None:  # type: ignore[no-untyped-def]
    _, answer = run(make(settings, COST_REPLY), "DeepSeek-V3 用了多少张显卡？")
    assert answer.refused


# ---------------------------------------------------------------- questions


@pytest.mark.parametrize("question", ["", "   ", "\n\t  \n", "\x00\x01\x02", "\x7f \x1b"])
def test_empty_questions_are_refused(settings, question: str) -> None:  # type: ignore[no-untyped-def]
    pipeline = make(settings, COST_REPLY)
    with pytest.raises(QuestionError) as info:
        list(pipeline.ask(question))
    assert info.value.hint
    assert pipeline.generator.calls == []  # type: ignore[union-attr]


def test_too_long_question(settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QuestionError, match=str(MAX_QUESTION_CHARS)):
        list(make(settings).ask("问" * 20000))
    assert clean_question("问" * MAX_QUESTION_CHARS) == "问" * MAX_QUESTION_CHARS
    with pytest.raises(QuestionError):
        clean_question("问" * (MAX_QUESTION_CHARS + 1))


def test_control_characters_are_cleaned(settings) -> None:  # type: ignore[no-untyped-def]
    assert clean_question("  DeepSeek\x00-V3\x1b 的\x07成本？\n") == "DeepSeek -V3  的 成本？"
    assert clean_question("第一行\n第二行\t结束") == "第一行\n第二行\t结束"
    events, answer = run(make(settings, COST_REPLY), "\x00DeepSeek-V3 的训练成本是多少？\x7f")
    assert answer.question == "DeepSeek-V3 的训练成本是多少？"
    assert "\x00" not in events[0].query


def test_standalone_query_uses_previous_question() -> None:
    history = [Turn("DeepSeek-V3 的训练成本是多少？", "557.6万美元[1]。")]
    assert standalone_query("它是哪家公司发布的？", history) == "DeepSeek-V3 的训练成本是多少？ 它是哪家公司发布的？"
    assert standalone_query("它是哪家公司发布的？", []) == "它是哪家公司发布的？"
    assert standalone_query("为什么？", history).startswith("DeepSeek-V3")  # very short follow-up
    assert standalone_query("What about its architecture?", history).startswith("DeepSeek-V3")
    alone = "Transformer 架构是哪一年由谷歌提出的呢？"
    assert standalone_query(alone, history) == alone


def test_standalone_query_uses_the_latest_turn() -> None:
    history = [Turn("Transformer 是什么？", "…"), Turn("DeepSeek-V3 的训练成本是多少？", "…")]
    assert standalone_query("它是哪家公司发布的？", history).startswith("DeepSeek-V3")


def test_follow_up_is_searched_with_history(settings) -> None:  # type: ignore[no-untyped-def]
    history = [Turn("DeepSeek-V3 采用什么架构？", "混合专家架构[1]。")]
    events, answer = run(make(settings, "总参数 6710 亿[1]。"), "它有多少参数？", history=history)
    assert events[0].query == "DeepSeek-V3 采用什么架构？ 它有多少参数？"
    assert answer.query == events[0].query
    assert answer.question == "它有多少参数？"
    assert events[0].hits[0].chunk.path == "deepseek.md"


# ---------------------------------------------------------------- control


def test_stop_event_ends_generation_early(settings) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    pipeline = make(settings, COST_REPLY, piece_chars=2)
    tokens = []
    for event in pipeline.ask("DeepSeek-V3 的训练成本是多少？", stop=stop):
        if isinstance(event, Token):
            tokens.append(event.text)
            if len(tokens) == 3:
                stop.set()
        if isinstance(event, Done):
            answer = event.answer
    assert len(tokens) == 3
    assert answer.raw_text == "".join(tokens).strip()


def test_k_limits_the_passages(settings) -> None:  # type: ignore[no-untyped-def]
    events, answer = run(make(settings, COST_REPLY), "DeepSeek-V3 的训练成本是多少？", k=1)
    assert len(events[0].hits) == 1 and len(answer.hits) <= 1


def test_search(settings) -> None:  # type: ignore[no-untyped-def]
    hits = make(settings).search("  tomato soup \x00", 2)
    assert len(hits) == 2
    assert hits[0].chunk.path == "cooking.md"


def test_index_is_loaded_once_and_reloaded_after_a_rebuild(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = make(settings, COST_REPLY, COST_REPLY)
    first = pipeline.get_index()
    assert pipeline.get_index() is first
    (Path(settings.corpus_dir) / "new.md").write_text("# 新\n\nRLHF 用人类反馈训练奖励模型。\n", encoding="utf-8")
    build(settings, CountingFactory(), get_spec(settings.embed_model).sha256)
    second = pipeline.get_index()
    assert second is not first
    assert any(c.path == "new.md" for c in second.chunks)


def test_index_for_another_embedder_is_refused(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = replace(settings, index_dir=tmp_path / "other-index")
    build(other, CountingFactory(), "0" * 64)  # not the registry's hash for the configured model
    with pytest.raises(IndexStateError) as info:
        list(make(other, COST_REPLY).ask("DeepSeek-V3 的训练成本是多少？"))
    assert "rag index" in info.value.hint


def test_missing_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path)
    with pytest.raises(IndexStateError, match="No index"):
        list(make(s, COST_REPLY).ask("问题？"))


# ---------------------------------------------------------------- loading


def test_load_reads_both_models_at_once(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Each loader waits to see the other one started: loading one after the other would time out."""
    import rag.index.embedding
    import rag.llm.generation

    started = {"embedder": threading.Event(), "chat": threading.Event()}

    def loader(me: str, other: str, made: object):  # type: ignore[no-untyped-def]
        def load(*args, **kwargs):  # type: ignore[no-untyped-def]
            started[me].set()
            assert started[other].wait(timeout=10), f"{me} loaded before {other} started"
            return made

        return load

    embedder, generator = FakeEmbedder(), FakeGenerator(["x"])
    monkeypatch.setattr(rag.index.embedding, "load_embedder", loader("embedder", "chat", embedder))
    monkeypatch.setattr(rag.llm.generation, "load_generator", loader("chat", "embedder", generator))
    pipeline = Pipeline(settings)

    seconds = pipeline.load()

    assert pipeline.embedder is embedder and pipeline.generator is generator
    assert set(seconds) == {"index", "embedder", "jieba", "chat model"}


def test_load_raises_a_chat_model_failure_in_the_caller(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import rag.index.embedding
    import rag.llm.generation
    from rag.errors import ModelError

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ModelError("The chat model file is damaged.", "Run: rag models fetch")

    monkeypatch.setattr(rag.index.embedding, "load_embedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setattr(rag.llm.generation, "load_generator", broken)

    with pytest.raises(ModelError, match="damaged"):
        Pipeline(settings).load()


def test_load_without_the_chat_model(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import rag.index.embedding
    import rag.llm.generation

    def never(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the chat model was loaded")

    monkeypatch.setattr(rag.index.embedding, "load_embedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setattr(rag.llm.generation, "load_generator", never)
    pipeline = Pipeline(settings)

    assert set(pipeline.load(chat_model=False)) == {"index", "embedder", "jieba"}
    assert pipeline.generator is None and pipeline.embedder is not None


# ---------------------------------------------------------------- guards (rag/guards.py)


def test_the_settings_choose_the_guards_that_are_off(settings) -> None:  # type: ignore[no-untyped-def]
    assert make(settings).guards.disabled == frozenset()
    off = make(replace(settings, disabled_guards=("echo", "focus_retry")))
    assert off.guards.disabled == {"echo", "focus_retry"}


@pytest.mark.parametrize(
    ("question", "reply", "rejected_by"),
    [
        # In line: the first guard rejects it; with that one off, the next one does.
        ("DeepSeek-V3 的训练用了什么硬件？", "训练 DeepSeek-V3 的是 4096 张 A100 GPU[1]。", ["uncited_zh", "invented"]),
        ("谁创立了 DeepSeek-V3 这家公司？", "DeepSeek-V3 这家公司由 DeepSeek-V3 公司创立。", ["uncited_zh", "echo"]),
        ("DeepSeek-V3 用了多少张显卡？", COST_REPLY, ["misses_the_count"]),
        ("DeepSeek-V3 的训练成本是多少？", "1. 1. 1. 1. 1. 1. 1.", ["degenerate"]),
    ],
)
def test_each_refusal_guard_is_counted_and_when_off_lets_the_text_through(  # type: ignore[no-untyped-def]
    settings, question: str, reply: str, rejected_by: list[str]
) -> None:
    pipeline = make(settings, reply)
    assert run(pipeline, question)[1].refused
    assert pipeline.guards.counts[rejected_by[0]] == 1
    assert not any(pipeline.guards.counts[name] for name in rejected_by[1:])  # the first in line decided
    for n in range(1, len(rejected_by)):
        partly = make(replace(settings, disabled_guards=tuple(rejected_by[:n])), reply)
        assert run(partly, question)[1].refused and partly.guards.counts[rejected_by[n]] == 1
    off = make(replace(settings, disabled_guards=tuple(rejected_by)), reply)
    _, kept = run(off, question)
    assert not kept.refused and kept.raw_text == reply


def test_refusals_before_the_model_are_counted_and_can_be_turned_off(settings) -> None:  # type: ignore[no-untyped-def]
    unknown_name = "Ollama 能运行 DeepSeek-V3 吗？"  # a Latin name no passage mentions
    pipeline = make(settings, COST_REPLY)
    assert run(pipeline, unknown_name)[1].refused and pipeline.generator.calls == []  # type: ignore[union-attr]
    assert dict(pipeline.guards.counts) == {"uncovered_names": 1}
    off = make(replace(settings, disabled_guards=("uncovered_names",)), COST_REPLY)
    run(off, unknown_name)
    assert len(off.generator.calls) == 1  # type: ignore[union-attr]

    strict = replace(settings, min_dense_score=0.999)
    far = "量子计算机的冷却系统"  # no evidence above the threshold
    pipeline = make(strict, COST_REPLY)
    assert run(pipeline, far)[1].refused and pipeline.guards.counts["evidence_threshold"] == 1
    off = make(replace(strict, disabled_guards=("evidence_threshold",)), COST_REPLY)
    _, answer = run(off, far)
    assert len(off.generator.calls) == 1 and answer.hits  # type: ignore[union-attr]


def test_the_focus_retry_is_counted_and_can_be_turned_off(settings) -> None:  # type: ignore[no-untyped-def]
    pipeline = make(settings, "资料中没有相关信息。", COST_REPLY)
    assert not run(pipeline, "DeepSeek-V3 的训练成本是多少？")[1].refused
    assert pipeline.guards.counts["focus_retry"] == 1
    off = make(replace(settings, disabled_guards=("focus_retry",)), "资料中没有相关信息。", COST_REPLY)
    events, answer = run(off, "DeepSeek-V3 的训练成本是多少？")
    assert answer.refused and len(off.generator.calls) == 1 and not any(isinstance(e, Restart) for e in events)  # type: ignore[union-attr]


def test_the_english_prompt_rules_are_counted_and_can_be_turned_off(settings) -> None:  # type: ignore[no-untyped-def]
    rules = ("english_tokens", "english_figures")
    question = "How many parameters does DeepSeek-V3 have?"
    on = make(settings, "It has 671 billion [1].")
    run(on, question)
    call = on.generator.calls[0]  # type: ignore[union-attr]
    assert call["english"] and call["messages"][1]["content"].endswith("Question：" + question)
    assert "671 billion" in call["messages"][1]["content"]
    assert all(on.guards.counts[r] >= 1 for r in rules)  # english_figures counts in the prompt and in the check
    off = make(replace(settings, disabled_guards=rules), "It has 671 billion [1].")
    run(off, question)
    call = off.generator.calls[0]  # type: ignore[union-attr]
    assert not call["english"]
    assert "671 billion" not in call["messages"][1]["content"] and "6710" in call["messages"][1]["content"]
    assert not any(off.guards.counts[r] for r in rules)


def test_a_two_part_question_gets_the_lean_prompt_when_several_things_is_off(settings) -> None:  # type: ignore[no-untyped-def]
    two_parts = "DeepSeek-V3 的训练成本是多少？用了什么架构？"
    on, off = make(settings, COST_REPLY), make(replace(settings, disabled_guards=("several_things",)), COST_REPLY)
    run(on, two_parts)
    run(off, two_parts)
    whole, lean = (p.generator.calls[0]["messages"][1]["content"] for p in (on, off))  # type: ignore[union-attr]
    assert "《" in whole and "《" not in lean
    assert on.guards.counts["several_things"] == 1 and not off.guards.counts["several_things"]


# Passage [1] holds a figure of the thing asked about (its price), passage [2] the question's words.
OFF_TOPIC_FIRST = {
    "price.md": "# Acme-7 的成本是多少\n\nAcme-7 的价格为每百万输出标记 2 美元，是多少同类模型成本的一半。\n",
    "cost.md": "# 训练\n\n据估计，其训练成本约为 500 万美元（Acme-7）。\n",
}


def test_an_answer_from_a_passage_less_on_topic_is_asked_again_with_the_on_topic_one_first(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, OFF_TOPIC_FIRST, top_k=2, candidates=10)
    build(s, CountingFactory(), get_spec(s.embed_model).sha256)
    question = "Acme-7 的训练成本是多少？"
    replies = ("Acme-7 的训练成本为每百万输出标记 2 美元[1]。", "Acme-7 的训练成本约为 500 万美元[1]。")

    pipeline = make(s, *replies)
    events, answer = run(pipeline, question)
    assert pipeline.guards.counts["on_topic_retry"] == 1 and any(isinstance(e, Restart) for e in events)
    second = pipeline.generator.calls[1]["messages"][1]["content"]  # type: ignore[union-attr,index]
    assert second.index("500 万美元") < second.index("2 美元")  # the on-topic passage is [1], the other still shown
    assert "500万美元" in answer.text and answer.citations[0].chunk.path == "cost.md"

    off = make(replace(s, disabled_guards=("on_topic_retry",)), *replies)
    _, kept = run(off, question)
    assert len(off.generator.calls) == 1 and "2美元" in kept.text  # type: ignore[union-attr]


def test_an_answer_citing_the_most_on_topic_passage_is_not_asked_again(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, OFF_TOPIC_FIRST, top_k=2, candidates=10)
    build(s, CountingFactory(), get_spec(s.embed_model).sha256)
    pipeline = make(s, "Acme-7 的训练成本约为 500 万美元[2]。")
    run(pipeline, "Acme-7 的训练成本是多少？")
    assert len(pipeline.generator.calls) == 1 and not pipeline.guards.counts["on_topic_retry"]  # type: ignore[union-attr]


def test_a_refusal_on_the_reordered_passages_keeps_the_first_answer(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate(monkeypatch, tmp_path)
    s = tiny_settings(tmp_path, OFF_TOPIC_FIRST, top_k=2, candidates=10)
    build(s, CountingFactory(), get_spec(s.embed_model).sha256)
    first = "Acme-7 的训练成本为每百万输出标记 2 美元[1]。"
    pipeline = make(s, first, "资料中没有相关信息。")
    events, answer = run(pipeline, "Acme-7 的训练成本是多少？")
    assert len(pipeline.generator.calls) == 2 and not answer.refused and "2美元" in answer.text  # type: ignore[union-attr]
    last = max(i for i, e in enumerate(events) if isinstance(e, Restart))
    assert "".join(e.text for e in events[last:] if isinstance(e, Token)) == first  # the stream ends on the kept answer
