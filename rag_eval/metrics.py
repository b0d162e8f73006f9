"""Retrieval evaluation: question file -> ranked passages -> hit@k, recall@k, MRR@10.

Pure and model-free: `evaluate_retrieval` takes any `rank_fn(question, k)`
returning `rag.schema.Hit`s, so the CLI passes the product's own retriever
and the tests pass a fake one.

Matching rule (shared/eval/README.md): a retrieved chunk covers an evidence
quote when the quote with all whitespace removed is a substring of the
chunk's text with all whitespace removed. `Chunk.text` is the exact raw slice
of the source file, so no other cleaning is applied. The question file names
the *seed* file of each quote (`evidence[].doc`), which may differ from the
corpus file name; coverage is therefore decided by content only, whatever
file the chunk came from.

Metrics count answerable questions only (non-empty `evidence`):

- recall@k: covered quotes / all quotes (micro-averaged over every quote of
  every answerable question), a quote counting as covered when some chunk in
  the top k covers it;
- hit@k: share of answerable questions with at least one quote covered in
  the top k;
- MRR@10: mean over answerable questions of 1 / rank of the first chunk that
  covers any quote, 0 when none of the top 10 does.

One diagnostic beside them, not a target: terms@5, the share of answerable
questions with `must_include` terms whose top 5 passages together contain
every term (the key-term rule of the answer metrics). An evidence quote marks
one place that states the answer; a corpus often states it in several, and
terms@5 shows whether the passages the model reads hold the answer at all.

Example:

    >>> questions = load_questions("eval/dev.jsonl")
    >>> report = evaluate_retrieval(questions, retriever.rank, ks=(1, 3, 5, 10))
    >>> report.overall.hit[5], report.overall.mrr
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import RagError
from rag.schema import Chunk, Hit
from rag_eval.stats import percentile

MRR_CUTOFF = 10
DEFAULT_KS = (1, 3, 5, 10)

RankFn = Callable[[str, int], Sequence[Hit]]


class EvalFileError(RagError):
    """The question file cannot be read or a line is not a valid question."""


# ---------------------------------------------------------------- questions


@dataclass(frozen=True)
class Evidence:
    doc: str  # the seed file's name, informative only (never used for matching)
    quote: str


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    question: str
    answer: str
    must_include: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    type: str
    # Answer groups: every group must occur in the answer, any one alternative of a group
    # ([["12 people", "twelve people"], ["Tuesday"]]). Empty: each must_include term is a group.
    groups: tuple[tuple[str, ...], ...] = ()

    @property
    def answerable(self) -> bool:
        return bool(self.evidence or self.groups)

    @property
    def answer_groups(self) -> tuple[tuple[str, ...], ...]:
        return self.groups or tuple((t,) for t in self.must_include)


def _require(obj: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in obj:
        raise EvalFileError(f"{where}: missing field '{key}'.", "Every line needs id, question, evidence and type.")
    value = obj[key]
    if not isinstance(value, typ):
        raise EvalFileError(
            f"{where}: field '{key}' must be {typ.__name__}, got {type(value).__name__}.",
            "Fix that line of the question file.",
        )
    return value


def parse_question(obj: object, where: str = "question") -> EvalQuestion:
    """One question from its decoded JSON object; `where` names it in errors."""
    if not isinstance(obj, dict):
        raise EvalFileError(f"{where}: expected a JSON object, got {type(obj).__name__}.", "One object per line.")
    qid = _require(obj, "id", str, where)
    where = f"{where} (id {qid!r})"
    question = _require(obj, "question", str, where)
    if not question.strip():
        raise EvalFileError(f"{where}: the question is empty.", "Fix that line of the question file.")
    answer = obj.get("answer", "")
    if not isinstance(answer, str):
        raise EvalFileError(f"{where}: field 'answer' must be str.", "Fix that line of the question file.")
    must = obj.get("must_include", [])
    if not isinstance(must, list) or not all(isinstance(t, str) for t in must):
        raise EvalFileError(f"{where}: 'must_include' must be a list of strings.", "Fix that line of the question file.")
    raw_evidence = _require(obj, "evidence", list, where)
    evidence = []
    for i, ev in enumerate(raw_evidence):
        if not isinstance(ev, dict) or not isinstance(ev.get("quote"), str) or not isinstance(ev.get("doc", ""), str):
            raise EvalFileError(
                f"{where}: evidence[{i}] must be an object with a string 'quote' (and 'doc').",
                "Fix that line of the question file.",
            )
        if not squash(ev["quote"]):
            raise EvalFileError(f"{where}: evidence[{i}] has an empty quote.", "Fix that line of the question file.")
        evidence.append(Evidence(doc=ev.get("doc", ""), quote=ev["quote"]))
    qtype = _require(obj, "type", str, where)
    return EvalQuestion(qid, question, answer, tuple(must), tuple(evidence), qtype, _groups(obj.get("groups", []), where))


def _groups(raw: object, where: str) -> tuple[tuple[str, ...], ...]:
    """'groups': [["a", "b"], "c"] -> (("a", "b"), ("c",)): a bare string is a group of one alternative."""
    bad = EvalFileError(f"{where}: 'groups' must be a list of lists of strings.", "Fix that line of the question file.")
    if not isinstance(raw, list):
        raise bad
    groups = []
    for group in raw:
        alternatives = [group] if isinstance(group, str) else group
        if not isinstance(alternatives, list) or not alternatives or not all(isinstance(a, str) and a.strip() for a in alternatives):
            raise bad
        groups.append(tuple(alternatives))
    return tuple(groups)


def load_questions(path: str | Path) -> list[EvalQuestion]:
    """Questions from a JSONL file; blank lines are skipped, anything malformed names its line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFileError(f"Cannot read question file {path}: {exc}.", "Check the path.") from exc
    questions: list[EvalQuestion] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalFileError(
                f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).",
                "Each line must be one complete JSON object.",
            ) from exc
        q = parse_question(obj, where)
        if q.id in seen:
            raise EvalFileError(f"{where}: duplicate id {q.id!r} (first on line {seen[q.id]}).", "Ids must be unique.")
        seen[q.id] = number
        questions.append(q)
    if not questions:
        raise EvalFileError(f"Question file {path} holds no questions.", "One JSON object per line.")
    return questions


# ---------------------------------------------------------------- matching


def squash(text: str) -> str:
    """The text with all (Unicode) whitespace removed."""
    return "".join(text.split())


def covers(chunk_text: str, quote: str) -> bool:
    """The README's rule: whitespace-free quote is a substring of the whitespace-free chunk text."""
    return squash(quote) in squash(chunk_text)


# ---------------------------------------------------------------- results


@dataclass
class Passage:
    """One ranked passage as retrieved for a question."""

    rank: int  # from 1
    file: str
    start: int
    end: int
    text: str
    score: float
    dense_score: float | None
    lexical_score: float | None
    chunk_id: str
    heading: str = ""
    covers: list[int] = field(default_factory=list)  # indexes into the question's evidence

    @classmethod
    def from_hit(cls, rank: int, hit: Hit, covered: list[int]) -> Passage:
        c = hit.chunk
        return cls(
            rank=rank, file=c.path, start=c.start, end=c.end, text=c.text, score=hit.score,
            dense_score=hit.dense_score, lexical_score=hit.lexical_score, chunk_id=c.id,
            heading=c.heading, covers=covered,
        )  # fmt: skip


@dataclass
class QuoteResult:
    doc: str  # seed file name from the question file
    quote: str
    rank: int | None  # first rank whose chunk covers the quote; None = not in the retrieved depth
    in_index: bool | None = None  # some indexed chunk covers it (None = not checked)
    found_in: list[str] = field(default_factory=list)  # corpus files whose chunks cover it (when checked)


@dataclass
class QuestionResult:
    id: str
    type: str
    question: str
    answerable: bool
    quotes: list[QuoteResult]
    passages: list[Passage]
    seconds: float = 0.0
    must_include: tuple[str, ...] = ()

    @property
    def first_rank(self) -> int | None:
        """Rank of the first passage covering any quote (None if none retrieved does)."""
        ranks = [q.rank for q in self.quotes if q.rank is not None]
        return min(ranks) if ranks else None

    def hit_at(self, k: int) -> bool:
        r = self.first_rank
        return r is not None and r <= k

    def covered_at(self, k: int) -> int:
        return sum(1 for q in self.quotes if q.rank is not None and q.rank <= k)

    def recall_at(self, k: int) -> float:
        return self.covered_at(k) / len(self.quotes) if self.quotes else 0.0

    def reciprocal_rank(self, cutoff: int = MRR_CUTOFF) -> float:
        r = self.first_rank
        return 1.0 / r if r is not None and r <= cutoff else 0.0

    def terms_at(self, k: int) -> bool | None:
        """The top k passages together contain every key term (None: the question names none)."""
        if not self.answerable or not self.must_include:
            return None
        return contains_terms("\n".join(p.text for p in self.passages[:k]), self.must_include)

    def top(self, n: int) -> list[Passage]:
        """What was retrieved (e.g. instead of the evidence, for a miss)."""
        return self.passages[:n]

    def to_dict(self, ks: Sequence[int]) -> dict[str, Any]:
        d = asdict(self)
        d["first_rank"] = self.first_rank
        d["hit"] = {str(k): self.hit_at(k) for k in ks} if self.answerable else None
        d["recall"] = {str(k): self.recall_at(k) for k in ks} if self.answerable else None
        d["reciprocal_rank"] = self.reciprocal_rank() if self.answerable else None
        d["terms"] = {str(k): self.terms_at(k) for k in ks}
        return d


@dataclass
class Metrics:
    questions: int  # answerable questions counted
    quotes: int  # their evidence quotes
    hit: dict[int, float]
    recall: dict[int, float]
    mrr: float  # MRR@10
    excluded: int = 0  # unanswerable questions (no evidence), not counted above
    terms: dict[int, float | None] = field(default_factory=dict)  # diagnostic; None = no question has key terms

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions": self.questions,
            "quotes": self.quotes,
            "excluded_unanswerable": self.excluded,
            "hit": {str(k): v for k, v in self.hit.items()},
            "recall": {str(k): v for k, v in self.recall.items()},
            f"mrr@{MRR_CUTOFF}": self.mrr,
            "terms": {str(k): v for k, v in self.terms.items()},
        }


def compute_metrics(results: Iterable[QuestionResult], ks: Sequence[int]) -> Metrics:
    results = list(results)
    scored = [r for r in results if r.answerable]
    n_quotes = sum(len(r.quotes) for r in scored)
    n = len(scored)
    with_terms = [r for r in scored if r.must_include]
    return Metrics(
        questions=n,
        quotes=n_quotes,
        hit={k: (sum(r.hit_at(k) for r in scored) / n if n else 0.0) for k in ks},
        recall={k: (sum(r.covered_at(k) for r in scored) / n_quotes if n_quotes else 0.0) for k in ks},
        mrr=sum(r.reciprocal_rank() for r in scored) / n if n else 0.0,
        excluded=len(results) - n,
        terms={k: (sum(bool(r.terms_at(k)) for r in with_terms) / len(with_terms) if with_terms else None) for k in ks},
    )


@dataclass
class RetrievalReport:
    ks: list[int]
    depth: int  # passages retrieved per question
    overall: Metrics
    by_type: dict[str, Metrics]  # in order of first appearance in the question file
    questions: list[QuestionResult]
    seconds: float = 0.0
    unreachable: list[tuple[str, str]] = field(default_factory=list)  # (question id, quote) no indexed chunk covers

    def misses(self, k: int = 5) -> list[QuestionResult]:
        """Answerable questions with no quote covered in the top k."""
        return [q for q in self.questions if q.answerable and not q.hit_at(k)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ks": self.ks,
            "depth": self.depth,
            "seconds": self.seconds,
            "overall": self.overall.to_dict(),
            "by_type": {t: m.to_dict() for t, m in self.by_type.items()},
            "misses": {str(k): [q.id for q in self.misses(k)] for k in self.ks},
            "unreachable_quotes": [{"id": qid, "quote": quote} for qid, quote in self.unreachable],
            "questions": [q.to_dict(self.ks) for q in self.questions],
        }


# ---------------------------------------------------------------- evaluation


def parse_ks(text: str) -> list[int]:
    """'1,3,5,10' -> [1, 3, 5, 10] (sorted, deduplicated, each >= 1)."""
    try:
        ks = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError as exc:
        raise EvalFileError(f"Invalid k list {text!r}.", "Give comma-separated positive integers, e.g. 1,3,5,10.") from exc
    if not ks or ks[0] < 1:
        raise EvalFileError(f"Invalid k list {text!r}.", "Give comma-separated positive integers, e.g. 1,3,5,10.")
    return ks


def evaluate_question(
    q: EvalQuestion,
    hits: Sequence[Hit],
    corpus: Sequence[tuple[str, str]] | None = None,
) -> QuestionResult:
    """Match one question's ranked hits against its evidence quotes.

    `corpus`: (file, whitespace-free text) of every indexed chunk, to check
    whether any chunk could cover each quote at all.
    """
    squashed_quotes = [squash(ev.quote) for ev in q.evidence]
    passages: list[Passage] = []
    quote_rank: list[int | None] = [None] * len(q.evidence)
    for rank, hit in enumerate(hits, start=1):
        text = squash(hit.chunk.text)
        covered = [i for i, sq in enumerate(squashed_quotes) if sq in text]
        for i in covered:
            if quote_rank[i] is None:
                quote_rank[i] = rank
        passages.append(Passage.from_hit(rank, hit, covered))
    quotes = []
    for i, ev in enumerate(q.evidence):
        qr = QuoteResult(doc=ev.doc, quote=ev.quote, rank=quote_rank[i])
        if corpus is not None:
            qr.found_in = sorted({path for path, text in corpus if squashed_quotes[i] in text})
            qr.in_index = bool(qr.found_in)
        quotes.append(qr)
    # Retrieval counts a question with evidence quotes: groups alone say nothing about where the answer is.
    return QuestionResult(q.id, q.type, q.question, bool(q.evidence), quotes, passages, must_include=q.must_include)


def evaluate_retrieval(
    questions: Sequence[EvalQuestion],
    rank_fn: RankFn,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    corpus: Sequence[Chunk] | None = None,
    on_progress: Callable[[int, int, QuestionResult], None] | None = None,
) -> RetrievalReport:
    """Rank every question once (depth max(ks, 10)) and score it.

    `corpus`, if given (all indexed chunks), is searched for each quote so
    the report can tell a retrieval miss from a quote no chunk contains
    (e.g. one cut in two by the chunker), which no retriever could find.
    Unanswerable questions are ranked too (their passages are in the
    report) but count in no metric.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    depth = max(ks[-1], MRR_CUTOFF)
    squashed = [(c.path, squash(c.text)) for c in corpus] if corpus is not None else None
    t_all = time.perf_counter()
    results: list[QuestionResult] = []
    for i, q in enumerate(questions, start=1):
        t0 = time.perf_counter()
        hits = list(rank_fn(q.question, depth))[:depth]
        result = evaluate_question(q, hits, squashed)
        result.seconds = time.perf_counter() - t0
        results.append(result)
        if on_progress:
            on_progress(i, len(questions), result)

    types = list(dict.fromkeys(r.type for r in results))
    by_type = {t: compute_metrics([r for r in results if r.type == t], ks) for t in types}
    unreachable = [(r.id, qr.quote) for r in results for qr in r.quotes if qr.in_index is False]
    return RetrievalReport(
        ks=list(ks),
        depth=depth,
        overall=compute_metrics(results, ks),
        by_type=by_type,
        questions=results,
        seconds=time.perf_counter() - t_all,
        unreachable=unreachable,
    )


# ---------------------------------------------------------------- text report


def _one_line(text: str, n: int) -> str:
    flat = " ".join(text.split())
    return flat[:n] + ("…" if len(flat) > n else "")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned columns for a terminal: the first left-aligned, the rest right-aligned, a rule under the header."""
    allrows = [header, *rows]
    widths = [max(_display_width(r[i]) for r in allrows) for i in range(len(header))]
    lines = []
    for j, r in enumerate(allrows):
        lines.append("  ".join([_ljust(r[0], widths[0])] + [_rjust(c, w) for c, w in zip(r[1:], widths[1:])]).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(report: RetrievalReport, terms_k: int = 5) -> str:
    """Rows overall + each type; columns hit@k, recall@k per k, MRR@10, and the terms@5 diagnostic.

    terms@`terms_k` is shown when `terms_k` is one of the report's ks (the passages the model reads).
    """
    terms = [terms_k] if terms_k in report.ks else []
    header = (
        ["", "n"] + [f"hit@{k}" for k in report.ks] + [f"recall@{k}" for k in report.ks] + [f"MRR@{MRR_CUTOFF}"]
        + [f"terms@{k}" for k in terms]
    )  # fmt: skip

    def row(name: str, m: Metrics) -> list[str]:
        if m.questions == 0:
            return [name, f"({m.excluded})"] + ["-"] * (2 * len(report.ks) + 1 + len(terms))
        return (
            [name, str(m.questions)]
            + [_fmt(m.hit[k]) for k in report.ks]
            + [_fmt(m.recall[k]) for k in report.ks]
            + [_fmt(m.mrr)]
            + [_fmt(m.terms.get(k)) for k in terms]
        )

    rows = [row("overall", report.overall)] + [row(t, m) for t, m in report.by_type.items()]
    o = report.overall
    return (
        text_table(header, rows)
        + "\n\n"
        + f"n = answerable questions ({o.quotes} evidence quotes); "
        f"{o.excluded} unanswerable question(s) excluded, shown as (n). "
        f"{len(report.questions)} questions ranked in {report.seconds:.1f} s."
        + (
            f"\nterms@{terms_k} (a diagnostic, not a target): share of them whose top {terms_k} passages "
            "together hold every must_include term."
            if terms
            else ""
        )
    )


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def _evidence_line(qr: QuoteResult) -> str:
    where = ""
    if qr.in_index is False:
        where = "  !! no indexed chunk contains this quote"
    elif qr.found_in:
        where = f"  (in {', '.join(qr.found_in)})"
    return f"  evidence: {qr.quote!r} rank {qr.rank or '-'}{where}"


def format_misses(report: RetrievalReport, k: int = 5, top: int = 3, width: int = 80) -> str:
    misses = report.misses(k)
    lines = [f"Missed at hit@{k}: {len(misses)} of {report.overall.questions} answerable questions"]
    for q in misses:
        lines.append("")
        rank = f"first covering rank {q.first_rank}" if q.first_rank else f"not in top {report.depth}"
        lines.append(f"{q.id} [{q.type}] {q.question}  ({rank}; key terms in the top {k}: {_yes_no(q.terms_at(k))})")
        lines += [_evidence_line(qr) for qr in q.quotes]
        for p in q.top(top):
            lines.append(f"  {p.rank}. {p.file}:{p.start}-{p.end}  {_one_line(p.text, width)}")
    partial = [q for q in report.questions if q.answerable and q.hit_at(k) and q.covered_at(k) < len(q.quotes)]
    if partial:
        lines.append("")
        lines.append(f"Found at hit@{k} but with evidence quotes outside the top {k}: {len(partial)} question(s)")
        for q in partial:
            lines.append(f"{q.id} [{q.type}] {q.question}  (key terms in the top {k}: {_yes_no(q.terms_at(k))})")
            lines += [_evidence_line(qr) for qr in q.quotes if qr.rank is None or qr.rank > k]
    if report.unreachable:
        lines.append("")
        lines.append(f"Quotes no indexed chunk contains ({len(report.unreachable)}): retrieval cannot find these.")
        for qid, quote in report.unreachable:
            lines.append(f"  {qid}: {quote!r}")
    return "\n".join(lines)


def _display_width(s: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def _ljust(s: str, w: int) -> str:
    return s + " " * (w - _display_width(s))


def _rjust(s: str, w: int) -> str:
    return " " * (w - _display_width(s)) + s


# ================================================================ answers
#
# Answer metrics (shared/eval/README.md), over the full pipeline:
# - key-term accuracy: answerable questions whose answer contains every
#   `must_include` term after NFKC normalization;
# - refusal accuracy: unanswerable questions answered with a refusal;
# - false-refusal rate: answerable questions answered with a refusal;
# - citation precision, two figures side by side:
#   - independent ("cite-indep"): shown citations whose passage contains an
#     evidence quote or a `must_include` term of the reference answer (string
#     containment after NFKC + whitespace squashing); it never calls the product;
#   - the product's own ("cite-own"): the passage covers an evidence quote, or
#     passes `citations.support` for the citing sentence, the same test
#     `check()` uses to keep a citation, so it largely measures itself;
# - cited share: answerable, non-refused answers with at least one citation;
# - unsupported-sentence rate: unsupported / checked sentences, over all answers.


def _nfkc(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKC", text).lower()


def contains_terms(answer: str, terms: Sequence[str]) -> bool:
    text = squash(_nfkc(answer))
    return all(squash(_nfkc(t)) in text for t in terms)


def groups_found(answer: str, groups: Sequence[Sequence[str]]) -> list[bool]:
    """Per group: does one of its alternatives occur in the answer (NFKC, case and spaces ignored)?"""
    text = squash(_nfkc(answer))
    return [any(squash(_nfkc(a)) in text for a in group) for group in groups]


def shown_as_answer(text: str) -> str:
    """What the product presents as the answer: the text before its notes (sentences no passage
    supports, set aside by rag/answer/hygiene.py; "the sources differ", which quotes passages).
    Accuracy is judged on this, so a figure the answer only quotes in a note does not count."""
    from rag.answer.citations import CONFLICT_NOTE
    from rag.answer.hygiene import answer_body

    text = answer_body(text)
    for note in CONFLICT_NOTE.values():
        at = text.find(note.split("{refs}")[0])
        if at >= 0:
            text = text[:at]
    return text.strip()


def citation_is_precise(answer_text: str, number: int, passage: str, quotes: Sequence[str]) -> bool:
    """The cited passage covers an evidence quote, or holds the key terms of a sentence citing it."""
    from rag.answer.citations import SUPPORTS, key_terms, sentences_citing, support

    if any(covers(passage, q) for q in quotes):
        return True
    return any(support(key_terms(s), passage) >= SUPPORTS for s in sentences_citing(answer_text, number))


def citation_is_grounded(passage: str, quotes: Sequence[str], terms: Sequence[str]) -> bool:
    """Judged without the product's support test: the passage holds an evidence quote or a reference term.

    Exists because citation_is_precise reuses `citations.support`, the test that kept the citation.
    Example: citation_is_grounded("The pump runs at 40 rpm.", [], ["40 rpm"]) -> True
    """
    text = squash(_nfkc(passage))
    return any(squash(_nfkc(x)) in text for x in [*quotes, *terms] if x.strip())


@dataclass
class AnswerResult:
    id: str
    type: str
    question: str
    answerable: bool
    answer: str
    refused: bool
    must_include: list[str]
    has_terms: bool  # every group (key term) in the text shown as the answer, notes left out
    citations: list[dict[str, Any]]  # number, file, start, end, text, precise
    passages: list[dict[str, Any]]  # what the model was given
    query: str
    unsupported: list[str]
    factual_sentences: int
    timings: dict[str, float]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw_answer: str = ""
    tries: list[str] = field(default_factory=list)  # path of each generation (rag.schema.Answer.tries)
    groups: list[list[str]] = field(default_factory=list)
    part_credit: float = 0.0  # share of the groups in the text shown as the answer
    terms_anywhere: bool = False  # every group somewhere in what is shown, notes included
    answerable_score: float | None = None  # the answerable_check's P(yes) (rag/answer/answerable.py)


def _median_p90(values: list[float]) -> tuple[float | None, float | None]:
    """Median and p90 by rag_eval.stats.percentile, the definition every other table uses."""
    return percentile(values, 50), percentile(values, 90)


@dataclass
class AnswerMetrics:
    questions: int
    answerable: int
    key_term_accuracy: float | None
    refusal_accuracy: float | None
    false_refusal_rate: float | None
    citation_precision: float | None  # the product's own test (see citation_is_precise)
    cited_share: float | None
    unsupported_rate: float | None
    ttft_median: float | None
    ttft_p90: float | None
    total_median: float | None
    total_p90: float | None
    prompt_tokens_median: float | None
    # First token of the text finally kept: later than ttft when a first draft was written again.
    answer_ttft_median: float | None = None
    # Independent of the product: cited passage holds an evidence quote or a reference term.
    citation_precision_independent: float | None = None
    part_credit: float | None = None  # mean share of groups found, over answerable questions
    accuracy_anywhere: float | None = None  # all groups somewhere in the shown text, notes included

    @classmethod
    def of(cls, results: Sequence[AnswerResult]) -> AnswerMetrics:
        def share(items: list[bool]) -> float | None:
            return sum(items) / len(items) if items else None

        answerable = [r for r in results if r.answerable]
        unanswerable = [r for r in results if not r.answerable]
        shown = [c["precise"] for r in results for c in r.citations]
        grounded = [bool(c.get("grounded")) for r in results for c in r.citations]
        factual = sum(r.factual_sentences for r in results)
        ttft = [r.timings["first_token"] for r in results if "first_token" in r.timings]
        total = [r.timings["total"] for r in results if "total" in r.timings]
        tokens = [float(r.prompt_tokens) for r in results if r.prompt_tokens]
        return cls(
            questions=len(results),
            answerable=len(answerable),
            key_term_accuracy=share([r.has_terms for r in answerable]),
            part_credit=(sum(r.part_credit for r in answerable) / len(answerable)) if answerable else None,
            accuracy_anywhere=share([r.terms_anywhere for r in answerable]),
            refusal_accuracy=share([r.refused for r in unanswerable]),
            false_refusal_rate=share([r.refused for r in answerable]),
            citation_precision=share(shown),
            citation_precision_independent=share(grounded),
            cited_share=share([bool(r.citations) for r in answerable if not r.refused]),
            unsupported_rate=(sum(len(r.unsupported) for r in results) / factual) if factual else None,
            ttft_median=_median_p90(ttft)[0],
            ttft_p90=_median_p90(ttft)[1],
            total_median=_median_p90(total)[0],
            total_p90=_median_p90(total)[1],
            prompt_tokens_median=_median_p90(tokens)[0],
            answer_ttft_median=_median_p90(
                [r.timings.get("answer_first_token", r.timings["first_token"]) for r in results if "first_token" in r.timings]
            )[0],
        )


@dataclass
class AnswerReport:
    overall: AnswerMetrics
    by_type: dict[str, AnswerMetrics]
    results: list[AnswerResult]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "overall": asdict(self.overall),
            "by_type": {t: asdict(m) for t, m in self.by_type.items()},
            "questions": [asdict(r) for r in self.results],
        }


AskFn = Callable[[str], Any]  # question -> rag.schema.Answer


def score_answer(q: EvalQuestion, answer: Any) -> AnswerResult:
    """One answer (rag.schema.Answer) judged against its question: key terms, citations, refusal."""
    quotes = [e.quote for e in q.evidence]
    groups = q.answer_groups
    found = groups_found(shown_as_answer(answer.text), groups)
    alternatives = [a for g in groups for a in g]
    citations = [
        {
            "number": c.number, "file": c.chunk.path, "start": c.chunk.start, "end": c.chunk.end,
            "text": c.chunk.text, "precise": citation_is_precise(answer.text, c.number, c.chunk.text, quotes),
            "grounded": citation_is_grounded(c.chunk.text, quotes, alternatives),
        }
        for c in answer.citations
    ]
    passages = [
        {"number": n, "file": h.chunk.path, "start": h.chunk.start, "end": h.chunk.end, "text": h.chunk.text}
        for n, h in enumerate(answer.hits, start=1)
    ]
    return AnswerResult(
        id=q.id, type=q.type, question=q.question, answerable=q.answerable, answer=answer.text,
        refused=answer.refused, must_include=list(q.must_include),
        has_terms=all(found), citations=citations, passages=passages,
        query=answer.query, unsupported=list(answer.unsupported), factual_sentences=answer.factual_sentences,
        timings=dict(answer.timings), prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens, raw_answer=answer.raw_text,
        tries=list(answer.tries), groups=[list(g) for g in groups],
        part_credit=(sum(found) / len(found)) if found else 1.0,
        terms_anywhere=all(groups_found(answer.text, groups)),
        answerable_score=getattr(answer, "answerable_score", None),
    )  # fmt: skip


def evaluate_answers(
    questions: Sequence[EvalQuestion],
    ask_fn: AskFn,
    on_progress: Callable[[int, int, AnswerResult], None] | None = None,
) -> AnswerReport:
    t0 = time.perf_counter()
    results: list[AnswerResult] = []
    for i, q in enumerate(questions, start=1):
        result = score_answer(q, ask_fn(q.question))
        results.append(result)
        if on_progress:
            on_progress(i, len(questions), result)
    by_type: dict[str, list[AnswerResult]] = {}
    for r in results:
        by_type.setdefault(r.type, []).append(r)
    return AnswerReport(
        overall=AnswerMetrics.of(results),
        by_type={t: AnswerMetrics.of(rs) for t, rs in by_type.items()},
        results=results,
        seconds=time.perf_counter() - t0,
    )


def format_answer_table(report: AnswerReport) -> str:
    cols = [
        ("n", lambda m: str(m.questions)),
        ("accuracy", lambda m: _fmt(m.key_term_accuracy)),
        ("part", lambda m: _fmt(m.part_credit)),
        ("acc-shown", lambda m: _fmt(m.accuracy_anywhere)),
        ("refusal", lambda m: _fmt(m.refusal_accuracy)),
        ("false-ref", lambda m: _fmt(m.false_refusal_rate)),
        ("cite-indep", lambda m: _fmt(m.citation_precision_independent)),
        ("cite-own", lambda m: _fmt(m.citation_precision)),
        ("cited", lambda m: _fmt(m.cited_share)),
        ("unsupp", lambda m: _fmt(m.unsupported_rate)),
        ("ttft p50", lambda m: "-" if m.ttft_median is None else f"{m.ttft_median:.1f}s"),
        ("ttft p90", lambda m: "-" if m.ttft_p90 is None else f"{m.ttft_p90:.1f}s"),
        ("total p50", lambda m: "-" if m.total_median is None else f"{m.total_median:.1f}s"),
        ("total p90", lambda m: "-" if m.total_p90 is None else f"{m.total_p90:.1f}s"),
        ("prompt tok", lambda m: "-" if m.prompt_tokens_median is None else f"{m.prompt_tokens_median:.0f}"),
    ]
    rows = [["overall"] + [f(report.overall) for _, f in cols]]
    rows += [[t] + [f(m) for _, f in cols] for t, m in report.by_type.items()]
    return (
        text_table([""] + [c[0] for c in cols], rows)
        + "\naccuracy: every key term (answer group, any alternative) in the text shown as the answer, its notes"
        + " left out; part: share of the groups found; acc-shown: every group anywhere in what is shown"
        + "\ncite-indep: cited passages holding an evidence quote or a reference term (independent); "
        + "cite-own: the product's own support test (the one that kept the citation)"
    )
