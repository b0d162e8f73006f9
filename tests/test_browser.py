"""The chat page in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def page_url(small_world):  # type: ignore[no-untyped-def]
    from ui.app import launch

    port = _free_port()
    demo = launch(small_world, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing. Run: scripts/setup.sh --dev")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],  # fmt: skip
            viewport={"width": 1400, "height": 900},
        )
        yield context
        context.close()


def test_page_answers_with_sources_and_stays_local(page_url: str, browser) -> None:  # type: ignore[no-untyped-def]
    requests: list[str] = []
    page = browser.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_url, wait_until="networkidle")

    page.locator("#question textarea").fill("What did Google introduce in 2017?")
    page.locator("#question textarea").press("Enter")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.wait_for_function(
            "() => { const s = document.querySelector('#sources'); return s && /transformer\\.txt|cooking\\.md|deepseek\\.md/.test(s.innerText) }",
            timeout=120_000,
        )
    finally:
        page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    sources = page.locator("#sources").inner_text()
    assert "transformer.txt" in sources or "相关段落" in sources

    foreign = [u for u in requests if urlparse(u).hostname not in ("127.0.0.1", "localhost") and not u.startswith(("data:", "blob:"))]
    assert foreign == [], f"the page fetched from outside this machine: {foreign[:5]}"
