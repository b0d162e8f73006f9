"""Shared fixtures: isolated settings, a no-network guard, and real small models for e2e tests."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DOCS = {
    ".examples.txt": "DeepSeek-V3 的训练成本是多少？\nTransformer 架构是哪一年提出的？\n",  # the page's examples
    "deepseek.md": (
        "# DeepSeek-V3 技术报告摘要\n\n"
        "## 训练成本\n\n"
        "DeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。"
        "The full training of DeepSeek-V3 cost 5.576 million US dollars.\n\n"
        "## 架构\n\n"
        "DeepSeek-V3 采用混合专家（MoE）架构，总参数 6710 亿，每个 token 激活 370 亿参数。\n"
    ),
    "transformer.txt": (
        "Transformer 架构由谷歌在 2017 年提出，论文名为 Attention Is All You Need。"
        "The Transformer architecture was introduced by Google in 2017. "
        "It relies entirely on self-attention instead of recurrence.\n"
    ),
    "cooking.md": (
        "# Tomato soup\n\nSimmer ripe tomatoes with onion and garlic for twenty minutes, then blend. "
        "Season with salt and a little sugar.\n"
    ),
}


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # unix sockets and the like never leave the machine
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name would need DNS: that already is the network


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail any connection to a non-loopback address; returns the list of attempts."""
    attempts: list[object] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(address: object) -> None:
        if not _is_loopback(address):
            attempts.append(address)
            raise OSError(f"test forbids network access to {address!r}")

    def connect(self: socket.socket, address: object) -> None:
        guard(address)
        return real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        guard(address)
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in (None, "localhost") and not _is_loopback((host,)):
            attempts.append(host)
            raise OSError(f"test forbids name lookups of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temp dir with no rag.toml and no RAG_* variables leaking in."""
    for key in list(os.environ):
        if key.startswith("RAG_") and key != "RAG_CACHE_DIR":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _small_models_available() -> bool:
    from rag.config import load_settings
    from rag.models import get_spec, is_installed

    models_dir = load_settings().models_dir
    return all(is_installed(get_spec(n), models_dir) for n in ("minilm-l6", "smollm2-135m"))


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A temp corpus indexed with the real small test models (MiniLM + SmolLM2)."""
    if not _small_models_available():
        pytest.fail("The test models are missing. Run: scripts/setup.sh --dev  (or: rag models fetch --tests)")
    from rag.cli import run_index
    from rag.config import load_settings

    base = tmp_path_factory.mktemp("world")
    corpus = base / "corpus"
    corpus.mkdir()
    for name, text in FIXTURE_DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    settings = load_settings(
        corpus_dir=corpus,
        index_dir=base / "index",
        embed_model="minilm-l6",
        chat_model="smollm2-135m",
        n_ctx=2048,
        max_answer_tokens=48,
        min_dense_score=0.0,
    )
    report = run_index(settings, quiet=True)
    assert report.chunks > 0
    return settings


@pytest.fixture(scope="session")
def small_env(small_world) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Environment for running the `rag` command against the small world."""
    env = dict(os.environ)
    env.update(
        RAG_CORPUS_DIR=str(small_world.corpus_dir),
        RAG_INDEX_DIR=str(small_world.index_dir),
        RAG_EMBED_MODEL="minilm-l6",
        RAG_CHAT_MODEL="smollm2-135m",
        RAG_N_CTX="2048",
        RAG_MAX_ANSWER_TOKENS="48",
        RAG_MIN_DENSE_SCORE="0.0",
    )
    return env


RAG_BIN = str(Path(sys.executable).parent / "rag")
