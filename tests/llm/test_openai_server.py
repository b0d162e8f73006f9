"""rag.llm.openai_server: the chat model over HTTP, against a real llama-cpp-python server on 127.0.0.1
(tests/llm/conftest.py) and, for the failures, tiny local HTTP servers that misbehave on purpose."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from rag.config import load_settings
from rag.errors import ConfigError, ModelError
from rag.llm.openai_server import ServerGenerator, estimate_tokens
from tests.llm.conftest import SERVED_NAME, free_port

PROMPTS = [
    ([{"role": "user", "content": "What is the capital of France?"}], False),
    ([{"role": "system", "content": "Answer from the passages."},
      {"role": "user", "content": "[1] The Transformer was introduced by Google in 2017.\n\nWho introduced it?"}], True),
    ([{"role": "user", "content": "DeepSeek-V3 的训练成本是多少？"}], False),
]  # fmt: skip


@pytest.fixture(scope="module")
def local():  # type: ignore[no-untyped-def]
    """The same model in process, loaded as tests/conftest.py's small world loads it."""
    from rag.llm.generation import load_generator

    s = load_settings()
    return load_generator(SERVED_NAME, s.models_dir, 2048, s.n_threads, s.n_batch, 0.0)


@pytest.fixture(scope="module")
def remote(llm_server: str) -> ServerGenerator:
    return ServerGenerator(llm_server, models_dir=load_settings().models_dir)


# ------------------------------------------------------------ against the real server


@pytest.mark.e2e
def test_the_answer_streams_in_pieces_and_is_counted(remote: ServerGenerator) -> None:
    pieces = list(remote.stream(PROMPTS[0][0], 24))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert remote.usage.completion_tokens == len(pieces) and remote.usage.prompt_tokens > 0
    assert remote.name == SERVED_NAME and remote.tokenizer == "llama-cpp-python"


@pytest.mark.e2e
def test_stop_ends_the_stream_and_the_server_answers_the_next_question(remote: ServerGenerator) -> None:
    stop, pieces = threading.Event(), []
    for piece in remote.stream([{"role": "user", "content": "Count from 1 to 200, one number a line."}], 300, stop):
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()
    assert len(pieces) == 3
    assert list(remote.stream(PROMPTS[0][0], 4))


@pytest.mark.e2e
@pytest.mark.parametrize("number", range(len(PROMPTS)))
def test_the_server_writes_the_same_tokens_as_the_model_in_process(remote, local, number: int) -> None:  # type: ignore[no-untyped-def]
    messages, english = PROMPTS[number]
    over_http = list(remote.stream(messages, 40, english=english))
    in_process = list(local.stream(messages, 40, english=english))
    assert over_http == in_process


@pytest.mark.e2e
def test_tokens_are_counted_by_the_servers_tokenizer(remote, local) -> None:  # type: ignore[no-untyped-def]
    for text in ("DeepSeek-V3 的完整训练仅花费 557.6万美元。", "It relies entirely on self-attention."):
        assert remote.count_tokens(text) == local.count_tokens(text)


@pytest.mark.e2e
def test_english_answers_ban_chinese_tokens_over_http_too(remote: ServerGenerator) -> None:
    assert remote.banned and remote.english_note == ""
    body = remote._request(PROMPTS[1][0], 8, english=True)
    assert set(body["logit_bias"].values()) == {-100.0} and len(body["logit_bias"]) == len(remote.banned)


@pytest.mark.e2e
def test_the_pipeline_answers_through_the_server_as_in_process(small_world, llm_server: str) -> None:  # type: ignore[no-untyped-def]
    from rag.answer.pipeline import Done, Pipeline, Token

    question = "How much did the training of DeepSeek-V3 cost?"
    served = replace(small_world, llm_url=llm_server, llm_model=SERVED_NAME)
    events = list(Pipeline(served).ask(question))
    assert sum(isinstance(e, Token) for e in events) > 1
    answer = events[-1].answer  # type: ignore[union-attr]
    assert isinstance(events[-1], Done) and answer.raw_text
    for citation in answer.citations:  # checked: each points at a passage the model was given
        assert 1 <= citation.number <= len(answer.hits)
        assert citation.chunk == answer.hits[citation.number - 1].chunk
    in_process = next(e for e in Pipeline(small_world).ask(question) if isinstance(e, Done)).answer
    assert (answer.raw_text, answer.text, answer.refused) == (in_process.raw_text, in_process.text, in_process.refused)


@pytest.mark.e2e
def test_with_a_server_the_cached_path_is_off_with_a_note(small_world, llm_server: str) -> None:  # type: ignore[no-untyped-def]
    from rag.answer.pipeline import Done, Pipeline

    pipeline = Pipeline(replace(small_world, llm_url=llm_server, kv_cache=True))
    assert pipeline.get_cached() is None
    assert llm_server in pipeline.kv_unavailable and "cached path is off" in pipeline.kv_unavailable
    answer = next(e for e in pipeline.ask("Who introduced the Transformer?") if isinstance(e, Done)).answer
    assert answer.path == "ordinary"


# ------------------------------------------------------------ servers that fail


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """Lists one model, has no tokenizer, and answers a chat as `server.mode` says."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._reply(200, {"object": "list", "data": [{"id": "fake"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode, release = self.server.mode, self.server.release  # type: ignore[attr-defined]
        if not self.path.endswith("/chat/completions"):
            self._reply(404, {"detail": "Not Found"})
        elif mode == "unauthorized":
            self._reply(401, {"error": "invalid api key"})
        elif mode == "silent":
            release.wait(30)
        else:  # "pings": an open event stream that keeps alive but never writes text
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            while not release.wait(0.1):
                self.wfile.write(b": ping\r\n\r\n")
                self.wfile.flush()

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def misbehaving() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    server.mode, server.release = "silent", threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def _url(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_a_server_that_is_down_gets_a_message_naming_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ModelError) as err:
        ServerGenerator(url, timeout_s=2)
    assert url in err.value.message and "Cannot connect" in err.value.message
    assert "llm_url" in err.value.hint


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listening:  # the kernel accepts the connection; nobody ever reads it
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        with pytest.raises(ModelError) as err:
            ServerGenerator(f"http://127.0.0.1:{listening.getsockname()[1]}", timeout_s=0.5)
    assert "sent nothing for 0.5 s" in err.value.message and "llm_timeout_s" in err.value.hint


@pytest.mark.parametrize("mode", ["silent", "pings"])
def test_a_chat_that_never_writes_text_times_out(misbehaving, mode: str) -> None:  # type: ignore[no-untyped-def]
    misbehaving.mode = mode
    generator = ServerGenerator(_url(misbehaving), timeout_s=0.5)
    assert generator.name == "fake" and generator.tokenizer in ("", "estimate")
    with pytest.raises(ModelError) as err:
        list(generator.stream([{"role": "user", "content": "hi"}], 8))
    assert _url(misbehaving) in err.value.message and "llm_timeout_s" in err.value.hint
    assert generator.tokenizer == "estimate" and generator.count_tokens("模型 abc") == estimate_tokens("模型 abc")


def test_a_refused_key_says_which_setting_to_fix(misbehaving) -> None:  # type: ignore[no-untyped-def]
    misbehaving.mode = "unauthorized"
    generator = ServerGenerator(_url(misbehaving), api_key="wrong", timeout_s=2)
    with pytest.raises(ModelError) as err:
        list(generator.stream([{"role": "user", "content": "hi"}], 8))
    assert "HTTP 401" in err.value.message and "llm_api_key" in err.value.hint


def test_the_settings_choose_the_backend(misbehaving, isolated, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from rag.llm.generation import open_generator

    monkeypatch.setenv("RAG_LLM_URL", _url(misbehaving) + "/v1")  # as OpenAI clients take it
    monkeypatch.setenv("RAG_LLM_TIMEOUT_S", "3")
    settings = load_settings()
    generator = open_generator(settings)
    assert isinstance(generator, ServerGenerator)
    assert generator.url == _url(misbehaving) and generator.timeout_s == 3.0
    assert "English answers may use Chinese tokens" in generator.english_note  # "fake" has no known vocabulary


# ------------------------------------------------------------ pure parts


def test_the_estimate_errs_high_for_chinese_digits_and_words() -> None:
    assert estimate_tokens("训练成本 cost 557.6") == 4 + 4 + 3
    assert estimate_tokens("") == 0


@pytest.mark.parametrize("values", [{"llm_url": "127.0.0.1:8080"}, {"llm_timeout_s": 0}, {"llm_connect_timeout_s": -1}])
def test_bad_server_settings_are_refused(isolated, values: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        load_settings(**values)
