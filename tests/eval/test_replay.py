"""rag_eval.replay: a generation asked again with the same input is replayed, not computed."""

from __future__ import annotations

from types import SimpleNamespace

from rag_eval.replay import Replay
from tests.fakes import FakeGenerator

ASK = [{"role": "user", "content": "Tern 3 多重？"}]
OTHER = [{"role": "user", "content": "Tern 3 多长？"}]


def _installed(generator: FakeGenerator) -> Replay:
    pipeline = SimpleNamespace(get_generator=lambda: generator, get_cached=lambda: None,
                               settings=SimpleNamespace(kv_cache=False))  # fmt: skip
    replay = Replay()
    replay.install(pipeline)
    return replay


def test_the_same_prompt_is_replayed_and_a_new_one_computed() -> None:
    generator = FakeGenerator(["重 12 公斤。", "长 150 厘米。"])
    replay = _installed(generator)
    assert "".join(generator.stream(ASK, 40)) == "重 12 公斤。"
    assert "".join(generator.stream(ASK, 40)) == "重 12 公斤。"  # no reply left queued for it: replayed
    assert "".join(generator.stream(ASK, 80)) == "长 150 厘米。"  # another token limit is another input
    assert (replay.computed, replay.replayed) == (2, 1)


def test_a_generation_the_reader_stopped_is_not_kept() -> None:
    generator = FakeGenerator(["重 12 公斤。", "长 150 厘米。"])
    replay = _installed(generator)
    next(iter(generator.stream(OTHER, 40)))  # the reader stops after the first piece
    assert "".join(generator.stream(OTHER, 40)) == "长 150 厘米。"  # computed again, not a partial replay
    assert replay.replayed == 0
