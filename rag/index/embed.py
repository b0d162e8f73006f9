"""The embed step of a build: vectors for what this run read, and nothing else.

Only the chunks of new and changed files are embedded, then their sentence pieces; unchanged files
keep their rows (assemble.py). The embedding model (rag/index/embedding.py) is loaded only when
there is something to embed, so a run that changed nothing never pays for loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from rag.index.assemble import Embedded
from rag.index.plan import Plan
from rag.index.report import BuildReport, Progress, notify
from rag.ingest.chunking import piece_texts, search_text
from rag.schema import Chunk

if TYPE_CHECKING:
    from rag.index.embedding import Embedder


def embed_new(
    plan: Plan,
    chunks_of: dict[str, list[Chunk]],
    read: dict[str, tuple[str, str]],
    piece_chars: int,
    embedder_factory: Callable[[], Embedder],
    report: BuildReport,
    on_progress: Progress | None,
) -> Embedded:
    """Embed only what is new: the chunks, then their sentence pieces. The model is loaded only if needed."""
    chunks = [c for rel in chunks_of for c in chunks_of[rel]]
    pieces_of = [piece_texts(c, piece_chars) for c in chunks]
    piece_list = [t for texts_of_chunk in pieces_of for t in texts_of_chunk]
    vectors = piece_vectors = np.zeros((0, 0), dtype=np.float32)
    dim = plan.previous.manifest.dim if plan.previous else 0
    if chunks or not plan.previous:  # an empty first build still records the dimension
        embedder = embedder_factory()
        dim = embedder.dim
    if chunks:
        vectors, piece_vectors = _encode(embedder, chunks, piece_list, on_progress)
        report.embedded, report.pieces_embedded = len(chunks), len(piece_list)
    return Embedded(chunks_of, read, vectors, [len(p) for p in pieces_of], piece_vectors, dim)


def _encode(
    embedder: Embedder, chunks: list[Chunk], pieces: list[str], on_progress: Progress | None
) -> tuple[np.ndarray, np.ndarray]:
    """The chunks' vectors, then the pieces' (empty without pieces), with one progress count over both."""
    done, total = 0, len(chunks) + len(pieces)

    def progress(n: int) -> None:
        nonlocal done
        done += n
        notify(on_progress, "embed", done, total)

    vectors = embedder.encode_documents([search_text(c) for c in chunks], progress=progress)
    piece_vectors = np.zeros((0, 0), dtype=np.float32)
    if pieces:
        piece_vectors = embedder.encode_documents(pieces, progress=progress)
    return vectors, piece_vectors
