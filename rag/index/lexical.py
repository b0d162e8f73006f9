"""BM25 over jieba tokens (bm25s does the scoring; we only tokenize).

jieba splits Chinese into words; ASCII terms (model names such as
DeepSeek-R1, numbers such as 557.6) are lower-cased and kept whole as well
as split, so "deepseek-r1" matches both the exact name and "deepseek".
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

# Function words and question words carry no evidence; matching them only adds noise.
STOPWORDS = frozenset(
    ["的", "了", "是", "在", "和", "与", "及", "或", "等", "也", "都", "而", "之", "其", "这", "那", "这个", "那个", "一个", "什么", "多少", "哪些", "哪个", "哪", "怎么", "怎样", "如何", "为什么", "吗", "呢", "吧", "啊", "有", "被", "把", "对", "从", "到", "为", "以", "就", "还", "又", "并", "但", "所", "着", "过", "中", "上", "下", "里", "后", "前", "时", "a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "was", "were", "be", "by", "with", "what", "which", "who", "how", "when", "why", "does", "do", "did", "it", "its", "as", "at", "from", "that", "this"]
)
_ASCII_TERM = re.compile(r"[a-z0-9][a-z0-9.\-+_/]*[a-z0-9+]|[a-z0-9]")
_WORDLIKE = re.compile(r"\w", re.UNICODE)
_CJK_RUN = re.compile(r"[\u4e00-\u9fff]{2,}")


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def words_ready() -> None:
    """Load jieba's dictionary now (~0.6 s) rather than on the first question."""
    _jieba()


def words(text: str) -> list[str]:
    """Content words. Example: 'DeepSeek-V3的训练成本' -> ['deepseek-v3', 'deepseek', 'v3', '训练', '成本']."""
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for term in _ASCII_TERM.findall(text):
        if "-" in term or "." in term and not term.replace(".", "").isdigit():
            tokens.append(term)
    for token in _jieba().lcut_for_search(text):
        token = token.strip()
        if token and token not in STOPWORDS and _WORDLIKE.search(token):
            tokens.append(token)
    return tokens


# Latin-script names in a (Chinese) text: "vLLM", "Claude Opus 4.5", "DeepSeek-V3", "API".
_NAME = re.compile(r"(?<![a-z0-9.\-])[a-z][a-z0-9.\-]*[a-z0-9](?:\s\d+(?:\.\d+)?)?(?![a-z0-9])")


def names(text: str) -> set[str]:
    """Latin-script names of two or more characters, lower-cased: '用 vLLM 跑 Llama 3' -> {'vllm', 'llama 3'}."""
    return set(_NAME.findall(unicodedata.normalize("NFKC", text).lower()))


def mentions(text: str, name: str) -> list[int]:
    """Where `text` (NFKC, lower-cased) names `name`, as whole words; offsets.

    "DeepSeek-R1", "DeepSeek R1" and "deepseekr1" name one model, as do "iPhone SE3" and
    "iPhone SE 3"; "GPT-4o" is not "GPT-4".
    """
    body = re.sub(r"(?:\\-|\\ |\s)+", r"[\\s\\-]?", re.escape(name))
    body = re.sub(r"(?<=[a-z])(?=\d)", r"[\\s\\-]?", body)  # "se3" also finds "se 3"
    return [m.start() for m in re.finditer(r"(?<![a-z0-9.])" + body + r"(?![a-z0-9])", text)]


def tokenize(text: str) -> list[str]:
    """BM25 tokens: the words, plus '#'-marked character bigrams of each Chinese run.

    Example: '训练成本' -> ['训练', '成本', '#训练', '#练成', '#成本'].
    """
    tokens = words(text)
    # Character bigrams of Chinese runs reward passages that hold the query's words
    # side by side ("训练成本"), which word tokens alone cannot tell apart.
    for run in _CJK_RUN.findall(unicodedata.normalize("NFKC", text)):
        tokens.extend("#" + run[i : i + 2] for i in range(len(run) - 1))
    return tokens


class LexicalIndex:
    """A BM25 index over pre-tokenized passages, persisted with bm25s."""

    def __init__(self, retriever, size: int) -> None:  # type: ignore[no-untyped-def]
        self._bm25 = retriever  # None for an empty index: bm25s cannot index nothing
        self.size = size

    @classmethod
    def build(cls, token_lists: list[list[str]], k1: float = 1.2, b: float = 0.75) -> LexicalIndex:
        import bm25s

        if not token_lists:
            return cls(None, 0)
        retriever = bm25s.BM25(k1=k1, b=b)
        # An empty passage still needs a row, so rows stay aligned with chunks.
        retriever.index([tokens or ["\u0000"] for tokens in token_lists], show_progress=False)
        return cls(retriever, len(token_lists))

    def save(self, directory: Path) -> None:
        if self._bm25 is None:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "EMPTY").touch()
            return
        self._bm25.save(str(directory))

    @classmethod
    def load(cls, directory: Path, size: int) -> LexicalIndex:
        import bm25s

        if (directory / "EMPTY").exists():
            return cls(None, 0)
        return cls(bm25s.BM25.load(str(directory)), size)

    def knows(self, text: str) -> bool:
        """The passages write `text`: every character pair of a Chinese name, or every word of a
        Latin one, is among their tokens. By pairs, since jieba may join a name to its neighbour
        ("由谷歌"): knows('谷歌') is True of a corpus that writes only "架构由谷歌提出"."""
        tokens = [t for t in tokenize(text) if t.startswith("#")] or words(text)
        return self._bm25 is not None and bool(tokens) and all(t in self._bm25.vocab_dict for t in tokens)

    def search(self, tokens: list[str], n: int) -> list[tuple[int, float]]:
        """(row, score) of the best n passages with a positive score."""
        if self._bm25 is None:
            return []
        vocab = self._bm25.vocab_dict
        known = [t for t in tokens if t in vocab]
        if not known or self.size == 0:
            return []
        scores = self._bm25.get_scores(known)
        n = min(n, self.size)
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]
