"""Prompt -> streamed tokens, through llama_cpp's high-level Llama (rag/llm/kvengine.py uses its low-level API).

The model is loaded once per process; a lock makes concurrent callers (UI
tabs) queue for it instead of interleaving tokens.
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag import offline  # noqa: F401

if TYPE_CHECKING:
    from rag.config import Settings


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Generator(Protocol):
    name: str

    def count_tokens(self, text: str) -> int: ...

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None,
        english: bool = False,
    ) -> Iterator[str]: ...  # fmt: skip

    @property
    def usage(self) -> Usage: ...


# CJK punctuation, ideographs (with extension A and compatibility forms) and full-width forms.
_CHINESE = re.compile("[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")
# UTF-8 lead bytes of those blocks (U+3000-U+9FFF, U+F000-U+FFFF). A byte-level vocabulary spells a
# rare character in parts; banning the lead bytes blocks those spellings too, while ASCII and the
# two-byte forms (accented Latin letters) stay free.
_CHINESE_LEAD_BYTES = frozenset([*range(0xE3, 0xEA), 0xEF])


def chinese_token_ids(pieces: Iterable[bytes]) -> np.ndarray:
    """The ids (positions in `pieces`) of tokens that write Chinese.

    Example: chinese_token_ids([b"The", "模型".encode(), b"\xe4", b"\xc3\xa9", "，".encode()]) -> [1, 2, 4]
    """
    return np.array(
        [i for i, piece in enumerate(pieces)
         if _CHINESE_LEAD_BYTES.intersection(piece) or _CHINESE.search(piece.decode("utf-8", "ignore"))],
        dtype=np.int64,
    )  # fmt: skip


_CHINESE_OF: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()


def chinese_tokens(llm: Any) -> np.ndarray:
    """The ids of a llama_cpp.Llama's tokens that write Chinese: read from its vocabulary on first
    use (~0.5 s over Qwen's 152k tokens), then shared by both answer paths on that model."""
    if llm not in _CHINESE_OF:
        _CHINESE_OF[llm] = chinese_token_ids(llm.detokenize([i], special=False) for i in range(llm.n_vocab()))
    return _CHINESE_OF[llm]


def english_only(banned: np.ndarray) -> Callable[[object, np.ndarray], np.ndarray]:
    """A logits processor that never lets a token of `banned` be chosen.

    With Chinese passages in view, the 1.5B model answers some English questions in Chinese
    however the prompt asks ("Who proposed the Transformer architecture?" -> "Vaswani 等人提出了…");
    taking the Chinese tokens away makes the answer English, names and figures unchanged.
    """

    def ban(_input_ids: object, logits: np.ndarray) -> np.ndarray:
        logits[banned] = -np.inf
        return logits

    return ban


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
        self, messages: list[dict[str, str]], max_tokens: int, stop: threading.Event | None = None,
        english: bool = False,
    ) -> Iterator[str]:  # fmt: skip
        """Yield text pieces as the model writes them; stops early when `stop` is set.
        `english`: no token that writes Chinese is chosen (the answer to an English question)."""
        with self._lock:
            usage = Usage()
            chunks = self._llm.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=self.temperature,
                stream=True,
                logits_processor=[english_only(chinese_tokens(self._llm))] if english else None,  # type: ignore[arg-type]
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

    def yes_probability(self, messages: list[dict[str, str]]) -> float:
        """P(yes) / (P(yes) + P(no)) of the reply's first token, from one forward pass (no sampling).

        Renders the messages with the model's chat template, reads them (reusing the cached
        prefix the last call left, as create_chat_completion does) and compares the next-token
        logits of the spellings of "yes" and "no" (rag/answer/answerable.py asks the question).
        """
        from rag.llm.kvcache import chat_frame

        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
        before, after = chat_frame(self._llm, system)
        llm = self._llm
        with self._lock:
            tokens = llm.tokenize((before + user + after).encode("utf-8"), add_bos=False, special=True)
            if len(tokens) >= self.n_ctx:
                return 1.0  # cannot be read whole: no judgement, the answer stands
            keep = min(llm.longest_token_prefix(llm._input_ids.tolist(), tokens), len(tokens) - 1)
            llm.n_tokens = keep
            llm.eval(tokens[keep:])
            # one output row (logits_all is off): the last token's
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
        yes, no = self._yes_no_ids
        top = logits.max()
        p_yes, p_no = np.exp(logits[yes] - top).sum(), np.exp(logits[no] - top).sum()
        return float(p_yes / (p_yes + p_no)) if p_yes + p_no > 0 else 0.5

    @functools.cached_property
    def _yes_no_ids(self) -> tuple[list[int], list[int]]:
        """The first tokens of the spellings of yes and of no (English and Chinese)."""

        def first(words: tuple[str, ...]) -> list[int]:
            return sorted({self._llm.tokenize(w.encode("utf-8"), add_bos=False, special=False)[0] for w in words})

        return first(("yes", "Yes", " yes", " Yes", "YES", "是")), first(("no", "No", " no", " No", "NO", "否", "不"))


def load_generator(name: str, models_dir: Path, n_ctx: int, n_threads: int, n_batch: int, temperature: float) -> LlamaGenerator:
    from rag.models import get_spec, locate

    spec = get_spec(name)
    if spec.kind != "chat":
        from rag.errors import ModelError

        raise ModelError(f"'{name}' is an embedding model, not a chat model.", "Pick a chat model from `rag models`.")
    return LlamaGenerator(name, locate(name, models_dir), n_ctx, n_threads, n_batch, temperature)


def open_generator(settings: Settings) -> Generator:
    """The chat model the settings choose: an OpenAI-compatible server when llm_url is set, else
    `chat_model` in this process through llama.cpp. The one place that makes the choice."""
    s = settings
    if s.llm_url:
        from rag.llm.openai_server import from_settings

        return from_settings(s)
    return load_generator(s.chat_model, s.models_dir, s.n_ctx, s.n_threads, s.n_batch, s.temperature)
