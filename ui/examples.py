"""The page's example questions: the collection's own, never ours.

A user who points the tool at their contracts must not be offered questions about another
corpus. So the examples belong to the folder: `.examples.txt` in the corpus folder (one question
a line; hidden, so it is never indexed) when its owner wrote one, else questions made from the
titles of the indexed documents, else one question that fits any folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

EXAMPLES_FILE = ".examples.txt"
MAX_EXAMPLES = 5
_FROM_TITLE = {"zh": "《{}》主要讲了什么？", "en": "What does “{}” cover?"}
_ANY_FOLDER = {"zh": "这些文档主要讲了什么？", "en": "What are these documents about?"}


def written_examples(corpus_dir: Path) -> list[str]:
    """The questions in the folder's `.examples.txt` (blank lines and `#` comments skipped)."""
    path = Path(corpus_dir) / EXAMPLES_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [q.strip() for q in lines if q.strip() and not q.lstrip().startswith("#")][:MAX_EXAMPLES]


def example_questions(corpus_dir: Path, titles: Sequence[str], lang: str = "zh") -> list[str]:
    """What the page offers to click: the folder's own questions, else ones made from titles."""
    written = written_examples(corpus_dir)
    if written:
        return written
    made = [_FROM_TITLE.get(lang, _FROM_TITLE["en"]).format(t.strip()) for t in titles if t.strip()]
    return list(dict.fromkeys(made))[:MAX_EXAMPLES] or [_ANY_FOLDER.get(lang, _ANY_FOLDER["en"])]
