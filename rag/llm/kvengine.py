"""Answers from passage KV blocks: the decode loop on the cache layout of rag/llm/kvcache.py.

kvcache.py places the prefix, the passages and the question in a low-level llama.cpp context
(see its docstring for the layout); this module writes the answer from there, one token per
decode call, and wraps it in the same streaming contract as generation.LlamaGenerator. With
generation.py and kvcache.py, the only importer of llama_cpp.

The layout's names are re-exported, so callers import the KV path from this one module.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from rag.llm.generation import Usage, chinese_tokens
from rag.llm.kvcache import (
    KV_TYPES,
    N_SEQ,
    SEQ_LABEL,
    SEQ_MAIN,
    SEQ_SCRATCH,
    Block,
    KVCache,
    chat_frame,
    context_size,
)

__all__ = [
    "KV_TYPES",
    "N_SEQ",
    "SEQ_LABEL",
    "SEQ_MAIN",
    "SEQ_SCRATCH",
    "Block",
    "CachedBlockGenerator",
    "KVCache",
    "KVEngine",
    "chat_frame",
    "context_size",
]


class KVEngine(KVCache):
    """The passage cache (KVCache: context, blocks, placement) plus the loop that decodes an answer after it."""

    def piece(self, token: int) -> bytes:
        """The bytes of one token (a Chinese character may span several tokens, so not always whole UTF-8)."""
        buf = ctypes.create_string_buffer(64)
        n = self._L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def generate(
        self, logits: np.ndarray, pos: int, max_tokens: int, temperature: float = 0.0,
        stop: threading.Event | None = None, seed: int = 0, banned: np.ndarray | None = None,
    ) -> Iterator[str]:  # fmt: skip
        """Decode from `logits` at `pos`: greedy at temperature 0 (as the ordinary path), text as it completes.
        Tokens in `banned` are never chosen."""
        rng = np.random.default_rng(seed)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for _ in range(max_tokens):
            if stop is not None and stop.is_set():
                return
            token = _choose(logits, temperature, rng, banned)
            if self._L.llama_vocab_is_eog(self.vocab, token):
                return
            yield text.decode(self.piece(token))  # may be '' while a multi-byte character is incomplete
            if pos + 1 >= self.n_ctx:
                return
            out = self._decode([token], pos, SEQ_MAIN)
            assert out is not None
            logits = out
            pos += 1


def _choose(logits: np.ndarray, temperature: float, rng: np.random.Generator, banned: np.ndarray | None) -> int:
    """The next token: the most likely at temperature 0, else sampled; never one in `banned` (set to -inf in place)."""
    if banned is not None:
        logits[banned] = -np.inf
    if temperature <= 0:
        return int(np.argmax(logits))
    z = (logits - logits.max()) / temperature
    p = np.exp(z)
    return int(rng.choice(len(p), p=p / p.sum()))


class CachedBlockGenerator:
    """Answers from cached passage blocks; same streaming contract as generation.LlamaGenerator."""

    def __init__(self, engine: KVEngine, name: str, temperature: float) -> None:
        self.engine = engine
        self.name = name
        self.temperature = temperature
        self._usage = Usage()

    @property
    def usage(self) -> Usage:
        """The last answer's token counts: the prompt's are only what was read (the tail), not the blocks."""
        return self._usage

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def stream_blocks(
        self, labels: Sequence[str], blocks: Sequence[Block], tail: str, max_tokens: int,
        stop: threading.Event | None = None, english: bool = False,
    ) -> Iterator[str]:  # fmt: skip
        """As LlamaGenerator.stream, from placed blocks."""
        with self.engine.lock:
            usage = Usage()
            banned = chinese_tokens(self.engine.llm) if english else None
            logits, pos, evaluated = self.engine.place(labels, blocks, tail)
            usage.prompt_tokens = evaluated
            try:
                for piece in self.engine.generate(logits, pos, max_tokens, self.temperature, stop, banned=banned):
                    usage.completion_tokens += 1
                    if piece:
                        yield piece
            finally:
                self._usage = usage
