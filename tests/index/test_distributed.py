"""rag.index.distributed: `rag index --ray`. A real Ray started in this process (ray.init) embeds the build's
batches on two actors with the fake embedder; the build writes them through the same vector-store seam, and
the index is the same as one embedded in-process, on either store."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from rag.index.build import build
from rag.index.reader import Index
from rag.ingest.chunking import piece_texts, search_text
from tests.fakes import FakeEmbedder, bigram_vector
from tests.index.common import ROOT, SHA


@pytest.fixture(scope="module")
def ray_started():  # type: ignore[no-untyped-def]
    import ray

    # The actors unpickle tests.fakes.FakeEmbedder, so they need the checkout on their path.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("store", ["faiss", "milvus"])
def test_a_ray_build_equals_a_local_one(ray_started, settings, tmp_path: Path, store: str) -> None:  # type: ignore[no-untyped-def]
    from rag.index.distributed import RayEmbedder

    made: list[RayEmbedder] = []

    def on_ray() -> RayEmbedder:
        made.append(RayEmbedder(partial(FakeEmbedder), workers=2, batch=8))
        return made[-1]

    ray_settings = replace(settings, vector_store=store)
    report = build(ray_settings, on_ray, SHA)
    local_settings = replace(settings, index_dir=tmp_path / "local-index")
    build(local_settings, FakeEmbedder, SHA)
    assert len(made) == 1 and report.embedded > 8  # more than one batch, so the order of batches matters
    for embedder in made:
        embedder.shutdown()

    remote, local = Index.load(Path(ray_settings.index_dir)), Index.load(Path(local_settings.index_dir))
    try:
        assert remote.chunks == local.chunks
        np.testing.assert_allclose(remote.vectors(), local.vectors(), atol=1e-6)
        for chunk, vector in zip(remote.chunks, remote.vectors(), strict=True):
            np.testing.assert_allclose(vector, bigram_vector(search_text(chunk)), atol=1e-6)
        vectors, owners = remote.piece_vectors()
        texts = [t for c in remote.chunks for t in piece_texts(c, settings.piece_chars)]
        assert owners.tolist() == local.piece_vectors()[1].tolist() and len(vectors) == len(texts)
        np.testing.assert_allclose(vectors, np.stack([bigram_vector(t) for t in texts]), atol=1e-6)
    finally:
        remote.close()


def test_without_ray_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from rag.errors import RagError
    from rag.index.distributed import RayEmbedder

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RagError) as info:
        RayEmbedder(partial(FakeEmbedder), workers=1, batch=8)
    assert "pip install .[scale]" in info.value.hint
