"""Prompt -> streamed tokens, through llama_cpp's high-level Llama (rag/kvengine.py uses its low-level API).

The model is loaded once per process; a lock makes concurrent callers (UI
tabs) queue for it instead of interleaving tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rag import offline  # noqa: F401


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Generator(Protocol):
    name: str

    def count_tokens(self, text: str) -> int: ...

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None
    ) -> Iterator[str]: ...

    @property
    def usage(self) -> Usage: ...


class LlamaGenerator:
    def __init__(self, name: str, path: Path, n_ctx: int, n_threads: int, n_batch: int, temperature: float) -> None:
        from llama_cpp import Llama

        self.name = name
        self.temperature = temperature
        self._llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=n_batch,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self._usage = Usage()

    @property
    def usage(self) -> Usage:
        return self._usage

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """Yield text pieces as the model writes them; stops early when `stop` is set."""
        with self._lock:
            usage = Usage()
            chunks = self._llm.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=self.temperature,
                stream=True,
            )
            try:
                for chunk in chunks:
                    if stop is not None and stop.is_set():
                        break
                    delta = chunk["choices"][0]["delta"].get("content")  # type: ignore[index]
                    if delta:
                        usage.completion_tokens += 1
                        yield delta
            finally:
                chunks.close()  # type: ignore[union-attr]
                usage.prompt_tokens = max(self._llm.n_tokens - usage.completion_tokens, 0)
                self._usage = usage


def load_generator(name: str, models_dir: Path, n_ctx: int, n_threads: int, n_batch: int, temperature: float) -> LlamaGenerator:
    from rag.models import get_spec, locate

    spec = get_spec(name)
    if spec.kind != "chat":
        from rag.errors import ModelError

        raise ModelError(f"'{name}' is an embedding model, not a chat model.", "Pick a chat model from `rag models`.")
    return LlamaGenerator(name, locate(name, models_dir), n_ctx, n_threads, n_batch, temperature)
