"""rag bench-api's report: counts and percentiles from the clients' results (no server needed)."""

from __future__ import annotations

from rag_eval.api_load import LoadReport, Result


def test_the_report_counts_answered_busy_and_failed_and_takes_percentiles() -> None:
    results = [Result(200, first=float(i), total=float(i) + 1) for i in range(1, 5)]
    results += [Result(429), Result(500, error="boom")]
    lines = LoadReport(6, results, wall=5.0).lines()
    assert lines[0].startswith("6 concurrent clients: 4 answered, 1 told 429 (queue full), 1 failed")
    assert "p50   2.50 s" in lines[1] and "p50   3.50 s" in lines[2]  # rag_eval.bench.percentile of 1..4, 2..5
    assert lines[-1] == "  failed: 500 boom"
