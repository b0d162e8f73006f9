"""The in-process Python API: open an index, search it, ask it (docs/api.md, "Python API").

    import rag
    assistant = rag.open(corpus="corpus", index="index")
    for hit in assistant.search("训练成本", k=3): print(hit.score, hit.chunk.path)
    answer = assistant.ask("DeepSeek-V3 的训练成本是多少？")
    print(answer.text, [(c.number, c.chunk.path) for c in answer.citations])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.answer.pipeline import Done, Event, Pipeline, Turn
from rag.config import Settings, load_settings
from rag.errors import IndexStateError
from rag.schema import Answer, Hit


@dataclass
class Assistant:
    """A loaded index and its models (each loaded on first use), behind three calls."""

    pipeline: Pipeline

    @property
    def settings(self) -> Settings:
        return self.pipeline.settings

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The k best passages for `query`, best first; nothing is generated."""
        return self.pipeline.search(query, k)

    def stream(self, question: str, history: Sequence[Turn | tuple[str, str]] = ()) -> Iterator[Event]:
        """The pipeline's events (Retrieved, Token, Restart, Done) for a question, as the chat page gets them."""
        return self.pipeline.ask(question, [t if isinstance(t, Turn) else Turn(*t) for t in history])

    def ask(self, question: str, history: Sequence[Turn | tuple[str, str]] = ()) -> Answer:
        """The checked Answer: text with [n] markers, citations, refused, unsupported sentences.

        `history` holds earlier (question, answer) pairs, so a follow-up ("它呢？") is searched with them.
        """
        for event in self.stream(question, history):
            if isinstance(event, Done):
                return event.answer
        raise AssertionError("the pipeline ended without an answer")  # pragma: no cover - ask always ends in Done


def open_assistant(corpus: str | Path | None = None, index: str | Path | None = None, **settings: object) -> Assistant:
    """An Assistant over the index in `index` (built from `corpus`); other settings by name (rag/config.py).

    Settings not given come from rag.toml and RAG_* variables, as for the `rag` command.
    The index must exist: build it with `rag index` (a missing one raises IndexStateError).
    """
    s = load_settings(corpus_dir=corpus, index_dir=index, **settings)
    from rag.index.reader import index_exists

    if not index_exists(Path(s.index_dir)):
        raise IndexStateError(f"There is no index in {s.index_dir}.", f"Build it: rag index (corpus: {s.corpus_dir}).")
    return Assistant(Pipeline(s))
