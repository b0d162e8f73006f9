"""The /v1 API of `rag serve`: a real uvicorn server on 127.0.0.1, the real OpenAI client, raw httpx for errors.

Answers come from the small real models (smollm2-135m + minilm-l6) over the small test corpus;
the queueing and disconnect tests swap in a slow scripted generator, whose reply and pace are known.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest

from rag.answer.pipeline import Pipeline
from rag.config import Settings
from rag.llm.generation import Usage

pytestmark = pytest.mark.e2e

COST = "DeepSeek-V3 的训练成本是多少？"
LONG_REPLY = "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。" * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlowGenerator:
    """A Generator (rag.llm.generation) that streams a fixed reply a piece at a time, slowly, and
    records how many streams ran at once and how many pieces each wrote before it stopped."""

    name = "slow"

    def __init__(self, reply: str, delay: float) -> None:
        self.reply, self.delay = reply, delay
        self.active = self.max_active = self.streams = 0
        self.pieces: list[int] = []  # pieces written by each finished stream
        self._usage = Usage()
        self._lock = threading.Lock()

    @property
    def usage(self) -> Usage:
        return self._usage

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None,
               english: bool = False) -> Iterator[str]:  # fmt: skip
        with self._lock:
            self.active += 1
            self.streams += 1
            self.max_active = max(self.max_active, self.active)
        usage = Usage(prompt_tokens=10)
        try:
            for i in range(0, len(self.reply), 4):
                if stop is not None and stop.is_set():
                    break
                time.sleep(self.delay)
                usage.completion_tokens += 1
                yield self.reply[i : i + 4]
        finally:
            with self._lock:
                self.active -= 1
                self.pieces.append(usage.completion_tokens)
            self._usage = usage


class Running:
    def __init__(self, settings: Settings, pipeline: Pipeline | None = None) -> None:
        from rag.serve.app import serve

        self.pipeline = pipeline or Pipeline(settings)
        if pipeline is None:
            self.pipeline.load()
        self.server = serve(settings, "127.0.0.1", free_port(), block=False, pipeline=self.pipeline)
        self.url = self.server.url

    def openai(self, key: str = "none"):  # type: ignore[no-untyped-def]
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def real(small_world) -> Iterator[Running]:  # type: ignore[no-untyped-def]
    running = Running(small_world)
    yield running
    running.server.close()


def scripted(settings: Settings, real: Running, generator: SlowGenerator, **overrides: Any) -> Running:
    """A second server over the same index and embedder, answering with `generator`."""
    s = replace(settings, **overrides)
    return Running(s, Pipeline(s, embedder=real.pipeline.get_embedder(), generator=generator))


# ---------------------------------------------------------------- the OpenAI client


def test_the_openai_client_gets_an_answer_with_its_citations(real: Running) -> None:
    got = real.openai().chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": COST}], temperature=0.5
    )
    extra = got.model_extra or {}
    assert got.choices[0].message.content == extra["answer"]
    assert got.choices[0].finish_reason == "stop" and got.usage is not None
    assert isinstance(extra["refused"], bool) and isinstance(extra["unsupported"], list)
    assert extra["query"] == COST and extra["ignored"] == ["temperature"]
    for c in extra["citations"]:  # every [n] kept in the text points at a cited passage
        assert f"[{c['n']}]" in extra["answer"]
        assert set(c) >= {"n", "document", "heading", "page", "text", "start", "end"}
        assert c["document"] in ("deepseek.md", "transformer.txt", "cooking.md") and c["end"] > c["start"]


def test_the_openai_client_streams_and_the_last_chunk_carries_the_citations(real: Running) -> None:
    chunks = list(real.openai().chat.completions.create(messages=[{"role": "user", "content": COST}],
                                                        model="smollm2-135m", stream=True))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    extra = last.model_extra or {}
    assert last.choices[0].finish_reason == "stop"
    assert "citations" in extra and "refused" in extra and "unsupported" in extra
    assert text.strip() and extra["answer"]  # the raw words streamed; the checked answer at the end
    assert all("citations" not in (c.model_extra or {}) for c in chunks[:-1])


def test_a_follow_up_is_searched_with_the_question_before_it(real: Running) -> None:
    messages = [
        {"role": "system", "content": "ignored: the product has its own prompt"},
        {"role": "user", "content": COST},
        {"role": "assistant", "content": "DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。"},
        {"role": "user", "content": "它采用什么架构？"},
    ]
    got = real.openai().chat.completions.create(model="smollm2-135m", messages=messages)  # type: ignore[arg-type]
    assert (got.model_extra or {})["query"] == f"{COST} 它采用什么架构？"


def test_max_tokens_cuts_the_answer(real: Running) -> None:
    got = real.openai().chat.completions.create(model="smollm2-135m", max_tokens=2,
                                                messages=[{"role": "user", "content": COST}])  # fmt: skip
    extra = got.model_extra or {}
    assert extra["refused"] or got.choices[0].finish_reason == "length"


def test_models_search_and_index(real: Running) -> None:
    models = {m.id: m for m in real.openai().models.list()}
    assert (models["smollm2-135m"].model_extra or {})["default"] is True
    assert "qwen2.5-1.5b" in models
    hits = httpx.post(real.url + "/v1/search", json={"query": "Transformer 是哪一年提出的", "k": 2}).json()
    assert [h["rank"] for h in hits["data"]] == [1, 2]
    assert hits["data"][0]["document"] == "transformer.txt" and hits["data"][0]["score"] >= hits["data"][1]["score"]
    index = httpx.get(real.url + "/v1/index").json()
    assert index["state"] == "ready" and index["chunks"] >= 3
    assert {d["document"] for d in index["documents"]} == {"deepseek.md", "transformer.txt", "cooking.md"}


def test_the_page_is_served_on_the_same_port(real: Running) -> None:
    page = httpx.get(real.url + "/")
    assert page.status_code == 200 and "<html" in page.text
    assert httpx.get(real.url + "/config").status_code == 200  # Gradio's own routes beside /v1
    schema = httpx.get(real.url + "/v1/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"] and "/v1/search" in schema["paths"]


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "body, status, code",
    [
        ("{", 400, "invalid_json"),
        ("", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_request"),
        ('{"model": "smollm2-135m"}', 400, "invalid_request"),  # no messages
        ('{"messages": []}', 400, "invalid_request"),
        ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
        ('{"messages": [{"role": "user", "content": "   "}]}', 400, "invalid_question"),
        ('{"messages": [{"role": "user", "content": "' + "问" * 2001 + '"}]}', 400, "invalid_question"),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}', 400, "invalid_messages"),
        ('{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "invalid_request"),
        ('{"messages": "hi"}', 400, "invalid_request"),
        ('{"messages": [{"role": "user", "content": "' + "x" * (1100 * 1024) + '"}]}', 413, "body_too_large"),
    ],
    ids=["broken-json", "no-body", "not-an-object", "no-messages", "empty-messages", "unknown-model",
         "empty-question", "long-question", "last-not-user", "bad-role", "messages-not-a-list", "oversized"],
)  # fmt: skip
def test_bad_requests_get_an_openai_style_error(real: Running, body: str, status: int, code: str) -> None:
    r = httpx.post(real.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert "Traceback" not in r.text


def test_the_openai_client_raises_on_an_unknown_model(real: Running) -> None:
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        real.openai().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": COST}])


def test_an_unknown_endpoint_and_a_bad_search_get_json_errors(real: Running) -> None:
    r = httpx.get(real.url + "/v1/embeddings")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_endpoint"
    r = httpx.post(real.url + "/v1/search", json={"query": " ", "k": 3})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_question"
    r = httpx.post(real.url + "/v1/search", json={"query": "x", "k": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "k"


# ---------------------------------------------------------------- the API key


def test_with_an_api_key_every_v1_call_needs_it(small_world, real: Running) -> None:  # type: ignore[no-untyped-def]
    import openai

    keyed = scripted(small_world, real, SlowGenerator("DeepSeek-V3 的完整训练仅花费 557.6万美元[1]。", 0.0),
                     api_key="s3cret")  # fmt: skip
    try:
        for method, path in [("GET", "/v1/models"), ("GET", "/v1/index"), ("POST", "/v1/search"),
                             ("POST", "/v1/chat/completions"), ("GET", "/v1/nothing"),
                             ("GET", "/v1/openapi.json")]:  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = httpx.request(method, keyed.url + path, json={"query": "x"}, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            keyed.openai("wrong").models.list()
        got = keyed.openai("s3cret").chat.completions.create(model="smollm2-135m",
                                                             messages=[{"role": "user", "content": COST}])  # fmt: skip
        assert "557.6" in (got.choices[0].message.content or "")
        assert httpx.get(keyed.url + "/").status_code == 200  # the page is not behind the key
    finally:
        keyed.server.close()


def test_listening_beyond_this_machine_without_a_key_warns(small_world) -> None:  # type: ignore[no-untyped-def]
    from rag.serve.app import exposure_warning

    assert exposure_warning(small_world, "127.0.0.1") == "" and exposure_warning(small_world, "localhost") == ""
    assert "without an API key" in exposure_warning(small_world, "0.0.0.0")
    assert "guards /v1 only" in exposure_warning(replace(small_world, api_key="k"), "0.0.0.0")


# ---------------------------------------------------------------- queueing and disconnects


@pytest.fixture(scope="module")
def slow(small_world, real: Running) -> Iterator[tuple[Running, SlowGenerator]]:  # type: ignore[no-untyped-def]
    generator = SlowGenerator(LONG_REPLY, delay=0.01)
    running = scripted(small_world, real, generator, max_answer_tokens=1000, api_queue_limit=10)
    yield running, generator
    running.server.close()


def wait_until(condition, what: str, seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Poll for a condition (a bound on waiting, not a speed assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def test_a_client_that_disconnects_mid_stream_stops_generation(slow: tuple[Running, SlowGenerator]) -> None:
    running, generator = slow
    before = len(generator.pieces)
    body = {"model": "smollm2-135m", "stream": True, "messages": [{"role": "user", "content": COST}]}
    with httpx.stream("POST", running.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                break  # the first words arrived: hang up
    wait_until(lambda: len(generator.pieces) > before and generator.active == 0, "the stream to stop")
    assert generator.pieces[-1] < len(LONG_REPLY) // 4, "generation ran on after the client left"


def test_eight_concurrent_clients_are_all_answered_one_generation_at_a_time(slow: tuple[Running, SlowGenerator]) -> None:
    running, generator = slow
    generator.max_active = 0

    def ask(i: int) -> str:
        client = running.openai()
        if i % 2:
            parts = client.chat.completions.create(model="smollm2-135m", stream=True,
                                                   messages=[{"role": "user", "content": f"{COST} ({i})"}])  # fmt: skip
            return [(p.model_extra or {}).get("answer") for p in parts][-1]
        got = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": COST}])
        return (got.model_extra or {})["answer"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(answers) == 8 and all("557.6" in a for a in answers)
    assert generator.max_active == 1


def test_past_the_queue_limit_a_client_gets_429(small_world, real: Running) -> None:  # type: ignore[no-untyped-def]
    generator = SlowGenerator(LONG_REPLY, delay=0.03)  # ~5 s an answer: the four requests arrive during the first
    running = scripted(small_world, real, generator, max_answer_tokens=1000, api_queue_limit=1)
    body = json.dumps({"messages": [{"role": "user", "content": COST}]})
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: httpx.post(running.url + "/v1/chat/completions", content=body,
                                                         timeout=120), range(4)))  # fmt: skip
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) >= 2 and 429 in statuses and set(statuses) <= {200, 429}, statuses
        for r in results:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"]
    finally:
        running.server.close()


def test_the_page_and_the_api_share_one_line(slow: tuple[Running, SlowGenerator]) -> None:
    """A question from the chat page (its /ask endpoint) waits in the same line as API clients."""
    from gradio_client import Client

    running, generator = slow
    generator.max_active = 0

    def api(_: int) -> str:
        got = running.openai().chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": COST}])
        return got.choices[0].message.content or ""

    def page() -> str:
        chat, _, _ = Client(running.url + "/", verbose=False).predict(COST, [], api_name="/ask")
        content = chat[-1]["content"]
        return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)

    with ThreadPoolExecutor(4) as pool:
        apis = [pool.submit(api, i) for i in range(3)]
        on_page = pool.submit(page)
        answers = [f.result() for f in apis] + [on_page.result()]
    assert all("557.6" in a for a in answers)
    assert generator.max_active == 1


def test_rag_serve_puts_the_page_and_the_api_on_one_port(small_env) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    port = free_port()
    env = {**small_env, "RAG_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "rag.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "rag serve exited"
            try:
                return httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, "rag serve to start", seconds=180)
        assert httpx.get(url + "/v1/models").status_code == 401  # the key from RAG_API_KEY
        assert httpx.get(url + "/").status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"Chat page: {url}/" in out and "Traceback" not in out
