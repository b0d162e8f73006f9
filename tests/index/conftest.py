"""Fixtures of the index tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import isolate, tiny_settings
from tests.index.common import FILES


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Settings over a small corpus (the tiny corpus and one history file), state kept under tmp_path."""
    isolate(monkeypatch, tmp_path)
    return tiny_settings(tmp_path, FILES, chunk_size=80, chunk_overlap=20)
