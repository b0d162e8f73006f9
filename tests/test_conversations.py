"""The conversation store: chats survive a reopen, feedback keeps its own copy, Markdown export, schema versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rag.conversations import (
    ConversationStore,
    answer_from_json,
    answer_to_json,
    read_feedback,
    to_markdown,
)
from rag.errors import ConfigError
from rag.schema import Answer, Chunk, Citation, Hit

COST = Chunk(
    "c1",
    "deepseek.md",
    "DeepSeek-V3",
    ("DeepSeek-V3 技术报告", "训练成本"),
    10,
    40,
    "完整训练仅花费 557.6万美元。",
    page=3,
)
ARCH = Chunk("c2", "deepseek.md", "DeepSeek-V3", ("架构",), 50, 80, "采用混合专家（MoE）架构。")


def cost_answer() -> Answer:
    return Answer(
        "训练成本是多少？", "训练成本是多少？", "训练仅花费 557.6万美元[1]。", [Citation(1, COST)],
        [Hit(COST, 0.9, 0.8, 3.1), Hit(ARCH, 0.2, 0.3, None)], unsupported=["x"], timings={"total": 1.5},
        related=[Hit(ARCH, 0.1)], raw_text="训练仅花费 557.6万美元[1]。", tries=["ordinary"],
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(tmp_path / "conversations.sqlite3")


def test_an_answer_round_trips_through_json() -> None:
    a = cost_answer()
    assert answer_from_json(answer_to_json(a)) == a


def test_a_conversation_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    first = ConversationStore(path)
    conv = first.create("  训练成本\n是多少？ ", "default")
    first.add_message(conv.id, 1, "训练成本是多少？", cost_answer(), "default")
    first.add_message(conv.id, 2, "它采用什么架构？", cost_answer(), "manuals", stopped=True)
    secret = first.secret()
    first.close()

    again = ConversationStore(path)
    assert again.get(conv.id) is not None and again.get(conv.id).title == "训练成本 是多少？"  # type: ignore[union-attr]
    messages = again.messages(conv.id)
    assert [(m.number, m.question, m.collection, m.stopped) for m in messages] == [
        (1, "训练成本是多少？", "default", False), (2, "它采用什么架构？", "manuals", True),
    ]  # fmt: skip
    assert messages[0].answer == cost_answer()
    assert again.secret() == secret  # the browser's saved id stays readable after a restart


def test_recent_lists_the_latest_first_and_delete_removes_the_messages(store: ConversationStore) -> None:
    a, b = store.create("first", "default"), store.create("second", "default")
    store.add_message(a.id, 1, "first", cost_answer(), "default")  # a is now the most recent
    assert [c.id for c in store.recent()] == [a.id, b.id]
    assert store.delete(a.id) and not store.delete(a.id)
    assert store.get(a.id) is None and store.messages(a.id) == [] and [c.id for c in store.recent()] == [b.id]


def test_feedback_keeps_question_answer_and_citations_even_after_the_chat_is_deleted(store: ConversationStore) -> None:
    conv = store.create("训练成本是多少？", "default")
    m = store.add_message(conv.id, 1, "训练成本是多少？", cost_answer(), "default")
    store.rate(m.id, -1)
    store.rate(m.id, 1)  # changing one's mind replaces the row
    assert store.messages(conv.id)[0].rating == 1
    store.delete(conv.id)
    [fb] = store.feedback()
    assert (fb.rating, fb.question, fb.answer, fb.refused) == (
        1,
        "训练成本是多少？",
        "训练仅花费 557.6万美元[1]。",
        False,
    )
    assert [(c.number, c.file, c.heading, c.page, c.text) for c in fb.citations] == [
        (1, "deepseek.md", "DeepSeek-V3 技术报告 > 训练成本", 3, "完整训练仅花费 557.6万美元。")
    ]
    assert read_feedback(store.path) == [fb]


def test_removing_a_rating_and_rating_nothing(store: ConversationStore) -> None:
    conv = store.create("q", "default")
    m = store.add_message(conv.id, 1, "q", cost_answer(), "default")
    store.rate(m.id, 1)
    assert store.rate(m.id, 0) is None and store.feedback() == []
    assert store.rate(999, 1) is None and store.feedback() == []
    with pytest.raises(ValueError):
        store.rate(m.id, 5)


def test_markdown_export_has_each_answer_and_its_cited_passages(store: ConversationStore) -> None:
    conv = store.create("训练成本是多少？", "default")
    m = store.add_message(conv.id, 1, "训练成本是多少？", cost_answer(), "default")
    store.rate(m.id, 1)
    md = to_markdown(conv, store.messages(conv.id))
    assert md.startswith("# 训练成本是多少？\n")
    assert "## 1. 训练成本是多少？\n\n训练仅花费 557.6万美元[1]。" in md
    assert "**[1]** deepseek.md · DeepSeek-V3 技术报告 > 训练成本 · p. 3\n\n> 完整训练仅花费 557.6万美元。" in md
    assert "Feedback: 👍" in md and "采用混合专家" not in md  # passages given but not cited are left out


@pytest.mark.parametrize(
    ("path", "location"),
    [("deck.pptx", "slide 4"), ("budget.XLSX", "sheet 4"), ("report.pdf", "p. 4")],
)
def test_markdown_export_names_the_unit_a_location_counts(store: ConversationStore, path: str, location: str) -> None:
    chunk = Chunk("c9", path, "Budget", ("Q3",), 0, 20, "bolts: 40; price: 2", page=4)
    answer = Answer("how many bolts?", "how many bolts?", "40 bolts[1].", [Citation(1, chunk)], [Hit(chunk, 0.9)])
    conv = store.create("bolts", "default")
    store.add_message(conv.id, 1, "how many bolts?", answer, "default")
    md = to_markdown(conv, store.messages(conv.id))  # read back from the store, as the export does
    assert f"**[1]** {path} · Q3 · {location}\n" in md


def test_a_file_from_a_newer_version_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    ConversationStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ConfigError, match="newer rag-chat"):
        ConversationStore(path)


def test_reading_feedback_from_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no conversations file"):
        read_feedback(tmp_path / "none.sqlite3")
    assert not (tmp_path / "none.sqlite3").exists()


def test_the_default_file_sits_beside_the_index_folder(tmp_path: Path) -> None:
    from rag.config import Settings

    assert Settings(index_dir=tmp_path / "index").conversations_path == tmp_path / "conversations.sqlite3"
    assert Settings(conversations_db=tmp_path / "x.db").conversations_path == tmp_path / "x.db"
