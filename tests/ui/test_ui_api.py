"""The chat page's API through gradio_client: a real Gradio server on 127.0.0.1, fake models.

The embedder is the bigram fake and the generator replies by question (see
ScriptedByQuestion), so every answer and citation is known in advance; the
real small models are exercised by tests/test_e2e.py and tests/test_browser.py.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rag.answer.pipeline import Pipeline
from rag.config import Settings
from rag.index.build import build
from rag.llm.generation import Usage
from rag.models import get_spec
from tests.fakes import TINY_CORPUS, FakeEmbedder, write_corpus

pytestmark = pytest.mark.e2e

COST_REPLY = "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。"
ARCH_REPLY = "DeepSeek-V3 采用混合专家（MoE）架构，总参数 6710 亿[1]。"
TRANSFORMER_REPLY = "Transformer 架构由谷歌在 2017 年提出[1]。"
LIGHTHOUSE = "# Vardø lighthouse\n\nThe Vardø lighthouse was painted bright purple in 1921 by the keeper Ole Brandt.\n"
LIGHTHOUSE_REPLY = "The Vardø lighthouse was painted bright purple in 1921 by the keeper Ole Brandt[1]."
# Keys are looked up in the prompt's question (and what follows it), first match wins.
REPLIES = {
    "直接相关": COST_REPLY,  # the retry after a self-refusal ends with prompting.FOCUS_NOTE
    "花费了多少": "资料中没有相关信息。",
    "成本": COST_REPLY,
    "架构": ARCH_REPLY,
    "Transformer": TRANSFORMER_REPLY,
    "lighthouse": LIGHTHOUSE_REPLY,
    "火星": "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。火星上有三个月亮。",
    "天气": "资料中没有相关信息。",
}


class ScriptedByQuestion:
    """A Generator (rag.llm.generation) whose reply depends on the question, streamed in small pieces.

    Replies are picked by substring of the prompt's question ("问题：…" or
    "Question：…" to the end), so answers stay right whatever order concurrent
    questions arrive in. It records how many streams ran at once.
    """

    name = "scripted"

    def __init__(self, replies: dict[str, str], delay: float = 0.0, piece_chars: int = 3) -> None:
        self.replies = replies
        self.delay = delay
        self.piece_chars = piece_chars
        self.questions: list[str] = []
        self.active = 0
        self.max_active = 0
        self._usage = Usage()
        self._lock = threading.Lock()

    @property
    def usage(self) -> Usage:
        return self._usage

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None,
        english: bool = False,
    ) -> Iterator[str]:  # fmt: skip
        question = re.split("问题：|Question：", messages[-1]["content"])[-1]  # and any note after it
        reply = next((r for key, r in self.replies.items() if key in question), "I do not know.")
        with self._lock:
            self.questions.append(question)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        usage = Usage(prompt_tokens=sum(len(m["content"]) for m in messages))
        try:
            for i in range(0, len(reply), self.piece_chars):
                if stop is not None and stop.is_set():
                    break
                time.sleep(self.delay)
                usage.completion_tokens += 1
                yield reply[i : i + self.piece_chars]
        finally:
            with self._lock:
                self.active -= 1
            self._usage = usage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(settings: Settings, generator: Any, embedder: Any = None) -> Iterator[str]:
    """The chat page on a free local port, answering with `generator`; yields its URL."""
    from ui.app import launch

    pipeline = Pipeline(settings, embedder=embedder, generator=generator)
    port = free_port()
    demo = launch(settings, host="127.0.0.1", port=port, block=False, pipeline=pipeline)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def fake_world(base: Path, embedder: FakeEmbedder, **overrides: object) -> Settings:
    """A tiny corpus indexed with the fake embedder under `base` (no rag.toml or RAG_* read)."""
    from dataclasses import replace

    from rag.config import Settings as Defaults

    files: dict[str, str | bytes] = dict(TINY_CORPUS)
    s = replace(
        Defaults(), corpus_dir=write_corpus(base / "corpus", files), index_dir=base / "index",
        cache_dir=base / "cache", top_k=3, candidates=10, **overrides,  # type: ignore[arg-type]
    )  # fmt: skip
    build(s, lambda: embedder, get_spec(s.embed_model).sha256)
    return s


class World:
    def __init__(self, url: str, settings: Settings, generator: ScriptedByQuestion, embedder: FakeEmbedder) -> None:
        self.url, self.settings, self.generator, self.embedder = url, settings, generator, embedder

    def client(self):  # type: ignore[no-untyped-def]
        from gradio_client import Client

        return Client(self.url, verbose=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    embedder = FakeEmbedder()
    settings = fake_world(tmp_path_factory.mktemp("ui-api"), embedder)
    generator = ScriptedByQuestion(REPLIES, delay=0.01)
    with serve(settings, generator, embedder) as url:
        yield World(url, settings, generator, embedder)


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def ask(client, question: str, history: Sequence[dict[str, Any]] = (), **kw):  # type: ignore[no-untyped-def]
    return client.predict(question, list(history), api_name="/ask", **kw)


# ---------------------------------------------------------------- answering


def test_answer_streams_and_links_each_citation_to_a_highlighted_passage(world: World) -> None:
    job = world.client().submit("DeepSeek-V3 的训练成本是多少？", [], api_name="/ask")
    chat, sources, box = job.result(timeout=60)
    updates = job.outputs()
    partial = {text_of(u[0][-1]) for u in updates}
    assert len(partial) > 3, "the answer should arrive in several pieces"

    assert [m["role"] for m in chat] == ["user", "assistant"] and box == ""
    answer = text_of(chat[-1])
    assert '<a class="cite" href="#src-1-1" title="deepseek.md">[1]</a>' in answer
    n = re.search(r'href="#src-1-(\d+)"', answer).group(1)  # type: ignore[union-attr]
    passage = re.search(rf'<div class="src cited" id="src-1-{n}">(.*?)</div></div>', sources, re.DOTALL).group(1)  # type: ignore[union-attr]
    assert "deepseek.md" in passage and "训练成本" in passage  # file and heading path
    assert re.findall(r"<mark>(.*?)</mark>", passage) == [
        "DeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。"
    ]


def test_a_self_refusal_asked_again_streams_the_new_answer_alone(world: World) -> None:
    job = world.client().submit("DeepSeek-V3 的完整训练花费了多少？", [], api_name="/ask")
    chat, _, _ = job.result(timeout=60)
    partial = [text_of(u[0][-1]) for u in job.outputs()]
    assert any("资料中没有" in p for p in partial)  # the first try was shown while it streamed
    answer = text_of(chat[-1])
    assert "557.6万美元" in answer and "资料中没有" not in answer
    assert not any("资料中没有" in p and "557.6" in p for p in partial)  # never both at once


def test_follow_up_question_is_searched_with_the_previous_one(world: World) -> None:
    client = world.client()
    chat, _, _ = ask(client, "DeepSeek-V3 的训练成本是多少？")
    chat, sources, _ = ask(client, "它采用什么架构？", chat, details=True)
    assert [m["role"] for m in chat] == ["user", "assistant"] * 2
    assert '<code class="query">DeepSeek-V3 的训练成本是多少？ 它采用什么架构？</code>' in sources
    assert 'href="#src-2-' in text_of(chat[-1])  # second turn, its own links
    assert sources.index('id="turn-2"') < sources.index('id="turn-1"')  # newest first


def test_refusal_shows_related_passages_not_citations(world: World) -> None:
    chat, sources, _ = ask(world.client(), "今天的天气怎么样呢朋友？")
    assert text_of(chat[-1]).startswith("资料中没有相关信息")
    assert "相关段落" in sources and "引用来源" not in sources
    assert 'id="src-' not in sources and "<mark>" not in sources


def test_unsupported_sentence_is_marked(world: World) -> None:
    chat, sources, _ = ask(world.client(), "DeepSeek-V3 和火星？")
    assert '<span class="unsupported"' in text_of(chat[-1]) and "火星上有三个月亮</span>" in text_of(chat[-1])
    assert "<li>火星上有三个月亮</li>" in sources


def test_english_page_text(world: World) -> None:
    _, sources, _ = ask(world.client(), "How did the Transformer work?", lang="en", details=True)
    assert "Turn 1:" in sources and "Retrieval details" in sources and "Search query" in sources


def test_retrieval_details_show_scores_and_timings(world: World) -> None:
    _, sources, _ = ask(world.client(), "DeepSeek-V3 的训练成本是多少？", k=2, details=True)
    table = re.search(r'<table class="scores">(.*?)</table>', sources, re.DOTALL).group(1)  # type: ignore[union-attr]
    assert table.count("<tr>") == 1 + 2  # header + k passages
    assert re.search(r"检索 \d+\.\d\d s", sources) and re.search(r"总计 \d+\.\d\d s", sources)


def test_two_clients_at_once_each_get_their_own_answer_one_at_a_time(world: World) -> None:
    questions = {"cost": "DeepSeek-V3 的训练成本是多少？", "transformer": "Transformer 是谁提出的？"}
    results: dict[str, Any] = {}

    def run(key: str) -> None:
        results[key] = ask(world.client(), questions[key])

    world.generator.max_active = 0
    threads = [threading.Thread(target=run, args=(key,)) for key in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    cost_chat, transformer_chat = results["cost"][0], results["transformer"][0]
    assert text_of(cost_chat[0]) == questions["cost"] and len(cost_chat) == 2
    assert "557.6万美元" in text_of(cost_chat[-1]) and "2017" not in text_of(cost_chat[-1])
    assert text_of(transformer_chat[0]) == questions["transformer"] and len(transformer_chat) == 2
    assert "2017" in text_of(transformer_chat[-1]) and "557.6" not in text_of(transformer_chat[-1])
    assert "transformer.txt" in results["transformer"][1]
    assert world.generator.max_active == 1, "answers must queue, not run together"


def test_empty_question_gets_a_message_not_a_crash(world: World) -> None:
    chat, _, _ = ask(world.client(), "   ")
    assert "empty" in text_of(chat[-1])


def test_chosen_model_loads_on_first_use_only(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    def fake_load(name: str, *args: object) -> ScriptedByQuestion:
        loaded.append(name)
        # A supported first sentence: an answer that only names a model no passage mentions is a refusal.
        return ScriptedByQuestion({"": f"训练成本仅557.6万美元[1]。answered by {name}"})

    monkeypatch.setattr("rag.llm.generation.load_generator", fake_load)
    client = world.client()
    for _ in range(2):
        chat, _, _ = ask(client, "DeepSeek-V3 的训练成本是多少？", model="qwen2.5-0.5b")
        assert "answered by qwen2.5-0.5b" in text_of(chat[-1])
    assert loaded == ["qwen2.5-0.5b"]
    chat, _, _ = ask(client, "DeepSeek-V3 的训练成本是多少？")  # the configured model again
    assert "557.6" in text_of(chat[-1])


# ---------------------------------------------------------------- index and uploads


@pytest.fixture
def index_world(tmp_path: Path) -> Iterator[World]:
    """A world of its own: these tests change the corpus."""
    embedder = FakeEmbedder()
    settings = fake_world(tmp_path, embedder)
    generator = ScriptedByQuestion(REPLIES)
    with serve(settings, generator, embedder) as url:
        yield World(url, settings, generator, embedder)


def upload_file(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "to-upload"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_upload_updates_the_index_and_the_new_file_is_cited(index_world: World, tmp_path: Path) -> None:
    from gradio_client import handle_file

    client = index_world.client()
    status, summary, table, _, overwrite = client.predict(
        [handle_file(upload_file(tmp_path, "lighthouse.md", LIGHTHOUSE))], False, api_name="/upload"
    )
    assert "已添加 lighthouse.md" in status and "完成" in status and "新增 1" in status
    assert "4 个文档" in summary and overwrite is False
    assert "lighthouse.md" in [row[0] for row in table["data"]]
    assert (Path(index_world.settings.corpus_dir) / "lighthouse.md").read_text(encoding="utf-8") == LIGHTHOUSE

    chat, sources, _ = ask(client, "Who painted the Vardø lighthouse?")
    assert 'title="lighthouse.md">[' in text_of(chat[-1])
    assert "<mark>The Vardø lighthouse was painted bright purple in 1921 by the keeper Ole Brandt.</mark>" in sources


def test_upload_never_overwrites_without_confirmation(index_world: World, tmp_path: Path) -> None:
    from gradio_client import handle_file

    client = index_world.client()
    target = Path(index_world.settings.corpus_dir) / "cooking.md"
    before = target.read_text(encoding="utf-8")
    new = upload_file(tmp_path, "cooking.md", "# Soup\n\nA different soup.\n")
    status, *_ = client.predict([handle_file(new)], False, api_name="/upload")
    assert "cooking.md 已存在且内容不同" in status and "完成" not in status
    assert target.read_text(encoding="utf-8") == before

    status, *_ = client.predict([handle_file(new)], True, "en", api_name="/upload")
    assert "Replaced cooking.md" in status and "updated 1" in status
    assert target.read_text(encoding="utf-8") == "# Soup\n\nA different soup.\n"


def test_upload_refuses_wrong_types(index_world: World, tmp_path: Path) -> None:
    from gradio_client import handle_file

    corpus = Path(index_world.settings.corpus_dir)
    before = sorted(p.name for p in corpus.iterdir())
    fake_pdf = upload_file(tmp_path, "report.pdf", "not really a pdf")
    status, *_ = index_world.client().predict([handle_file(fake_pdf)], False, "en", api_name="/upload")
    assert "report.pdf is not a valid PDF file" in status
    fake_docx = upload_file(tmp_path, "notes.docx", "not really a Word file")
    status, *_ = index_world.client().predict([handle_file(fake_docx)], False, "en", api_name="/upload")
    assert "notes.docx is not a valid Word / Excel / PowerPoint file" in status
    with pytest.raises(Exception, match="(?i)invalid file type|not allowed|\\.exe"):
        index_world.client().predict([handle_file(upload_file(tmp_path, "tool.exe", "MZ"))], api_name="/upload")
    assert sorted(p.name for p in corpus.iterdir()) == before


def test_rebuild_shows_progress_and_old_index_answers_meanwhile(index_world: World) -> None:
    corpus = Path(index_world.settings.corpus_dir)
    (corpus / "lighthouse.md").write_text(LIGHTHOUSE, encoding="utf-8")
    gate, entered = threading.Event(), threading.Event()
    embedder = index_world.embedder
    original = embedder.encode_documents

    def slow_encode(texts, progress=None):  # type: ignore[no-untyped-def]
        entered.set()
        gate.wait(30)
        return original(texts, progress)

    embedder.encode_documents = slow_encode  # type: ignore[method-assign]
    try:
        job = index_world.client().submit(api_name="/rebuild")
        assert entered.wait(30), "the rebuild never started embedding"
        _, sources, _ = ask(index_world.client(), "Who painted the Vardø lighthouse?")
        assert "lighthouse.md" not in sources  # answered, from the old index
        gate.set()
        status, _, table = job.result(timeout=60)
    finally:
        gate.set()
        embedder.encode_documents = original  # type: ignore[method-assign]
    assert any("正在更新索引" in out[0] for out in job.outputs())
    assert "完成" in status and "新增 1" in status
    assert "lighthouse.md" in [row[0] for row in table["data"]]
    _, sources, _ = ask(index_world.client(), "Who painted the Vardø lighthouse?")
    assert "lighthouse.md" in sources


# ---------------------------------------------------------------- per-tab state (no server)


def test_history_turns_give_follow_ups_plain_text() -> None:
    from ui.app import PENDING, history_turns

    history: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "DeepSeek-V3 的训练成本是多少？"}]},
        {"role": "assistant", "content": '花费 557.6万美元<a class="cite" href="#src-1-1">[1]</a>。'},
        {"role": "user", "content": "unanswered"},
        {"role": "assistant", "content": PENDING},
        {"role": "user", "content": "它采用什么架构？"},
    ]
    turns = history_turns(history)
    assert [(t.question, t.answer) for t in turns] == [("DeepSeek-V3 的训练成本是多少？", "花费 557.6万美元。")]


def test_a_tab_answers_one_question_at_a_time() -> None:
    from types import SimpleNamespace

    from ui.app import Tabs

    tabs = Tabs()
    a, b = SimpleNamespace(session_hash="a"), SimpleNamespace(session_hash="b")
    first = tabs.start(a, "q1")  # type: ignore[arg-type]
    assert first is not None and tabs.start(a, "q2") is None  # type: ignore[arg-type]
    assert tabs.start(b, "q1") is not None  # type: ignore[arg-type]  # other tabs are independent
    old_stop = tabs.get(a).stop  # type: ignore[arg-type]
    again = tabs.take_over(a, "q3")  # type: ignore[arg-type]
    assert again.id != first.id and old_stop.is_set() and not tabs.get(a).stop.is_set()  # type: ignore[arg-type]
