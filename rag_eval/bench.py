"""`rag bench`: how fast the product is, measured next to the raw libraries it runs on, in one run.

Sections (each a list of `Stat`s, printed as one table):

- page: `rag serve` started on an empty index folder (a temporary copy of the corpus), and
  the seconds until its chat page answers HTTP 200 (the index is built in the background);
- cold start: a fresh `rag ask --json` process on one question (wall time and
  its own timings), then each part loaded in this process from a warm disk;
- index: full build, one-file update and no-change run on a temporary copy of
  the corpus (the real corpus and index are never written), and the
  embedding throughput next to raw sentence-transformers `encode_document`
  on the same passages;
- retrieval: query latency over the questions with a cold query cache;
- answering: prompt tokens, time to first token, generation rate, total,
  each question followed by raw llama-cpp-python evaluating the identical
  token sequence (the chat-formatted prompt the product sent, captured at
  `Llama.generate`) with the same model file and settings, then greedily
  generating as many tokens as the product did;
- conversation: a second question after a first, counting the prompt tokens
  llama.cpp actually evaluated (its prefix cache keeps the system prompt);
- cached: each question on the ordinary path, then on the cached path
  (precomputed passage KV blocks, rag/answer/kvstore.py), back to back: tokens read
  before the first token, time to first token, and the store's size.

Ratios are per question (product / raw, measured back to back), so machine
load drifts affect both sides alike. `BenchReport.ratios` gathers the headline
figures of one run (`kv_ttft_ratio`, `embed_rate_ratio`, `page_ready_s`) for --json. Heavy libraries are imported inside the
functions that need them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag import offline  # noqa: F401
from rag.errors import RagError
from rag_eval import stats

if TYPE_CHECKING:
    from rag.answer.pipeline import Pipeline
    from rag.config import Settings
    from rag.index.embedding import Embedder
    from rag_eval.metrics import EvalQuestion

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "eval" / "dev.jsonl"
SECTIONS = ("page", "cold", "index", "retrieval", "answers", "conversation", "cached")
# Appended to one file of the temporary corpus copy for the one-file update.
UPDATE_TEXT = "\n\n补充说明：这一句由 rag bench 添加，用来测量只更新一个文件的时间。\n"
WARMUP_QUERY = "预热查询：加载分词词典"  # the first query of a process (jieba is loaded with the models)


class BenchError(RagError):
    """A step of the benchmark could not run (a `rag` subprocess failed, nothing to measure)."""


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """rag_eval.stats.percentile (linear interpolation), NaN instead of None so bench arithmetic stays float."""
    value = stats.percentile(values, q)
    return math.nan if value is None else value


def ratio(product: float | None, raw: float | None) -> float | None:
    """product / raw, None when either side is missing or raw is 0. ratio(1.1, 1.0) -> 1.1"""
    if product is None or raw is None or raw <= 0:
        return None
    return product / raw


def decode_rate(token_times: Sequence[float]) -> float | None:
    """Tokens per second after the first: (n - 1) / (t_last - t_first); None with fewer than 2 tokens.

    Example: decode_rate([10.0, 10.1, 10.2, 10.3]) -> 10.0 (3 tokens in 0.3 s)
    """
    if len(token_times) < 2 or token_times[-1] <= token_times[0]:
        return None
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share. common_prefix([1, 2, 3], [1, 2, 4, 5]) -> 2"""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Target:
    op: str  # "<=" or ">="
    value: float
    on: str = "median"  # which statistic the target applies to

    def met(self, stat: Stat) -> bool | None:
        got = getattr(stat, self.on)
        if got is None or math.isnan(got):
            return None
        return got <= self.value if self.op == "<=" else got >= self.value

    def __str__(self) -> str:
        return f"{self.on} {self.op} {_fmt_number(self.value)}"


@dataclass
class Stat:
    """One measured quantity: its samples and, when the issue set one, its target."""

    section: str
    name: str
    unit: str  # s, ms, tok, tok/s, passages/s, x (a ratio)
    samples: list[float]
    target: Target | None = None
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def met(self) -> bool | None:
        return self.target.met(self) if self.target else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = str(self.target) if self.target else None
        d.update(
            n=self.n, median=_nan_none(self.median), p90=_nan_none(self.p90), p95=_nan_none(self.p95), met=self.met
        )
        return d


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def stat(section: str, name: str, unit: str, samples: Sequence[float | None], target: Target | None = None,
         note: str = "") -> Stat:  # fmt: skip
    """A Stat from samples, dropping the missing ones (a refused question has no TTFT)."""
    return Stat(section, name, unit, [float(s) for s in samples if s is not None], target, note)


# ---------------------------------------------------------------- table


def _fmt_number(x: float) -> str:
    return f"{x:g}"


def format_value(value: float, unit: str) -> str:
    """A value in its unit, at a useful precision. format_value(0.0841, 'ms') -> '84 ms' (value in seconds)."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "ms":
        return f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "tok":
        return f"{value:.0f}"
    return f"{value:.1f} {unit}"


def format_table(stats: Sequence[Stat]) -> str:
    """Rows grouped by section: n, median, p90, p95, target and whether it is met."""
    header = ("section", "what", "n", "median", "p90", "p95", "target", "")
    rows: list[tuple[str, ...]] = []
    last = None
    for s in stats:
        many, unit = s.n > 1, s.unit
        target = ""
        if s.target:
            shown = format_value(s.target.value, unit)
            target = f"{'p50' if s.target.on == 'median' else s.target.on} {s.target.op} {shown}"
        mark = {True: "ok", False: "MISSED", None: ""}[s.met]
        rows.append((
            s.section if s.section != last else "",
            s.name + (f" ({s.note})" if s.note else ""),
            str(s.n),
            format_value(s.median, unit),
            format_value(s.p90, unit) if many else "",
            format_value(s.p95, unit) if many else "",
            target,
            mark,
        ))  # fmt: skip
        last = s.section
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4, 5}

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    for r in rows:
        if r[0] and len(out) > 2:
            out.append("")
        out.append(line(r))
    return "\n".join(out)


# ---------------------------------------------------------------- report


@dataclass
class BenchReport:
    machine: dict[str, Any]
    models: dict[str, Any]
    questions_file: str
    n_questions: int
    stats: list[Stat] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # per-question records, cold-start output, …
    started_at: str = ""
    seconds: float = 0.0

    def header(self) -> str:
        m, md = self.machine, self.models
        chat = md.get("chat", {})
        return (
            f"rag bench: {m['cores']} cores ({m.get('cpu', '?')}), load average {m['load_before']} at start; "
            f"chat model {chat.get('name')} ({chat.get('file')}, n_threads {chat.get('n_threads')}, "
            f"n_batch {chat.get('n_batch')}, n_ctx {chat.get('n_ctx')}), embedder {md.get('embed', {}).get('name')}; "
            f"{self.n_questions} questions from {self.questions_file}"
        )

    @property
    def ratios(self) -> dict[str, float | None]:
        return headline_ratios(self.details)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine, "models": self.models, "questions_file": self.questions_file,
            "n_questions": self.n_questions, "started_at": self.started_at, "seconds": self.seconds,
            "ratios": self.ratios, "stats": [s.to_dict() for s in self.stats], "details": self.details,
        }  # fmt: skip


def headline_ratios(details: dict[str, Any]) -> dict[str, float | None]:
    """The run's headline figures, None for a section that did not run (or had nothing to measure).

    kv_ttft_ratio: the median time to first token with the store on (`path="cached"`) over the
    median with it off (`path="ordinary"`), both over the same questions: every question that
    reached the model, whether the cached path served it or not. A question the store-on pipeline
    sends to the ordinary path (two-part questions unless kv_several_cached) counts with that
    path's first token, read from an empty KV cache like the ordinary side's; a cached try the
    checker rejected counts with its own first token, which the reader saw.
    kv_served_share: the share of those questions whose first try was the cached path.
    kv_key_terms_delta, kv_citation_precision_delta: cached minus ordinary, over all the questions
    of the section (key terms over the answerable ones; citation precision is the independent test).
    embed_rate_ratio: the product's embedding rate over raw sentence-transformers
    `encode_document` on the same texts; page_ready_s: `rag serve` on an empty index folder,
    spawn to HTTP 200.
    Example: cached TTFT [0.5, 1.0, 2.0] s and ordinary [6.0, 7.0, 9.0] s -> kv_ttft_ratio 1.0 / 7.0 = 0.143
    """
    section = details.get("cached", {})
    done = [r for r in section.get("records", []) if "skipped" not in r
            and r.get("cached_ttft") is not None and r.get("ordinary_ttft") is not None]  # fmt: skip
    quality = section.get("quality", {})

    def delta(key: str) -> float | None:
        a, b = quality.get("ordinary", {}).get(key), quality.get("cached", {}).get(key)
        return None if a is None or b is None else b - a

    index = details.get("index", {})
    return {
        "kv_ttft_ratio": ratio(_median_or_none([r["cached_ttft"] for r in done]),
                               _median_or_none([r["ordinary_ttft"] for r in done])),  # fmt: skip
        "kv_served_share": sum(r.get("path") == "cached" for r in done) / len(done) if done else None,
        "kv_key_terms_delta": delta("key_term_accuracy"),
        "kv_citation_precision_delta": delta("citation_precision_independent"),
        "embed_rate_ratio": ratio(index.get("product_passages_per_s"), index.get("raw_passages_per_s")),
        "page_ready_s": details.get("page", {}).get("ready_s"),
    }


def _median_or_none(values: Sequence[float]) -> float | None:
    return stats.percentile(values, 50) if values else None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "load_before": _loadavg(), "python": platform.python_version()}


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------- instrumentation


class TimedEmbedder:
    """Delegates to an Embedder, adding up the time spent in each method."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.document_seconds = 0.0
        self.documents = 0
        self.last_query_seconds = 0.0

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        t = time.perf_counter()
        out = self.inner.encode_documents(texts, progress)
        self.document_seconds += time.perf_counter() - t
        self.documents += len(texts)
        return out

    def encode_query(self, text: str) -> np.ndarray:
        t = time.perf_counter()
        out = self.inner.encode_query(text)
        self.last_query_seconds = time.perf_counter() - t
        return out


def clear_query_cache(embedder: object) -> None:
    """Empty the embedder's query cache (SentenceTransformerEmbedder keeps an lru_cache) so latency is cold."""
    cache = getattr(embedder, "_query", None)
    if cache is not None and hasattr(cache, "cache_clear"):
        cache.cache_clear()


@dataclass
class GenerationTrace:
    """What one `Llama.generate` call did: the exact prompt tokens, how many it evaluated, when tokens came."""

    prompt: list[int]
    cached_before: int  # tokens in the KV cache when the call started
    common_prefix: int  # leading tokens shared with what the cache held
    started: float
    prompt_evaluated: int = 0  # prompt tokens llama.cpp actually decoded (the rest came from the cache)
    tokens: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)

    @property
    def prompt_eval_seconds(self) -> float | None:
        return self.token_times[0] - self.started if self.token_times else None


class LlamaProbe:
    """Watches a llama_cpp.Llama: wraps its `generate` and `eval` on the instance (the class is untouched).

    `generate` receives the chat-formatted, tokenized prompt from
    create_chat_completion, so the trace holds exactly what the product sent.
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.calls: list[GenerationTrace] = []
        self._generate = llm.generate
        self._eval = llm.eval
        self._current: GenerationTrace | None = None
        llm.generate = self._traced_generate
        llm.eval = self._counted_eval

    def close(self) -> None:
        for name in ("generate", "eval"):
            self.llm.__dict__.pop(name, None)

    def _counted_eval(self, tokens: Sequence[int]) -> None:
        trace = self._current
        if trace is not None and not trace.tokens:
            trace.prompt_evaluated += len(tokens)
        self._eval(tokens)

    def _traced_generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
        llm = self.llm
        held = [int(t) for t in llm.input_ids[: llm.n_tokens]]
        prompt = [int(t) for t in tokens]
        trace = GenerationTrace(prompt, len(held), common_prefix(held, prompt), time.perf_counter())
        self.calls.append(trace)
        self._current = trace
        inner = self._generate(tokens, *args, **kwargs)
        try:
            for token in inner:
                trace.token_times.append(time.perf_counter())
                trace.tokens.append(int(token))
                yield token
        finally:
            inner.close()
            self._current = None


@dataclass
class RawRun:
    prompt_seconds: float  # eval of the whole prompt + the first greedy token
    token_times: list[float]
    tokens: list[int]


def raw_generate(llm: Any, prompt: Sequence[int], n_tokens: int) -> RawRun:
    """Raw llama-cpp-python: Llama.eval of the prompt from an empty cache, then n_tokens greedy tokens."""
    llm.reset()
    # One greedy sampler for the whole run, as Llama.generate sets up (without it, sample() builds
    # and frees a sampler chain for every token, which would make the raw side look slower).
    init_sampler = getattr(llm, "_init_sampler", None)
    if init_sampler is not None:
        llm._sampler = init_sampler(temp=0.0)
    try:
        t0 = time.perf_counter()
        llm.eval(list(prompt))
        token = llm.sample(temp=0.0)
        times, tokens = [time.perf_counter()], [int(token)]
        for _ in range(max(n_tokens, 1) - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0)
            times.append(time.perf_counter())
            tokens.append(int(token))
    finally:
        if init_sampler is not None:
            llm._sampler = None
    return RawRun(times[0] - t0, times, tokens)


# ---------------------------------------------------------------- sections


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a `rag` subprocess use exactly these settings."""
    import rag

    env = dict(os.environ)
    # The subprocess runs this code, not whatever checkout the `rag` script was installed from.
    root = str(Path(rag.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # a list setting (disabled_guards) reads back from a comma list
        env[f"RAG_{f.name.upper()}"] = "" if value is None else str(value)  # "" reads back as None
    return env


def _run_rag(
    args: list[str], env: dict[str, str], timeout: float = 900
) -> tuple[float, subprocess.CompletedProcess[str]]:
    script = Path(sys.executable).parent / "rag"  # the console script a user runs
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rag.cli"]
    t = time.perf_counter()
    out = subprocess.run([*command, *args], check=False, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise BenchError(
            f"`rag {' '.join(args[:2])}` failed with exit code {out.returncode}: {out.stderr.strip()[-500:]}",
            "Run that command by hand to see the whole error; `--skip` leaves a section out.",
        )
    return wall, out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_page(url: str, alive: Callable[[], bool], timeout: float, poll: float = 0.1) -> float | None:
    """Seconds until GET `url` answers 200; None when `alive()` turns False or `timeout` passes first."""
    import urllib.error
    import urllib.request

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout and alive():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # a loopback URL built here
                if response.status == 200:
                    return time.perf_counter() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(poll)
    return None


def bench_page_ready(settings: Settings, details: dict[str, Any], timeout: float = 300) -> list[Stat]:
    """`rag serve` on a temporary corpus copy with an empty index folder: spawn to the chat page's HTTP 200.

    The server is stopped as soon as the page answers (its background index build with it)."""
    script = Path(sys.executable).parent / "rag"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rag.cli"]
    with tempfile.TemporaryDirectory(prefix="rag-bench-page-") as tmp:
        corpus = Path(tmp) / "corpus"
        shutil.copytree(settings.corpus_dir, corpus, symlinks=False)
        port = _free_port()
        s = replace(settings, corpus_dir=corpus, index_dir=Path(tmp) / "index", host="127.0.0.1", port=port,
                    conversations_db=Path(tmp) / "conversations.sqlite3", collections_dir=Path(tmp) / "collections")  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.Popen([*command, "serve"], env=settings_env(s), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            ready = wait_for_page(f"http://127.0.0.1:{port}/", lambda: proc.poll() is None, timeout)
            spawn_to_ready = time.perf_counter() - t if ready is not None else None
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
    if spawn_to_ready is None:
        raise BenchError(f"`rag serve` on an empty index did not show its page within {timeout:.0f} s: {err.strip()[-500:]}",
                         "Run `rag serve` by hand to see why; `--skip page` leaves this section out.")  # fmt: skip
    details["page"] = {"ready_s": spawn_to_ready, "port": port}
    return [stat("page", "`rag serve`, empty index: spawn to the page's HTTP 200", "s", [spawn_to_ready], Target("<=", 15.0))]


def bench_cold_start(settings: Settings, question: str, details: dict[str, Any]) -> list[Stat]:
    wall, out = _run_rag(["ask", "--json", question], settings_env(settings))
    answer = json.loads(out.stdout)
    t = answer.get("timings", {})
    details["cold_start"] = {"question": question, "wall": wall, "timings": t, "prompt_tokens": answer.get("prompt_tokens"),
                             "completion_tokens": answer.get("completion_tokens")}  # fmt: skip
    startup = wall - t.get("total", 0.0)
    stats = [
        stat("cold start", "`rag ask --json`, spawn to exit", "s", [wall]),
        stat("cold start", "  start-up before ask (imports, loading index and models, exit)", "s", [startup]),
        stat("cold start", "  retrieval", "s", [t.get("retrieval")]),
        stat("cold start", "  first token", "s", [t.get("first_token")]),
    ]
    if "first_token" in t:
        stats.append(stat("cold start", "  spawn to first token", "s", [startup + t["first_token"]]))
    return stats


@dataclass
class Loaded:
    pipeline: Pipeline  # index, embedder and (when asked for) chat model loaded
    stats: list[Stat]


def bench_loads(settings: Settings, need_generator: bool) -> Loaded:
    """Load the parts the way the product does (`Pipeline.load`, warm disk): the time to 'ready'."""
    from rag.answer.pipeline import Pipeline

    pipeline = Pipeline(settings)
    t = time.perf_counter()
    seconds = pipeline.load(chat_model=need_generator)  # the chat model in a second thread, as the page does
    total = time.perf_counter() - t
    stats = [
        stat("cold start", "load question encoder in-process (onnxruntime, or torch if off)", "s", [seconds.get("embedder")]),
        stat("cold start", "load index in-process", "s", [seconds.get("index")]),
        stat("cold start", "load jieba's dictionary in-process", "s", [seconds.get("jieba")]),
        stat("cold start", "load chat model in parallel (incl. llama_cpp import)", "s", [seconds.get("chat model")]),
        stat("cold start", "model load to ready, warm disk (wall)", "s", [total], Target("<=", 5.0)),
    ]
    return Loaded(pipeline, stats)


def _one_file(corpus: Path) -> Path:
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in (".md", ".txt"))
    if not files:
        raise BenchError(f"{corpus} has no .md or .txt file to change for the one-file update.", "Use --skip index.")
    return files[0]


def bench_index(settings: Settings, embedder: Embedder, details: dict[str, Any], no_change_runs: int = 3) -> list[Stat]:
    """Full build, raw encode_document, one-file update and no-change runs on a temporary copy of the corpus."""
    from rag.index.build import build
    from rag.index.reader import Index
    from rag.ingest.chunking import piece_texts, search_text
    from rag.models import get_spec

    sha = get_spec(settings.embed_model).sha256
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        corpus, index_dir = Path(tmp) / "corpus", Path(tmp) / "index"
        shutil.copytree(settings.corpus_dir, corpus, symlinks=False)
        s = replace(settings, corpus_dir=corpus, index_dir=index_dir)

        timed = TimedEmbedder(embedder)
        full = build(s, lambda: timed, sha, full=True)
        product_rate = timed.documents / timed.document_seconds if timed.document_seconds else None

        chunks = Index.load(index_dir).chunks
        texts = [search_text(c) for c in chunks]  # the same texts the build embedded: chunks, then pieces
        texts += [t for c in chunks for t in piece_texts(c, settings.piece_chars)]
        raw_rate = None
        model = getattr(embedder, "_model", None)  # the SentenceTransformer inside SentenceTransformerEmbedder
        if getattr(embedder, "dtype", "float32") != "float32":
            model = None  # the product's model runs in bfloat16; raw is the library as it comes: float32
        if model is None and texts:  # raw is sentence-transformers itself, float32, as loaded by default
            import torch
            from sentence_transformers import SentenceTransformer

            from rag.models import locate

            torch.set_num_threads(settings.n_threads)
            model = SentenceTransformer(str(locate(settings.embed_model, settings.models_dir)), device="cpu",
                                        local_files_only=True)  # fmt: skip
        if model is not None and texts:
            t = time.perf_counter()
            model.encode_document(texts, batch_size=getattr(embedder, "batch_size", 16), normalize_embeddings=True,
                                  convert_to_numpy=True)  # fmt: skip
            raw_rate = len(texts) / (time.perf_counter() - t)

        changed = _one_file(corpus)
        with changed.open("a", encoding="utf-8") as fh:
            fh.write(UPDATE_TEXT)
        env = settings_env(s)
        wall_update, out = _run_rag(["index", "--json"], env)
        update = json.loads(out.stdout)
        no_change_walls, no_change_inner = [], []
        for _ in range(no_change_runs):
            wall, out = _run_rag(["index", "--json"], env)
            no_change_walls.append(wall)
            no_change_inner.append(json.loads(out.stdout)["seconds"])
    details["index"] = {
        "full_build": asdict(full), "embedded_passages": len(texts), "product_passages_per_s": product_rate,
        "raw_passages_per_s": raw_rate, "one_file_update": update, "one_file_update_wall": wall_update,
        "changed_file": changed.name, "no_change_walls": no_change_walls, "no_change_inner": no_change_inner,
    }  # fmt: skip
    return [
        stat("index", f"full build in-process, {full.chunks} chunks (model loaded)", "s", [full.seconds]),
        stat("index", "  embedding, product (texts/s: chunks and their pieces)", "texts/s", [product_rate]),
        stat("index", "  embedding, raw encode_document, same texts", "texts/s", [raw_rate]),
        stat("index", "  embedding rate product / raw (embed_rate_ratio)", "x", [ratio(product_rate, raw_rate)]),
        stat("index", f"`rag index`, one file changed ({update.get('embedded')} chunks embedded)", "s", [wall_update]),
        stat("index", "`rag index`, no change (spawn to exit)", "s", no_change_walls, Target("<=", 2.0)),
        stat("index", "  no change, inside build()", "s", no_change_inner),
    ]


def bench_retrieval(settings: Settings, index: Any, embedder: Embedder, questions: Sequence[str],
                    details: dict[str, Any]) -> list[Stat]:  # fmt: skip
    from rag.answer.pipeline import clean_question
    from rag.answer.retrieval import RetrievalParams, Retriever

    timed = TimedEmbedder(embedder)
    retriever = Retriever(index, timed, RetrievalParams.from_settings(settings))
    depth = max(settings.top_k, 3)  # what Pipeline.ask ranks
    t = time.perf_counter()
    retriever.rank(WARMUP_QUERY, depth)
    first = time.perf_counter() - t
    totals, embeds = [], []
    for q in questions:
        clear_query_cache(embedder)
        query = clean_question(q)
        t = time.perf_counter()
        retriever.rank(query, depth)
        totals.append(time.perf_counter() - t)
        embeds.append(timed.last_query_seconds)
    clear_query_cache(embedder)
    details["retrieval"] = {"first_query": first, "latency": totals, "embedding": embeds}
    return [
        stat("retrieval", "first query of the process", "ms", [first]),
        stat("retrieval", "query latency (embedding + FAISS + BM25 + fusion)", "ms", totals, Target("<=", 0.150)),
        stat("retrieval", "  query embedding", "ms", embeds),
        stat("retrieval", "  FAISS + BM25 + fusion", "ms", [a - b for a, b in zip(totals, embeds)]),
    ]


@dataclass
class AskTiming:
    trace: GenerationTrace | None
    retrieved_at: float
    first_token_at: float | None
    timings: dict[str, float]
    text: str


def timed_ask(pipeline: Pipeline, probe: LlamaProbe, question: str, history: Sequence[Any] = ()) -> AskTiming:
    before = len(probe.calls)
    # The cached path has its own section; here the ordinary path is compared with raw llama.cpp.
    answer, retrieved_at, first_at = _stream(pipeline, question, history, "ordinary")
    # The first generation is the one whose first token the reader saw (a self-refusal may be retried).
    trace = probe.calls[before] if len(probe.calls) > before else None
    return AskTiming(trace, retrieved_at, first_at, dict(answer.timings), answer.text)


def bench_answers(settings: Settings, pipeline: Pipeline, llm: Any, probe: LlamaProbe, raw: Any,
                  questions: Sequence[tuple[str, str]], details: dict[str, Any],
                  progress: Callable[[str], None]) -> list[Stat]:  # fmt: skip
    """Each question from an empty KV cache, then raw llama-cpp-python on the identical tokens."""
    records: list[dict[str, Any]] = []
    for i, (qid, q) in enumerate(questions, start=1):
        llm.reset()  # both sides evaluate the whole prompt; reuse is measured in the conversation section
        a = timed_ask(pipeline, probe, q)
        rec: dict[str, Any] = {"id": qid, "question": q, "timings": a.timings}
        if a.trace is None or a.first_token_at is None or not a.trace.tokens:
            rec["skipped"] = "retrieval found no evidence: answered with the refusal, no generation"
            records.append(rec)
            progress(f"[{i}/{len(questions)}] {qid} no generation (refused before the model)")
            continue
        tr = a.trace
        r = raw_generate(raw, tr.prompt, len(tr.tokens))
        rec.update(
            prompt_tokens=len(tr.prompt), prompt_evaluated=tr.prompt_evaluated, completion_tokens=len(tr.tokens),
            ttft=a.first_token_at - a.retrieved_at, product_prompt_eval=tr.prompt_eval_seconds,
            raw_prompt_eval=r.prompt_seconds, product_rate=decode_rate(tr.token_times), raw_rate=decode_rate(r.token_times),
            same_tokens=r.tokens == tr.tokens, total=a.timings.get("total"), first_token_from_question=a.timings.get("first_token"),
        )  # fmt: skip
        rec["ttft_ratio"] = ratio(rec["ttft"], rec["raw_prompt_eval"])
        rec["rate_ratio"] = ratio(rec["product_rate"], rec["raw_rate"])
        records.append(rec)
        progress(
            f"[{i}/{len(questions)}] {qid} prompt {rec['prompt_tokens']} tok, TTFT {rec['ttft']:.2f} s "
            f"(raw {r.prompt_seconds:.2f} s), {rec['completion_tokens']} tok at "
            f"{rec['product_rate'] or 0:.1f}/s (raw {rec['raw_rate'] or 0:.1f}/s)"
        )
    details["answers"] = records
    done = [r for r in records if "skipped" not in r]

    def col(key: str) -> list[float | None]:
        return [r.get(key) for r in done]

    note = f"{len(records) - len(done)} refused before generation" if len(done) < len(records) else ""
    return [
        stat("answering", "prompt tokens per answer", "tok", col("prompt_tokens"), Target("<=", 650), note),
        stat("answering", "completion tokens", "tok", col("completion_tokens")),
        stat("answering", "time to first token (after retrieval)", "s", col("ttft")),
        stat("answering", "  of which inside Llama.generate", "s", col("product_prompt_eval")),
        stat("answering", "  raw Llama.eval of the same tokens + 1st token", "s", col("raw_prompt_eval")),
        stat("answering", "  TTFT / raw prompt eval", "x", col("ttft_ratio"), Target("<=", 1.10)),
        stat("answering", "generation rate, product", "tok/s", col("product_rate")),
        stat(
            "answering",
            "  raw greedy generation, same token count",
            "tok/s",
            col("raw_rate"),
            note=f"same tokens as the product in {sum(bool(r['same_tokens']) for r in done)}/{len(done)}",
        ),
        stat("answering", "  generation rate product / raw", "x", col("rate_ratio"), Target(">=", 0.95)),
        stat("answering", "first token, from the question", "s", col("first_token_from_question")),
        stat("answering", "total time per answer", "s", col("total")),
    ]


def bench_conversation(pipeline: Pipeline, llm: Any, probe: LlamaProbe, first: str, second: str,
                       details: dict[str, Any]) -> list[Stat]:  # fmt: skip
    """Ask `second` after `first` in one conversation: how much of its prompt did llama.cpp evaluate?"""
    from rag.answer.pipeline import Turn
    from rag.answer.prompting import SYSTEM_PROMPT

    llm.reset()
    a = timed_ask(pipeline, probe, first)
    history = [Turn(first, a.text)]
    b = timed_ask(pipeline, probe, second, history)
    if a.trace is None or b.trace is None:
        details["conversation"] = {"skipped": "a question was refused before generation"}
        return []
    system_tokens = len(llm.tokenize(SYSTEM_PROMPT.encode("utf-8"), add_bos=False, special=False))
    shared = common_prefix(a.trace.prompt, b.trace.prompt)
    # Not re-evaluated: the shared prefix covers the system prompt and only the rest was decoded
    # (llama-cpp-python replays one cached token when the whole prompt is cached).
    reused = shared >= system_tokens and b.trace.prompt_evaluated <= len(b.trace.prompt) - shared + 1
    details["conversation"] = {
        "first": first, "second": second, "first_prompt_tokens": len(a.trace.prompt),
        "first_evaluated": a.trace.prompt_evaluated, "second_prompt_tokens": len(b.trace.prompt),
        "second_evaluated": b.trace.prompt_evaluated, "shared_prefix": shared, "cache_common_prefix": b.trace.common_prefix,
        "system_prompt_tokens": system_tokens,
        "system_prompt_reevaluated": not reused,
        "second_ttft": (b.first_token_at - b.retrieved_at) if b.first_token_at else None,
    }  # fmt: skip
    return [
        stat("conversation", "2nd question: prompt tokens", "tok", [len(b.trace.prompt)]),
        stat(
            "conversation",
            "  prefix shared with the 1st (system prompt ~" + str(system_tokens) + " tok)",
            "tok",
            [shared],
        ),
        stat(
            "conversation",
            "  prompt tokens llama.cpp evaluated",
            "tok",
            [b.trace.prompt_evaluated],
            note="system prompt " + ("not re-evaluated" if reused else "RE-EVALUATED"),
        ),
        stat("conversation", "  time to first token (after retrieval)", "s", [details["conversation"]["second_ttft"]]),
    ]


def _stream(pipeline: Pipeline, question: str, history: Sequence[Any], path: str) -> tuple[Any, float, float | None]:
    """Ask and time it: (the answer, when the passages were retrieved, when the first token came)."""
    from rag.answer.pipeline import Done, Retrieved, Token

    retrieved_at, first_at, answer = 0.0, None, None
    for event in pipeline.ask(question, history, path=path):
        now = time.perf_counter()
        if isinstance(event, Retrieved):
            retrieved_at = now
        elif isinstance(event, Token) and first_at is None:
            first_at = now
        elif isinstance(event, Done):
            answer = event.answer
    assert answer is not None
    return answer, retrieved_at, first_at


def _ask_timed(pipeline: Pipeline, question: str, path: str) -> tuple[Any, float | None]:
    """The answer, and the seconds from the retrieved passages to the first streamed token."""
    answer, retrieved_at, first_at = _stream(pipeline, question, (), path)
    return answer, (first_at - retrieved_at) if first_at is not None else None


def _path_quality(results: Sequence[Any]) -> dict[str, float | None]:
    """Key terms, refusals and citation precision of one path's answers (rag_eval.metrics)."""
    from rag_eval.metrics import AnswerMetrics

    m = AnswerMetrics.of(results)
    return {"key_term_accuracy": m.key_term_accuracy, "refusal_accuracy": m.refusal_accuracy,
            "citation_precision_independent": m.citation_precision_independent,
            "citation_precision": m.citation_precision, "questions": m.questions}  # fmt: skip


def bench_cached(settings: Settings, pipeline: Pipeline, llm: Any, questions: Sequence[EvalQuestion],
                 details: dict[str, Any], progress: Callable[[str], None]) -> list[Stat]:  # fmt: skip
    """Per question: the ordinary path, then the store-on pipeline (`path="cached"`), each from
    an empty KV cache of the ordinary model, so a question the store-on pipeline answers the
    ordinary way pays that path's whole prompt (not llama.cpp's prefix cache of the run before);
    each answer scored on key terms and citations (rag_eval.metrics.score_answer)."""
    from rag.answer import kvstore, prompting
    from rag_eval.metrics import score_answer

    chunks = pipeline.get_index().readable(settings.join_max_chars)
    st = kvstore.status(settings, chunks)
    why_not = "" if st.complete else st.line()
    if not settings.kv_cache:
        why_not = "the passage KV store is off; set kv_cache = true (or RAG_KV_CACHE=1), then run: rag index --kv"
    if not why_not and pipeline.get_cached() is None:
        why_not = f"the cached path cannot run: {pipeline.kv_unavailable}"
    if why_not:  # measured when it can be; the other sections stand on their own
        details["cached"] = {"skipped": why_not}
        progress(f"cached: skipped ({why_not})")
        return []
    store = kvstore.KVStore(kvstore.store_dir(settings))
    keys = {kvstore.block_key(c, settings.kv_block_tokens) for c in chunks}
    store_tokens = sum(store.block_tokens(k) for k in keys)
    records: list[dict[str, Any]] = []
    scored: dict[str, list[Any]] = {"ordinary": [], "cached": []}
    for i, q in enumerate(questions, start=1):
        qid = q.id
        llm.reset()
        o, o_ttft = _ask_timed(pipeline, q.question, "ordinary")
        llm.reset()
        c, c_ttft = _ask_timed(pipeline, q.question, "cached")
        so, sc = score_answer(q, o), score_answer(q, c)
        scored["ordinary"].append(so)
        scored["cached"].append(sc)
        if o_ttft is None or c_ttft is None or not o.tries:  # a refusal before the model streams its text at once
            records.append({"id": qid, "question": q.question, "skipped": "refused before generation"})
            progress(f"[{i}/{len(questions)}] {qid} no generation (refused before the model)")
            continue
        once = c.tries == ["cached"]
        rec = {
            # the path of the first try, whose first token cached_ttft times (a rejected cached
            # answer is written again on the ordinary path: tries ["cached", "ordinary"])
            "id": qid, "question": q.question, "type": q.type, "path": (c.tries or [c.path])[0], "tries": c.tries,
            "several": prompting.asks_several_things(q.question),
            "ordinary_ttft": o_ttft, "cached_ttft": c_ttft,
            "ttft_ratio": ratio(c_ttft, o_ttft), "ordinary_prompt_tokens": o.prompt_tokens,
            # token counts and rate describe the cached generation only when it was the only one
            "cached_prompt_tokens": c.prompt_tokens if once else None, "cached_tokens": c.cached_tokens if once else None,
            "ordinary_total": o.timings.get("total"), "cached_total": c.timings.get("total"),
            "cached_rate": (c.completion_tokens - 1) / (c.timings["generation"] - c_ttft)
            if once and c.completion_tokens > 1 and c.timings.get("generation", 0) > c_ttft else None,
            "same_answer": o.raw_text == c.raw_text, "ordinary_answer": o.raw_text, "cached_answer": c.raw_text,
            "answerable": q.answerable, "ordinary_terms": so.has_terms, "cached_terms": sc.has_terms,
            "ordinary_refused": so.refused, "cached_refused": sc.refused,
            "ordinary_citations": [bool(x["grounded"]) for x in so.citations],
            "cached_citations": [bool(x["grounded"]) for x in sc.citations],
        }  # fmt: skip
        records.append(rec)
        progress(f"[{i}/{len(questions)}] {qid} TTFT ordinary {o_ttft:.2f} s ({o.prompt_tokens} tok read), "
                 f"{c.path} {c_ttft:.2f} s ({c.prompt_tokens} tok read, {c.cached_tokens} restored)")  # fmt: skip
    done = [r for r in records if "skipped" not in r]
    served = [r for r in done if r["path"] == "cached"]
    per_token = st.bytes / store_tokens / 1000 if store_tokens else None
    quality = {path: _path_quality(rs) for path, rs in scored.items()}
    details["cached"] = {"records": records, "quality": quality,
                         "store_bytes": st.bytes, "store_tokens": store_tokens, "blocks": st.blocks}  # fmt: skip
    ratios = headline_ratios(details)

    def col(key: str, rows: list[dict[str, Any]] = served) -> list[float | None]:
        return [r.get(key) for r in rows]

    def near(delta: float | None) -> float | None:
        return None if delta is None else abs(delta)

    return [
        stat("cached", "answers served by the cached path", "tok", [len(served)], note=f"of {len(done)} generated"),
        stat("cached", "tokens read before the first token, ordinary", "tok", col("ordinary_prompt_tokens", done)),
        stat("cached", "tokens read before the first token, cached", "tok", col("cached_prompt_tokens")),
        stat("cached", "  passage tokens restored from the store", "tok", col("cached_tokens")),
        stat("cached", "TTFT ordinary (after retrieval, empty KV cache)", "s", col("ordinary_ttft", done)),
        stat("cached", "TTFT store on, all generated (after retrieval)", "s", col("cached_ttft", done)),
        stat("cached", "TTFT cached, served cached (after retrieval)", "s", col("cached_ttft"), Target("<=", 1.5)),
        stat("cached", "  TTFT cached / ordinary, served cached", "x", col("ttft_ratio"), Target("<=", 0.2)),
        stat("cached", "  kv_ttft_ratio: median store on / median ordinary, all generated", "x",
             [ratios["kv_ttft_ratio"]], Target("<=", 0.25), note=f"over {len(done)} questions"),
        stat("cached", "key terms, ordinary path", "x", [quality["ordinary"]["key_term_accuracy"]]),
        stat("cached", "key terms, store on", "x", [quality["cached"]["key_term_accuracy"]]),
        stat("cached", "  |key terms store on - ordinary|", "x", [near(ratios["kv_key_terms_delta"])], Target("<=", 0.02)),
        stat("cached", "citation precision (independent), ordinary path", "x",
             [quality["ordinary"]["citation_precision_independent"]]),
        stat("cached", "citation precision (independent), store on", "x",
             [quality["cached"]["citation_precision_independent"]]),
        stat("cached", "  |citation precision store on - ordinary|", "x",
             [near(ratios["kv_citation_precision_delta"])], Target("<=", 0.02)),
        stat("cached", "generation rate, cached path", "tok/s", col("cached_rate")),
        stat("cached", "total per answer, ordinary", "s", col("ordinary_total", done)),
        stat("cached", "total per answer, cached", "s", col("cached_total")),
        stat("cached", "same answer text on both paths", "tok", [sum(bool(r["same_answer"]) for r in served)],
             note=f"of {len(served)}"),
        stat("cached", f"store: {st.blocks} blocks, {store_tokens} tokens, {st.bytes / 1e6:.0f} MB; KB per token",
             "KB", [per_token], Target("<=", 16.0)),
    ]


# ---------------------------------------------------------------- the whole run


def run_bench(
    settings: Settings,
    questions_file: Path = DEFAULT_QUESTIONS,
    limit: int | None = None,
    skip: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _msg: None,
) -> BenchReport:
    from rag.models import locate
    from rag_eval.metrics import load_questions

    t_start = time.perf_counter()
    questions = load_questions(questions_file)[: limit or None]
    chat_path = locate(settings.chat_model, settings.models_dir)
    report = BenchReport(
        machine=machine_info(),
        models={
            "chat": {
                "name": settings.chat_model,
                "file": chat_path.name,
                "bytes": chat_path.stat().st_size,
                "n_threads": settings.n_threads,
                "n_batch": settings.n_batch,
                "n_ctx": settings.n_ctx,
                "temperature": settings.temperature,
                "max_answer_tokens": settings.max_answer_tokens,
            },
            "embed": {"name": settings.embed_model},
        },
        questions_file=str(questions_file),
        n_questions=len(questions),
        started_at=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    stats, details = report.stats, report.details
    asks_model = "answers" not in skip or "conversation" not in skip or "cached" not in skip

    if "page" not in skip:  # first, with the machine as quiet as this run gets
        progress("page: `rag serve` on an empty index, until its page answers…")
        stats += bench_page_ready(settings, details)
    if "cold" not in skip:  # first, before this process has imported any model library
        progress("cold start: a fresh `rag ask --json` process…")
        stats += bench_cold_start(settings, questions[0].question, details)
    progress("loading the models in this process…")
    loaded = bench_loads(settings, need_generator=asks_model or "cold" not in skip)  # ready = both models
    if "cold" not in skip:
        stats += loaded.stats
    if "index" not in skip:
        progress("index: full build, raw encode_document, one-file update, no-change runs (temporary copy)…")
        from rag.index.embedding import OnnxQueryEmbedder

        embedder = loaded.pipeline.get_embedder()  # passages: sentence-transformers, loaded before the clock starts
        stats += bench_index(settings, embedder.documents() if isinstance(embedder, OnnxQueryEmbedder) else embedder,
                             details)  # fmt: skip
    if "retrieval" not in skip:
        progress(f"retrieval: {len(questions)} queries…")
        stats += bench_retrieval(settings, loaded.pipeline.get_index(), loaded.pipeline.get_embedder(),
                                 [q.question for q in questions], details)  # fmt: skip
    if asks_model:
        from llama_cpp import Llama

        pipeline = loaded.pipeline
        llm = pipeline.get_generator()._llm  # type: ignore[attr-defined]  # the product's Llama, watched by the probe
        raw = Llama(model_path=str(chat_path), n_ctx=settings.n_ctx, n_threads=settings.n_threads,
                    n_threads_batch=settings.n_threads, n_batch=settings.n_batch, verbose=False)  # fmt: skip
        probe = LlamaProbe(llm)
        try:
            if "answers" not in skip:
                progress(f"answering: {len(questions)} questions, each followed by raw llama-cpp-python…")
                stats += bench_answers(settings, pipeline, llm, probe, raw,
                                       [(q.id, q.question) for q in questions], details, progress)  # fmt: skip
            if "conversation" not in skip:
                answered = [r["question"] for r in details.get("answers", []) if "skipped" not in r]
                pair = (answered + [q.question for q in questions if q.question not in answered])[:2]
                if len(pair) == 2:
                    progress("conversation: a second question after a first…")
                    stats += bench_conversation(pipeline, llm, probe, pair[0], pair[1], details)
            if "cached" not in skip:
                progress(f"cached: {len(questions)} questions, each on the ordinary then the cached path…")
                stats += bench_cached(settings, pipeline, llm, questions, details, progress)
        finally:
            probe.close()
            raw.close()
    report.machine["load_after"] = _loadavg()
    report.seconds = time.perf_counter() - t_start
    return report
