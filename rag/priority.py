"""Background work that yields the CPU: a thread lowers its own scheduling priority.

On Linux the nice value belongs to a thread, and threads a thread starts later
(torch's and llama.cpp's worker threads) inherit it. So the index build and the
passage KV store build each run in a thread that lowers itself first, and a
question, answered at normal priority, gets nearly all of both cores meanwhile
(nice 15 against 0: about 3% of the CPU when both want it all).

Subtle: a thread cannot raise its priority again without privileges, and
whatever it creates inherits the low priority, so a low-priority thread must
never load what answers use (the question encoder, the chat model).
"""

from __future__ import annotations

import os
import threading


def lower_this_thread(niceness: int) -> bool:
    """Lower the calling thread's priority by `niceness` (0 = leave it); False where the OS does not allow it."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except OSError:
        return False
    return True
