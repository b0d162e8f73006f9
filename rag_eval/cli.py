"""`rag eval ...` and `rag bench`: measure the product against question files.

The product's CLI finds these through the "rag.commands" entry point (see `register`),
so the product never imports measurement code. The eval group also runs on its own:

    python -c "from rag_eval.cli import eval_app; eval_app()" retrieval eval/dev.jsonl --k 1,3,5,10
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rag import offline  # noqa: F401
from rag.errors import ConfigError, RagError

eval_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure the product against a question file (see shared/eval/README.md).",
)


@eval_app.callback()
def eval_main() -> None:
    """Measure the product against a question file (see shared/eval/README.md)."""
    # A callback keeps `retrieval` a sub-command even while it is the only one.


QUESTIONS_HELP = "Question file, one JSON object a line; or a conversations.sqlite3 (its thumbs-up answers)."


def _questions(path: Path, load_questions):  # type: ignore[no-untyped-def]
    """The questions of a JSONL file, or of a conversations file's thumbs-up rows (thumbs-down ones noted)."""
    from rag_eval.feedback import is_conversations_file, load_feedback_questions
    from rag_eval.metrics import EvalFileError

    if not is_conversations_file(path):
        return load_questions(path)
    questions, review = load_feedback_questions(path)
    if review:
        typer.echo(f"{len(review)} thumbs-down answers are not questions with a known answer; list them with:"
                   f" rag eval feedback {path}", err=True)  # fmt: skip
    if not questions:
        raise EvalFileError(f"{path} holds no thumbs-up answers yet.", "Rate answers on the chat page (thumbs up) first.")
    return questions


@eval_app.command("feedback")
def feedback_cmd(
    path: Annotated[Path, typer.Argument(help="conversations.sqlite3 (beside the index folder).", metavar="FILE")],
    jsonl: Annotated[Path | None, typer.Option("--jsonl", help="Write the thumbs-up rows as a question file here.")] = None,
) -> None:
    """List the page's thumbs up/down: the questions `rag eval` would ask, and the answers to review."""
    from dataclasses import asdict

    from rag_eval.feedback import load_feedback_questions

    try:
        questions, review = load_feedback_questions(path)
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(f"{len(questions)} questions from thumbs-up answers:")
    for q in questions:
        typer.echo(f"  {q.id}: {q.question}  (key terms {list(q.must_include)}, {len(q.evidence)} cited passages)")
    typer.echo(f"\n{len(review)} thumbs-down answers to review:")
    for r in review:
        cited = ", ".join(f"[{c.number}] {c.file}" for c in r.citations) or "no citations"
        typer.echo(f"  feedback-{r.message} ({r.collection}): {r.question}\n    {' '.join(r.answer.split())[:160]}  ({cited})")
    if jsonl is not None:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with jsonl.open("w", encoding="utf-8") as out:
            for q in questions:
                row = {**asdict(q), "must_include": list(q.must_include), "evidence": [asdict(e) for e in q.evidence]}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        typer.echo(f"\nQuestion file: {jsonl}", err=True)


def save_report(json_out: Path, data: object, label: str = "Full report") -> None:
    """Write a command's --json report (UTF-8, indented) and say where it went."""
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    typer.echo(f"\n{label}: {json_out}", err=True)


def _fail(exc: RagError) -> None:
    typer.secho(f"Error: {exc.message}", fg="red", err=True)
    if exc.hint:
        typer.echo(f"  -> {exc.hint}", err=True)
    raise typer.Exit(1)


def _settings(ctx: typer.Context):  # type: ignore[no-untyped-def]
    """The parent `rag` app's Settings, or freshly loaded ones when run on its own."""
    from rag.config import Settings, load_settings

    obj = ctx.obj
    if isinstance(obj, Settings):
        return obj
    return load_settings()


CorpusOpt = Annotated[
    Path | None,
    typer.Option("--corpus", help="Evaluate on this document folder instead (indexed first, into --index-dir).", metavar="DIR"),
]
IndexDirOpt = Annotated[
    Path | None, typer.Option("--index-dir", help="--corpus: its index (default: <cache>/eval-index/<folder hash>).")
]


def on_corpus(settings, corpus: Path | None, index_dir: Path | None, quiet: bool):  # type: ignore[no-untyped-def]
    """The settings pointed at `corpus` and an index of its own, built or updated first (None: unchanged).

    The index lives outside the product's index folder, keyed by the corpus folder's path, so
    evaluating a foreign corpus never touches the index the page answers from.
    """
    import hashlib
    from dataclasses import replace

    from rag.cli import run_index

    if corpus is None:
        return settings
    if not corpus.is_dir():
        raise ConfigError(f"{corpus} is not a folder.", "Give the folder of documents, e.g. /tmp/rgb-zh/corpus.")
    digest = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:12]
    index = index_dir or settings.cache_dir / "eval-index" / digest
    # The passage KV store belongs to the product's own corpus.
    settings = replace(settings, corpus_dir=corpus, index_dir=index, kv_cache=False)
    if not quiet:
        typer.echo(f"Indexing {corpus} into {index}…", err=True)
    run_index(settings, quiet=quiet)
    return settings


@eval_app.command("retrieval")
def retrieval_cmd(
    ctx: typer.Context,
    eval_file: Annotated[Path, typer.Argument(help=QUESTIONS_HELP, metavar="EVAL.jsonl")],
    k: Annotated[str, typer.Option("--k", help="Cut-offs for hit@k and recall@k, comma-separated.")] = "1,3,5,10",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full report (every ranked passage) to this file.")
    ] = None,
    miss_k: Annotated[int, typer.Option("--miss-k", help="List the questions missed at hit@this k.")] = 5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    corpus: CorpusOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Rank every question with the product's retriever; print hit@k, recall@k, MRR@10 and the misses."""
    from rag.answer.pipeline import Pipeline, clean_question
    from rag_eval.metrics import evaluate_retrieval, format_misses, format_table, load_questions, parse_ks

    try:
        ks = parse_ks(k)
        questions = _questions(eval_file, load_questions)
        settings = on_corpus(_settings(ctx), corpus, index_dir, quiet)
        if not quiet:
            typer.echo(f"Loading the index and {settings.embed_model}…", err=True)
        retriever = Pipeline(settings).retriever()

        def rank(question: str, depth: int):  # type: ignore[no-untyped-def]
            # Exactly what `ask` searches for a first question: the cleaned question itself.
            return retriever.rank(clean_question(question), depth)

        def progress(i: int, n: int, result) -> None:  # type: ignore[no-untyped-def]
            if not quiet:
                mark = "-" if not result.answerable else ("hit" if result.hit_at(miss_k) else "MISS")
                sys.stderr.write(f"\r[{i}/{n}] {result.id} {mark:<4} ")
                sys.stderr.flush()

        report = evaluate_retrieval(questions, rank, ks, corpus=retriever.index.chunks, on_progress=progress)
    except RagError as exc:
        _fail(exc)
        return
    if not quiet:
        sys.stderr.write("\n")

    typer.echo(f"Retrieval on {eval_file} ({len(questions)} questions; embedder {settings.embed_model}, "
               f"index {settings.index_dir})\n")  # fmt: skip
    typer.echo(format_table(report))
    typer.echo("")
    typer.echo(format_misses(report, k=miss_k))

    if json_out is not None:
        data = report.to_dict()
        data["eval_file"] = str(eval_file)
        data["embed_model"] = settings.embed_model
        data["index_dir"] = str(settings.index_dir)
        save_report(json_out, data)


@eval_app.command("answers")
def answers_cmd(
    ctx: typer.Context,
    eval_file: Annotated[Path, typer.Argument(help=QUESTIONS_HELP, metavar="EVAL.jsonl")],
    model: Annotated[str | None, typer.Option("--model", help="Chat model (default: the configured one).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every answer, citation and passage here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    path: Annotated[
        str,
        typer.Option("--path", help="auto, cached (passage KV store), ordinary, or both (each question on both paths)."),
    ] = "auto",
    without: Annotated[str, typer.Option("--without", help=WITHOUT_HELP, metavar="NAME[,NAME]")] = "",
    corpus: CorpusOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Answer every question with the full pipeline; print key-term, refusal and citation metrics and timings."""
    from dataclasses import replace

    from rag.answer.pipeline import Done, Pipeline
    from rag_eval.metrics import evaluate_answers, format_answer_table, load_questions

    try:
        if path not in ("auto", "cached", "ordinary", "both"):
            raise ConfigError(f"Unknown --path '{path}'.", "Use auto, cached, ordinary or both.")
        questions = _questions(eval_file, load_questions)[:limit]
        settings = on_corpus(_with_guards_off(_settings(ctx), without), corpus, index_dir, quiet)
        if model:
            settings = replace(settings, chat_model=model)
        pipeline = Pipeline(settings)
        pipeline.get_generator()  # load time is not part of any question's timings
        if path in ("cached", "both"):
            _require_cached(pipeline)
        served: dict[str, list[str]] = {}  # path asked -> path that served each answer
        twins: dict[str, object] = {}  # --path both: question -> its cached-path answer

        def ask_on(question: str, which: str):  # type: ignore[no-untyped-def]
            for event in pipeline.ask(question, path=which):
                if isinstance(event, Done):
                    if "generation" in event.answer.timings:  # the model answered (not a refusal before it)
                        # "cached+ordinary": a cached answer the checker rejected, written again
                        served.setdefault(which, []).append("+".join(event.answer.tries) or event.answer.path)
                    return event.answer
            raise RuntimeError("the pipeline ended without an answer")

        def ask(question: str):  # type: ignore[no-untyped-def]
            if path != "both":
                return ask_on(question, path)
            answer = ask_on(question, "ordinary")  # back to back, so machine load affects both alike
            twin = twins[question] = ask_on(question, "cached")
            if not quiet:
                t = twin.timings
                sys.stderr.write(f"    {twin.path}: first token {t.get('first_token', 0):.1f}s, total {t.get('total', 0):.1f}s "
                                 f"{' '.join(twin.text.split())[:60]!r}\n")  # fmt: skip
            return answer

        def progress(i: int, n: int, r) -> None:  # type: ignore[no-untyped-def]
            if not quiet:
                mark = ("REFUSED" if r.refused else "ok") if not r.answerable else ("ok" if r.has_terms else "MISS")
                sys.stderr.write(f"[{i}/{n}] {r.id} {mark:<7} {r.timings.get('total', 0):5.1f}s {r.answer[:60]!r}\n")
                sys.stderr.flush()

        report = evaluate_answers(questions, ask, on_progress=progress)
        twin_report = evaluate_answers(questions, lambda q: twins[q]) if path == "both" else None
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(f"Answers on {eval_file} ({len(questions)} questions; corpus {settings.corpus_dir}; chat model "
               f"{settings.chat_model}, embedder {settings.embed_model}, top_k {settings.top_k}; path {path})")  # fmt: skip
    typer.echo(_guard_lines(pipeline.guards) + "\n")
    for which, paths in served.items():
        counts = ", ".join(f"{p} {paths.count(p)}" for p in sorted(set(paths)))
        typer.echo(f"--path {which}: answers served by {counts}")
    if twin_report is not None:
        typer.echo("\nordinary path:")
    typer.echo(format_answer_table(report))
    if twin_report is not None:
        typer.echo("\ncached path (same questions, asked right after each ordinary one):")
        typer.echo(format_answer_table(twin_report))
        typer.echo("\n" + _compare(report.overall, twin_report.overall))
    missed = [r for r in report.results if r.answerable and not r.has_terms]
    if missed:
        typer.echo(f"\nAnswerable questions missing a key term ({len(missed)}):")
        for r in missed:
            typer.echo(f"  {r.id} [{r.type}] needs {r.groups}: {' '.join(r.answer.split())[:100]}")
    if json_out is not None:
        data = report.to_dict()
        data.update(eval_file=str(eval_file), chat_model=settings.chat_model, embed_model=settings.embed_model,
                    path=path, served=served, disabled_guards=sorted(pipeline.guards.disabled),
                    guards_fired=dict(pipeline.guards.counts))  # fmt: skip
        if twin_report is not None:
            data["cached"] = twin_report.to_dict()
        save_report(json_out, data)


WITHOUT_HELP = "Turn these answer guards off (rag/guards.py; `rag eval ablation` lists them), comma-separated."


def _with_guards_off(settings, without: str):  # type: ignore[no-untyped-def]
    """The settings with the --without guards off as well as those the settings turn off (names checked)."""
    from dataclasses import replace

    from rag.guards import parse_names

    return replace(settings, disabled_guards=parse_names([*settings.disabled_guards, *parse_names(without)]))


def _guard_lines(guards) -> str:  # type: ignore[no-untyped-def]
    """'guards off: echo' and 'guards fired: uncited_zh 3, focus_retry 1' (in rag/guards.py's order)."""
    from rag.guards import GUARDS

    fired = ", ".join(f"{n} {guards.counts[n]}" for n in GUARDS if guards.counts[n]) or "none"
    off = ", ".join(n for n in GUARDS if n in guards.disabled) or "none"
    return f"guards off: {off}; guards fired: {fired}"


RGB_ROWS_HELP = "FILE is RGB rows (zh_refine.json): answer from each row's passages at the --noise rates."


@eval_app.command("ablation")
def ablation_cmd(
    ctx: typer.Context,
    eval_file: Annotated[Path, typer.Argument(help=QUESTIONS_HELP + " With --rgb: RGB rows.", metavar="FILE")],
    guards: Annotated[str, typer.Option("--guards", help="Only these guards, comma-separated (default: all).")] = "",
    model: Annotated[str | None, typer.Option("--model", help="Chat model (default: the configured one).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions (RGB: rows).")] = None,
    rgb_rows: Annotated[bool, typer.Option("--rgb", help=RGB_ROWS_HELP)] = False,
    noise: Annotated[str, typer.Option("--noise", help="--rgb: noise rates; 1.0 rows are unanswerable.")] = "0.4,1.0",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every run's scores here.")] = None,
    replay: Annotated[bool, typer.Option("--replay/--no-replay", help="Reuse a generation whose input is "
                                         "unchanged (greedy answers: rag_eval/replay.py).")] = True,  # fmt: skip
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    corpus: CorpusOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """What each answer guard adds: the answers evaluation with every guard on, then with each one off.

    Only the questions a guard fired on are answered again without it (answers are greedy, so
    the others cannot change); every other question keeps its all-guards-on result. With
    --replay (the default) a re-asked question whose prompt is unchanged gets the generation
    it had, so a guard that acts after the model has written costs no generation."""
    from dataclasses import replace

    from rag.guards import GUARDS, parse_names
    from rag_eval.ablation import format_ablation, format_scores, run_ablation
    from rag_eval.replay import Replay

    try:
        names = parse_names(guards) if guards else tuple(GUARDS)
        if rgb_rows and corpus is not None:
            raise ConfigError("--rgb rows bring their own passages.", "Leave out --corpus, or --rgb.")
        settings = replace(_settings(ctx), disabled_guards=())
        if model:
            settings = replace(settings, chat_model=model)
        settings = on_corpus(settings, corpus, index_dir, quiet)
        if not quiet:
            typer.echo(f"Loading {settings.chat_model}…", err=True)
        replayed = Replay() if replay and not rgb_rows else None  # RGB rows reach the generator directly
        if rgb_rows:
            answer, score, n, size = _rgb_scorer(eval_file, settings, limit, noise, quiet)
        else:
            answer, score, n, size = _answers_scorer(eval_file, settings, limit, quiet, replayed)

        def on_run(name: str, scores, g, seconds: float) -> None:  # type: ignore[no-untyped-def]
            if not quiet:
                typer.echo(f"{'all guards on' if not name else 'without ' + name}: {format_scores(scores)} "
                           f"({seconds:.0f} s); {_guard_lines(g)}", err=True)  # fmt: skip

        report = run_ablation(answer, score, n, names, on_run, same=_same_answer)
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(f"Guard ablation on {eval_file} ({size}; chat model {settings.chat_model}, "
               f"embedder {settings.embed_model}; {report.seconds:.0f} s)\n")  # fmt: skip
    typer.echo(format_ablation(report, names))
    if replayed is not None:
        typer.echo(f"\nGenerations: {replayed.computed} computed, {replayed.replayed} replayed (prompt unchanged).")
    if json_out is not None:
        _save_ablation(json_out, report, eval_file, settings, rgb_rows)


def _save_ablation(path: Path, report, eval_file: Path, settings, rgb_rows: bool) -> None:  # type: ignore[no-untyped-def]
    """The ablation's --json: every run's scores and, for a question file, each all-on answer."""
    from dataclasses import asdict

    data = report.to_dict()
    data.update(eval_file=str(eval_file), chat_model=settings.chat_model, embed_model=settings.embed_model)
    if not rgb_rows:  # each answer with every guard on, as `rag eval answers --json` writes them
        data["questions"] = [asdict(r) for r in report.baseline_results]
    save_report(path, data)


def _same_answer(a, b) -> bool:  # type: ignore[no-untyped-def]
    """Whether a question answered again gave the baseline's answer (timings aside)."""
    return (a.answer, a.refused, a.raw_answer) == (b.answer, b.refused, b.raw_answer)


def _answers_scorer(path: Path, settings, limit: int | None, quiet: bool = True, replay=None):  # type: ignore[no-untyped-def]
    """(guards, i) -> the AnswerResult of question i; results -> Scores; the question count; '<n> questions'.
    With a `replay` (rag_eval/replay.py) the pipeline's generators are wrapped by it."""
    from rag.answer.pipeline import Done, Pipeline
    from rag_eval.ablation import Scores
    from rag_eval.metrics import AnswerMetrics, evaluate_answers, load_questions

    questions = _questions(path, load_questions)[:limit]
    pipeline = Pipeline(settings)
    pipeline.get_generator()  # load time is not part of any run
    if replay is not None:
        replay.install(pipeline)

    def ask(question: str):  # type: ignore[no-untyped-def]
        for event in pipeline.ask(question):
            if isinstance(event, Done):
                return event.answer
        raise RuntimeError("the pipeline ended without an answer")

    def answer(g, i: int):  # type: ignore[no-untyped-def]
        pipeline.guards = g
        r = evaluate_answers([questions[i]], ask).results[0]
        if not quiet:
            mark = ("REFUSED" if r.refused else "ok") if not r.answerable else ("ok" if r.has_terms else "MISS")
            off = ",".join(sorted(g.disabled)) or "all on"
            sys.stderr.write(f"[{i + 1}/{len(questions)}] ({off}) {r.id} {mark:<7} {r.timings.get('total', 0):5.1f}s "
                             f"{' '.join(r.answer.split())[:60]!r}\n")  # fmt: skip
            sys.stderr.flush()
        return r

    def score(results):  # type: ignore[no-untyped-def]
        return Scores.of_answers(AnswerMetrics.of(results))

    return answer, score, len(questions), f"{len(questions)} questions"


def _rgb_scorer(path: Path, settings, limit: int | None, noise: str, quiet: bool = True):  # type: ignore[no-untyped-def]
    """(guards, i) -> the NoiseResult of (rate, row) pair i; results -> Scores; the pair count; a description."""
    from rag.answer.pipeline import Pipeline
    from rag_eval import rgb
    from rag_eval.ablation import Scores

    rates = rgb.parse_rates(noise)
    rows = rgb.load_rows(path, limit=limit or 20)
    generator = Pipeline(settings).get_generator()
    pairs = [(rate, row) for rate in rates for row in rows]  # evaluate_noise's order

    def answer(g, i: int):  # type: ignore[no-untyped-def]
        rate, row = pairs[i]
        r = rgb.evaluate_noise([row], [rate], settings, generator, guards=g).results[0]
        if not quiet:
            off = ",".join(sorted(g.disabled)) or "all on"
            sys.stderr.write(f"[{i + 1}/{len(pairs)}] ({off}) {r.id}@{rate} {'ok' if r.correct else 'MISS'} "
                             f"{'REFUSED' if r.refused else ''} {' '.join(r.answer.split())[:60]!r}\n")  # fmt: skip
            sys.stderr.flush()
        return r

    return answer, Scores.of_rgb, len(pairs), f"{len(rows)} RGB rows at noise {noise}"


@eval_app.command("refusal-sweep")
def refusal_sweep_cmd(
    report: Annotated[Path, typer.Argument(help="What `rag eval answers --json` or `rag eval ablation --json` wrote, "
                                           "run with RAG_ANSWERABLE_MIN=0.", metavar="REPORT.json")],
    terms: Annotated[bool, typer.Option("--terms", help="Also replay the model-free key-term check: refuse when a "
                                        "number, Latin word, 《title》 or proper noun of the question is not cited.")] = False,
) -> None:
    """Replay a report's answers at other answerable_min thresholds: accuracy, refusal, false refusal at each."""
    from rag_eval.refusal_sweep import SCORED_HINT, format_sweep, format_term_check, load_rows, sweep, term_check

    try:
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read {report} as JSON: {exc}.", SCORED_HINT) from None
        rows = load_rows(data)
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(format_sweep(rows, sweep(rows)))
    if terms:
        typer.echo(format_term_check(term_check(rows)))


@eval_app.command("rgb")
def rgb_cmd(
    ctx: typer.Context,
    rgb_file: Annotated[Path, typer.Argument(help="RGB rows, e.g. ../shared/bench/rgb/zh_refine.json.", metavar="FILE")],
    answers: Annotated[bool, typer.Option("--answers", help="Noise robustness with the chat model instead of retrieval.")] = False,
    index_dir: Annotated[
        Path | None, typer.Option("--index-dir", help="Where the pooled index is kept (default: <cache>/rgb-index).")
    ] = None,
    k: Annotated[str, typer.Option("--k", help="Cut-offs for hit@k, comma-separated.")] = "1,5,10",
    limit_rows: Annotated[int | None, typer.Option("--limit-rows", help="Retrieval: only the first N rows (and their passages).")] = None,
    rows: Annotated[int, typer.Option("--rows", help="--answers: the first N rows.")] = 60,
    noise: Annotated[str, typer.Option("--noise", help="--answers: noise rates, comma-separated.")] = "0,0.4,0.8,1.0",
    model: Annotated[str | None, typer.Option("--model", help="--answers: chat model (default: the configured one).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    without: Annotated[str, typer.Option("--without", help="--answers: " + WITHOUT_HELP, metavar="NAME[,NAME]")] = "",
    stores: Annotated[str, typer.Option("--stores", help="Instead of the three modes: these vector stores on the "
                                        "pooled index's chunk vectors (faiss,milvus; build, hit@5, MRR@10, p50/p95).")] = "",
) -> None:
    """RGB (zh): pooled-passage retrieval (BM25, dense, fused), or with --answers the paper's noise robustness."""
    from dataclasses import replace

    from rag_eval import rgb

    settings = _settings(ctx)
    try:
        settings = _with_guards_off(settings, without)
        kinds = _store_kinds(stores)
        if answers and kinds:
            raise ConfigError("--stores compares retrieval stores; --answers measures answers.", "Leave out one of them.")
        if answers:
            from rag.answer.pipeline import Pipeline

            rates = rgb.parse_rates(noise)
            data_rows = rgb.load_rows(rgb_file, limit=rows)
            if model:
                settings = replace(settings, chat_model=model)
            if not quiet:
                typer.echo(f"Loading {settings.chat_model}…", err=True)
            generator = Pipeline(settings).get_generator()  # load time is not part of any answer's timings

            def progress(i: int, n: int, r) -> None:  # type: ignore[no-untyped-def]
                if not quiet:
                    if r.noise >= 1.0:  # no positive passage: refusing is right
                        mark = "refused" if r.refused else "ANSWERED"
                    else:
                        mark = "REFUSED" if r.refused else ("ok" if r.correct else "MISS")
                    shown = " ".join(r.answer.split())[:60]
                    sys.stderr.write(f"[{i}/{n}] noise {r.noise:g} row {r.id} {mark:<7} "
                                     f"{r.timings.get('total', 0):5.1f}s {shown!r}\n")  # fmt: skip
                    sys.stderr.flush()

            report = rgb.evaluate_noise(data_rows, rates, settings, generator, on_progress=progress)
            typer.echo(f"RGB noise robustness on {rgb_file} (first {len(data_rows)} rows, {rgb.PASSAGES} passages; "
                       f"chat model {settings.chat_model})\n")  # fmt: skip
            typer.echo(rgb.format_noise_report(report))
            data = report.to_dict()
        else:
            from rag.answer.pipeline import Pipeline
            from rag.models import get_spec
            from rag_eval.metrics import parse_ks

            ks = parse_ks(k)
            data_rows = rgb.load_rows(rgb_file, limit=limit_rows)
            pool = rgb.pool_passages(data_rows)
            root = index_dir or settings.cache_dir / "rgb-index"
            pipeline = Pipeline(settings)
            chunker = rgb.ChunkerSettings(settings.chunk_size, settings.chunk_overlap)
            if not quiet:
                typer.echo(f"{len(data_rows)} rows, {len(pool.texts)} distinct passages; index under {root}", err=True)
            index, info = rgb.ensure_pool_index(
                pool, root, pipeline.get_embedder, settings.embed_model, get_spec(settings.embed_model).sha256,
                chunker, settings.piece_chars, progress=not quiet,
            )  # fmt: skip
            if kinds:
                data = _rgb_stores(data_rows, pool, index, pipeline.get_embedder(), kinds, f"{rgb_file}", settings)
            else:
                data = _rgb_modes(data_rows, pool, index, pipeline.get_embedder(), info, ks, f"{rgb_file}", settings,
                                  quiet)  # fmt: skip
    except RagError as exc:
        _fail(exc)
        return
    if json_out is not None:
        data.update(rgb_file=str(rgb_file), embed_model=settings.embed_model, chat_model=settings.chat_model,
                    peak_rss_mb=rgb.peak_rss_mb())  # fmt: skip
        save_report(json_out, data)


def _rgb_modes(rows, pool, index, embedder, info, ks, source: str, settings, quiet: bool) -> dict:  # type: ignore[no-untyped-def]
    """`rag eval rgb FILE`: BM25, dense and fused over the pooled index (rgb.evaluate_pool_retrieval)."""
    from rag.answer.retrieval import RetrievalParams
    from rag_eval import rgb

    def progress(i: int, n: int, r) -> None:  # type: ignore[no-untyped-def]
        if not quiet and (i % 25 == 0 or i == n):
            sys.stderr.write(f"\r[{i}/{n}] queries ranked")
            sys.stderr.flush()

    report = rgb.evaluate_pool_retrieval(rows, pool, index, embedder, RetrievalParams.from_settings(settings), info,
                                         ks, on_progress=progress)  # fmt: skip
    if not quiet:
        sys.stderr.write("\n")
    typer.echo(f"RGB retrieval on {source} ({len(rows)} queries; embedder {settings.embed_model})\n")
    typer.echo(rgb.format_retrieval_report(report))
    return report.to_dict()


def _rgb_stores(rows, pool, index, embedder, kinds: list[str], source: str, settings) -> dict:  # type: ignore[no-untyped-def]
    """`rag eval rgb FILE --stores ...`: the vector stores on the pooled index's own vectors (rag_eval/stores.py)."""
    from rag_eval.stores import format_store_report, run_rgb_store_compare

    report = run_rgb_store_compare(rows, pool, index, embedder, kinds)
    typer.echo(f"RGB vector stores on {source} ({len(rows)} queries; embedder {settings.embed_model})\n")
    typer.echo(format_store_report(report))
    return report.to_dict()


def _store_kinds(text: str) -> list[str]:
    """'faiss, milvus' -> ['faiss', 'milvus'] ('' -> []); an unknown kind is a ConfigError, before anything slow."""
    from rag_eval.stores import STORES, check_stores

    kinds = [s for s in text.replace(" ", "").split(",") if s]
    try:
        if kinds:
            check_stores(kinds)
    except ValueError as exc:
        raise ConfigError(f"Unknown --stores {text!r}: {exc}.", f"Use {','.join(STORES)}.") from None
    return kinds


@eval_app.command("corpus-from-rgb")
def corpus_from_rgb_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (outside the repository), e.g. /tmp/rgb-zh.", metavar="OUT_DIR")],
    lang: Annotated[str, typer.Option("--lang", help="zh or en: reads ../shared/bench/rgb/<lang>_refine.json.")] = "zh",
    rgb_file: Annotated[Path | None, typer.Option("--rgb-file", help="RGB rows to read instead.")] = None,
    rows: Annotated[int, typer.Option("--rows", help="Answerable questions (rows whose positives are in the corpus).")] = 60,
    unanswerable: Annotated[int, typer.Option("--unanswerable", help="Rows whose positives are left out.")] = 20,
    noise: Annotated[int, typer.Option("--noise", help="Negative passages of each row put in the corpus.")] = 5,
    max_positive: Annotated[int, typer.Option("--max-positive", help="Positive passages of each row put in.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Which rows: the file shuffled with this seed.")] = 0,
    pairs: Annotated[int, typer.Option("--pairs", help="Also write OUT_DIR/pairs.jsonl: this many two-part "
                                       "questions, each two answerable ones asked at once.")] = 0,  # fmt: skip
) -> None:
    """Write an RGB corpus folder (one .txt per passage) and its question file with answer groups.

    Then: rag eval answers OUT_DIR/questions.jsonl --corpus OUT_DIR/corpus (and eval retrieval the same way).
    """
    from rag_eval import rgb, rgb_corpus

    try:
        if lang not in ("zh", "en"):
            raise ConfigError(f"Unknown --lang '{lang}'.", "Use zh or en.")
        source = rgb_file or Path("../shared/bench/rgb") / f"{lang}_refine.json"
        data = rgb.load_rows(source)
        corpus = rgb_corpus.build_corpus(data, rows, unanswerable, noise, max_positive, seed, lang)
        provenance = {"source": str(source.resolve()), "lang": lang, "rows": rows, "unanswerable_rows": unanswerable,
                      "noise": noise, "max_positive": max_positive, "seed": seed}  # fmt: skip
        questions = rgb_corpus.write_corpus(corpus, out_dir, lang, provenance, pairs)
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(rgb_corpus.summary(corpus))
    folder = questions.parent / "corpus"
    typer.echo(f"\nCorpus: {folder}\nQuestions: {questions}\n\n"
               f"  rag eval answers {questions} --corpus {folder}\n  rag eval retrieval {questions} --corpus {folder}")  # fmt: skip


@eval_app.command("scale")
def scale_cmd(
    chunks: Annotated[int, typer.Option("--chunks", help="Synthetic chunks to index.")] = 100_000,
    dim: Annotated[int, typer.Option("--dim", help="Vector size (EmbeddingGemma: 768).")] = 768,
    queries: Annotated[int, typer.Option("--queries", help="Queries to time.")] = 200,
    ann: Annotated[str, typer.Option("--ann", help="Also time these FAISS index types: hnsw,ivf (or none).")] = "",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    pieces: Annotated[int, typer.Option("--pieces-per-chunk",
                                        help="Sentence-piece vectors per chunk (the corpus here: ~5; 0: none).")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    stores: Annotated[str, typer.Option("--stores", help="Instead: compare these vector stores on the same vectors "
                                        "(faiss,milvus; build time, hit@5, MRR@10, p50/p95).")] = "",
) -> None:
    """Retrieval latency (FAISS, BM25, fused) over synthetic chunks: random vectors, dictionary-word text."""
    from rag_eval.scale import format_scale_report, run_scale

    kinds = [a for a in ann.replace(" ", "").split(",") if a and a != "none"]
    if chunks < queries or chunks < 1:
        typer.secho(f"Error: --chunks ({chunks}) must be at least --queries ({queries}).", fg="red", err=True)
        raise typer.Exit(1)
    if stores:
        try:
            kinds = _store_kinds(stores)
        except RagError as exc:
            _fail(exc)
            return
        _compare_stores(chunks, dim, queries, kinds, seed, json_out)
        return
    try:
        report = run_scale(chunks, dim, queries, kinds, seed, progress=not quiet, pieces_per_chunk=pieces)
    except ValueError as exc:
        typer.secho(f"Error: {exc}.", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_scale_report(report))
    if json_out is not None:
        save_report(json_out, report.to_dict())


def _compare_stores(chunks: int, dim: int, queries: int, stores: list[str], seed: int, json_out: Path | None) -> None:
    """`rag eval scale --stores ...`: the vector stores side by side (rag_eval/stores.py)."""
    from rag_eval.stores import format_store_report, run_store_compare

    try:
        report = run_store_compare(chunks, dim, queries, stores, seed)
    except ValueError as exc:
        typer.secho(f"Error: {exc}.", fg="red", err=True)
        raise typer.Exit(1) from None
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(format_store_report(report))
    if json_out is not None:
        save_report(json_out, report.to_dict())


def _worker_counts(text: str) -> list[int]:
    """'1,2' -> [1, 2]; anything but positive whole numbers is a ConfigError that says what to write."""
    parts = [w for w in text.replace(" ", "").split(",") if w]
    if not parts or not all(w.isdigit() and int(w) > 0 for w in parts):
        raise ConfigError(f"--workers {text!r} is not a list of worker counts.", "Write positive numbers, e.g. --workers 1,2")
    return [int(w) for w in parts]


@eval_app.command("ray")
def ray_cmd(
    ctx: typer.Context,
    passages: Annotated[int, typer.Option("--passages", help="Corpus chunks to embed.")] = 120,
    workers: Annotated[str, typer.Option("--workers", help="Ray worker counts to try, e.g. 1,2.")] = "1,2",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Passages/s of the build's embedder in process and on 1, 2... Ray actors (pip install .[scale])."""
    from rag_eval.raybench import corpus_passages, format_ray_report, run_ray_bench

    settings = _settings(ctx)
    try:
        counts = _worker_counts(workers)
        report = run_ray_bench(settings, corpus_passages(settings, passages), counts)
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(format_ray_report(report))
    if json_out is not None:
        save_report(json_out, report.to_dict())


@eval_app.command("llm-server")
def llm_server_cmd(
    ctx: typer.Context,
    eval_file: Annotated[
        Path | None, typer.Argument(help="Question file (default: ../shared/eval/dev.jsonl).", metavar="EVAL.jsonl")
    ] = None,
    llm_url: Annotated[
        str | None, typer.Option("--llm-url", help="A running server (default: start llama-cpp-python's here).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every answer's tokens and timings here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """The same questions through the in-process model and an OpenAI-compatible server: token-identical? how fast?"""
    import tempfile
    from contextlib import nullcontext
    from dataclasses import replace

    from rag_eval.bench import DEFAULT_QUESTIONS
    from rag_eval.llm_server import compare, format_report, local_server
    from rag_eval.metrics import load_questions

    try:
        questions = [(q.id, q.question) for q in load_questions(eval_file or DEFAULT_QUESTIONS)][:limit]
        settings = _settings(ctx)
        url = llm_url or settings.llm_url
        with tempfile.TemporaryDirectory() as tmp:
            server = nullcontext(url) if url else local_server(settings, Path(tmp) / "server.log")
            with server as base:
                say = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
                report = compare(replace(settings, llm_url=""), base, questions, not url, say)
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(format_report(report))
    if json_out is not None:
        save_report(json_out, report.to_dict())


def _require_cached(pipeline) -> None:  # type: ignore[no-untyped-def]
    """--path cached/both measures nothing unless the store is complete: say how to build it."""
    from rag.answer import kvstore

    if not pipeline.settings.kv_cache:
        raise ConfigError("The passage KV store is turned off (kv_cache = 0).", "Set kv_cache = 1, then run: rag index --kv")
    st = kvstore.status(pipeline.settings, pipeline.get_index().readable(pipeline.settings.join_max_chars))
    if not st.complete:
        raise ConfigError(f"The passage KV store is not complete ({st.line()}).", "Run: rag index --kv")
    if pipeline.get_cached() is None:
        raise ConfigError(f"The cached path cannot run: {pipeline.kv_unavailable}.", "Use --path ordinary.")


def _compare(ordinary, cached) -> str:  # type: ignore[no-untyped-def]
    """cached vs ordinary on the issue's targets (overall metrics)."""

    def diff(name: str, a: float | None, b: float | None) -> str:
        return f"{name} {'-' if a is None else f'{a:.3f}'} -> {'-' if b is None else f'{b:.3f}'}"

    ratio = cached.ttft_median / ordinary.ttft_median if cached.ttft_median and ordinary.ttft_median else None
    parts = [
        diff("key terms", ordinary.key_term_accuracy, cached.key_term_accuracy),
        diff("refusal", ordinary.refusal_accuracy, cached.refusal_accuracy),
        diff("citation precision (independent)", ordinary.citation_precision_independent,
             cached.citation_precision_independent),
        diff("citation precision (product's own test)", ordinary.citation_precision, cached.citation_precision),
        diff("TTFT p50 (s)", ordinary.ttft_median, cached.ttft_median),
        f"TTFT cached/ordinary {'-' if ratio is None else f'{ratio:.2f}'}",
        diff("first token of the kept answer p50 (s)", ordinary.answer_ttft_median, cached.answer_ttft_median),
    ]
    return "ordinary -> cached: " + "; ".join(parts)


# ---------------------------------------------------------------- bench



def bench_cmd(
    ctx: typer.Context,
    questions: Annotated[
        Path | None, typer.Option("--questions", help="Question file (default: ../shared/eval/dev.jsonl).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N questions.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full record (every sample) to this file.")
    ] = None,
    skip: Annotated[
        str, typer.Option("--skip", help="Sections to leave out, comma-separated: page,cold,index,retrieval,answers,conversation,cached.")
    ] = "",
) -> None:
    """Measure start-up, indexing, retrieval and answering, next to raw llama-cpp-python and sentence-transformers."""
    from rag_eval.bench import DEFAULT_QUESTIONS, SECTIONS, format_table, run_bench

    skipped = [p.strip() for p in skip.split(",") if p.strip()]
    try:
        unknown = set(skipped) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"Unknown section(s) to skip: {', '.join(sorted(unknown))}.", f"Sections: {', '.join(SECTIONS)}.")
        report = run_bench(_settings(ctx), questions or DEFAULT_QUESTIONS, limit, skipped,
                           progress=lambda msg: typer.echo(msg, err=True))  # fmt: skip
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(report.header() + "\n")
    typer.echo(format_table(report.stats))
    typer.echo("\nratios: " + ", ".join(f"{k} {'-' if v is None else f'{v:.3g}'}" for k, v in report.ratios.items()))
    typer.echo(f"\nload average at the end {report.machine['load_after']}; {report.seconds:.0f} s in all")
    if json_out is not None:
        save_report(json_out, report.to_dict(), "Full record")


def bench_api_cmd(
    url: Annotated[str, typer.Option("--url", help="The running `rag serve`.")] = "http://127.0.0.1:7860",
    clients: Annotated[int, typer.Option("--clients", help="Concurrent clients, one question each.")] = 8,
    model: Annotated[str | None, typer.Option("--model", help="Chat model (default: the server's).")] = None,
    key: Annotated[str, typer.Option("--key", envvar="RAG_API_KEY", help="API key, if the server has one.")] = "",
) -> None:
    """Ask a running server from N clients at once; print answered / 429 / failed and p50/p95 latency."""
    from rag_eval.api_load import run_load

    report = run_load(url, clients, model, key)
    typer.echo("\n".join(report.lines()))
    if any(r.error for r in report.results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Entry point ("rag.commands" group): adds `rag eval ...` and `rag bench` to the product's CLI."""
    app.add_typer(eval_app, name="eval")
    app.command("bench")(bench_cmd)
    app.command("bench-api")(bench_api_cmd)
