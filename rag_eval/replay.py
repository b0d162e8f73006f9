"""Generations replayed: asked again with the same input, a greedy model gives the stored text.

The ablation (rag_eval/ablation.py) answers a question again with one guard off. Most guards act
after the model has written (the citation check's repairs and notes, the refusal rules), so
the question reaches the model with the very prompt it had with every guard on, and a greedy
model (temperature 0) writes the very same answer. Replaying it instead of computing it again
makes those runs cost the retrieval and the check only; a guard that changes the prompt (the
prompt rules, the retries) still reaches the model, because its input is new.

    replay = Replay()
    replay.install(pipeline)   # wraps the pipeline's generators in place
    ...                        # replay.computed, replay.replayed: how many of each
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Replay:
    def __init__(self) -> None:
        self._memo: dict[tuple[Any, ...], Any] = {}
        self.computed = 0
        self.replayed = 0

    def install(self, pipeline: Any) -> None:  # rag.answer.pipeline.Pipeline
        """Wrap the pipeline's generator (and its cached-block generator, when it has one) in place."""
        generator = pipeline.get_generator()
        generator.stream = self._streamed(generator.stream, _stream_key)
        if hasattr(generator, "yes_probability"):
            generator.yes_probability = self._called(generator.yes_probability)
        cached = pipeline.get_cached() if pipeline.settings.kv_cache else None
        if cached:
            cached[0].stream_blocks = self._streamed(cached[0].stream_blocks, _blocks_key)

    def _streamed(self, stream: Callable[..., Iterator[str]], key_of: Callable[..., tuple[Any, ...]]):  # type: ignore[no-untyped-def]
        def replayed(*args: Any, **kwargs: Any) -> Iterator[str]:
            key = key_of(*args, **kwargs)
            if key in self._memo:
                self.replayed += 1
                yield from self._memo[key]
                return
            pieces: list[str] = []
            for piece in stream(*args, **kwargs):
                pieces.append(piece)
                yield piece
            # Only a generation read to its end is kept: one the reader stopped is not the whole answer.
            self._memo[key] = pieces
            self.computed += 1

        return replayed

    def _called(self, fn: Callable[[list[dict[str, str]]], float]) -> Callable[[list[dict[str, str]]], float]:
        def replayed(messages: list[dict[str, str]]) -> float:
            key = ("judge", _messages_key(messages))
            if key not in self._memo:
                self._memo[key] = fn(messages)
            return self._memo[key]

        return replayed


def _messages_key(messages: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in messages)


def _stream_key(messages: list[dict[str, str]], max_tokens: int, stop: object = None, english: bool = False) -> tuple[Any, ...]:
    # `stop` is the reader's cancel switch, not an input of the generation.
    return ("stream", _messages_key(messages), max_tokens, english)


def _blocks_key(labels: Any, blocks: Any, tail: str, max_tokens: int, stop: object = None, english: bool = False) -> tuple[Any, ...]:
    return ("blocks", tuple(labels), tuple(b.text for b in blocks), tail, max_tokens, english)
