"""Text -> normalized float32 vectors. The only importer of sentence-transformers/torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from rag import offline  # noqa: F401  (sets HF_HUB_OFFLINE before any HF import)


class Embedder(Protocol):
    name: str
    dim: int

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray: ...

    def encode_query(self, text: str) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """Loads a sentence-transformers model from a local folder, never from a hub."""

    batch_size = 16  # small batches keep peak memory low on a laptop

    def __init__(self, name: str, path: Path, threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"cannot tell the embedding size of {path}")
        self.dim = int(dim)
        self._query = lru_cache(maxsize=512)(self._encode_query_uncached)

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i : i + self.batch_size])
            out[i : i + len(batch)] = self._model.encode_document(
                batch, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            if progress:
                progress(len(batch))
        return out

    def _encode_query_uncached(self, text: str) -> np.ndarray:
        vec = self._model.encode_query([text], normalize_embeddings=True, convert_to_numpy=True)[0]
        vec = np.asarray(vec, dtype=np.float32)
        vec.setflags(write=False)  # cached: callers must not change it
        return vec

    def encode_query(self, text: str) -> np.ndarray:
        return self._query(text)


def load_embedder(name: str, models_dir: Path, threads: int | None = None) -> SentenceTransformerEmbedder:
    from rag.models import locate

    return SentenceTransformerEmbedder(name, locate(name, models_dir), threads=threads)
