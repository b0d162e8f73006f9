"""Saved chats on the page: the side panel's list, a chat brought back from the store, exports. No Gradio here.

The page keeps, per tab, which message of the store each answer in its chat is (`MessageIds`:
the answer's place in the chat's message list -> the store's message id), so a thumbs up or
down lands on the right row however many errors or stopped answers sit between.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.conversations import Conversation, ConversationStore, Message, to_markdown
from ui import render
from ui.render import Exchange

MessageIds = dict[int, int]  # index of the answer in the chat's messages -> messages.id in the store
RATING_OF = {True: 1, False: -1}  # gr.LikeData.liked -> rating; anything else (an undone thumb) is 0
FEEDBACK_OF = {1: "Like", -1: "Dislike"}  # rating -> the Chatbot's feedback_value


@dataclass
class Restored:
    """A saved conversation as the page shows it again."""

    history: list[dict[str, Any]]  # the Chatbot's messages
    exchanges: list[Exchange]  # for the sources panel
    message_ids: MessageIds
    feedback: list[str | None]  # one per answer: "Like", "Dislike" or None
    collection: str  # of its last question


def choices(conversations: list[Conversation]) -> list[tuple[str, str]]:
    """(label, id) for the side panel: the first question and when the chat was last added to."""
    return [(f"{c.title} · {time.strftime('%m-%d %H:%M', time.localtime(c.updated))}", c.id) for c in conversations]


def restore(conversation: Conversation, messages: list[Message], lang: str) -> Restored:
    """The chat, sources and feedback state of a saved conversation, each answer rendered as when it was given."""
    history: list[dict[str, Any]] = []
    ids: MessageIds = {}
    for m in messages:
        history.append({"role": "user", "content": m.question})
        ids[len(history)] = m.id
        history.append({"role": "assistant", "content": render.answer_html(m.answer, m.number, lang, m.stopped)})
    exchanges = [Exchange(m.number, m.question, m.answer, m.stopped) for m in messages][-render.KEEP_TURNS :]
    feedback = [FEEDBACK_OF.get(m.rating) for m in messages]
    collection = messages[-1].collection if messages else conversation.collection
    return Restored(history, exchanges, ids, feedback, collection)


def rating_of(liked: object) -> int:
    """gr.LikeData.liked -> +1, -1, or 0 when the reader clicked the same thumb again (Gradio sends '')."""
    return RATING_OF.get(liked, 0) if isinstance(liked, bool) else 0


def export_file(store: ConversationStore, conversation_id: str | None) -> Path | None:
    """Write the conversation as Markdown to a new temporary file (for the browser to download); None if there is none."""
    conversation = store.get(conversation_id)
    if conversation is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M", time.localtime(conversation.created))
    slug = re.sub(r"[^\w-]+", "-", conversation.title, flags=re.ASCII).strip("-")[:40] or "chat"
    path = Path(tempfile.mkdtemp(prefix="rag-export-")) / f"chat-{stamp}-{slug}.md"
    path.write_text(to_markdown(conversation, store.messages(conversation.id)), encoding="utf-8")
    return path
