"""Never lose the index: a real `rag index` (small real embedder, MiniLM) is killed with SIGKILL at several
points of a build. Each time the previous index must still load and answer, and the next `rag index` must
complete. Also `rag index --watch` as a real process: an update per change, Ctrl-C to stop."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from rag.index.publish import PAUSE_ENV
from rag.index.reader import Index
from tests.conftest import RAG_BIN, _small_models_available

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BASE_FILES = ["llm-incomplete-history.md", "llm-milestones-2024-2025.md"]  # ~40 chunks
ADDED = "llm-underlying-technology.md"  # ~60 chunks: a few seconds of embedding on 2 cores
EMBED_MODEL = "minilm-l6"


@dataclass
class World:
    base: Path
    corpus: Path
    index: Path
    pristine: Path  # a copy of the first index, for tests that need their own
    env: dict[str, str]
    settings: object
    embedder: object


def _env(corpus: Path, index: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") or k == "RAG_CACHE_DIR"}
    env.update(RAG_EMBED_MODEL=EMBED_MODEL, RAG_CORPUS_DIR=str(corpus), RAG_INDEX_DIR=str(index))
    return env


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    if not _small_models_available():
        pytest.fail("The test models are missing. Run: scripts/setup.sh --dev  (or: rag models fetch --tests)")
    from rag.config import load_settings
    from rag.index.embedding import load_embedder

    base = tmp_path_factory.mktemp("kill")
    corpus, index = base / "corpus", base / "index"
    corpus.mkdir()
    for name in BASE_FILES:
        shutil.copy(ROOT / "corpus" / name, corpus / name)
    env = _env(corpus, index)
    done = subprocess.run([RAG_BIN, "index"], env=env, cwd=base, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shutil.copytree(index, base / "pristine-index", symlinks=True)
    settings = load_settings(corpus_dir=corpus, index_dir=index, embed_model=EMBED_MODEL)
    embedder = load_embedder(EMBED_MODEL, settings.models_dir)
    return World(base, corpus, index, base / "pristine-index", env, settings, embedder)


class Build:
    """A `rag index` subprocess whose stderr (progress bars) is collected as it arrives."""

    def __init__(self, world: World, *args: str, pause: str | None = None) -> None:
        env = dict(world.env)
        if pause:
            env[PAUSE_ENV] = pause
        self.proc = subprocess.Popen(
            [RAG_BIN, *args], env=env, cwd=world.base, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.err = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(4096):  # type: ignore[attr-defined]
            self.err += chunk

    def stopped(self) -> bool:
        """The process stopped itself at its pause point (SIGSTOP): state T in /proc."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def kill_when(self, condition: Callable[[], bool], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the build ended before the kill point:\n{self.err.decode(errors='replace')}")
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.01)
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        self._reader.join(timeout=10)


def _run(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([RAG_BIN, *args], env=world.env, cwd=world.base, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _serves(world: World, files: set[str], query: str, expect: str) -> Index:
    """The live index loads for the configured model, holds exactly `files`, and answers `query` from `expect`."""
    from rag.answer.pipeline import Pipeline
    from rag.models import get_spec

    index = Index.load(world.index, EMBED_MODEL, get_spec(EMBED_MODEL).sha256)
    assert set(index.manifest.files) == files
    hits = Pipeline(world.settings, embedder=world.embedder).search(query, 5)  # type: ignore[arg-type]
    assert hits and expect in [h.chunk.path for h in hits]
    return index


def _staging(world: World) -> list[Path]:
    builds = world.index / "builds"
    return [p for p in builds.iterdir() if p.name.endswith(".partial")] if builds.is_dir() else []


def _live(world: World) -> Path:
    return (world.index / "current").resolve()


def test_killed_builds_never_lose_the_index(world: World) -> None:
    old = set(BASE_FILES)
    old_query, old_doc = "LSTM 的单元状态和遗忘门", "llm-incomplete-history.md"
    shutil.copy(ROOT / "corpus" / ADDED, world.corpus / ADDED)
    first_live = _live(world)

    # 1. During embedding (the progress bar has started).
    build = Build(world, "index")
    build.kill_when(lambda: b"embed" in build.err)
    _serves(world, old, old_query, old_doc)
    assert f"pid {build.proc.pid}" in (world.index / ".lock.info").read_text()  # the dead holder's name
    assert _live(world) == first_live and not _staging(world)

    # 2. As soon as the staging folder appears (while it is being written).
    build = Build(world, "index")
    build.kill_when(lambda: bool(_staging(world)))
    _serves(world, old, old_query, old_doc)
    assert _live(world) == first_live

    # 3. Right before the swap: the new build is complete and renamed into builds/, not yet live.
    build = Build(world, "index", pause="renamed")
    build.kill_when(build.stopped)
    _serves(world, old, old_query, old_doc)
    assert _live(world) == first_live
    assert len([p for p in (world.index / "builds").iterdir() if not p.name.endswith(".partial")]) == 2

    # The next run completes, clears the stale lock and every leftover, and serves the new file.
    done = _run(world, "index")
    assert "Cleared a stale lock" in done.stderr
    assert re.search(rf"^  added +1  {ADDED}$", done.stdout, re.M), done.stdout
    _serves(world, old | {ADDED}, "Awesome Agent Papers 综述论文", ADDED)
    assert [p.name for p in (world.index / "builds").iterdir()] == [_live(world).name]
    assert not (world.index / ".lock.info").exists() and not list(world.index.glob(".current.*"))

    # 4. Right after the swap, before old builds are removed: the new index is already the live one.
    edited = world.corpus / old_doc
    edited.write_text(edited.read_text(encoding="utf-8") + "\n\n## 补记\n\n卡尔曼滤波器与语言模型无关。\n", "utf-8")
    before = _live(world)
    build = Build(world, "index", pause="swapped")
    build.kill_when(build.stopped)
    assert _live(world) != before
    index = _serves(world, old | {ADDED}, "卡尔曼滤波器", old_doc)
    assert any("卡尔曼滤波器" in c.text for c in index.chunks)
    done = _run(world, "index")
    assert "No changes" in done.stdout and "Cleared a stale lock" in done.stderr
    assert [p.name for p in (world.index / "builds").iterdir()] == [_live(world).name]


def _milvus_state(world: World) -> set[str]:
    """Load the live Milvus-backed index in this process, check it answers from its own files, release the
    Milvus Lite folder (one process at a time) and return the files it holds. Index.load refuses a build whose
    collection row counts differ from its chunk store, so a mix of two builds cannot pass."""
    from rag.models import get_spec

    index = Index.load(world.index, EMBED_MODEL, get_spec(EMBED_MODEL).sha256)
    try:
        assert index.manifest.vector_store["kind"] == "milvus"
        for path in index.manifest.files:
            chunk = next(c for c in index.chunks if c.path == path)
            hits = index.dense_search(world.embedder.encode_query(chunk.text[:80]), 5, pieces=50)  # type: ignore[attr-defined]
            assert path in {index.chunks[row].path for row, _ in hits}
        return set(index.manifest.files)
    finally:
        index.close()


def _milvus_collections(world: World) -> list[str]:
    from rag.index import milvus

    uri = str((world.index / "milvus.db").resolve())
    client = milvus._CLIENTS.acquire(uri)
    try:
        return sorted(client.list_collections())
    finally:
        milvus._CLIENTS.release(uri)


def _new_collection_on_disk(world: World, live: set[str]) -> bool:
    """A collection other than the live ones exists in the Milvus Lite folder: the build is writing vectors."""
    folder = world.index / "milvus.db" / "collections"
    return folder.is_dir() and any(p.name.endswith("_chunks") and p.name not in live for p in folder.iterdir())


def test_killed_milvus_builds_serve_the_old_or_the_new_state(world: World, tmp_path: Path) -> None:
    """The same kills on vector_store = "milvus" (Milvus Lite): before the swap the old build answers,
    after it the new one, never a mix; the next run drops every collection the live build does not name."""
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    corpus.mkdir()
    for name in BASE_FILES:
        shutil.copy(ROOT / "corpus" / name, corpus / name)
    env = {**_env(corpus, index), "RAG_VECTOR_STORE": "milvus"}
    mw = replace(world, base=tmp_path, corpus=corpus, index=index, env=env)
    _run(mw, "index")
    old, new = set(BASE_FILES), set(BASE_FILES) | {ADDED}
    assert _milvus_state(mw) == old
    live = set(_milvus_collections(mw))
    shutil.copy(ROOT / "corpus" / ADDED, corpus / ADDED)

    build = Build(mw, "index")  # while the new build's collection is being written
    build.kill_when(lambda: _new_collection_on_disk(mw, live))
    assert _milvus_state(mw) == old
    for pause in ("staged", "renamed"):  # its collections complete, its manifest not yet live
        build = Build(mw, "index", pause=pause)
        build.kill_when(build.stopped)
        assert _milvus_state(mw) == old
    build = Build(mw, "index", pause="swapped")  # live, the old build's collections not yet dropped
    build.kill_when(build.stopped)
    assert _milvus_state(mw) == new
    assert len(_milvus_collections(mw)) > 2

    done = _run(mw, "index")
    assert "No changes" in done.stdout and "Cleared a stale lock" in done.stderr
    assert _milvus_state(mw) == new
    manifest = json.loads((_live(mw) / "manifest.json").read_text(encoding="utf-8"))["vector_store"]
    assert _milvus_collections(mw) == sorted([manifest["chunks"], manifest["pieces"]])


def test_watch_command_prints_each_update_and_stops_on_ctrl_c(world: World, tmp_path: Path) -> None:
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    corpus.mkdir()
    for name in BASE_FILES:
        shutil.copy(ROOT / "corpus" / name, corpus / name)
    shutil.copytree(world.pristine, index, symlinks=True)
    proc = subprocess.Popen(
        [RAG_BIN, "index", "--watch"],
        env=_env(corpus, index),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background (`./test.sh &`) passes SIGINT on as ignored; Ctrl-C
        # is what this test sends, so the child gets the default handling back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for(pattern: str) -> None:
        deadline = time.monotonic() + 60
        while not any(re.search(pattern, line) for line in lines):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, f"no line matching {pattern!r} in {lines}"
            time.sleep(0.05)

    try:
        wait_for(r"^\[\d\d:\d\d:\d\d\] No changes: 2 documents")  # the first update, with no model loaded
        (corpus / BASE_FILES[1]).unlink()
        wait_for(rf"^  removed +1  {BASE_FILES[1]}$")
        assert any(re.match(r"^\[\d\d:\d\d:\d\d\] Updated the index in [\d.]+ s: 1 documents", line) for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "Watching" in err and "Stopped watching." in err and "Traceback" not in err
    assert set(Index.load(index).manifest.files) == {BASE_FILES[0]}
