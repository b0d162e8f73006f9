"""What each answer guard adds: the answers evaluation with every guard on, then with each one off.

A guard is a rule that repairs or refuses an answer (rag/guards.py). Each was added for failures
seen on some questions; this measures it on question sets it was not tuned on.

Only what a guard touched is asked again. Answers are greedy (temperature 0, no sampling; the
retries are guards of their own), so a question's answer depends only on the question and on
the guards that fire on its way: a guard that did not fire on a question with every guard on
leaves that question's answer as it was when it is off. The baseline run records, per
question, which guards fired; the run without guard G answers again only the questions where G
fired and takes every other question's baseline result, then scores the whole set. A guard that
fired nowhere is not run at all: its row says so, and its deltas are 0 by construction.

    report = run_ablation(answer_one, score, len(questions))  # answer_one(guards, i) -> result
    print(format_ablation(report))
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rag.guards import GUARDS, Guards

if TYPE_CHECKING:
    from rag_eval.metrics import AnswerMetrics
    from rag_eval.rgb import NoiseResult

R = TypeVar("R")  # one question's result

# The columns of the table: (heading, Scores attribute).
COLUMNS = (
    ("key terms", "key_terms"),
    ("refusal", "refusal"),
    ("false refusal", "false_refusal"),
    ("citation precision", "citation_precision"),
)


@dataclass(frozen=True)
class Scores:
    """What one run measured; None where the question set cannot say (no unanswerable questions, say)."""

    key_terms: float | None  # answerable questions whose answer holds the key terms (RGB: a gold answer)
    refusal: float | None  # unanswerable questions refused (RGB: rows at noise 1.0, no positive passage)
    false_refusal: float | None  # answerable questions refused
    citation_precision: float | None  # cited passages holding an evidence quote or a key term (independent)

    @classmethod
    def of_answers(cls, m: AnswerMetrics) -> Scores:
        return cls(m.key_term_accuracy, m.refusal_accuracy, m.false_refusal_rate, m.citation_precision_independent)

    @classmethod
    def of_rgb(cls, results: Sequence[NoiseResult]) -> Scores:
        """RGB noise robustness: rows with a positive passage are answerable, rows at noise 1.0 are not."""
        answerable = [r for r in results if r.noise < 1.0]
        unanswerable = [r for r in results if r.noise >= 1.0]

        def share(flags: list[bool]) -> float | None:
            return sum(flags) / len(flags) if flags else None

        return cls(
            share([r.correct for r in answerable]),
            share([r.refused for r in unanswerable]),
            share([r.refused for r in answerable]),
            None,  # RGB answers carry no evidence quotes to check citations against
        )


@dataclass(frozen=True)
class AblationRow:
    guard: str
    fired: int  # times it changed an answer with every guard on
    ran: bool  # False: it never fired, so turning it off changes nothing and was not run
    deltas: dict[str, float | None]  # column -> (all guards) - (without this one): what the guard adds
    asked: int = 0  # questions answered again with it off (those where it fired); the rest kept their answer


@dataclass
class AblationReport:
    baseline: Scores
    fired: dict[str, int]
    without: dict[str, Scores] = field(default_factory=dict)  # guard -> scores with it off
    seconds: float = 0.0
    questions: int = 0
    fired_on: list[dict[str, int]] = field(default_factory=list)  # per question: guard -> times it fired
    changed: dict[str, list[int]] = field(default_factory=dict)  # guard -> questions whose result it changed
    # every question's result with every guard on: a replay (rag eval refusal-sweep) needs the answers themselves
    baseline_results: list[Any] = field(default_factory=list, repr=False)

    def touched(self, name: str) -> list[int]:
        """The questions where `name` fired with every guard on: the only ones it can change."""
        return [i for i, fired in enumerate(self.fired_on) if fired.get(name)]

    def rows(self, guards: Sequence[str]) -> list[AblationRow]:
        out = []
        for name in guards:
            off = self.without.get(name)
            deltas = {col: _delta(self.baseline, off or self.baseline, attr) for col, attr in COLUMNS}
            out.append(AblationRow(name, self.fired.get(name, 0), off is not None, deltas, len(self.touched(name))))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "questions": self.questions,
            "baseline": asdict(self.baseline),
            "fired": dict(self.fired),
            "fired_on": [dict(f) for f in self.fired_on],
            "changed": dict(self.changed),
            "without": {name: asdict(m) for name, m in self.without.items()},
            "rows": [asdict(r) for r in self.rows(list(GUARDS))],
        }


def _delta(baseline: Scores, off: Scores, attr: str) -> float | None:
    a, b = getattr(baseline, attr), getattr(off, attr)
    return None if a is None or b is None else a - b


def run_ablation(
    answer: Callable[[Guards, int], R],
    score: Callable[[list[R]], Scores],
    questions: int,
    guards: Sequence[str] = tuple(GUARDS),
    on_run: Callable[[str, Scores, Guards, float], None] | None = None,
    same: Callable[[R, R], bool] | None = None,
) -> AblationReport:
    """Every question with every guard on, then, per guard of `guards` that fired, the questions it fired on.

    `answer(g, i)` answers question i (0-based, of `questions`) with guards `g`, counting into it;
    `score(results)` scores one result per question, in order. `on_run(name, scores, g, seconds)`
    is told of each run ("" = every guard on). `same(a, b)`: whether a result asked again is the
    baseline's (default ==); the questions whose result changed are in `report.changed`.
    """
    t0 = time.perf_counter()
    everything = Guards()
    base: list[R] = []
    fired_on: list[dict[str, int]] = []
    t = time.perf_counter()
    for i in range(questions):
        before = Counter(everything.counts)
        base.append(answer(everything, i))
        fired_on.append({n: c for n, c in (everything.counts - before).items() if c})
    report = AblationReport(score(base), {n: everything.counts[n] for n in GUARDS}, questions=questions,
                            fired_on=fired_on, baseline_results=base)  # fmt: skip
    if on_run:
        on_run("", report.baseline, everything, time.perf_counter() - t)
    for name in guards:
        touched = report.touched(name)
        if not touched:
            continue
        t = time.perf_counter()
        g = Guards.without([name])
        results = list(base)
        for i in touched:
            results[i] = answer(g, i)
        report.without[name] = score(results)
        report.changed[name] = [i for i in touched if not (same or _eq)(base[i], results[i])]
        if on_run:
            on_run(name, report.without[name], g, time.perf_counter() - t)
    report.seconds = time.perf_counter() - t0
    return report


def _eq(a: object, b: object) -> bool:
    return a == b


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def format_scores(scores: Scores) -> str:
    return ", ".join(f"{col} {'-' if getattr(scores, a) is None else f'{getattr(scores, a):.3f}'}" for col, a in COLUMNS)


def format_ablation(report: AblationReport, guards: Sequence[str] = tuple(GUARDS)) -> str:
    """The table: guard | fired | each column's delta (every guard on minus this one off)."""
    from rag_eval.metrics import text_table

    header = ["guard", "fired", "asked again", *(f"{col} Δ" for col, _ in COLUMNS)]
    rows = [
        [r.guard, str(r.fired), str(r.asked),
         *(_signed(r.deltas[col]) if r.ran else "0 (not run)" for col, _ in COLUMNS)]
        for r in report.rows(guards)
    ]  # fmt: skip
    return (
        f"All guards on: {format_scores(report.baseline)}\n\n"
        + text_table(header, rows)
        + "\nΔ = with every guard on minus with this guard off: what the guard adds "
        + "(+ key terms, refusal and citation precision are gains; + false refusal is a cost). "
        + "fired: how often it changed an answer with every guard on; asked again: the questions it fired on, "
        + f"answered again with it off (the rest of the {report.questions} kept their all-on answer)."
    )
