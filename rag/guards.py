"""Named switches for the rules that change or refuse an answer, and how often each fired.

Each rule below was added for failures seen on some questions. A name lets `rag eval ablation`
measure what the rule adds on question sets it was not tuned on (`rag eval answers --without
NAME`), and lets a deployment turn one off (the `disabled_guards` setting, RAG_DISABLED_GUARDS).
A rule that is off behaves as if it had never been written; the rest of the pipeline is unchanged.

    guards = Guards.without(["focus_retry"])
    if guards.when("echo", lambda: adds_nothing(answer, question)):
        ...  # refused; guards.counts["echo"] is now 1
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rag.errors import ConfigError

# name -> what the rule does, in the order the pipeline meets them.
GUARDS: dict[str, str] = {
    # retrieval (rag/answer/retrieval.py, rag/index/entities.py): refuse before the model runs
    "evidence_threshold": "refuse when no passage is close in meaning (min_dense_score) or shares a word with it",
    "uncovered_names": "refuse a Chinese question naming a Latin-script name no retrieved passage mentions",
    "unknown_entities": "refuse a Chinese question naming an entity no indexed document writes",
    # prompting (rag/answer/prompting.py, and what the pipeline asks of the generators)
    "several_things": "a question asking two things gets the full prompt, never the lean one or cached blocks",
    "english_figures": "an English question sees 亿 figures written in English, in the prompt and the check",
    "english_tokens": "while answering an English question the model may not write Chinese tokens",
    # the citation check (rag/answer/citations.py)
    "tidy_figures": "a Chinese answer loses the space between a figure and its unit ('1750 亿' -> '1750亿')",
    "drop_filler": "a sentence that only points at the sources ('根据资料。') is dropped",
    "question_words": "words the answer takes over from the question are not held against a passage",
    "figures_agree": "a passage writing a figure with another magnitude or measure word does not support it",
    "repair_markers": "a marker whose passage does not support its sentence moves to the one that does, or goes",
    "attach_markers": "a sentence without a marker gets one when a passage clearly supports it",
    "conflict_note": "a note names passages that give another figure for the same thing",
    "date_conflict_note": "a note names passages that date a release in another year",
    # answers that are no answers (rag/answer/citations.py, applied by the pipeline): refused
    "degenerate": "refuse an answer that loops on one token or one list item",
    "uncited_zh": "refuse a Chinese answer of which no sentence is supported well enough to cite",
    "echo": "refuse an unsupported answer that only repeats the question's words",
    "invented": "refuse an unsupported answer giving figures, magnitudes or names no passage gives",
    "misses_the_count": "refuse an answer to 'how many X' that names no X",
    "answerable_check": "refuse when the chat model, asked per cited passage, finds none answers this exact question",
    # retries (rag/answer/pipeline.py)
    "cached_retry": "an answer from cached blocks the check rejects is written again from the whole prompt",
    "focus_retry": "a refusal is asked again with the passage most plainly about the question alone",
    "on_topic_retry": "an answer citing a passage less about the question than another shown is asked again with that one first",
}


def parse_names(text: str | Iterable[str]) -> tuple[str, ...]:
    """'echo, invented' or ['echo', 'invented'] -> ('echo', 'invented').

    An unknown name is a ConfigError whose hint lists the known ones.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(n.strip() for n in items if n.strip()))
    unknown = [n for n in names if n not in GUARDS]
    if unknown:
        raise ConfigError(
            f"Unknown guard name(s): {', '.join(unknown)}.",
            f"Known guards: {', '.join(GUARDS)} (see rag/guards.py).",
        )
    return names


@dataclass
class Guards:
    """Which guards are on, and how often each fired since it was made (one per Pipeline)."""

    disabled: frozenset[str] = frozenset()
    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def without(cls, names: str | Iterable[str] = ()) -> Guards:
        return cls(frozenset(parse_names(names)))

    def on(self, name: str) -> bool:
        """Whether the rule `name` applies. A name not in GUARDS is a programming error."""
        if name not in GUARDS:
            raise KeyError(f"no guard named {name!r} in rag/guards.py")
        return name not in self.disabled

    def fired(self, name: str, times: int = 1) -> None:
        """Count that the rule changed an answer (answering threads may share one Guards)."""
        with self._lock:
            self.counts[name] += times

    def when(self, name: str, condition: Callable[[], object] | bool) -> bool:
        """The rule is on and its `condition` holds (a callable is evaluated only then); counted when both."""
        if self.on(name) and (condition() if callable(condition) else condition):
            self.fired(name)
            return True
        return False

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


ALL = Guards()  # every rule on; the default of the functions that take `guards`
