"""The one percentile every report uses, so p50/p90/p95 in different tables can be compared."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation between the closest ranks (numpy's default method).

    Every table (rag eval, rag bench, rgb, scale) calls this one function; it returns None when there is
    nothing to measure so a table shows "-" rather than a made-up 0.
    Example: percentile([1, 2, 3, 4], 50) -> 2.5; percentile([1, 2, 3, 4], 90) -> 3.7
    """
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="linear"))
