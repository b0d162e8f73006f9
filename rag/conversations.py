"""Saved conversations and answer feedback, in one SQLite file (stdlib sqlite3).

A conversation is a list of messages; a message is one question and its whole Answer (text,
citations, passages, timings), stored as JSON so the page can show it again exactly, sources
panel included. A thumbs up or down is stored in `feedback` with its own copy of the question,
the answer and the cited passages, so deleting a chat keeps what readers said about it and
`rag eval` can read those rows as a question set (rag_eval/feedback.py).

The file carries a schema version (table `meta`); opening a file of a newer version is refused
with a message instead of being misread.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rag.errors import ConfigError
from rag.schema import Answer, Chunk, Citation, Hit

SCHEMA_VERSION = 1
TITLE_CHARS = 80  # a conversation's title is its first question, cut here

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, collection TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    number INTEGER NOT NULL, collection TEXT NOT NULL, question TEXT NOT NULL,
    answer TEXT NOT NULL, stopped INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, number);
CREATE TABLE IF NOT EXISTS feedback (
    message INTEGER PRIMARY KEY, rating INTEGER NOT NULL, collection TEXT NOT NULL,
    question TEXT NOT NULL, answer TEXT NOT NULL, refused INTEGER NOT NULL,
    citations TEXT NOT NULL, created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str  # the first question
    collection: str  # where it started
    created: float  # seconds since the epoch
    updated: float


@dataclass(frozen=True)
class Message:
    """One question and its answer within a conversation; `number` is its turn (1, 2, ...)."""

    id: int
    conversation: str
    number: int
    collection: str
    question: str
    answer: Answer
    stopped: bool = False
    rating: int = 0  # +1 thumbs up, -1 thumbs down, 0 none


@dataclass(frozen=True)
class CitedPassage:
    """A cited passage as feedback keeps it: enough to show it and to check retrieval against it."""

    number: int
    file: str
    heading: str
    page: int | None
    text: str


@dataclass(frozen=True)
class Feedback:
    message: int  # the message it was given on (which may since have been deleted)
    rating: int  # +1 or -1
    collection: str
    question: str
    answer: str
    refused: bool
    citations: tuple[CitedPassage, ...]
    created: float


# ---------------------------------------------------------------- Answer <-> JSON


def _hit(h: Hit) -> dict[str, Any]:
    return {
        "chunk": h.chunk.to_dict(),
        "score": h.score,
        "dense_score": h.dense_score,
        "lexical_score": h.lexical_score,
    }


def answer_to_json(a: Answer) -> str:
    """The whole Answer as JSON (answer_from_json(answer_to_json(a)) == a)."""
    d = {
        "question": a.question, "query": a.query, "text": a.text, "refused": a.refused,
        "citations": [{"number": c.number, "chunk": c.chunk.to_dict()} for c in a.citations],
        "hits": [_hit(h) for h in a.hits], "related": [_hit(h) for h in a.related],
        "unsupported": a.unsupported, "factual_sentences": a.factual_sentences, "raw_text": a.raw_text,
        "timings": a.timings, "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
        "path": a.path, "cached_tokens": a.cached_tokens, "tries": a.tries,
    }  # fmt: skip
    return json.dumps(d, ensure_ascii=False)


def answer_from_json(text: str) -> Answer:
    d = json.loads(text)

    def hit(h: dict[str, Any]) -> Hit:
        return Hit(Chunk.from_dict(h["chunk"]), h["score"], h.get("dense_score"), h.get("lexical_score"))

    d["citations"] = [Citation(c["number"], Chunk.from_dict(c["chunk"])) for c in d["citations"]]
    d["hits"] = [hit(h) for h in d["hits"]]
    d["related"] = [hit(h) for h in d["related"]]
    return Answer(**d)


def cited_passages(a: Answer) -> tuple[CitedPassage, ...]:
    return tuple(CitedPassage(c.number, c.chunk.path, c.chunk.heading, c.chunk.page, c.chunk.text) for c in a.citations)


# ---------------------------------------------------------------- the store


class ConversationStore:
    """Conversations, messages and feedback in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
            self._migrate()
        except sqlite3.Error as exc:
            raise ConfigError(
                f"Cannot open the conversations file {self.path}: {exc}.",
                "Check the folder is writable, or point conversations_db in rag.toml elsewhere.",
            ) from exc

    def _migrate(self) -> None:
        self._db.executescript(_SCHEMA)  # each statement IF NOT EXISTS: safe to run on every open
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} was written by a newer rag-chat (schema {row[0]}, this one reads {SCHEMA_VERSION}).",
                    "Update rag-chat, or point conversations_db in rag.toml at another file.",
                )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def secret(self) -> str:
        """A random key made once per file: the page encrypts the browser's conversation id with it,
        so the id stays readable after a server restart."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'browser_secret'").fetchone()
            if row:
                return str(row[0])
            value = secrets.token_urlsafe(24)
            db.execute("INSERT INTO meta VALUES ('browser_secret', ?)", (value,))
            return value

    # ------------------------------------------------------------ conversations

    def create(self, first_question: str, collection: str) -> Conversation:
        now = time.time()
        title = " ".join(first_question.split())[:TITLE_CHARS] or "…"
        conv = Conversation(uuid.uuid4().hex, title, collection, now, now)
        with self._tx() as db:
            db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?)", (conv.id, title, collection, now, now))
        return conv

    def get(self, conversation_id: str | None) -> Conversation | None:
        if not conversation_id:
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return Conversation(*row) if row else None

    def recent(self, limit: int = 200) -> list[Conversation]:
        """The most recently updated first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM conversations ORDER BY updated DESC LIMIT ?", (limit,)).fetchall()
        return [Conversation(*r) for r in rows]

    def delete(self, conversation_id: str) -> bool:
        """Remove a conversation and its messages (their feedback rows stay); False if there was none."""
        with self._tx() as db:
            return db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

    # ------------------------------------------------------------ messages

    def add_message(
        self, conversation_id: str, number: int, question: str, answer: Answer, collection: str, stopped: bool = False
    ) -> Message:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO messages (conversation, number, collection, question, answer, stopped, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, number, collection, question, answer_to_json(answer), int(stopped), now),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return Message(int(cur.lastrowid or 0), conversation_id, number, collection, question, answer, stopped)

    def messages(self, conversation_id: str) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT m.id, m.conversation, m.number, m.collection, m.question, m.answer, m.stopped,"
                " COALESCE(f.rating, 0) FROM messages m LEFT JOIN feedback f ON f.message = m.id"
                " WHERE m.conversation = ? ORDER BY m.number, m.id",
                (conversation_id,),
            ).fetchall()
        return [Message(r[0], r[1], r[2], r[3], r[4], answer_from_json(r[5]), bool(r[6]), r[7]) for r in rows]

    # ------------------------------------------------------------ feedback

    def rate(self, message_id: int, rating: int) -> Feedback | None:
        """Store a thumbs up (+1) or down (-1) with the message's question, answer and citations; 0 removes it."""
        if rating not in (-1, 0, 1):
            raise ValueError(f"rating must be -1, 0 or 1, not {rating!r}")
        with self._tx() as db:
            if rating == 0:
                db.execute("DELETE FROM feedback WHERE message = ?", (message_id,))
                return None
            row = db.execute("SELECT collection, question, answer FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                return None
            answer = answer_from_json(row[2])
            fb = Feedback(
                message_id, rating, row[0], row[1], answer.text, answer.refused, cited_passages(answer), time.time()
            )
            db.execute(
                "INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (fb.message, fb.rating, fb.collection, fb.question, fb.answer, int(fb.refused),
                 json.dumps([asdict(c) for c in fb.citations], ensure_ascii=False), fb.created),
            )  # fmt: skip
            return fb

    def feedback(self) -> list[Feedback]:
        """Every feedback row, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM feedback ORDER BY created, message").fetchall()
        return [
            Feedback(r[0], r[1], r[2], r[3], r[4], bool(r[5]), tuple(CitedPassage(**c) for c in json.loads(r[6])), r[7])
            for r in rows
        ]


def read_feedback(path: Path) -> list[Feedback]:
    """The feedback rows of a conversations file, read without creating one where there is none."""
    if not Path(path).is_file():
        raise ConfigError(
            f"There is no conversations file at {path}.",
            "Give the path of conversations.sqlite3 (beside the index folder).",
        )
    store = ConversationStore(path)
    try:
        return store.feedback()
    finally:
        store.close()


# ---------------------------------------------------------------- export


# How the export names a chunk's location, by what its `page` counts (rag.schema.location_unit).
_LOCATION = {"page": "p. {n}", "slide": "slide {n}", "sheet": "sheet {n}"}


def to_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """The conversation as Markdown: each question, its answer, and the passages it cites (file, heading, page, text)."""
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation.created))
    lines = [f"# {conversation.title}", "", f"Collection: {conversation.collection} · {started}", ""]
    for m in messages:
        lines += [f"## {m.number}. {m.question}", "", m.answer.text.strip() or "(no answer)", ""]
        if m.stopped:
            lines += ["*(stopped)*", ""]
        if m.rating:
            lines += [f"Feedback: {'👍' if m.rating > 0 else '👎'}", ""]
        for c in m.answer.citations:
            location = _LOCATION[c.chunk.unit].format(n=c.chunk.page) if c.chunk.page else ""  # p. 3, slide 3, sheet 3
            where = " · ".join(p for p in (c.chunk.path, c.chunk.heading, location) if p)
            lines += [f"**[{c.number}]** {where}", ""]
            lines += ["> " + line if line else ">" for line in c.chunk.text.strip().splitlines()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
