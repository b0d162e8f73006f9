"""Every default in one visible block.

Settings come from, in rising priority: the defaults below, a TOML file
(`rag.toml` in the working directory, or the file named by RAG_CONFIG),
environment variables `RAG_<FIELD>` (e.g. RAG_TOP_K=8), and CLI flags.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from rag.errors import ConfigError

# Settings that are tables in rag.toml, not single values (and so have no RAG_* variable).
TABLE_SETTINGS = ("collections",)


def _default_cache_dir() -> Path:
    # Outside the repo so a fresh clone (and CI) reuses multi-GB models.
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rag-chat"


@dataclass(frozen=True)
class CollectionSpec:
    """A collection declared in rag.toml: `[collections.contracts]` with `corpus = "..."`."""

    name: str
    corpus_dir: Path
    index_dir: Path | None = None  # None: index_dir/collections/NAME


@dataclass(frozen=True)
class Settings:
    # --- where things live ---
    corpus_dir: Path = Path("corpus")
    index_dir: Path = Path("index")
    cache_dir: Path = field(default_factory=_default_cache_dir)

    # --- collections (rag/collections.py): named pairs of a corpus folder and its index ---
    # "default" is corpus_dir + index_dir above, so a setup with one folder never sees collections.
    collection: str = "default"  # the one questions search (rag --collection NAME, RAG_COLLECTION)
    # Each sub-folder of this folder is a collection of that name; its index goes to
    # index_dir/collections/NAME. Beside corpus/, not inside it: the default collection reads
    # every file under corpus_dir.
    collections_dir: Path = Path("collections")
    # Declared in rag.toml as [collections.NAME] with corpus = "..." (and optionally index = "...").
    collections: tuple[CollectionSpec, ...] = ()
    # Saved chats and answer feedback (rag/conversations.py). Unset: conversations.sqlite3 beside
    # the index folder (its parent), so a test's temporary index keeps its chats with it.
    conversations_db: Path | None = None

    # --- models (names from the registry in rag/models.py) ---
    embed_model: str = "embeddinggemma-300m"
    # Questions are embedded by an ONNX export of the embedding model (made by `rag models fetch`),
    # which loads without torch: model load to ready 6.5 s -> ~2 s, the same vectors. Passages are
    # always embedded by sentence-transformers. Off: questions go through sentence-transformers too.
    onnx_queries: bool = True
    # Passages through that ONNX export too (with the document prompt): the same vectors as
    # sentence-transformers float32 and a 4x faster load, but no more passages per CPU-second, and
    # bfloat16 below is ~3x faster where the CPU has it (docs/measurements.md, "Fast by default").
    onnx_passages: bool = False
    # Passages through sentence-transformers in this type: "auto" = bfloat16 where the CPU computes
    # it in hardware (AMX or AVX-512 BF16), else float32. Questions stay float32 (ONNX).
    embed_dtype: str = "auto"
    chat_model: str = "qwen2.5-1.5b"

    # --- loading documents ---
    max_file_mb: float = 50.0  # larger files are skipped and reported, never half-read

    # --- chunking (characters; Chinese runs ~1.9 chars per model token) ---
    # Measured on the dev questions (rag eval retrieval): 480/100 ties 360/80 on hit@5 and
    # recall@5, beats 260/60, and keeps a fact and its subject in one chunk more often.
    chunk_size: int = 480  # ~250 tokens
    chunk_overlap: int = 100  # roughly one sentence, so a fact cut at a border survives

    # --- vector store (rag/index/store.py; docs/scaling.md) ---
    # "faiss": flat FAISS files in each build folder: exact search, nothing to run, the figures measured
    # in the README. "milvus": a Milvus collection per build (pip install .[scale]), for an index that
    # outgrows one process's memory or is shared by several servers. Lexical search stays BM25 either way.
    vector_store: str = "faiss"
    # A path ending in .db is Milvus Lite: a local folder, opened by one process at a time. http://host:19530
    # is a Milvus server. Empty: <index_dir>/milvus.db, inside the index folder, so it moves with it.
    milvus_uri: str = ""
    # `rag index --ray` (rag/index/distributed.py): Ray actors embed the batches, each loading the model.
    # Empty address: start Ray inside this process; "ray://host:10001" or "auto" joins a cluster.
    ray_address: str = ""
    ray_workers: int = 2  # one per core here; on a cluster, one per machine (each embeds with n_threads)

    # --- retrieval ---
    top_k: int = 5  # passages given to the model
    candidates: int = 100  # depth of each ranked list before fusion (100 vs 50: recall@5 +0.013)
    # Each chunk's sentences are also embedded in pieces of up to piece_chars characters (with the
    # chunk's heading path), and a chunk's dense score is its best piece's when that is higher: a
    # question about one sentence of a chunk on something else finds it. dev recall@5 0.938 -> 0.950,
    # English MRR@10 0.810 -> 0.917; costs ~5 more vectors per chunk and ~75% more embedding time at
    # index build (README, "What was tried"). 0: chunks only. Changing it rebuilds the index.
    piece_chars: int = 50
    piece_candidates: int = 500  # pieces looked up per question (~5 per chunk: as deep as `candidates`)
    # "zscore": each list's scores standardised over its candidates, then summed with the weights;
    # "rrf": reciprocal rank fusion. zscore keeps how far a clear winner stands out, which rank
    # fusion throws away: MRR@10 0.816 -> 0.908 on the dev questions (README, "What was tried").
    fusion: str = "zscore"
    rrf_k: int = 60  # the usual RRF constant (fusion = "rrf")
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    # At most this many of the first top_k passages come from one document, so sources that
    # state the same fact (or disagree about it) both reach the answer. 0 = no limit.
    per_doc_cap: int = 2
    # A query that asks several questions ("…在哪里举行？…是谁？") is ranked part by part and the
    # passages of the parts taken in turn, so each part's passage reaches the model
    # (rag/answer/retrieval.py question_parts; docs/measurements.md, "Two-part questions").
    split_questions: bool = True
    # A chunk cut mid-sentence is given to the model joined with the next chunk of its section
    # when the two span at most this many characters (0: never). Ranking is unchanged; a chunk
    # inside a passage already given is not given again. recall@5 0.925 -> 0.938, passages
    # 313 -> 354 characters on average (README, "What was tried").
    join_max_chars: int = 700
    # The passages ranked after top_k, down to this rank, are read (not shown to the model) for a
    # source that dates a release differently from the answer; such a passage is cited in the
    # "sources differ" note. A lone dissenting source tends to rank 6-9th behind the majority.
    conflict_depth: int = 10
    # Below this cosine similarity (best dense hit) and with no lexical match,
    # retrieval reports "no evidence" and the answer refuses instead of guessing.
    min_dense_score: float = 0.25

    # --- answer guards (rag/guards.py) ---
    # Rules that repair or refuse an answer, turned off by name ("echo,focus_retry"; RAG_DISABLED_GUARDS).
    # All on by default; `rag eval ablation` measures what each adds (docs/measurements.md, "Guard ablation").
    disabled_guards: tuple[str, ...] = ()
    # answerable_check: an answer is refused when no cited passage gets P(yes) >= this from the chat
    # model asked "does the passage answer this exact question?" (rag/answer/answerable.py).
    # 0 scores every answer (Answer.answerable_score) and refuses none: how thresholds are measured.
    # Negative: the check does not run. Off by default until dev and English are measured with it
    # (RGB subset: refusal 0.35 -> 0.80 at 0.5, false refusal unchanged; +13 s an answer; docs/measurements.md).
    answerable_min: float = -1.0

    # --- generation ---
    n_ctx: int = 4096
    n_threads: int = 2
    n_batch: int = 512
    max_answer_tokens: int = 384
    temperature: float = 0.0  # deterministic answers are easier to check and test
    # Each passage is cut to the sentences around the query's terms. Prompt tokens are most of the
    # wait for the first word (~90 a second on 2 cores), so a question that asks one thing gets a
    # lean prompt: passage [1] cut to lean_first_chars, the others to lean_later_chars, each headed
    # by its own heading only (~600 prompt tokens instead of ~1040). A question that asks two things
    # or compares ("…？…？", 分别, 相比, "…, and what…") gets every passage at passage_chars with its
    # full source line: its second half is often in another passage, and the lean prompt lost it
    # (README, "Lean prompts"). lean_prompts = false gives every question the full prompt.
    passage_chars: int = 300
    lean_prompts: bool = True
    lean_first_chars: int = 290
    lean_later_chars: int = 120
    prompt_token_budget: int = 1400  # tokens of passages at most; leaves room to answer

    # --- where the chat model runs (rag/llm/server.py) ---
    # "" = in this process through llama.cpp (chat_model above). A URL such as http://127.0.0.1:8080
    # sends the chat to that OpenAI-compatible server (llama.cpp's or llama-cpp-python's server, vLLM)
    # instead, so one served model can answer for many processes or sit on a bigger machine. The
    # passage KV store (kv_cache) needs the model in this process, so it is off with a server.
    llm_url: str = ""
    # The model name sent to the server; "" = chat_model. When it names a model of the registry that
    # is installed here, its vocabulary (read without the weights) lets English answers ban Chinese
    # tokens over HTTP too (logit_bias); otherwise that ban is skipped.
    llm_model: str = ""
    llm_api_key: str = ""  # sent as "Authorization: Bearer ..."; "" = none (a local server needs none)
    llm_connect_timeout_s: float = 5.0  # a server on this machine or the LAN answers a connect in ms
    # The longest wait for the next piece of an answer. The first piece comes after the whole prompt
    # is read (~7 s for 1.5B on 2 cores, longer on a busy server), so a minute, not seconds.
    llm_timeout_s: float = 60.0

    # --- passage KV store (rag/answer/kvstore.py; issue #8) ---
    # Each passage's KV cache is computed once, so a question only makes the model read the labels
    # and the question (~40 tokens instead of ~650): first token ~1 s instead of ~7 s. Costs disk
    # (~15 KB per corpus token with q8_0, bounded by kv_store_max_mb) and one forward pass over the
    # corpus. On by default since `rag serve` computes it in the background after the index, at low
    # priority (background_nice) on its own copy of the model context, pausing while a question is
    # answered, so answers never wait behind it; the ordinary path answers until it is complete.
    kv_cache: bool = True
    # The store's disk use at most (MB); the build stops there and questions whose passages are not
    # stored take the ordinary path. ~4 MB per passage of ~250 tokens: the 203-chunk corpus is ~0.8 GB.
    kv_store_max_mb: int = 2048
    kv_cache_type: str = "q8_0"  # half of f16's size; q4_0 broke the RoPE shift that places the blocks
    kv_block_tokens: int = 320  # a block is the whole cleaned chunk (~250 tokens) and its header, cut here
    # The best passage goes last, nearest the question, numbered by place ([5] of 5): key terms 0.80 on 20 dev
    # questions, as the ordinary path; best first 0.60, best last but numbered by rank 0.75 (README).
    kv_order: str = "best_last"  # or best_first
    # A question that asks two things or compares (prompting.asks_several_things) on the cached path
    # too (true) or on the ordinary path (false). On 70 dev questions the cached path did better on
    # the two-part ones (key terms 0.81 vs 0.74), and routing them ordinary left the store-on key terms
    # 0.048 below the ordinary path's instead of 0.016 (docs/kv-store.md).
    kv_several_cached: bool = True

    # --- background work (rag/priority.py) ---
    # How much lower than answering the background builds run (the first index build of
    # `rag serve`, the passage KV store): Linux nice steps; 15 leaves a question ~97% of both
    # cores while a build wants them too. 0 = same priority.
    background_nice: int = 15

    # --- UI and HTTP API (one server: the page at /, the OpenAI-compatible API at /v1; docs/api.md) ---
    host: str = "127.0.0.1"  # never listen beyond this machine unless asked
    port: int = 7860
    # A bearer token every /v1 call must send (Authorization: Bearer ...); "" = no key. Set it
    # (RAG_API_KEY) before listening beyond 127.0.0.1: `rag serve` warns when it is missing then.
    api_key: str = ""
    # API requests that may wait behind the answer being generated; one more gets 429. One model
    # answers one question at a time (~5-15 s each with the default model on 2 cores), so 16
    # waiting is already minutes of waiting; past it a client is better told to retry.
    api_queue_limit: int = 16
    # Largest /v1 request body: a question is at most 2000 characters and only the last turns of
    # `messages` are read, so 1 MB is generous and still stops a client from filling memory.
    api_max_body_kb: int = 1024

    @property
    def conversations_path(self) -> Path:
        return self.conversations_db or Path(self.index_dir).parent / "conversations.sqlite3"

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def wheels_dir(self) -> Path:
        return self.cache_dir / "wheels"


def _coerce(name: str, raw: object, typ: type) -> object:
    """A setting from TOML or the environment as its declared type, refused with the expected form when it does not parse."""
    if name == "collections":
        return _collection_specs(raw)
    try:
        if typ == "Path | None":
            return Path(str(raw)).expanduser() if str(raw).strip() else None
        if typ is Path or typ == "Path":
            return Path(str(raw)).expanduser()
        if typ in (int, "int"):
            return int(str(raw))  # str() first: 4.5 and true are errors, not 4 and 1
        if typ in (bool, "bool"):
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError("expected true or false (1/0)")
            return text in ("1", "true", "yes", "on")
        if typ in (float, "float"):
            return float(raw)  # type: ignore[arg-type]
        if typ == "tuple[str, ...]":
            from rag.guards import parse_names  # the only tuple setting: guard names, checked there

            return parse_names(raw if isinstance(raw, str | list | tuple) else str(raw))  # type: ignore[arg-type]
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"Setting '{name}' has an invalid value {raw!r}: {exc}.",
            "Fix it in rag.toml, the RAG_* environment variable or the command-line flag.",
        ) from exc


def _collection_specs(raw: object) -> tuple[CollectionSpec, ...]:
    """`{"contracts": {"corpus": "c/", "index": "i/"}}` (a rag.toml table) -> CollectionSpec records."""
    if isinstance(raw, tuple):
        return raw  # already parsed (an override from code)
    hint = 'Write each as [collections.NAME] with corpus = "folder" and optionally index = "folder".'
    if not isinstance(raw, dict):
        raise ConfigError(f"Setting 'collections' must be a table, not {raw!r}.", hint)
    specs = []
    for name, table in raw.items():
        if not isinstance(table, dict) or "corpus" not in table or set(table) - {"corpus", "index"}:
            raise ConfigError(f"Collection '{name}' in rag.toml needs corpus (and at most index): {table!r}.", hint)
        index = Path(str(table["index"])).expanduser() if table.get("index") else None
        specs.append(CollectionSpec(str(name), Path(str(table["corpus"])).expanduser(), index))
    return tuple(specs)


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Defaults <- TOML file <- RAG_* environment <- explicit overrides (None = unset)."""
    values: dict[str, object] = {}
    known = {f.name: f.type for f in fields(Settings)}

    path = config_file or (Path(os.environ["RAG_CONFIG"]) if os.environ.get("RAG_CONFIG") else None)
    if path is None and Path("rag.toml").is_file():
        path = Path("rag.toml")
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Cannot read config file {path}: {exc}.", "Fix or remove the file.") from exc
        for key, value in data.items():
            if key not in known:
                raise ConfigError(
                    f"Unknown setting '{key}' in {path}.",
                    f"Known settings: {', '.join(sorted(known))}.",
                )
            values[key] = value

    for name in known:
        if name in TABLE_SETTINGS:
            continue
        env = os.environ.get(f"RAG_{name.upper()}")
        if env is not None:
            values[name] = env

    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"Unknown setting(s): {', '.join(sorted(unknown))}.", "Check the spelling.")

    settings = replace(Settings(), **{k: _coerce(k, v, known[k]) for k, v in values.items()})  # type: ignore[arg-type]
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    """Refuse settings that would fail later, far from their cause (mid-build, mid-answer), with the fix.

    The checks of _CHECKS run in order; the first that fails is reported.
    """
    for check in _CHECKS:
        check(s)


def _check_chunking(s: Settings) -> None:
    """An overlap as long as the chunk would never advance through the text."""
    if s.chunk_overlap >= s.chunk_size:
        raise ConfigError(
            f"chunk_overlap ({s.chunk_overlap}) must be smaller than chunk_size ({s.chunk_size}).",
            "Lower chunk_overlap or raise chunk_size.",
        )


def _check_kv_store(s: Settings) -> None:
    """Only the passage orders and cache types the KV store was measured with (q4_0 breaks it)."""
    if s.kv_order not in ("best_first", "best_last"):
        raise ConfigError(f"kv_order '{s.kv_order}' is not supported.", "Use best_last (measured best) or best_first.")
    if s.kv_cache_type not in ("f16", "q8_0"):
        raise ConfigError(
            f"kv_cache_type '{s.kv_cache_type}' is not supported.",
            "Use q8_0 (smaller) or f16; q4_0 breaks the position shift that places cached passages.",
        )
    if s.kv_store_max_mb < 0 or not 0 <= s.background_nice <= 19:
        raise ConfigError(
            f"kv_store_max_mb ({s.kv_store_max_mb}) must be >= 0 and background_nice ({s.background_nice}) 0-19.",
            "Use e.g. kv_store_max_mb = 2048 (0 = store nothing) and background_nice = 15.",
        )


def _check_index_backends(s: Settings) -> None:
    """The Ray workers and the vector store, checked here rather than when a build first uses them."""
    if s.ray_workers < 1:
        raise ConfigError(f"ray_workers ({s.ray_workers}) must be at least 1.", "Use e.g. ray_workers = 2.")
    if s.vector_store not in ("faiss", "milvus"):
        raise ConfigError(f"vector_store '{s.vector_store}' is not known.", "Use faiss (the default) or milvus.")
    if s.milvus_uri and not (s.milvus_uri.endswith(".db") or s.milvus_uri.startswith(("http://", "https://", "tcp://"))):
        raise ConfigError(
            f"milvus_uri '{s.milvus_uri}' is neither a Milvus Lite path nor a server address.",
            "Use a path ending in .db (Milvus Lite), http://host:19530 (a Milvus server), or leave it empty.",
        )


def _check_llm_server(s: Settings) -> None:
    """A chat server's address and timeouts, so a typo fails here and not at the first question."""
    if s.llm_url and not s.llm_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"llm_url '{s.llm_url}' is not an http(s) URL.",
            'Use e.g. http://127.0.0.1:8080 (an OpenAI-compatible server), or "" for the local llama.cpp model.',
        )
    if s.llm_connect_timeout_s <= 0 or s.llm_timeout_s <= 0:
        raise ConfigError(
            f"llm_connect_timeout_s ({s.llm_connect_timeout_s}) and llm_timeout_s ({s.llm_timeout_s}) must be > 0.",
            "Use seconds, e.g. 5 and 60.",
        )
    if s.embed_dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"embed_dtype '{s.embed_dtype}' is not known.", "Use auto (the default), float32 or bfloat16.")


def _check_ranking(s: Settings) -> None:
    """Fusion, the per-document cap, sentence pieces and joining: each has a meaningful range."""
    if s.fusion not in ("zscore", "rrf"):
        raise ConfigError(f"fusion '{s.fusion}' is not known.", "Use zscore (the default) or rrf.")
    if s.per_doc_cap < 0:
        raise ConfigError(f"per_doc_cap ({s.per_doc_cap}) cannot be negative.", "Use 0 for no limit, or 1 or more.")
    if s.piece_chars < 0 or s.piece_candidates < 0:
        raise ConfigError(
            f"piece_chars ({s.piece_chars}) and piece_candidates ({s.piece_candidates}) cannot be negative.",
            "Use 0 to embed chunks only, or e.g. piece_chars = 50 and piece_candidates = 500.",
        )
    if s.join_max_chars < 0:
        raise ConfigError(
            f"join_max_chars ({s.join_max_chars}) cannot be negative.", "Use 0 to never join chunks, or e.g. 700."
        )


def _check_passage_cuts(s: Settings) -> None:
    """A passage cut to 0 characters would silently drop out of the prompt."""
    for name in ("passage_chars", "lean_first_chars", "lean_later_chars"):
        if getattr(s, name) < 1:
            raise ConfigError(
                f"{name} ({getattr(s, name)}) must be >= 1: a passage cut to nothing is left out of the prompt.",
                f"Use {getattr(Settings, name)} (the default) or another positive number of characters.",
            )


def _check_api_limits(s: Settings) -> None:
    """The /v1 queue and body limits: a negative queue or a body under 1 KB would refuse every request."""
    if s.api_queue_limit < 0 or s.api_max_body_kb < 1:
        raise ConfigError(
            f"api_queue_limit ({s.api_queue_limit}) must be >= 0 and api_max_body_kb ({s.api_max_body_kb}) >= 1.",
            "Use e.g. api_queue_limit = 16 and api_max_body_kb = 1024.",
        )


def _check_depth(s: Settings) -> None:
    """top_k passages are taken from the candidates, so there must be at least as many candidates."""
    if s.top_k < 1 or s.candidates < s.top_k:
        raise ConfigError(
            f"top_k ({s.top_k}) must be >= 1 and <= candidates ({s.candidates}).",
            "Adjust top_k or candidates.",
        )


_CHECKS: tuple[Callable[[Settings], None], ...] = (
    _check_chunking,
    _check_kv_store,
    _check_index_backends,
    _check_llm_server,
    _check_ranking,
    _check_passage_cuts,
    _check_api_limits,
    _check_depth,
)
