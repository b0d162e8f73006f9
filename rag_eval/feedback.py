"""Readers' thumbs up and down (rag/conversations.py) as a question set for `rag eval`.

A thumbs-up answer is taken as right: its question becomes an eval question whose reference
answer is the stored answer, whose key terms are the figures it states (a number is what a
later answer most often gets wrong, and what can be checked without a model), and whose
evidence is the passages it cited. A thumbs-up on a refusal makes an unanswerable question
(the right answer is to refuse). Thumbs-down rows are not questions with a known answer: they
are listed for a person to review (`rag eval feedback FILE`) and can be turned into questions
by hand.

>>> feedback_questions(rows)[0]                      # doctest: +SKIP
EvalQuestion(id='feedback-12', question='训练成本是多少？', answer='…557.6万美元[1]。',
             must_include=('557.6',), evidence=(Evidence(doc='deepseek.md', quote='…'),), type='feedback')
"""

from __future__ import annotations

import re
from pathlib import Path

from rag.conversations import Feedback, read_feedback
from rag_eval.metrics import EvalQuestion, Evidence, squash

SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_TERMS = 3  # more figures than this in one answer: the first three are enough to tell it apart
_MARKER = re.compile(r"\[\d{1,2}\]")
# Not part of a name or a version: "V3", "FP8" and "2.5" of "Qwen2.5" are left out.
_FIGURE = re.compile(r"(?<![A-Za-z0-9.])\d+(?:\.\d+)?(?![A-Za-z0-9])")


def is_conversations_file(path: Path) -> bool:
    """True for an SQLite file (a conversations store), whatever its name; question files are JSONL."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def figures(answer: str) -> tuple[str, ...]:
    """The distinct numbers an answer states, [n] markers left out: '557.6万美元[1]，2024 年' -> ('557.6', '2024')."""
    found = _FIGURE.findall(_MARKER.sub(" ", answer))
    return tuple(dict.fromkeys(found))[:MAX_TERMS]


def feedback_questions(rows: list[Feedback]) -> list[EvalQuestion]:
    """Each thumbs-up row as an EvalQuestion (the latest rating of a question wins; thumbs-down rows are left out)."""
    latest: dict[str, Feedback] = {}
    for row in rows:
        latest[" ".join(row.question.split())] = row  # rows come oldest first
    questions = []
    for row in latest.values():
        if row.rating <= 0:
            continue
        evidence = () if row.refused else tuple(Evidence(c.file, c.text) for c in row.citations if squash(c.text))
        terms = () if row.refused else figures(row.answer)
        questions.append(EvalQuestion(f"feedback-{row.message}", row.question, row.answer, terms, evidence, "feedback"))
    return questions


def to_review(rows: list[Feedback]) -> list[Feedback]:
    """The thumbs-down rows whose question has no later thumbs-up: answers a person should look at."""
    liked = {" ".join(r.question.split()) for r in rows if r.rating > 0}
    return [r for r in rows if r.rating < 0 and " ".join(r.question.split()) not in liked]


def load_feedback_questions(path: Path) -> tuple[list[EvalQuestion], list[Feedback]]:
    """(questions from the thumbs-up rows, thumbs-down rows to review) of a conversations file."""
    rows = read_feedback(path)
    return feedback_questions(rows), to_review(rows)
