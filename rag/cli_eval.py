"""`rag eval retrieval EVAL.jsonl`: score the product's own retrieval path against a question file.

Registered in rag/cli.py with `app.add_typer(eval_app, name="eval")`; it can
also run on its own:

    python -c "from rag.cli_eval import eval_app; eval_app()" retrieval eval/dev.jsonl --k 1,3,5,10
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rag import offline  # noqa: F401
from rag.errors import RagError

eval_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure the product against a question file (see shared/eval/README.md).",
)


@eval_app.callback()
def eval_main() -> None:
    """Measure the product against a question file (see shared/eval/README.md)."""
    # A callback keeps `retrieval` a sub-command even while it is the only one.


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


@eval_app.command("retrieval")
def retrieval_cmd(
    ctx: typer.Context,
    eval_file: Annotated[Path, typer.Argument(help="Question file, one JSON object a line.", metavar="EVAL.jsonl")],
    k: Annotated[str, typer.Option("--k", help="Cut-offs for hit@k and recall@k, comma-separated.")] = "1,3,5,10",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full report (every ranked passage) to this file.")
    ] = None,
    miss_k: Annotated[int, typer.Option("--miss-k", help="List the questions missed at hit@this k.")] = 5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Rank every question with the product's retriever; print hit@k, recall@k, MRR@10 and the misses."""
    from rag.evaluation import evaluate_retrieval, format_misses, format_table, load_questions, parse_ks
    from rag.pipeline import Pipeline, clean_question

    try:
        ks = parse_ks(k)
        questions = load_questions(eval_file)
        settings = _settings(ctx)
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
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        typer.echo(f"\nFull report: {json_out}", err=True)


@eval_app.command("answers")
def answers_cmd(
    ctx: typer.Context,
    eval_file: Annotated[Path, typer.Argument(help="Question file, one JSON object a line.", metavar="EVAL.jsonl")],
    model: Annotated[str | None, typer.Option("--model", help="Chat model (default: the configured one).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every answer, citation and passage here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Answer every question with the full pipeline; print key-term, refusal and citation metrics and timings."""
    from dataclasses import replace

    from rag.evaluation import evaluate_answers, format_answer_table, load_questions
    from rag.pipeline import Done, Pipeline

    try:
        questions = load_questions(eval_file)[:limit]
        settings = _settings(ctx)
        if model:
            settings = replace(settings, chat_model=model)
        pipeline = Pipeline(settings)
        pipeline.get_generator()  # load time is not part of any question's timings

        def ask(question: str):  # type: ignore[no-untyped-def]
            for event in pipeline.ask(question):
                if isinstance(event, Done):
                    return event.answer
            raise RuntimeError("the pipeline ended without an answer")

        def progress(i: int, n: int, r) -> None:  # type: ignore[no-untyped-def]
            if not quiet:
                mark = ("REFUSED" if r.refused else "ok") if not r.answerable else ("ok" if r.has_terms else "MISS")
                sys.stderr.write(f"[{i}/{n}] {r.id} {mark:<7} {r.timings.get('total', 0):5.1f}s {r.answer[:60]!r}\n")
                sys.stderr.flush()

        report = evaluate_answers(questions, ask, on_progress=progress)
    except RagError as exc:
        _fail(exc)
        return
    typer.echo(f"Answers on {eval_file} ({len(questions)} questions; chat model {settings.chat_model}, "
               f"embedder {settings.embed_model}, top_k {settings.top_k})\n")  # fmt: skip
    typer.echo(format_answer_table(report))
    missed = [r for r in report.results if r.answerable and not r.has_terms]
    if missed:
        typer.echo(f"\nAnswerable questions missing a key term ({len(missed)}):")
        for r in missed:
            typer.echo(f"  {r.id} [{r.type}] needs {r.must_include}: {' '.join(r.answer.split())[:100]}")
    if json_out is not None:
        data = report.to_dict()
        data.update(eval_file=str(eval_file), chat_model=settings.chat_model, embed_model=settings.embed_model)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        typer.echo(f"\nFull report: {json_out}", err=True)
