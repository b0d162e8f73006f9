"""Collections and saved chats on the page, through gradio_client: a real server on 127.0.0.1, fake models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.conversations import ConversationStore
from rag.index.build import build
from rag.models import get_spec
from tests.fakes import FakeEmbedder, write_corpus
from tests.ui.test_ui_api import LIGHTHOUSE, REPLIES, ScriptedByQuestion, World, ask, fake_world, serve, text_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_collections(tmp_path: Path) -> Iterator[World]:
    """The tiny corpus as the default collection, and a 'lighthouses' folder collection with its own index."""
    embedder = FakeEmbedder()
    settings = fake_world(tmp_path, embedder, collections_dir=tmp_path / "collections")
    write_corpus(tmp_path / "collections" / "lighthouses", {"vardo.md": LIGHTHOUSE})
    from rag.collections import for_collection

    build(for_collection(settings, "lighthouses"), lambda: embedder, get_spec(settings.embed_model).sha256)
    with serve(settings, ScriptedByQuestion(REPLIES), embedder) as url:
        yield World(url, settings, ScriptedByQuestion(REPLIES), embedder)


def test_questions_search_the_chosen_collection_and_each_answer_is_saved(two_collections: World) -> None:
    client = two_collections.client()
    chat, sources, _ = ask(client, "Who painted the Vardø lighthouse?", collection="lighthouses")
    assert 'title="vardo.md">[' in text_of(chat[-1]) and "painted bright purple" in sources
    _, sources, _ = ask(two_collections.client(), "Who painted the Vardø lighthouse?")  # the default collection
    assert "vardo.md" not in sources

    store = ConversationStore(two_collections.settings.conversations_path)
    titles = {c.title: c for c in store.recent()}
    assert len(store.recent()) == 2 and set(titles) == {"Who painted the Vardø lighthouse?"}
    saved = {c.collection: store.messages(c.id) for c in store.recent()}
    assert [m.answer.citations[0].chunk.path for m in saved["lighthouses"]] == ["vardo.md"]
    assert [m.collection for m in saved["default"]] == ["default"]


def test_a_follow_up_in_the_same_session_joins_the_same_conversation(two_collections: World) -> None:
    client = two_collections.client()
    chat, _, _ = ask(client, "DeepSeek-V3 的训练成本是多少？")
    ask(client, "它采用什么架构？", chat)
    store = ConversationStore(two_collections.settings.conversations_path)
    [conv] = store.recent()
    assert conv.title == "DeepSeek-V3 的训练成本是多少？"
    assert [(m.number, m.question) for m in store.messages(conv.id)] == [
        (1, "DeepSeek-V3 的训练成本是多少？"), (2, "它采用什么架构？"),
    ]  # fmt: skip


def test_uploads_go_into_the_chosen_collection(two_collections: World, tmp_path: Path) -> None:
    from gradio_client import handle_file

    doc = tmp_path / "upload" / "keeper.md"
    doc.parent.mkdir()
    doc.write_text("# Keepers\n\nOle Brandt kept the Vardø light from 1915 to 1930.\n", encoding="utf-8")
    status, summary, table, *_ = two_collections.client().predict(
        [handle_file(doc)], False, "en", "lighthouses", api_name="/upload"
    )
    assert "Added keeper.md" in status and "2 documents" in summary
    assert (tmp_path / "collections" / "lighthouses" / "keeper.md").is_file()
    assert not (Path(two_collections.settings.corpus_dir) / "keeper.md").exists()
    assert sorted(row[0] for row in table["data"]) == ["keeper.md", "vardo.md"]


def test_an_unbuilt_collection_says_so_and_builds_on_rebuild(two_collections: World, tmp_path: Path) -> None:
    write_corpus(tmp_path / "collections" / "empty-yet", {"note.md": "# Note\n\nThe harbour opens at dawn.\n"})
    client = two_collections.client()
    chat, _, _ = ask(client, "When does the harbour open?", collection="empty-yet")
    assert "rag index" in text_of(chat[-1]) or "索引" in text_of(chat[-1])
    _, summary, _ = client.predict("en", "empty-yet", api_name="/rebuild")
    assert "1 documents" in summary or "1 document" in summary, summary
    assert (tmp_path / "index" / "collections" / "empty-yet" / "current").exists()


def test_a_page_load_that_finishes_after_the_first_question_leaves_it_alone(tmp_path: Path) -> None:
    """On a slow machine the load's restore of the kept chat can arrive after the reader asked."""
    from types import SimpleNamespace

    import gradio as gr

    from rag.answer.pipeline import Pipeline
    from ui.app import _Page

    settings = fake_world(tmp_path, FakeEmbedder())
    store = ConversationStore(tmp_path / "chats.sqlite3")
    page = _Page(Pipeline(settings), None, None, store, None, None, None)
    request = SimpleNamespace(session_hash="tab-1")
    question = page.tabs.start(request, "What is the lighthouse made of?")
    assert question is not None

    nothing_kept = page.restore_saved(None, "en", False, request)
    assert nothing_kept == (gr.skip(),) * 8
    assert page.tabs.get(request).current == question.id and not page.tabs.get(request).stop.is_set()

    kept = store.create("an earlier question", page.collections.home).id
    page.restore_saved(kept, "en", False, request)  # the reader has asked since: the new question wins
    assert page.tabs.get(request).current == question.id

    page.tabs.get(request).current = 0
    restored = page.restore_saved(kept, "en", False, request)  # nothing asked yet: the kept chat comes back
    assert restored[3] == kept
