"""One build at a time per index directory, and who holds the lock (for `rag status` and the error message)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from rag.errors import IndexStateError
from rag.index.manifest import now


class BuildLock:
    """One build at a time.

    flock is released by the OS when its holder dies, so a killed build never
    blocks the next one. The info file names the holder; finding it already
    there on entry means the last holder died mid-build (a stale lock), which
    `stale_holder` reports and the entry clears.
    """

    def __init__(self, root: Path, wait: bool = False) -> None:
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(root / ".lock"))
        self._info = root / ".lock.info"
        self._wait = wait
        self.stale_holder: str | None = None

    def __enter__(self) -> Self:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=-1 if self._wait else 0)
        except Timeout:
            raise IndexStateError(
                f"Another index build is running ({_read_holder(self._info)}).",
                "Wait for it to finish, or run: rag index --wait",
            ) from None
        if self._info.exists():
            self.stale_holder = _read_holder(self._info)
        self._info.write_text(f"pid {os.getpid()}, started {now()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._info.unlink(missing_ok=True)
        self._lock.release()


def _read_holder(info: Path) -> str:
    """The holder's name from the info file; a lock taken by an older version may have none."""
    try:
        return info.read_text().strip() or "another process"
    except OSError:
        return "another process"


def lock_holder(root: Path) -> str | None:
    """Who holds the build lock of the index in `root` ('pid 123, started ...'), or None when it is free."""
    from filelock import FileLock, Timeout

    if not (root / ".lock").exists():
        return None
    probe = FileLock(str(root / ".lock"))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return _read_holder(root / ".lock.info")
    probe.release()
    return None
