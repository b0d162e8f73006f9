"""Index updates from the page: the build runs in a thread and reports progress as it goes.

The build writes a new index beside the live one and swaps it in at the end
(rag/index/build.py), so questions keep being answered from the old index until
then; Pipeline.get_index() notices the swap on the next question.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.index.build import build
from rag.index.report import BuildReport
from rag.models import get_spec

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index.embedding import Embedder


@dataclass(frozen=True)
class Progress:
    stage: str  # "start", then "read", "embed", "write" (see rag.index.build)
    done: int = 0
    total: int = 0


def run_build(
    settings: Settings, embedder_factory: Callable[[], Embedder], full: bool = False, poll_seconds: float = 0.3
) -> Iterator[Progress | BuildReport]:
    """Yield Progress while the index updates, then the BuildReport; a build error is raised here.

    `embedder_factory` should hand out the embedder the page already holds,
    so an update does not load a second copy of the model.
    """
    events: queue.Queue[Progress] = queue.Queue()
    outcome: dict[str, BuildReport | BaseException] = {}

    def work() -> None:
        try:
            outcome["report"] = build(
                settings,
                embedder_factory,
                get_spec(settings.embed_model).sha256,
                full=full,
                on_progress=lambda stage, done, total: events.put(Progress(stage, done, total)),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="index-build", daemon=True)
    thread.start()
    yield Progress("start")
    while thread.is_alive():
        thread.join(poll_seconds)
        latest = None
        while not events.empty():
            latest = events.get_nowait()
        if latest is not None:
            yield latest
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    yield outcome["report"]  # type: ignore[misc]
