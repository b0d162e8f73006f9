"""One generation at a time, in arrival order, for every caller of one loaded model.

The chat page and the HTTP API (rag/serve) answer with the same llama.cpp model, which can
run one generation at a time. Each asker takes a Ticket and waits until it is first in line;
the line is first come, first served whoever asks, so eight API clients cannot starve a
browser tab or the other way round. Past `limit` waiting tickets a caller that may be
refused (an API client) is told the line is full instead of waiting without end.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Self


class Ticket:
    """A place in the line. `wait` until it is this ticket's turn; `release` when done (or to give up)."""

    def __init__(self, line: GenerationQueue) -> None:
        self._line = line

    def wait(self, timeout: float | None = None) -> bool:
        """True once this ticket is first in line; False when `timeout` seconds passed first."""
        return self._line._wait(self, timeout)

    def wait_unless(self, stop: threading.Event, poll: float = 0.2) -> bool:
        """Wait for the turn, giving up (False, the place released) as soon as `stop` is set."""
        while not self.wait(poll):
            if stop.is_set():
                self.release()
                return False
        if stop.is_set():
            self.release()
            return False
        return True

    @property
    def ahead(self) -> int:
        """How many tickets are before this one (0: its turn)."""
        return self._line._ahead(self)

    def release(self) -> None:
        """Leave the line, or end the turn; safe to call more than once."""
        self._line._release(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class GenerationQueue:
    """A fair (FIFO) line for the one generator.

    >>> line = GenerationQueue(limit=1)
    >>> a = line.join(); b = line.join(); line.join() is None  # a answers, b waits, the third is refused
    True
    >>> b.wait(0), a.release(), b.wait(0)
    (False, None, True)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # tickets that may wait behind the one answering (refusable callers only)
        self._line: deque[Ticket] = deque()
        self._cond = threading.Condition()

    def join(self, refusable: bool = True) -> Ticket | None:
        """A ticket at the end of the line; None when `refusable` and `limit` tickets already wait."""
        with self._cond:
            if refusable and len(self._line) > self.limit:
                return None
            ticket = Ticket(self)
            self._line.append(ticket)
            return ticket

    @property
    def waiting(self) -> int:
        """Tickets in line, the one answering included."""
        with self._cond:
            return len(self._line)

    def _wait(self, ticket: Ticket, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._line) and self._line[0] is ticket, timeout)

    def _ahead(self, ticket: Ticket) -> int:
        with self._cond:
            return self._line.index(ticket) if ticket in self._line else 0

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket in self._line:
                self._line.remove(ticket)
                self._cond.notify_all()
