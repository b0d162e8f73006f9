"""What each answer guard adds: the answers evaluation with every guard on, then with each one off.

A guard is a rule that repairs or refuses an answer (rag/guards.py). Each was added for failures
seen on some questions; this measures it on question sets it was not tuned on. A guard that did
not fire with every guard on cannot change an answer when it is off (each counts only the times
it changed something), so it is not run again: its row says so, and its deltas are 0 by construction.

    report = run_ablation(questions, pipeline, ["echo", "focus_retry"])
    print(format_ablation(report))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rag.guards import GUARDS, Guards
from rag_eval.metrics import AnswerMetrics, AnswerReport, EvalQuestion, evaluate_answers

# The metrics of the table: (column, AnswerMetrics attribute).
COLUMNS = (
    ("key terms", "key_term_accuracy"),
    ("refusal", "refusal_accuracy"),
    ("false refusal", "false_refusal_rate"),
    ("citation precision", "citation_precision_independent"),
)


@dataclass(frozen=True)
class AblationRow:
    guard: str
    fired: int  # times it changed an answer with every guard on
    ran: bool  # False: it never fired, so turning it off changes nothing and was not run
    deltas: dict[str, float | None]  # column -> (all guards) - (without this one): what the guard adds


@dataclass
class AblationReport:
    questions: int
    baseline: AnswerMetrics
    fired: dict[str, int]
    without: dict[str, AnswerMetrics] = field(default_factory=dict)  # guard -> metrics with it off
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
            "questions": self.questions,
            "seconds": self.seconds,
            "baseline": asdict(self.baseline),
            "fired": dict(self.fired),
            "without": {name: asdict(m) for name, m in self.without.items()},
            "rows": [asdict(r) for r in self.rows(list(GUARDS))],
        }


def _delta(baseline: AnswerMetrics, off: AnswerMetrics, attr: str) -> float | None:
    a, b = getattr(baseline, attr), getattr(off, attr)
    return None if a is None or b is None else a - b


AskWith = Callable[[Guards], Callable[[str], Any]]  # guards -> (question -> rag.schema.Answer)


def run_ablation(
    questions: Sequence[EvalQuestion],
    ask_with: AskWith,
    guards: Sequence[str] = tuple(GUARDS),
    on_run: Callable[[str, AnswerReport, Guards], None] | None = None,
) -> AblationReport:
    """Evaluate `questions` with every guard on, then once per guard of `guards` that fired, with it off.

    `ask_with(g)` returns the function answering a question with guards `g` (the pipeline's
    `guards` set to it, say); `on_run(name, report, g)` is told of each run ("" = all on).
    """
    t0 = time.perf_counter()
    everything = Guards()
    baseline = evaluate_answers(questions, ask_with(everything))
    if on_run:
        on_run("", baseline, everything)
    report = AblationReport(len(questions), baseline.overall, {n: everything.counts[n] for n in GUARDS})
    for name in guards:
        if not report.fired[name]:
            continue
        g = Guards.without([name])
        run = evaluate_answers(questions, ask_with(g))
        report.without[name] = run.overall
        if on_run:
            on_run(name, run, g)
    report.seconds = time.perf_counter() - t0
    return report


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def format_ablation(report: AblationReport, guards: Sequence[str] = tuple(GUARDS)) -> str:
    """The table: guard | fired | each metric's delta (all guards minus this one off)."""
    from rag_eval.metrics import text_table

    header = ["guard", "fired", *(f"{col} Δ" for col, _ in COLUMNS)]
    rows = [
        [r.guard, str(r.fired), *(_signed(r.deltas[col]) if r.ran else "0 (not run)" for col, _ in COLUMNS)]
        for r in report.rows(guards)
    ]
    base = report.baseline
    summary = ", ".join(
        f"{col} {'-' if getattr(base, attr) is None else f'{getattr(base, attr):.3f}'}" for col, attr in COLUMNS
    )
    return (
        f"All guards on ({report.questions} questions): {summary}\n\n"
        + text_table(header, rows)
        + "\nΔ = with every guard on minus with this guard off: what the guard adds "
        + "(+ key terms, refusal and citation precision are gains; + false refusal is a cost). "
        + "fired: how often it changed an answer with every guard on."
    )
