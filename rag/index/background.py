"""The first index build of `rag serve`, in the background, so the page is up while it runs.

A supervisor thread at normal priority loads what answering will use, then
runs the build in a worker thread that lowers its own priority
(rag/priority.py), then runs `after` (load the chat model, start the passage
KV store) at normal priority again: what a low-priority thread creates stays
low-priority, so nothing the answers use is made there.

Questions asked meanwhile are told the index is still being built, with its
progress (`BuildProgress.line`); the page and /v1 show the same figures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rag.errors import RagError
from rag.priority import lower_this_thread

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index.embedding import Embedder
    from rag.index.report import BuildReport


@dataclass(frozen=True)
class BuildProgress:
    """Where a build is: `stage` is waiting, read, embed, write, loading (the models, after), done or failed."""

    stage: str = "waiting"
    files_done: int = 0
    files_total: int = 0
    units_done: int = 0  # texts embedded: chunks and their sentence pieces
    units_total: int = 0
    started: float = 0.0  # time.monotonic() of the build's start
    embed_started: float = 0.0  # when the first text was embedded
    embed_at: float = 0.0  # when the last progress of embedding came
    error: str = ""
    documents: int = 0  # when done: documents and chunks in the index
    chunks: int = 0

    @property
    def finished(self) -> bool:
        return self.stage in ("done", "failed")

    def elapsed(self, now: float | None = None) -> float:
        return ((now or time.monotonic()) - self.started) if self.started else 0.0

    def units_per_s(self) -> float | None:
        """Embedding rate so far; None until some texts are embedded."""
        span = self.embed_at - self.embed_started
        return self.units_done / span if self.units_done and span > 0 else None

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left, from the embedding rate so far (embedding is nearly all of a build); None when unknown.

        Example: 300 of 1200 texts in 60 s -> 4 texts a second, 900 left -> 225 s, less the time since the last report.
        """
        rate = self.units_per_s()
        if self.stage != "embed" or rate is None:
            return None
        since = (now or time.monotonic()) - self.embed_at
        return max(0.0, (self.units_total - self.units_done) / rate - since)

    def line(self, now: float | None = None) -> str:
        """For /v1 and logs. Example: 'Building the index: 5/5 documents read, 300/1200 texts embedded, about 4 min left.'"""
        if self.stage == "failed":
            return f"The index build failed: {self.error}"
        if self.stage in ("loading", "done"):
            return f"The index is built ({self.documents} documents, {self.chunks} chunks); loading the models."
        parts = [
            f"{self.files_done}/{self.files_total} documents read" if self.files_total else "listing the documents"
        ]
        if self.stage == "read" and self.files_total and self.files_done == self.files_total:
            parts.append("loading the embedding model")
        if self.units_total:
            parts.append(f"{self.units_done}/{self.units_total} texts embedded (chunks and their sentence pieces)")
        eta = self.eta_s(now)
        if eta is not None:
            parts.append(f"about {format_eta(eta)} left")
        if self.stage == "write":
            parts.append("writing the index")
        return "Building the index: " + ", ".join(parts) + "."


def format_eta(seconds: float) -> str:
    """format_eta(42) -> '42 s'; format_eta(200) -> '4 min'"""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class BackgroundIndex:
    """Builds the index in the background and then runs `after`; `progress()` says where it is."""

    def __init__(
        self,
        settings: Settings,
        embedder_factory: Callable[[], Embedder],
        embed_sha256: str,
        before: Callable[[], object] | None = None,
        after: Callable[[], object] | None = None,
        build: Callable[..., BuildReport] | None = None,
    ) -> None:
        """`before` runs first at normal priority (load the question encoder); `build` is rag.index.build.build
        unless a test passes its own."""
        self.settings = settings
        self._factory, self._sha = embedder_factory, embed_sha256
        self._before, self._after = before, after
        self._build = build
        self._progress = BuildProgress()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.report: BuildReport | None = None

    # ------------------------------------------------------------ state

    def progress(self) -> BuildProgress:
        with self._lock:
            return self._progress

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def blocks_questions(self) -> bool:
        """True from the start until the index is built and the models are loaded; False once it failed
        (questions then get the missing index's own error, which says what to do)."""
        return self.started and not self.progress().finished

    def _set(self, **changes: object) -> None:
        with self._lock:
            self._progress = replace(self._progress, **changes)  # type: ignore[arg-type]

    def on_progress(self, stage: str, done: int, total: int) -> None:
        """rag.index.build's progress callback."""
        now = time.monotonic()
        if stage == "read":
            self._set(stage=stage, files_done=done, files_total=total)
        elif stage == "embed":
            p = self.progress()
            self._set(stage=stage, units_done=done, units_total=total, embed_at=now,
                      embed_started=p.embed_started or now - 1e-3)  # fmt: skip
        elif stage == "write":
            self._set(stage=stage)

    # ------------------------------------------------------------ running

    def start(self) -> None:
        self._set(stage="waiting", started=time.monotonic())
        self._thread = threading.Thread(target=self._supervise, name="index-first-build", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> BuildProgress:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.progress()

    def _supervise(self) -> None:
        try:
            if self._before is not None:
                self._before()
            report = self._run_low_priority()
            self.report = report
            self._set(stage="loading", documents=report.documents, chunks=report.chunks)
            if self._after is not None:
                self._after()
            self._set(stage="done")
        except RagError as exc:
            self._set(stage="failed", error=f"{exc.message} {exc.hint}".strip())
        except Exception as exc:  # noqa: BLE001 - a background thread reports, never kills the server
            self._set(stage="failed", error=f"{type(exc).__name__}: {exc}")

    def _run_low_priority(self) -> BuildReport:
        """Run the build in a thread at a lower priority, so questions asked meanwhile keep the CPU."""
        outcome: dict[str, object] = {}

        def work() -> None:
            lower_this_thread(self.settings.background_nice)
            try:
                build = self._build
                if build is None:
                    from rag.index.build import build
                outcome["report"] = build(self.settings, self._factory, self._sha, on_progress=self.on_progress)
            except BaseException as exc:  # noqa: BLE001 - raised again in the supervisor
                outcome["error"] = exc

        worker = threading.Thread(target=work, name="index-build-low-priority", daemon=True)
        worker.start()
        worker.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["report"]  # type: ignore[return-value]
