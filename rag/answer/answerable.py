"""Does a cited passage answer the question? The chat model's own yes/no, read as a probability.

The lexical checks (rag/answer/citations.py) accept an answer whose words and figures are in
the cited passage. They cannot tell an answer from a nearby fact: asked for one year's figure,
the model gives another year's from a passage on the same topic, and every word of it is in
the passage. This asks the chat model, per cited passage, whether that passage states the
answer to *this* question, and reads the next-token probabilities of "yes" and "no" instead of
a greedy word, so the refusal point is a threshold on a score (`answerable_min` in
rag/config.py), not whatever the model happens to write.

    score = answerable_score(question, answer_text, passages, judge)   # max over passages, or None
    refuse = score is not None and score < settings.answerable_min

`judge(messages) -> P(yes)` is the generator's `yes_probability` (rag/llm/generation.py); a
generator without one (an OpenAI-compatible server) gives no score and the guard does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rag.answer.citations import _MARKER

Judge = Callable[[list[dict[str, str]]], float]

SYSTEM = "You check whether a passage answers a question. Reply with one word: yes or no."
# The question's own constraints (time, place, who, which) are named, because the failure this
# catches is an answer about the same topic for another year, event or person.
ASK = (
    "Passage:\n{passage}\n\n"
    "Question: {question}\n"
    "Proposed answer: {answer}\n\n"
    "Does the passage itself state the answer to this exact question, for the same time, place, "
    "person and thing the question names? Reply yes or no."
)
MAX_PASSAGE_CHARS = 700
MAX_ANSWER_CHARS = 300


def judge_messages(question: str, answer: str, passage: str) -> list[dict[str, str]]:
    """The chat messages that ask whether `passage` answers `question` (answer markers removed)."""
    answer = " ".join(_MARKER.sub("", answer).split())[:MAX_ANSWER_CHARS]
    passage = re.sub(r"\s+", " ", passage).strip()[:MAX_PASSAGE_CHARS]
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": ASK.format(passage=passage, question=question.strip(), answer=answer)},
    ]


def answerable_score(
    question: str, answer: str, passages: Sequence[str], judge: Judge, enough: float = 0.5
) -> float | None:
    """The highest P(yes) over `passages` (the cited ones); None when there is none to ask about.

    Stops at the first passage scored `enough`: the answer stands on one passage.
    """
    best: float | None = None
    for passage in dict.fromkeys(p for p in passages if p.strip()):
        p = judge(judge_messages(question, answer, passage))
        best = p if best is None else max(best, p)
        if best >= enough:
            break
    return best
