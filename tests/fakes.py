"""Deterministic stand-ins for the embedding and chat models, for fast unit tests.

Import them explicitly (`from tests.fakes import FakeEmbedder`); conftest.py is
owned elsewhere and fixtures here are plain helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.llm.generation import Usage

DIM = 32


def _bucket(gram: str, dim: int) -> int:
    # hashlib, not hash(): str hashes are salted per process, vectors must not be.
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=4).digest(), "little") % dim


def bigram_vector(text: str, dim: int = DIM) -> np.ndarray:
    """L2-normalized counts of the text's character bigrams (lower-cased) hashed into `dim` buckets."""
    text = text.lower()
    vec = np.zeros(dim, dtype=np.float32)
    grams = [text[i : i + 2] for i in range(len(text) - 1)] or ([text] if text else [])
    for gram in grams:
        vec[_bucket(gram, dim)] += 1.0
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        vec[0] = 1.0  # the empty text still gets a unit vector
        return vec
    return vec / norm


class FakeEmbedder:
    """Implements rag.index.embedding.Embedder without a model: bigram hashing.

    Records every call so tests can count what was (re-)embedded.
    """

    def __init__(self, name: str = "fake-bigram", dim: int = DIM, batch_size: int = 4) -> None:
        self.name = name
        self.dim = dim
        self.batch_size = batch_size
        self.document_calls: list[list[str]] = []  # the texts of each encode_documents call
        self.query_calls: list[str] = []

    @property
    def encode_documents_calls(self) -> int:
        return len(self.document_calls)

    @property
    def embedded_texts(self) -> list[str]:
        return [t for call in self.document_calls for t in call]

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        texts = list(texts)
        self.document_calls.append(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            batch = texts[i : i + self.batch_size]
            for j, text in enumerate(batch):
                out[i + j] = bigram_vector(text, self.dim)
            if progress:
                progress(len(batch))
        return out

    def encode_query(self, text: str) -> np.ndarray:
        self.query_calls.append(text)
        return bigram_vector(text, self.dim)


class CountingFactory:
    """An embedder factory for rag.index.build that counts how often it is called."""

    def __init__(self, embedder: FakeEmbedder | None = None) -> None:
        self.embedder = embedder or FakeEmbedder()
        self.calls = 0

    def __call__(self) -> FakeEmbedder:
        self.calls += 1
        return self.embedder


class FakeGenerator:
    """Implements rag.llm.generation.Generator: replays scripted replies piece by piece.

    `replies` is a list of replies, one per stream() call; each reply is a
    string (split into pieces of `piece_chars` characters) or a list of pieces.
    Token counting is len(text).
    """

    def __init__(
        self, replies: Iterable[str | Sequence[str]] = (), name: str = "fake-chat", piece_chars: int = 3
    ) -> None:
        self.name = name
        self.piece_chars = piece_chars
        self._replies: list[list[str]] = [self._pieces(r) for r in replies]
        self.calls: list[dict[str, object]] = []  # messages and max_tokens of each stream() call
        self._usage = Usage()

    def _pieces(self, reply: str | Sequence[str]) -> list[str]:
        if isinstance(reply, str):
            n = self.piece_chars
            return [reply[i : i + n] for i in range(0, len(reply), n)]
        return list(reply)

    def queue(self, reply: str | Sequence[str]) -> None:
        self._replies.append(self._pieces(reply))

    def count_tokens(self, text: str) -> int:
        return len(text)

    @property
    def usage(self) -> Usage:
        return self._usage

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None,
        english: bool = False,
    ) -> Iterator[str]:  # fmt: skip
        self.calls.append({"messages": messages, "max_tokens": max_tokens, "english": english})
        pieces = self._replies.pop(0) if self._replies else []
        usage = Usage(prompt_tokens=sum(len(m["content"]) for m in messages))
        try:
            for piece in pieces:
                if stop is not None and stop.is_set():
                    break
                usage.completion_tokens += 1
                yield piece
        finally:
            self._usage = usage


def isolate(monkeypatch, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Run in tmp_path with no rag.toml and no RAG_* environment variables (load_settings reads both)."""
    for key in list(os.environ):
        if key.startswith("RAG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_settings(tmp_path: Path, files: dict[str, str | bytes] | None = None, **overrides: object):  # type: ignore[no-untyped-def]
    """Settings whose corpus (written from `files`, default TINY_CORPUS), index and cache live under tmp_path."""
    from rag.config import load_settings

    corpus = write_corpus(tmp_path / "corpus", TINY_CORPUS if files is None else files)
    return load_settings(corpus_dir=corpus, index_dir=tmp_path / "index", cache_dir=tmp_path / "cache", **overrides)


def write_corpus(directory: Path, files: dict[str, str | bytes]) -> Path:
    """Write {relative path: text or bytes} under `directory`; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return directory


# A tiny corpus with distinct, searchable facts (shared by index, retrieval and pipeline tests).
TINY_CORPUS: dict[str, str] = {
    "deepseek.md": (
        "# DeepSeek-V3 技术报告\n\n"
        "## 训练成本\n\n"
        "DeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。"
        "训练在 2048 块 H800 GPU 上完成，共用了约两个月。\n\n"
        "## 架构\n\n"
        "DeepSeek-V3 采用混合专家（MoE）架构，总参数 6710 亿，每个 token 激活 370 亿参数。\n"
    ),
    "transformer.txt": (
        "Transformer 架构由谷歌在 2017 年提出，论文名为 Attention Is All You Need。"
        "它完全依赖自注意力机制，而不是循环结构。\n"
    ),
    "cooking.md": (
        "# Tomato soup\n\nSimmer ripe tomatoes with onion and garlic for twenty minutes, then blend. "
        "Season with salt and a little sugar.\n"
    ),
}


def write_rgb_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """RGB rows as the benchmark ships them (one JSON object per line), for tests that need a file."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
