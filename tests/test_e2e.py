"""End to end with real parts: small real models, a FAISS index on disk, the CLI, the Gradio server."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.conftest import RAG_BIN

pytestmark = pytest.mark.e2e


def test_ask_json_cites_only_retrieved_passages(small_env: dict[str, str]) -> None:
    out = subprocess.run(
        [RAG_BIN, "ask", "--json", "How much did the training of DeepSeek-V3 cost?"],
        env=small_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["answer"].strip()
    assert set(answer) >= {"answer", "citations", "passages", "timings", "query"}
    given = {(p["file"], p["start"], p["end"]) for p in answer["passages"]}
    assert given, "retrieval returned no passages"
    for c in answer["citations"]:
        assert (c["file"], c["start"], c["end"]) in given
        assert 1 <= c["number"] <= len(answer["passages"])
        assert {"heading_path", "page", "text"} <= set(c)
    assert answer["timings"]["total"] > 0


def test_ask_streams_tokens_in_process(small_world) -> None:  # type: ignore[no-untyped-def]
    from rag.answer.pipeline import Done, Pipeline, Retrieved, Token

    events = list(Pipeline(small_world).ask("What did Google introduce in 2017?"))
    assert isinstance(events[0], Retrieved)
    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) > 1, "the answer should arrive in several pieces"
    assert isinstance(events[-1], Done)


def test_search_cli_json(small_env: dict[str, str]) -> None:
    out = subprocess.run([RAG_BIN, "search", "tomato soup", "--k", "2", "--json"],
                         env=small_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows[0]["file"] == "cooking.md"
    assert {"dense_score", "lexical_score", "score", "heading_path", "start", "end", "page"} <= set(rows[0])


def test_index_and_answer_open_no_network_connection(small_world, no_network, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from rag.answer.pipeline import Done, Pipeline
    from rag.cli import run_index

    settings = replace(small_world, index_dir=tmp_path / "index")
    run_index(settings, full=True, quiet=True)
    events = list(Pipeline(settings).ask("Who introduced the Transformer?"))
    assert isinstance(events[-1], Done)
    assert no_network == []


def test_missing_model_message_names_the_fix(small_env: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = dict(small_env, XDG_CACHE_HOME=str(tmp_path / "empty-cache"))
    out = subprocess.run([RAG_BIN, "ask", "hello"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "rag models fetch" in out.stderr
    assert "Traceback" not in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(small_world):  # type: ignore[no-untyped-def]
    from ui.app import launch

    port = _free_port()
    demo = launch(small_world, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_gradio_app_answers_through_client(server: str) -> None:
    from gradio_client import Client

    client = Client(server, verbose=False)
    chat, sources, box = client.predict("What did Google introduce in 2017?", [], 3, True, api_name="/ask")
    assert chat[-1]["role"] == "assistant" and chat[-1]["content"]
    assert "transformer.txt" in sources or "related" in sources.lower() or "相关段落" in sources
    assert box == ""
