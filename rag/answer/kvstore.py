"""The passage KV store: each passage's precomputed KV block, on disk inside the index directory.

A passage is what the model reads for a chunk: the chunk, or the chunk joined with the next
one when it stops mid-sentence; callers pass every passage the model may be given
(`Index.readable`), so a joined passage has its own block.

Layout (outside `builds/`, so index swaps keep it; one store per chat model):

    index/kvcache/<chat model>/meta.json        what every block was made with (see StoreMeta)
    index/kvcache/<chat model>/blocks/<key>.kv  one passage's block: header + zlib-compressed KV cells

A block's key hashes the passage's title, headings, text, the block format and
the token cap, so an update computes only new or changed passages, and blocks
of removed ones are dropped (`prune`). The meta records the GGUF sha256,
the KV cache type and the sha256 of the prefix tokens (system prompt in the
model's chat template): a store made for another model, cache type or prompt
is wiped and rebuilt, never used.

This module does not import llama_cpp; the model work is rag/llm/kvengine.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rag.answer import prompting
from rag.schema import Chunk

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.llm.kvengine import Block

log = logging.getLogger(__name__)
STORE_FORMAT = 1
_MAGIC = b"RAGKV1\n"


def store_dir(settings: Settings) -> Path:
    return Path(settings.index_dir) / "kvcache" / settings.chat_model


def block_key(chunk: Chunk, block_tokens: int) -> str:
    """Content hash: the same chunk text gives the same key in any build of the index."""
    data = json.dumps(
        [prompting.BLOCK_FORMAT, block_tokens, chunk.title, list(chunk.headings), chunk.text], ensure_ascii=False
    )
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:32]


def prompt_sha256() -> str:
    """The prompt parts a block depends on, as text (the prefix token hash needs the model; this does not)."""
    parts = [prompting.SYSTEM_PROMPT, prompting.PASSAGES_HEADER, prompting.block_label(1), str(prompting.BLOCK_FORMAT)]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoreMeta:
    format: int
    model: str
    model_sha256: str
    kv_type: str
    block_tokens: int
    prompt_sha256: str  # system prompt, passages header, label format (checkable without the model)
    runtime: str  # llama-cpp-python version: another one may tokenize or lay out the cache differently
    prefix_sha256: str = ""  # the prefix tokens as the model tokenized them (checked when the model is loaded)
    n_prefix: int = 0
    created: str = ""

    def same_recipe(self, other: StoreMeta) -> bool:
        """Blocks made under `self` are valid under `other` (an empty prefix hash means: not known yet)."""
        keys = ("format", "model_sha256", "kv_type", "block_tokens", "prompt_sha256", "runtime")
        if any(getattr(self, k) != getattr(other, k) for k in keys):
            return False
        return not (self.prefix_sha256 and other.prefix_sha256 and self.prefix_sha256 != other.prefix_sha256)


def expected_meta(settings: Settings, prefix_sha256: str = "", n_prefix: int = 0) -> StoreMeta:
    from rag.models import get_spec

    return StoreMeta(
        format=STORE_FORMAT,
        model=settings.chat_model,
        model_sha256=get_spec(settings.chat_model).sha256,
        kv_type=settings.kv_cache_type,
        block_tokens=settings.kv_block_tokens,
        prompt_sha256=prompt_sha256(),
        runtime=_runtime_version(),
        prefix_sha256=prefix_sha256,
        n_prefix=n_prefix,
    )


def _runtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return "unknown"


def encode_block(block: Block) -> bytes:
    """magic, header length (u32), JSON header (text, tokens, start), zlib-compressed state."""
    fields = {
        "text": block.text,
        "tokens": block.tokens,
        "start": block.start,
        "label": block.label,
        "n_label": block.n_label,
    }
    header = json.dumps(fields, ensure_ascii=False).encode("utf-8")
    return _MAGIC + struct.pack("<I", len(header)) + header + zlib.compress(block.state, 1)


def decode_block(data: bytes) -> Block:
    from rag.llm.kvengine import Block

    if not data.startswith(_MAGIC):
        raise ValueError("not a KV block file")
    (n,) = struct.unpack_from("<I", data, len(_MAGIC))
    at = len(_MAGIC) + 4
    header = json.loads(data[at : at + n].decode("utf-8"))
    return Block(header["text"], list(header["tokens"]), int(header["start"]), zlib.decompress(data[at + n :]),
                 header["label"], int(header["n_label"]))  # fmt: skip


class KVStore:
    """One model's blocks on disk. Reads need no lock; writes are atomic renames."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.blocks_dir = self.directory / "blocks"

    def meta(self) -> StoreMeta | None:
        try:
            return StoreMeta(**json.loads((self.directory / "meta.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def reset(self, meta: StoreMeta) -> None:
        """Empty the store and record what its blocks will be made with."""
        if self.blocks_dir.is_dir():
            for p in self.blocks_dir.iterdir():
                p.unlink(missing_ok=True)
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self.write_meta(meta)

    def write_meta(self, meta: StoreMeta) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".meta.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(meta), indent=1), encoding="utf-8")
        os.replace(tmp, self.directory / "meta.json")

    def path(self, key: str) -> Path:
        return self.blocks_dir / f"{key}.kv"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> Block | None:
        try:
            return decode_block(self.path(key).read_bytes())
        except (OSError, ValueError, zlib.error, KeyError):
            return None

    def save(self, key: str, block: Block) -> int:
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        data = encode_block(block)
        tmp = self.blocks_dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.path(key))
        return len(data)

    def block_tokens(self, key: str) -> int:
        """How many tokens a stored block holds (reads only its header); 0 when it is missing."""
        try:
            with self.path(key).open("rb") as fh:
                head = fh.read(len(_MAGIC) + 4)
                (n,) = struct.unpack_from("<I", head, len(_MAGIC))
                return len(json.loads(fh.read(n).decode("utf-8"))["tokens"])
        except (OSError, ValueError, struct.error, KeyError):
            return 0

    def keys(self) -> set[str]:
        if not self.blocks_dir.is_dir():
            return set()
        return {p.stem for p in self.blocks_dir.glob("*.kv")}

    def prune(self, keep: set[str]) -> int:
        """Remove blocks whose chunk is no longer indexed; returns how many."""
        gone = self.keys() - keep
        for key in gone:
            self.path(key).unlink(missing_ok=True)
        return len(gone)

    def size_bytes(self) -> int:
        if not self.blocks_dir.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.blocks_dir.glob("*.kv"))


# ---------------------------------------------------------------- status


@dataclass
class StoreStatus:
    enabled: bool
    blocks: int  # passages whose block is stored
    total: int  # passages the model may be given (Index.readable)
    bytes: int
    valid: bool  # the store was made for this model, cache type and prompt
    building: bool = False  # a background build is running (set by the UI)
    limit_bytes: int = 0  # kv_store_max_mb in bytes: the build stops there

    @property
    def complete(self) -> bool:
        return self.enabled and self.valid and self.total > 0 and self.blocks == self.total

    @property
    def at_limit(self) -> bool:
        """Incomplete because the store reached its disk limit (the rest is answered the ordinary way)."""
        return self.enabled and not self.complete and self.bytes >= self.limit_bytes

    def line(self) -> str:
        """One line for people. Example: 'KV store: 206/206 passages, 812 MB (ready)'"""
        if not self.enabled:
            return "KV store: off (kv_cache = 0)"
        state = "ready" if self.complete else ("building" if self.building else "incomplete: run rag index --kv")
        if self.at_limit and not self.building:
            state = f"stopped at the disk limit, kv_store_max_mb = {self.limit_bytes // 1_000_000}"
        if not self.valid:
            state = "made with other settings (model, cache type, block size or prompt): run rag index --kv"
        return f"KV store: {self.blocks}/{self.total} passages, {self.bytes / 1e6:.0f} MB ({state})"


def status(settings: Settings, chunks: Sequence[Chunk]) -> StoreStatus:
    """How much of the index has its block stored; needs no model."""
    store = KVStore(store_dir(settings))
    limit = settings.kv_store_max_mb * 1_000_000
    if not settings.kv_cache:
        return StoreStatus(False, 0, len(chunks), 0, True, limit_bytes=limit)
    meta = store.meta()
    valid = meta is not None and meta.same_recipe(expected_meta(settings))
    if not valid:
        return StoreStatus(True, 0, len(chunks), store.size_bytes(), meta is None, limit_bytes=limit)
    have = store.keys()
    n = sum(1 for c in chunks if block_key(c, settings.kv_block_tokens) in have)
    return StoreStatus(True, n, len(chunks), store.size_bytes(), True, limit_bytes=limit)


# ---------------------------------------------------------------- building


class BlockComputer(Protocol):
    """What building needs from the model (rag.llm.kvengine.KVEngine)."""

    prefix_sha256: str
    n_prefix: int
    lock: threading.Lock

    def count_tokens(self, text: str) -> int: ...

    def compute_block(self, text: str, first_label: str) -> Block: ...


@dataclass
class StoreReport:
    computed: int = 0
    kept: int = 0
    removed: int = 0
    rebuilt: str = ""  # why the whole store was wiped ('' = it was not)
    tokens: int = 0  # tokens in the blocks computed now
    total_tokens: int = 0  # tokens in all the index's blocks (when known)
    bytes: int = 0  # store size after the run
    seconds: float = 0.0
    stopped: bool = False
    limited: bool = False  # stopped at kv_store_max_mb
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        what = f"computed {self.computed}, kept {self.kept}, removed {self.removed}"
        if self.rebuilt:
            what += f" (rebuilt: {self.rebuilt})"
        end = " (stopped)" if self.stopped else (" (stopped at the disk limit, kv_store_max_mb)" if self.limited else "")
        return f"KV store: {what}; {self.bytes / 1e6:.0f} MB in {self.seconds:.1f} s{end}"


def build_store(
    settings: Settings,
    chunks: Sequence[Chunk],
    engine: BlockComputer,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StoreReport:
    """Compute the blocks missing from the store, drop those of removed chunks.

    Each block is computed under `engine.lock`, so questions asked meanwhile on the same
    model wait at most one block (~3 s on the default model) instead of the whole build
    (BackgroundBuild gives the build a model context of its own, so they wait for none).
    The store grows to `kv_store_max_mb` at most: past it, the rest is left to the ordinary path.
    """
    t0 = time.perf_counter()
    report = StoreReport()
    store = _open_store(settings, engine, report)
    keys = {block_key(c, settings.kv_block_tokens): c for c in chunks}
    report.removed = store.prune(set(keys))
    present = store.keys()
    todo = [(k, c) for k, c in keys.items() if k not in present]
    report.kept = len(keys) - len(todo)
    _compute_missing(settings, store, engine, todo, report, on_progress, should_stop)
    report.bytes = store.size_bytes()
    report.seconds = time.perf_counter() - t0
    return report


def _open_store(settings: Settings, engine: BlockComputer, report: StoreReport) -> KVStore:
    """The collection's store, emptied first when its blocks were made by another recipe (model, prefix, sizes)."""
    store = KVStore(store_dir(settings))
    want = expected_meta(settings, engine.prefix_sha256, engine.n_prefix)
    have = store.meta()
    if have is None or not have.same_recipe(want) or not have.prefix_sha256:
        if have is not None:
            report.rebuilt = _why_different(have, want)
        store.reset(replace_created(want))
    return store


def _compute_missing(
    settings: Settings,
    store: KVStore,
    engine: BlockComputer,
    todo: Sequence[tuple[str, Chunk]],
    report: StoreReport,
    on_progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Compute and save the blocks of `todo`, one at a time under the engine's lock, up to the store's size limit."""
    if on_progress:
        on_progress(0, len(todo))
    size, limit = store.size_bytes(), settings.kv_store_max_mb * 1_000_000
    for i, (key, chunk) in enumerate(todo):
        if should_stop is not None and should_stop():
            report.stopped = True
            break
        if size >= limit:
            report.limited = True
            break
        text = prompting.block_text(chunk.title, chunk.headings, chunk.text)
        with engine.lock:
            text = prompting.trim_block(text, settings.kv_block_tokens, engine.count_tokens)
            block = engine.compute_block(text, prompting.block_label(1))
        size += store.save(key, block)
        report.computed += 1
        report.tokens += len(block.tokens)
        if on_progress:
            on_progress(i + 1, len(todo))


def replace_created(meta: StoreMeta) -> StoreMeta:
    from dataclasses import replace

    return replace(meta, created=datetime.now(UTC).isoformat(timespec="seconds"))


def _why_different(have: StoreMeta, want: StoreMeta) -> str:
    if have.model_sha256 != want.model_sha256:
        return f"made for another model file ({have.model})"
    if have.kv_type != want.kv_type:
        return f"KV cache type {have.kv_type} -> {want.kv_type}"
    if have.block_tokens != want.block_tokens:
        return f"block size {have.block_tokens} -> {want.block_tokens} tokens"
    if have.format != want.format:
        return f"store format {have.format} -> {want.format}"
    if have.runtime != want.runtime:
        return f"llama-cpp-python {have.runtime} -> {want.runtime}"
    if have.prompt_sha256 == want.prompt_sha256:
        return "the prompt's tokens differ (another tokenizer or chat template)"
    return "the system prompt or block format changed"


class BlockLookup:
    """Question time: the stored blocks of some chunks, or None unless every one is stored and valid."""

    def __init__(self, settings: Settings, prefix_sha256: str) -> None:
        self.store = KVStore(store_dir(settings))
        self.block_tokens = settings.kv_block_tokens
        self._want = expected_meta(settings, prefix_sha256)
        self._valid_at: float | None = None  # mtime of meta.json when last found valid

    def valid(self) -> bool:
        meta_path = self.store.directory / "meta.json"
        try:
            mtime = meta_path.stat().st_mtime
        except OSError:
            return False
        if self._valid_at != mtime:
            meta = self.store.meta()
            ok = meta is not None and bool(meta.prefix_sha256) and meta.same_recipe(self._want)
            self._valid_at = mtime if ok else None
            return ok
        return True

    def blocks(self, chunks: Sequence[Chunk]) -> list[Block] | None:
        if not chunks or not self.valid():
            return None
        out = []
        for c in chunks:
            block = self.store.load(block_key(c, self.block_tokens))
            if block is None:
                return None
            out.append(block)
        return out


def open_engine(settings: Settings, generator: object | None = None, own_lock: bool = False):  # type: ignore[no-untyped-def]
    """A KVEngine on `generator`'s model (a LlamaGenerator), loading the chat model when none is given.

    The engine is a llama.cpp context of its own on the model's weights; it shares the generator's
    lock (one of them computes at a time) unless `own_lock`."""
    from rag.llm.kvengine import KVEngine, context_size

    if settings.llm_url:
        from rag.errors import ModelError

        # Its KV cache lives in the server; the store's blocks are loaded into this process's model.
        raise ModelError(
            f"The passage KV store needs the chat model in this process; answers come from {settings.llm_url}, "
            "so the cached path is off and every answer reads its whole prompt.",
            'Set llm_url = "" to answer with the local llama.cpp model and its KV store, or kv_cache = false.',
        )
    if generator is None:
        from rag.llm.generation import load_generator

        s = settings
        generator = load_generator(s.chat_model, s.models_dir, s.n_ctx, s.n_threads, s.n_batch, s.temperature)
    llm = getattr(generator, "_llm", None)
    if llm is None:
        from rag.errors import ModelError

        raise ModelError(
            "The chat model is not a llama.cpp model, so it has no KV cache to store.", "Set kv_cache = 0."
        )
    return KVEngine(llm, context_size(settings), settings.n_threads, settings.n_batch, settings.kv_cache_type,
                    prompting.PASSAGES_HEADER, prompting.SYSTEM_PROMPT,
                    lock=None if own_lock else getattr(generator, "_lock", None))  # fmt: skip


def update(
    settings: Settings,
    chunks: Sequence[Chunk],
    engine_factory: Callable[[], BlockComputer],
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefix_sha256: str = "",
) -> StoreReport:
    """Bring the store in line with the index; the model is loaded only when a block must be computed.

    Without the model, a store is checked by model file, cache type, prompt text and
    llama.cpp version; a caller that holds the engine passes its prefix token hash too.
    """
    t0 = time.perf_counter()
    current = status(settings, chunks)
    store = KVStore(store_dir(settings))
    meta = store.meta()
    same_prefix = not (prefix_sha256 and meta is not None and meta.prefix_sha256 != prefix_sha256)
    full = current.valid and same_prefix and current.bytes >= current.limit_bytes  # nothing to add: no model
    if (current.complete or full) and same_prefix:
        removed = store.prune({block_key(c, settings.kv_block_tokens) for c in chunks})
        if current.complete or store.size_bytes() >= current.limit_bytes:
            return StoreReport(kept=current.blocks, removed=removed, bytes=store.size_bytes(),
                               seconds=time.perf_counter() - t0, limited=not current.complete)  # fmt: skip
    return build_store(settings, chunks, engine_factory(), on_progress, should_stop)


class BackgroundBuild:
    """Builds a pipeline's store in a daemon thread after the index is ready; the chat answers meanwhile.

    Questions never wait behind it: the thread lowers its priority (background_nice), computes
    on a model context of its own when given `own_engine` (`separate_engine`: the same weights,
    another context; without it, the answering model's context, one block at a time under its
    lock), and between blocks it pauses while `busy()` says a question is being answered. Questions use the
    ordinary path until every retrieved passage is stored. Blocks are saved one by one, so a
    restart goes on from where the last run stopped.
    """

    def __init__(self, pipeline, busy: Callable[[], bool] | None = None,  # type: ignore[no-untyped-def]
                 own_engine: Callable[[], BlockComputer] | None = None) -> None:  # fmt: skip
        self.pipeline = pipeline
        self.busy = busy or (lambda: False)  # rag serve: a question holds the generation line
        self.own_engine = own_engine
        self.done = 0
        self.total = 0
        self.error = ""
        self.report: StoreReport | None = None
        self.shared_engine = False  # True when the build computes on the answering model (no own engine, or it failed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start (or restart after an index update) unless a build is running or the store is off; True if started."""
        with self._lock:
            if not self.pipeline.settings.kv_cache or self.running:
                return False
            self._stop.clear()
            self.error, self.done, self.total = "", 0, 0
            self._thread = threading.Thread(target=self._run, name="kv-store-build", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def should_stop(self) -> bool:
        """Between blocks: wait while a question is answered; True once asked to stop."""
        while self.busy() and not self._stop.is_set():
            self._stop.wait(0.2)
        return self._stop.is_set()

    def _run(self) -> None:
        """The background thread: build the missing blocks at low priority, pausing while a question waits."""
        from rag.errors import RagError
        from rag.priority import lower_this_thread

        settings = self.pipeline.settings
        try:
            chunks = self.pipeline.get_index().readable(settings.join_max_chars)
            # Created at normal priority (answers use it), even when nothing is left to compute,
            # so the first question does not pay for it.
            cached = self.pipeline.get_cached()
            if cached is None:
                self.error = self.pipeline.kv_unavailable or "the cached path is unavailable"
                return
            shared = cached[0].engine
            lower_this_thread(settings.background_nice)  # from here on, only this build's own work

            def progress(done: int, total: int) -> None:
                self.done, self.total = done, total

            self.report = update(settings, chunks, lambda: self._engine(shared), progress, self.should_stop,
                                 shared.prefix_sha256)  # fmt: skip
        except RagError as exc:
            self.error = exc.message
        except Exception as exc:  # noqa: BLE001 - a background thread reports, never crashes the page
            self.error = f"{exc.__class__.__name__}: {exc}"

    def _engine(self, shared: BlockComputer) -> BlockComputer:
        """A model context for this build alone; the answering one (and its lock) when that cannot be had."""
        if self.own_engine is not None:
            try:
                return self.own_engine()
            except Exception as exc:  # noqa: BLE001 - memory, most likely: share the answering model instead
                log.warning("KV store build: no context of its own (%s); sharing the answering model's", exc)
        self.shared_engine = True
        return shared

    def status(self) -> StoreStatus:
        settings = self.pipeline.settings
        try:
            chunks = self.pipeline.get_index().readable(settings.join_max_chars)
        except Exception:  # noqa: BLE001 - no index yet
            chunks = []
        st = status(settings, chunks)
        st.building = self.running
        return st

    def line(self) -> str:
        st = self.status()
        text = st.line()
        if self.running and self.total:
            text += f" · computing {self.done}/{self.total}"
        if self.error:
            text += f" · error: {self.error}"
        return text


def separate_engine(pipeline) -> Callable[[], BlockComputer]:  # type: ignore[no-untyped-def]
    """For BackgroundBuild: a llama.cpp context of its own on the answering model's weights (no second
    copy in memory) with its own lock, so computing a block never holds up an answer."""
    return lambda: open_engine(pipeline.settings, pipeline.get_generator(), own_lock=True)  # type: ignore[no-any-return]
