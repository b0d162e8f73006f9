"""The chat page in a real headless Chromium (Debian's), driven by Playwright.

Two servers: `scripted` answers with the real MiniLM embedder and index but a
scripted generator (SmolLM2 rarely writes [n], and a citation click needs
one), `real` answers with the small real models end to end. Every request
every page makes is recorded; any that leaves 127.0.0.1 fails the test.

Set RAG_DOCS_SCREENSHOT=1 to also refresh docs/chat-page.png (the README's).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.documents import docx_bytes, html_page, pptx_bytes, xlsx_bytes
from tests.ui.test_ui_api import LIGHTHOUSE, REPLIES, ScriptedByQuestion, serve

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No background traffic of Chromium's own (updates, sync, QUIC probes): only the page's requests.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
COST_QUESTION = "DeepSeek-V3 的训练成本是多少？"  # one of the page's example questions
COST_REPLY = (
    "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]，使用 FP8 混合精度训练。"
    "它采用混合专家（MoE）架构，总参数 6710 亿，每个 token 激活 370 亿参数[2]。"
)
LONG_REPLY = "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。" * 30
BLADES_QUESTION = "Which warehouse keeps the spare turbine blades?"
BLADES_REPLY = "The spare turbine blades are kept in the Hammerfest North warehouse, 14 of them[1]."
# The text of an element, '' while it is not on the page.
TEXT_OF = "(document.querySelector('{}') || {{innerText: ''}}).innerText".format
ANSWERED = "() => document.querySelectorAll('#sources details.turn').length >= {n}"


@pytest.fixture(scope="module")
def scripted_url(small_world, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Real embedder and index (a copy: uploads change it), scripted answers that cite."""
    base = tmp_path_factory.mktemp("browser-scripted")
    shutil.copytree(small_world.corpus_dir, base / "corpus")
    shutil.copytree(small_world.index_dir, base / "index", symlinks=True)
    settings = replace(small_world, corpus_dir=base / "corpus", index_dir=base / "index")
    generator = ScriptedByQuestion({"详细介绍": LONG_REPLY, **REPLIES, "成本": COST_REPLY, "turbine": BLADES_REPLY},
                                   delay=0.04)  # fmt: skip
    with serve(settings, generator) as url:
        yield url


@pytest.fixture(scope="module")
def real_url(small_world) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The page as `python -m ui.app` starts it, with the real small models.

    Without the passage KV store: its background build (tested on its own in tests/answer) shares two
    cores with these answers, and under a loaded CI run two queued answers beside it outlasted the wait.
    This page's job here is one session per tab, not the store's speed (which `rag bench` measures).
    """
    from tests.ui.test_ui_api import free_port
    from ui.app import launch

    port = free_port()
    demo = launch(replace(small_world, kv_cache=False), host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def chromium():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing. Run: scripts/setup.sh --dev")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium) -> Iterator[Callable[..., object]]:  # type: ignore[no-untyped-def]
    """open_page(url, locale="zh-CN") -> a Page in a fresh browser context (its own Gradio session).

    Records every request of every page opened; fails the test if any went anywhere but this machine.
    """
    contexts, requests = [], []

    def open_(url: str, locale: str = "zh-CN"):  # type: ignore[no-untyped-def]
        context = chromium.new_context(viewport={"width": 1400, "height": 900}, locale=locale)
        context.on("request", lambda r: requests.append(r.url))
        context.on("page", lambda p: p.on("websocket", lambda ws: requests.append(ws.url)))
        contexts.append(context)
        page = context.new_page()
        page.goto(url, wait_until="load")
        page.wait_for_selector("#examples button", timeout=30_000)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert requests, "no requests were recorded: the recorder is broken"
    local = ("127.0.0.1", "localhost")
    foreign = [u for u in requests if not u.startswith(("data:", "blob:")) and urlparse(u).hostname not in local]
    assert foreign == [], f"the page fetched from outside this machine: {sorted(set(foreign))[:10]}"


def ask(page, question: str) -> None:  # type: ignore[no-untyped-def]
    box = page.locator("#question textarea")
    box.fill(question)
    box.press("Enter")


def screenshot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


WATCH_ANSWER = """() => {
  window.__answerTexts = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('#chat [data-testid="bot"]');
    if (bots.length) window.__answerTexts.push(bots[bots.length - 1].innerText);
  }).observe(document.querySelector('#chat'), { subtree: true, childList: true, characterData: true });
}"""


def test_example_question_streams_and_its_citation_opens_the_highlighted_source(scripted_url: str, open_page) -> None:  # type: ignore[no-untyped-def]
    page = open_page(scripted_url)
    page.evaluate(WATCH_ANSWER)
    page.locator("#examples button", has_text=COST_QUESTION).click()
    page.wait_for_selector("#chat a.cite", timeout=60_000)

    seen = [t for t in dict.fromkeys(page.evaluate("window.__answerTexts")) if t.strip() not in ("", "…")]
    assert len(seen) >= 3, f"the answer did not stream: {seen}"
    assert page.locator('#chat [data-testid="user"]').inner_text().strip() == COST_QUESTION

    link = page.locator("#chat a.cite").first
    assert link.inner_text() == "[1]" or link.inner_text().startswith("[")
    target = link.get_attribute("href").lstrip("#")  # type: ignore[union-attr]
    link.click()
    source = page.locator(f"#sources #{target}")
    page.wait_for_selector(f"#sources #{target}.active", timeout=5_000)
    assert source.is_visible()
    assert "deepseek.md" in source.locator(".meta").inner_text() and "训练成本" in source.locator(".meta").inner_text()
    assert "557.6万美元" in source.locator("mark").first.inner_text()
    time.sleep(0.6)  # let the smooth scroll settle before the picture
    shot = screenshot(page, "chat-page.png")
    if os.environ.get("RAG_DOCS_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "chat-page.png")
    assert len(page.context.pages) == 1, "a citation click must not open a new tab"


def test_language_follows_the_browser_and_the_toggle(scripted_url: str, open_page) -> None:  # type: ignore[no-untyped-def]
    page = open_page(scripted_url, locale="en-US")
    page.wait_for_function("() => document.querySelector('#send').innerText.trim() === 'Send'", timeout=10_000)
    assert "Example questions" in page.locator("#examples").inner_text()
    assert page.locator("#stop").inner_text().strip() == "Stop"

    page.get_by_label("中文").check()
    page.wait_for_function("() => document.querySelector('#send').innerText.trim() === '发送'", timeout=10_000)
    assert page.locator("#clear").inner_text().strip() == "清空对话"
    page.reload(wait_until="load")
    page.wait_for_selector("#examples button")
    time.sleep(1)  # the saved choice is applied on load
    assert page.locator("#send").inner_text().strip() == "发送"

    zh_page = open_page(scripted_url, locale="zh-CN")  # a fresh profile: Chinese, the default
    time.sleep(1)
    assert zh_page.locator("#send").inner_text().strip() == "发送"


def test_stop_ends_the_answer_and_clear_empties_the_chat(scripted_url: str, open_page) -> None:  # type: ignore[no-untyped-def]
    page = open_page(scripted_url)
    ask(page, "请详细介绍 DeepSeek-V3 的训练成本")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chat [data-testid=\"bot\"]'); "
        "return b.length && b[b.length - 1].innerText.includes('557.6'); }",
        timeout=60_000,
    )
    page.locator("#stop").click()
    page.wait_for_function(ANSWERED.format(n=1), timeout=30_000)
    answer = page.locator('#chat [data-testid="bot"]').last.inner_text()
    assert "（已停止）" in answer and answer.count("557.6") < 30

    ask(page, "Transformer 是哪一年提出的？")  # the page takes questions again
    page.wait_for_function(ANSWERED.format(n=2), timeout=60_000)
    assert "2017" in page.locator('#chat [data-testid="bot"]').last.inner_text()

    page.locator("#clear").click()
    page.wait_for_function("() => !document.querySelector('#chat [data-testid=\"bot\"]')", timeout=10_000)
    assert "回答的引用来源会显示在这里" in page.locator("#sources").inner_text()


def test_uploaded_file_is_indexed_and_cited(scripted_url: str, open_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    doc = tmp_path / "lighthouse.md"
    doc.write_text(LIGHTHOUSE, encoding="utf-8")
    page = open_page(scripted_url)
    page.locator("#upload").get_by_text("上传文档").click()
    page.locator("#upload-files input[type=file]").set_input_files(str(doc))
    page.locator("#upload-btn").click()
    try:
        page.wait_for_function(f"() => {TEXT_OF('#upload-status')}.includes('完成')", timeout=90_000)
    finally:
        screenshot(page, "upload.png")
    assert "已添加 lighthouse.md" in page.locator("#upload-status").inner_text()
    page.locator("#index").get_by_text("索引").first.click()
    page.wait_for_function(f"() => {TEXT_OF('#documents')}.includes('lighthouse.md')", timeout=10_000)

    ask(page, "Who painted the Vardø lighthouse?")
    page.wait_for_function(ANSWERED.format(n=1), timeout=60_000)
    link = page.locator("#chat a.cite").first
    assert link.get_attribute("title") == "lighthouse.md"
    link.click()
    active = page.locator("#sources .src.active")
    active.wait_for(timeout=5_000)
    assert "lighthouse.md" in active.inner_text()
    assert "painted bright purple in 1921" in active.locator("mark").inner_text()


def _office_files(folder: Path) -> dict[str, Path]:
    """One file of each new type, on topics of their own; the spreadsheet answers BLADES_QUESTION from
    a row on its second sheet."""
    contents = {
        "运维 手册.docx": docx_bytes([("h1", "Ferry maintenance"), ("h2", "Engines"),
                                   ("p", "The ferry engines are serviced every 600 running hours by the harbour crew.")]),
        "harbour.html": html_page("Harbour news", [("h1", "Harbour news"), ("p", (
            "The new pier opened in March and can berth two cruise ships at once, the harbour master said on Monday."
        ))]),
        "备件清单.xlsx": xlsx_bytes({
            "Staff": [["Name", "Role"], ["Kari Dahl", "Storekeeper"]],
            "Spare parts": [["Part", "Warehouse", "Quantity"], ["gearbox oil", "Vadsø East", 40],
                            ["spare turbine blades", "Hammerfest North", 14], ["anchor chain", "Kirkenes", 3]],
        }),
        "briefing.pptx": pptx_bytes([("Winter schedule", ["Ferries leave at 07:15 and 16:40 from December."])]),
    }  # fmt: skip
    folder.mkdir()
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data.encode() if isinstance(data, str) else data)
    return paths


def test_uploaded_word_web_sheet_and_slides_are_indexed_and_a_row_is_cited(scripted_url: str, open_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = _office_files(tmp_path / "office")
    page = open_page(scripted_url)
    page.locator("#upload").get_by_text("上传文档").click()
    page.locator("#upload-files input[type=file]").set_input_files([str(p) for p in files.values()])
    page.locator("#upload-btn").click()
    try:
        page.wait_for_function(f"() => {TEXT_OF('#upload-status')}.includes('完成')", timeout=120_000)
    finally:
        screenshot(page, "upload-office.png")
    status = page.locator("#upload-status").inner_text()
    for name in files:
        assert f"已添加 {name}" in status, status
    assert "跳过" not in status, status  # none of them was skipped
    page.locator("#index").get_by_text("索引").first.click()
    for name in files:
        page.wait_for_function(f"() => {TEXT_OF('#documents')}.includes({name!r})", timeout=10_000)

    ask(page, BLADES_QUESTION)
    page.wait_for_function(ANSWERED.format(n=1), timeout=60_000)
    link = page.locator("#chat a.cite").first
    assert link.get_attribute("title") == "备件清单.xlsx"
    link.click()
    active = page.locator("#sources .src.active")
    active.wait_for(timeout=5_000)
    meta = active.locator(".meta").inner_text()
    assert "备件清单.xlsx" in meta and "Spare parts" in meta and "第 2 个工作表" in meta, meta
    marked = " ".join(active.locator("mark").all_inner_texts())
    assert "Part: spare turbine blades; Warehouse: Hammerfest North; Quantity: 14" in marked, marked


def test_two_tabs_chatting_at_once_get_their_own_answers(real_url: str, open_page) -> None:  # type: ignore[no-untyped-def]
    questions = {"What did Google introduce in 2017?": "transformer.txt", "How do I make tomato soup?": "cooking.md"}
    pages = {q: open_page(real_url, locale="en-US") for q in questions}
    for question, page in pages.items():
        ask(page, question)
    for page in pages.values():
        page.wait_for_function(ANSWERED.format(n=1), timeout=120_000)

    for question, page in pages.items():
        other = next(q for q in questions if q != question)
        users = page.locator('#chat [data-testid="user"]').all_inner_texts()
        bots = page.locator('#chat [data-testid="bot"]').all_inner_texts()
        assert [u.strip() for u in users] == [question] and len(bots) == 1 and bots[0].strip()
        sources = page.locator("#sources").inner_text()
        assert f"Turn 1: {question}" in sources and other not in sources
        assert questions[question] in sources  # the passage that answers it was found
    screenshot(pages["How do I make tomato soup?"], "chat-page-real-model.png")
