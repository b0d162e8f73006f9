"""rag_eval.llm_server's report: which answers differ between the backends, and the latencies of each."""

from __future__ import annotations

from rag_eval.llm_server import Pair, Report, Run, format_report


def test_the_report_counts_identical_answers_and_names_the_different_ones() -> None:
    same = Pair("q1", "Who?", Run(["Goo", "gle"], 1.0, 2.0, False), Run(["Goo", "gle"], 1.5, 2.5, False))
    other = Pair("q2", "When?", Run(["20", "17"], 3.0, 4.0, False), Run(["20", "18"], 3.0, 5.0, False))
    refused = Pair("q3", "Why?", Run(["No."], None, 0.1, True), Run(["No."], None, 0.1, True))
    report = Report("http://127.0.0.1:1", True, {"chat_model": "m"}, {"chat model": 0.5}, [same, other, refused])
    text = format_report(report)
    assert "token-identical answers: 2/3 (1/2 that the model wrote" in text
    assert "DIFFERENT q2: local '2017' / server '2018'" in text and "DIFFERENT q1" not in text
    assert "first token p50 (s)" in text and "2.00" in text and "2.25" in text  # medians of 1, 3 and 1.5, 3
    assert [row["identical"] for row in report.to_dict()["pairs"]] == [True, False, True]
