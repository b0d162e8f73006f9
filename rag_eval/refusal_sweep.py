"""Replay an answers report at other answerable_min thresholds, and a model-free key-term check.

The report is what `rag eval answers --json` or `rag eval ablation --json` wrote for a run made
with RAG_ANSWERABLE_MIN=0: every answer scored by the answerable check (rag/answer/answerable.py)
and none refused by it, so the report holds each answer before the check and its score. At a
threshold t an answer counts as refused when the run refused it or its score is below t. Scores
are taken with early stopping at 0.5 (the first cited passage scoring >= 0.5 ends the check), so
thresholds up to 0.5 replay exactly.

The key-term alternative refuses an answer when a number, Latin word, 《title》 or jieba proper
noun (nr/ns/nt/nz) of the question is in none of its cited passages (else the first passage shown).

    rag eval refusal-sweep REPORT.json [--terms]
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rag.errors import RagError

THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
SCORED_HINT = "Run the answers again with every answer scored: RAG_ANSWERABLE_MIN=0 rag eval answers EVAL.jsonl --json REPORT.json"


class ReportError(RagError):
    """The report cannot be replayed (not an answers report, or its answers were not scored)."""


@dataclass(frozen=True)
class ReportRow:
    """One answer of the report, as far as a replay needs it."""

    id: str
    question: str
    answerable: bool
    has_terms: bool
    refused: bool  # refused by the run itself (before any replayed threshold)
    score: float | None  # the answerable check's P(yes); None: not scored (e.g. refused before the check)
    cited_text: str  # the cited passages' text, else the first passage shown


@dataclass(frozen=True)
class Rates:
    accuracy: float | None  # answerable questions answered (not refused) with every key term
    refusal: float | None  # unanswerable questions refused
    false_refusal: float | None  # answerable questions refused


@dataclass(frozen=True)
class SweepRow:
    threshold: float
    accuracy: float | None
    refusal: float | None
    false_refusal: float | None


@dataclass(frozen=True)
class TermMiss:
    id: str
    answerable: bool
    missing: tuple[str, ...]  # the question's terms in no cited passage


@dataclass(frozen=True)
class TermCheck:
    rates: Rates
    misses: list[TermMiss]  # answers the run gave that the key-term check would refuse


def load_rows(report: dict[str, Any]) -> list[ReportRow]:
    """The report's answers; a ReportError when it holds none or none of them is scored."""
    questions = report.get("questions") if isinstance(report, dict) else None
    if not isinstance(questions, list) or not questions:
        raise ReportError("The report has no \"questions\" list: it is not what `rag eval answers --json` "
                          "or `rag eval ablation --json` writes.", SCORED_HINT)  # fmt: skip
    rows = []
    for i, q in enumerate(questions, start=1):
        try:
            cited = " ".join(c.get("text", "") for c in q["citations"])
            rows.append(ReportRow(
                id=str(q["id"]), question=q["question"], answerable=bool(q["answerable"]),
                has_terms=bool(q["has_terms"]), refused=bool(q["refused"]), score=q.get("answerable_score"),
                cited_text=cited or " ".join(p.get("text", "") for p in q["passages"][:1]),
            ))  # fmt: skip
        except (KeyError, TypeError, AttributeError) as exc:
            raise ReportError(f"Question {i} of the report is not an answer row ({exc!r} missing or malformed).",
                              SCORED_HINT) from None  # fmt: skip
    if all(r.score is None for r in rows):
        raise ReportError("No answer in the report has an answerable_score: the run did not score its answers.",
                          SCORED_HINT)  # fmt: skip
    return rows


def refused_at(row: ReportRow, threshold: float) -> bool:
    """Whether the answer counts as refused with answerable_min = threshold."""
    return row.refused or (row.score is not None and row.score < threshold)


def rates(rows: Sequence[ReportRow], refuse: Callable[[ReportRow], bool]) -> Rates:
    """Accuracy, refusal and false refusal when `refuse` says which answers are refused."""

    def share(items: list[bool]) -> float | None:
        return sum(items) / len(items) if items else None

    answerable = [r for r in rows if r.answerable]
    unanswerable = [r for r in rows if not r.answerable]
    return Rates(
        accuracy=share([r.has_terms and not refuse(r) for r in answerable]),
        refusal=share([refuse(r) for r in unanswerable]),
        false_refusal=share([refuse(r) for r in answerable]),
    )


def sweep(rows: Sequence[ReportRow], thresholds: Iterable[float] = THRESHOLDS) -> list[SweepRow]:
    """The three rates at each threshold."""
    out = []
    for t in thresholds:
        r = rates(rows, lambda row, t=t: refused_at(row, t))
        out.append(SweepRow(t, r.accuracy, r.refusal, r.false_refusal))
    return out


def answered_scores(rows: Sequence[ReportRow]) -> list[tuple[float, bool, str]]:
    """(score, answerable, id) of each answer the run gave and scored, lowest score first."""
    return sorted((r.score, r.answerable, r.id) for r in rows if not r.refused and r.score is not None)


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().replace(" ", "")


def constraint_terms(question: str) -> set[str]:
    """Numbers, Latin words, 《titles》 and jieba proper nouns (nr/ns/nt/nz, 2+ characters) of a question, normalised."""
    import jieba.posseg as pseg  # only here: jieba loads its dictionary on first use

    q = unicodedata.normalize("NFKC", question)
    terms = set(re.findall(r"\d+(?:\.\d+)?", q)) | {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9\-]+", q)}
    terms |= set(re.findall(r"《([^》]+)》", q))
    terms |= {p.word for p in pseg.cut(q) if p.flag in ("nr", "ns", "nt", "nz") and len(p.word) >= 2}
    return {_norm(t) for t in terms}


def missing_terms(row: ReportRow, terms: Callable[[str], set[str]] = constraint_terms) -> tuple[str, ...]:
    """The question's terms that are in none of the answer's cited passages (sorted)."""
    text = _norm(row.cited_text)
    return tuple(sorted(t for t in terms(row.question) if t not in text))


def term_check(rows: Sequence[ReportRow], terms: Callable[[str], set[str]] = constraint_terms) -> TermCheck:
    """The key-term alternative: an answer is refused when the run refused it or a question term is not cited."""
    missing = {r.id: missing_terms(r, terms) for r in rows}
    result = rates(rows, lambda r: r.refused or bool(missing[r.id]))
    misses = [TermMiss(r.id, r.answerable, missing[r.id]) for r in rows if not r.refused and missing[r.id]]
    return TermCheck(result, misses)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _kind(answerable: bool) -> str:
    return "answerable  " if answerable else "UNANSWERABLE"


def format_sweep(rows: Sequence[ReportRow], table: Sequence[SweepRow]) -> str:
    """The rates at each threshold, then every scored answer the run gave."""
    lines = [f"{len(rows)} questions; accuracy / refusal / false refusal"]
    lines += [f"answerable_min {s.threshold:4.2f}: {_f(s.accuracy)} / {_f(s.refusal)} / {_f(s.false_refusal)}" for s in table]
    lines.append("scores of the answered (score, answerable, id):")
    lines += [f"  {s:.3f} {_kind(a)} {i}" for s, a, i in answered_scores(rows)]
    return "\n".join(lines)


def format_term_check(check: TermCheck) -> str:
    r = check.rates
    lines = [f"key-term check: {_f(r.accuracy)} / {_f(r.refusal)} / {_f(r.false_refusal)}"]
    lines += [f"  {_kind(m.answerable)} {m.id} misses {list(m.missing)}" for m in check.misses]
    return "\n".join(lines)
