"""`rag index --watch`: keep the index in line with the corpus folder while files change.

watchdog reports file-system events. A burst of them (an editor saving in
several steps, a folder copied in) becomes one update once the folder has
been quiet for `debounce` seconds. Changes that arrive during an update
trigger one more update after it, so the last change is never missed.

Example: saving notes.md at 12:00:00.0 and 12:00:00.4 gives one update at
about 12:00:01.4 (debounce 1 s after the last event).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)

from rag.ingest.loaders import SUPPORTED_SUFFIXES

DEBOUNCE_SECONDS = 1.0  # long enough for an editor's save burst, short enough to feel immediate
# "opened" and "closed_no_write" are reads: the build hashing the corpus must not trigger another build.
_CHANGES = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED}


class ChangeTracker(FileSystemEventHandler):
    """Counts the events that can change the index: supported, non-hidden files (and folders) under the corpus."""

    def __init__(self, corpus: Path, ignore: Iterable[Path] = ()) -> None:
        self.corpus = corpus.resolve()
        self.ignore = [p.resolve() for p in ignore]
        self._lock = threading.Lock()
        self._generation = 0
        self._last_change = 0.0

    def state(self) -> tuple[int, float]:
        """(how many relevant events so far, seconds since the last one)."""
        with self._lock:
            return self._generation, time.monotonic() - self._last_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        if event.is_directory and event.event_type in (EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED):
            return  # a folder's entries changed: the entries report themselves
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(self._counts(os.fsdecode(p), event.is_directory) for p in paths if p):
            with self._lock:
                self._generation += 1
                self._last_change = time.monotonic()

    def _counts(self, raw: str, is_directory: bool) -> bool:
        path = Path(raw)
        if not path.is_relative_to(self.corpus) or any(path.is_relative_to(p) for p in self.ignore):
            return False
        if any(part.startswith(".") for part in path.relative_to(self.corpus).parts):
            return False  # hidden files (editor swap files, .git) are never indexed
        return is_directory or path.suffix.lower() in SUPPORTED_SUFFIXES


def _start_observer(tracker: ChangeTracker, polling: bool):  # type: ignore[no-untyped-def]
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    observer = PollingObserver() if polling else Observer()
    try:
        observer.schedule(tracker, str(tracker.corpus), recursive=True)
        observer.start()
    except OSError:  # inotify limits reached (fs.inotify.max_user_watches): polling still works
        observer = PollingObserver()
        observer.schedule(tracker, str(tracker.corpus), recursive=True)
        observer.start()
    return observer


def watch(
    corpus: Path,
    update: Callable[[], None],
    *,
    debounce: float = DEBOUNCE_SECONDS,
    ignore: Iterable[Path] = (),
    stop: threading.Event | None = None,
    polling: bool = False,
) -> None:
    """Call `update()` once now, then after each settled burst of changes, until `stop` is set or Ctrl-C.

    The observer starts before the first update, so a change made while that
    update runs is picked up by the next one.
    """
    stop = stop or threading.Event()
    tracker = ChangeTracker(corpus, ignore)
    observer = _start_observer(tracker, polling)
    try:
        seen, _ = tracker.state()
        update()
        while not stop.is_set():
            generation, quiet = tracker.state()
            if generation == seen:
                stop.wait(0.1)
            elif quiet < debounce:
                stop.wait(debounce - quiet)
            else:
                seen = generation
                update()
    finally:
        observer.stop()
        observer.join(timeout=5)
