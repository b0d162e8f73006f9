"""rag.index.manifest: the build's self-description survives a round trip."""

from __future__ import annotations

from rag.index.manifest import Manifest
from tests.index.common import build_with, live_dir


# ---------------------------------------------------------------- round trip
def test_manifest_json_round_trip(settings) -> None:  # type: ignore[no-untyped-def]
    build_with(settings)
    text = (live_dir(settings) / "manifest.json").read_text(encoding="utf-8")
    manifest = Manifest.from_json(text)
    assert Manifest.from_json(manifest.to_json()) == manifest


