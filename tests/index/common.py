"""What the index tests share: a small corpus, the pinned embedder hash, and a build with a counting fake embedder."""

from __future__ import annotations

from pathlib import Path

from rag.index.build import build
from rag.index.report import BuildReport
from rag.ingest.chunking import ChunkerSettings, chunk_document
from rag.ingest.loaders import load_file
from tests.fakes import TINY_CORPUS, CountingFactory

ROOT = Path(__file__).resolve().parents[2]
SHA = "e" * 64  # the embedder's pinned sha256, as build() records it

EXTRA = {
    "history.md": (
        "---\ntitle: 大模型简史\n---\n\n# 大模型简史\n\n"
        "## 2018\n\nBERT 与 GPT 在 2018 年先后发布，预训练加微调成为主流范式，自然语言处理进入新阶段。\n\n"
        "## 2020\n\nGPT-3 拥有 1750 亿参数，展示了少样本学习能力，引发了规模定律的广泛讨论和研究。\n\n"
        "## 2022\n\nChatGPT 在 2022 年 11 月发布，两个月内用户数突破一亿，成为增长最快的消费级应用。\n"
    ),
}
FILES = {**TINY_CORPUS, **EXTRA}


def build_with(settings, factory: CountingFactory | None = None, **kwargs) -> tuple[BuildReport, CountingFactory]:  # type: ignore[no-untyped-def]
    """Build with a counting fake embedder, so a test can assert how often the model was loaded."""
    factory = factory or CountingFactory()
    return build(settings, factory, SHA, **kwargs), factory


def expected_chunks(settings) -> list:  # type: ignore[no-untyped-def]
    """What a build should hold: every file's chunks, files in path order."""
    corpus = Path(settings.corpus_dir)
    chunker = ChunkerSettings(settings.chunk_size, settings.chunk_overlap)
    out = []
    for rel in sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file()):
        out += chunk_document(load_file(corpus / rel, rel), chunker)
    return out


def live_dir(settings) -> Path:  # type: ignore[no-untyped-def]
    """The build directory `current` points at."""
    return (Path(settings.index_dir) / "current").resolve()
