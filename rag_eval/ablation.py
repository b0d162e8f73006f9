"""What each answer guard adds: the answers evaluation with every guard on, then with each one off.

A guard is a rule that repairs or refuses an answer (rag/guards.py). Each was added for failures
seen on some questions; this measures it on question sets it was not tuned on. A guard that did
not fire with every guard on cannot change an answer when it is off (each counts the times it
applied), so it is not run again: its row says so, and its deltas are 0 by construction.

    report = run_ablation(lambda g: Scores.of_answers(evaluate_answers(questions, ask_with(g)).overall))
    print(format_ablation(report))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rag.guards import GUARDS, Guards

if TYPE_CHECKING:
    from rag_eval.metrics import AnswerMetrics
    from rag_eval.rgb import NoiseReport

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
    def of_rgb(cls, report: NoiseReport) -> Scores:
        """RGB noise robustness: rows with a positive passage are answerable, rows at noise 1.0 are not."""
        answerable = [r for r in report.results if r.noise < 1.0]
        unanswerable = [r for r in report.results if r.noise >= 1.0]

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


@dataclass
class AblationReport:
    baseline: Scores
    fired: dict[str, int]
    without: dict[str, Scores] = field(default_factory=dict)  # guard -> scores with it off
    seconds: float = 0.0

    def rows(self, guards: Sequence[str]) -> list[AblationRow]:
        out = []
        for name in guards:
            off = self.without.get(name)
            deltas = {col: _delta(self.baseline, off or self.baseline, attr) for col, attr in COLUMNS}
            out.append(AblationRow(name, self.fired.get(name, 0), off is not None, deltas))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "baseline": asdict(self.baseline),
            "fired": dict(self.fired),
            "without": {name: asdict(m) for name, m in self.without.items()},
            "rows": [asdict(r) for r in self.rows(list(GUARDS))],
        }


def _delta(baseline: Scores, off: Scores, attr: str) -> float | None:
    a, b = getattr(baseline, attr), getattr(off, attr)
    return None if a is None or b is None else a - b


def run_ablation(
    evaluate: Callable[[Guards], Scores],
    guards: Sequence[str] = tuple(GUARDS),
    on_run: Callable[[str, Scores, Guards, float], None] | None = None,
) -> AblationReport:
    """`evaluate` with every guard on, then once per guard of `guards` that fired, with it off.

    `evaluate(g)` answers the question set with guards `g` (counting into it) and scores it;
    `on_run(name, scores, g, seconds)` is told of each run ("" = every guard on).
    """
    t0 = time.perf_counter()

    def run(name: str, g: Guards) -> Scores:
        t = time.perf_counter()
        scores = evaluate(g)
        if on_run:
            on_run(name, scores, g, time.perf_counter() - t)
        return scores

    everything = Guards()
    report = AblationReport(run("", everything), {})
    report.fired = {n: everything.counts[n] for n in GUARDS}
    for name in guards:
        if report.fired[name]:
            report.without[name] = run(name, Guards.without([name]))
    report.seconds = time.perf_counter() - t0
    return report


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def format_scores(scores: Scores) -> str:
    return ", ".join(f"{col} {'-' if getattr(scores, a) is None else f'{getattr(scores, a):.3f}'}" for col, a in COLUMNS)


def format_ablation(report: AblationReport, guards: Sequence[str] = tuple(GUARDS)) -> str:
    """The table: guard | fired | each column's delta (every guard on minus this one off)."""
    from rag_eval.metrics import text_table

    header = ["guard", "fired", *(f"{col} Δ" for col, _ in COLUMNS)]
    rows = [
        [r.guard, str(r.fired), *(_signed(r.deltas[col]) if r.ran else "0 (not run)" for col, _ in COLUMNS)]
        for r in report.rows(guards)
    ]
    return (
        f"All guards on: {format_scores(report.baseline)}\n\n"
        + text_table(header, rows)
        + "\nΔ = with every guard on minus with this guard off: what the guard adds "
        + "(+ key terms, refusal and citation precision are gains; + false refusal is a cost). "
        + "fired: how often it changed an answer with every guard on."
    )
