"""rag_eval.raybench: the passages `rag eval ray` embeds, and its table."""

from __future__ import annotations

from pathlib import Path

from rag_eval.raybench import RayReport, RayRun, corpus_passages, format_ray_report
from tests.fakes import tiny_settings


def test_the_passages_are_the_corpus_chunks_up_to_the_limit(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path)
    every = corpus_passages(settings, 10_000)
    assert every and all(isinstance(t, str) and t for t in every)
    assert corpus_passages(settings, 1) == every[:1]


def test_the_table_names_each_path_and_its_rate() -> None:
    report = RayReport("fake", 2, [RayRun("in process", 10, 2.0, 5.0, 0.0), RayRun("ray, 2 workers", 10, 4.0, 2.5, 1e-7)])
    table = format_ray_report(report)
    assert "in process" in table and "ray, 2 workers" in table and "5.00" in table and "2.50" in table
