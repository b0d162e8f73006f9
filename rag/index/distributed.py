"""`rag index --ray`: the build's embedding fanned out as Ray tasks (the only importer of ray).

Embedding is where a build spends its time (README: ~540 tokens/s on 2 cores), and it is the one step
that needs no shared state, so it is the step that spreads over machines. RayEmbedder is an ordinary
Embedder to the build: `encode_documents` cuts the texts into batches, a pool of Ray actors (each
loads the model once) embeds them, and the vectors come back in order. Everything else, planning,
assembling and writing through the vector-store seam (store.py), stays in the build process, so
incremental updates and crash safety are the same with or without Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rag.errors import RagError
from rag.index.embedding import Embedder

INSTALL_HINT = "pip install .[scale]  (or run without --ray)"
RAY_BATCH = 64  # texts per task: big enough to amortise a task's overhead, small enough to keep every actor busy


def _ray() -> Any:
    """ray, started here when no Ray is running (`address` empty) or joined at `address`."""
    try:
        import ray
    except ImportError as exc:
        raise RagError("rag index --ray needs ray, which is not installed.", INSTALL_HINT) from exc
    return ray


class RayEmbedder:
    """An Embedder whose document batches are embedded by `workers` Ray actors; queries stay local."""

    def __init__(self, factory: Callable[[], Embedder], workers: int, batch: int, address: str = "") -> None:
        """`factory` must pickle (e.g. functools.partial of a loader): each actor calls it once."""
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)

        @ray.remote
        class _Worker:
            def __init__(self, make: Callable[[], Embedder]) -> None:
                self.embedder = make()

            def dim(self) -> int:
                return self.embedder.dim

            def name(self) -> str:
                return self.embedder.name

            def encode(self, texts: list[str]) -> np.ndarray:
                return self.embedder.encode_documents(texts)

        self._ray = ray
        self._actors = [_Worker.remote(factory) for _ in range(max(1, workers))]
        self._batch = max(1, batch)
        self.dim = int(ray.get(self._actors[0].dim.remote()))
        self.name = str(ray.get(self._actors[0].name.remote()))
        self._factory = factory
        self._local: Embedder | None = None

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Vectors of `texts` in their order; batches go to the actors round robin and come back as they finish."""
        from ray.util import ActorPool

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [list(texts[i : i + self._batch]) for i in range(0, len(texts), self._batch)]
        pool = ActorPool(self._actors)
        out: list[np.ndarray] = []
        for vectors in pool.map(lambda actor, batch: actor.encode.remote(batch), batches):  # in order
            out.append(np.asarray(vectors, dtype=np.float32))
            if progress:
                progress(len(vectors))
        return np.concatenate(out)

    def encode_query(self, text: str) -> np.ndarray:
        """Builds never embed queries; kept so a RayEmbedder is a complete Embedder."""
        if self._local is None:
            self._local = self._factory()
        return self._local.encode_query(text)

    def shutdown(self) -> None:
        """Stop the actors (and Ray, when this process started it is left to `ray.shutdown` by the caller)."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
