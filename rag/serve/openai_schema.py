"""The /v1 wire format: OpenAI's chat-completions shapes, plus the fields that carry citations.

Requests are pydantic models (validated, with OpenAI-style errors on failure, see errors.py);
responses are plain dicts built from the pipeline's dataclasses. What is added to OpenAI's
shapes is documented in docs/api.md: `citations`, `refused`, `unsupported`, `answer`,
`query`, `related`, `ignored` at the top level of a completion (of the last chunk when streaming),
and `restart` on a chunk after which the text streamed so far is not the answer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rag.answer.pipeline import Turn
from rag.schema import Answer, Citation, Hit

HISTORY_TURNS = 3  # earlier turns read from `messages`, as on the chat page (ui/app.py)
# Request fields OpenAI defines that this server reads; any other field given is listed in `ignored`.
HONOURED = {"model", "messages", "stream", "max_tokens", "max_completion_tokens", "k", "stream_options"}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "text"
    text: str = ""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        """The message's words: its string, or its text parts joined (images and the like have none)."""
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. `model` may be left out: the configured chat model answers."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens
    k: int | None = Field(default=None, ge=1, le=20)  # passages given to the model (an extension)
    temperature: float | None = Field(default=None, ge=0, le=2)  # accepted, not honoured (see ignored)

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def ignored(self) -> list[str]:
        """Fields the client set that change nothing here, so the response can say so."""
        given = set(self.model_fields_set) | set(self.model_extra or {})
        return sorted(given - HONOURED)


class SearchRequest(BaseModel):
    """POST /v1/search: retrieval only, no generation."""

    model_config = ConfigDict(extra="forbid")
    query: str
    k: int = Field(default=5, ge=1, le=100)


def conversation(messages: list[Message]) -> tuple[str, list[Turn]]:
    """The question (the last user message) and the earlier user/assistant pairs as Turns.

    System and tool messages are skipped: the prompt is the product's own. Example:
    [user "A?", assistant "a[1].", user "它呢？"] -> ("它呢？", [Turn("A?", "a[1].")])
    """
    if messages[-1].role != "user":
        raise ValueError("the last message must have role 'user': it is the question")
    turns, question = [], None
    for m in messages[:-1]:
        if m.role == "user":
            question = m.text
        elif m.role == "assistant" and question is not None:
            if m.text.strip():
                turns.append(Turn(question, m.text))
            question = None
    return messages[-1].text, turns[-HISTORY_TURNS:]


# ---------------------------------------------------------------- responses


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def citation_dict(c: Citation) -> dict[str, Any]:
    """One cited passage: `n` is the [n] in the answer; start/end are character offsets in the document."""
    ch = c.chunk
    return {"n": c.number, "document": ch.path, "title": ch.title, "heading": ch.heading,
            "headings": list(ch.headings), "page": ch.page, "start": ch.start, "end": ch.end,
            "text": ch.text, "chunk_id": ch.id}  # fmt: skip


def hit_dict(hit: Hit, rank: int) -> dict[str, Any]:
    ch = hit.chunk
    return {"rank": rank, "score": hit.score, "dense_score": hit.dense_score, "lexical_score": hit.lexical_score,
            "document": ch.path, "title": ch.title, "heading": ch.heading, "headings": list(ch.headings),
            "page": ch.page, "start": ch.start, "end": ch.end, "text": ch.text, "chunk_id": ch.id}  # fmt: skip


def answer_fields(answer: Answer, ignored: list[str]) -> dict[str, Any]:
    """What a completion adds to OpenAI's shape: the checked answer and its evidence."""
    return {
        "answer": answer.text,
        "citations": [citation_dict(c) for c in answer.citations],
        "refused": answer.refused,
        "unsupported": list(answer.unsupported),
        "query": answer.query,
        "related": [hit_dict(h, i) for i, h in enumerate(answer.related, start=1)],
        "ignored": ignored,
    }


def usage(answer: Answer) -> dict[str, int]:
    p, c = answer.prompt_tokens, answer.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(cid: str, model: str, answer: Answer, finish: str, ignored: list[str]) -> dict[str, Any]:
    """A whole (non-streamed) chat completion."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": finish}],
        "usage": usage(answer),
        **answer_fields(answer, ignored),
    }


def chunk(cid: str, model: str, delta: dict[str, str], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One streamed chat.completion.chunk."""
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def model_dict(name: str, role: str, installed: bool, loaded: bool, default: bool) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "rag-chat", "role": role,
            "installed": installed, "loaded": loaded, "default": default}  # fmt: skip
