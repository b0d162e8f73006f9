"""A real OpenAI-compatible server on 127.0.0.1: llama-cpp-python's own (its `[server]` extra), serving
the small test chat model, started once for the tests that need it and stopped after them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_START_S = 120  # loading a 135M model takes seconds; a machine busy with other tests, longer
SERVED_NAME = "smollm2-135m"  # the alias it is served under: a registry name, so its vocabulary is known


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return when GET /v1/models answers; fail with the server's log if it exits or never answers."""
    import httpx

    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"The LLM server exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"The LLM server did not answer within {SERVER_START_S} s:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of `python -m llama_cpp.server` serving smollm2-135m as the local tests load it."""
    from rag.config import load_settings
    from rag.models import locate

    pytest.importorskip("sse_starlette", reason="the LLM server needs the `scale` extra: scripts/setup.sh --dev")
    settings = load_settings()
    try:
        model = locate(SERVED_NAME, settings.models_dir)
    except Exception as exc:  # noqa: BLE001 - the message says which command fetches it
        pytest.fail(f"{exc}\nRun: scripts/setup.sh --dev")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("llm-server") / "server.log"
    # The context, threads and batch of the small world (tests/conftest.py), so that answers match
    # the in-process model's token for token.
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_batch", str(settings.n_batch),
            "--n_threads", str(settings.n_threads), "--n_threads_batch", str(settings.n_threads)]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
