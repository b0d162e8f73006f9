"""Saved chats in a real headless Chromium: a chat survives a page reload and a server restart, thumbs are stored.

Fake embedder and scripted answers (tests/ui/test_ui_api.py), so the test is about the page, not the models.
The restarted server listens on the same port: the browser keeps the chat's id per origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rag.answer.pipeline import Pipeline
from rag.config import Settings
from rag.conversations import ConversationStore
from tests.fakes import FakeEmbedder
from tests.ui.test_browser import ANSWERED, ask, chromium, open_page  # noqa: F401  (fixtures)
from tests.ui.test_ui_api import REPLIES, ScriptedByQuestion, fake_world, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

QUESTION = "DeepSeek-V3 的训练成本是多少？"
BOT = '#chat [data-testid="bot"]'


@contextmanager
def page_server(settings: Settings, embedder: FakeEmbedder, port: int) -> Iterator[str]:
    from ui.app import launch

    pipeline = Pipeline(settings, embedder=embedder, generator=ScriptedByQuestion(REPLIES))
    demo = launch(settings, host="127.0.0.1", port=port, block=False, pipeline=pipeline)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def chat_text(page) -> str:  # type: ignore[no-untyped-def]
    return page.locator("#chat").inner_text()


def test_a_chat_survives_reload_and_restart_and_its_thumbs_up_is_stored(open_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    embedder = FakeEmbedder()
    settings = fake_world(tmp_path, embedder)
    port = free_port()
    with page_server(settings, embedder, port) as url:
        page = open_page(url, locale="en-US")
        ask(page, QUESTION)
        page.wait_for_function(ANSWERED.format(n=1), timeout=60_000)
        page.locator("#chat").get_by_label("Like", exact=True).first.click()
        page.wait_for_function(f"() => document.querySelector('#saved-list').innerText.includes('{QUESTION}')")

        page.reload(wait_until="load")
        page.wait_for_selector(BOT, timeout=30_000)  # the saved chat, shown again
        assert QUESTION in chat_text(page) and "557.6" in page.locator(BOT).last.inner_text()
        assert page.locator("#sources details.turn").count() == 1  # its sources too

    store = ConversationStore(settings.conversations_path)
    [fb] = store.feedback()
    assert (fb.rating, fb.question) == (1, QUESTION) and "557.6" in fb.answer and fb.citations[0].file == "deepseek.md"

    with page_server(settings, embedder, port) as url:  # a new server process state, same port and file
        page.reload(wait_until="load")
        page.wait_for_selector(BOT, timeout=30_000)
        assert QUESTION in chat_text(page) and "557.6" in page.locator(BOT).last.inner_text()
        ask(page, "它采用什么架构？")  # the chat goes on in the same conversation
        page.wait_for_function(ANSWERED.format(n=2), timeout=60_000)
        [conv] = store.recent()
        assert [m.number for m in store.messages(conv.id)] == [1, 2]

        page.locator("#new-chat").click()
        page.wait_for_function(f"() => !document.querySelector('{BOT}')", timeout=10_000)
        page.locator("#saved-list label", has_text=QUESTION).click()  # open it from the side panel
        page.wait_for_function(ANSWERED.format(n=2), timeout=10_000)
        with page.expect_download() as download:
            page.locator("#export-chat").click()
            page.locator("#export-file a").first.click()
        md = Path(download.value.path()).read_text(encoding="utf-8")
        assert md.startswith(f"# {QUESTION}") and "**[1]** deepseek.md" in md and "它采用什么架构？" in md
