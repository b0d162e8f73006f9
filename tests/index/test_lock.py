"""rag.index.lock: one build at a time, and the lock names its holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rag.errors import IndexStateError
from rag.index.lock import BuildLock
from tests.index.common import build_with

# ---------------------------------------------------------------- the build lock


def test_second_lock_names_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "index"
    with BuildLock(root):
        assert f"pid {os.getpid()}" in (root / ".lock.info").read_text()
        with pytest.raises(IndexStateError) as info, BuildLock(root):
            pass
        assert f"pid {os.getpid()}" in info.value.message
        assert "--wait" in info.value.hint
    assert not (root / ".lock.info").exists()
    with BuildLock(root):  # free again once released
        pass


def test_build_refuses_while_locked(settings) -> None:  # type: ignore[no-untyped-def]
    with BuildLock(Path(settings.index_dir)), pytest.raises(IndexStateError, match="Another index build"):
        build_with(settings)
    report, _ = build_with(settings)
    assert report.wrote


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    root = tmp_path / "index"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from rag.index.lock import BuildLock
        with BuildLock(Path({str(root)!r})):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(IndexStateError) as info, BuildLock(root):
            pass
        assert f"pid {proc.pid}" in info.value.message
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=30)
    with BuildLock(root):  # released when the holder exits
        pass


