"""Shared by the tests of rag/llm: the real tiny chat model and KV engines on it (test_kvcache.py,
test_kvengine.py), and a real OpenAI-compatible server on 127.0.0.1, llama-cpp-python's own (its
`[server]` extra), serving the small test chat model, started once for the tests that need it and
stopped after them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rag.answer import prompting

if TYPE_CHECKING:
    from rag.llm.kvengine import KVEngine

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


# ---------------------------------------------------------------- the model and KV engines on it

MODEL = "smollm2-135m"
A = "《DeepSeek-V3 技术报告》 训练成本\nDeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。"
B = "《Transformer》 历史\nTransformer 架构由谷歌在 2017 年提出，论文名为 Attention Is All You Need。"
QUESTION = "DeepSeek-V3 的训练成本是多少？"


@pytest.fixture(scope="module")
def llm():  # type: ignore[no-untyped-def]
    from rag.config import load_settings
    from rag.llm.generation import load_generator
    from rag.models import get_spec, is_installed

    settings = load_settings(chat_model=MODEL)
    if not is_installed(get_spec(MODEL), settings.models_dir):
        pytest.fail("The test models are missing. Run: scripts/setup.sh --dev  (or: rag models fetch --tests)")
    return load_generator(MODEL, settings.models_dir, 1024, 2, 512, 0.0)


@pytest.fixture(scope="module", params=["f16", "q8_0"])
def engine(request, llm):  # type: ignore[no-untyped-def]
    """Each cache type in turn, for the tests about numerics."""
    from rag.llm.kvengine import KVEngine

    eng = KVEngine(llm._llm, 1024, 2, 512, request.param, prompting.PASSAGES_HEADER, prompting.SYSTEM_PROMPT, lock=llm._lock)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def q8(llm):  # type: ignore[no-untyped-def]
    """The default cache type only, for tests that are not about numerics."""
    from rag.llm.kvengine import KVEngine

    eng = KVEngine(llm._llm, 1024, 2, 512, "q8_0", prompting.PASSAGES_HEADER, prompting.SYSTEM_PROMPT, lock=llm._lock)
    yield eng
    eng.close()


def tail_tokens(engine: KVEngine) -> list[int]:
    """What the cached path reads at question time: the question's tail and the assistant turn opener."""
    return engine.tokenize(prompting.question_tail(QUESTION)) + engine.after_tokens()
