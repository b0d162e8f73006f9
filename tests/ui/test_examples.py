"""ui.examples: the page's example questions come from the folder, not from the code."""

from __future__ import annotations

from pathlib import Path

from ui.examples import EXAMPLES_FILE, MAX_EXAMPLES, example_questions


def test_the_folders_own_questions_come_first(tmp_path: Path) -> None:
    (tmp_path / EXAMPLES_FILE).write_text("# a comment\n\nHow long is the warranty?\n保修期多长？\n", encoding="utf-8")
    assert example_questions(tmp_path, ["Manual"]) == ["How long is the warranty?", "保修期多长？"]


def test_without_a_file_the_titles_make_the_questions(tmp_path: Path) -> None:
    titles = [f"Report {i}" for i in range(9)] + ["Report 0"]
    made = example_questions(tmp_path, titles, lang="en")
    assert made[0] == "What does “Report 0” cover?" and len(made) == MAX_EXAMPLES
    assert example_questions(tmp_path, ["年度报告"], lang="zh") == ["《年度报告》主要讲了什么？"]


def test_an_empty_folder_still_gets_one_question(tmp_path: Path) -> None:
    assert example_questions(tmp_path / "missing", []) == ["这些文档主要讲了什么？"]
