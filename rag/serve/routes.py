"""The /v1 routes: chat completions (streamed or not), models, search and the index's state.

Answering runs in a worker thread that first waits its turn in the GenerationQueue shared with
the chat page; the request's coroutine passes the worker's events on. A client that goes away
sets the worker's stop flag, which ends generation at the next token (or leaves the line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from rag.answer.kvstore import BackgroundBuild
from rag.answer.pipeline import Done, Pipeline, Restart, Token, Turn, clean_question
from rag.answer.turns import GenerationQueue, Ticket
from rag.errors import RagError
from rag.index.background import BackgroundIndex
from rag.models import REGISTRY, is_installed
from rag.schema import Answer
from rag.serve import openai_schema as wire
from rag.serve.errors import ApiError, from_rag_error, from_validation
from ui.chat_models import ChatModels

if TYPE_CHECKING:
    from rag.config import Settings

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
_END = object()  # the worker has finished (after its last event or error)


@dataclass
class Service:
    """What the routes share with the chat page: the models, the line for generating, the index."""

    pipeline: Pipeline
    models: ChatModels
    turns: GenerationQueue
    kv_build: BackgroundBuild | None = None
    indexing: BackgroundIndex | None = None  # the first index build, while `rag serve` runs it

    def still_building(self) -> str:
        """What to tell a question while the first index is built ('' once it can be answered)."""
        if self.indexing is None or not self.indexing.blocks_questions():
            return ""
        return self.indexing.progress().line()

    @property
    def settings(self) -> Settings:
        return self.pipeline.settings


@dataclass
class Job:
    """One question being answered for one request."""

    question: str
    history: list[Turn]
    model: str
    k: int | None
    max_tokens: int | None
    ticket: Ticket
    stop: threading.Event = field(default_factory=threading.Event)
    truncated: bool = False  # stopped at max_tokens


# ---------------------------------------------------------------- request checks


def authorize(service: Service) -> Callable[[Request], None]:
    """A dependency: with `api_key` set, a request without `Authorization: Bearer <key>` gets 401."""

    def check(request: Request) -> None:
        key = service.settings.api_key
        if not key:
            return
        sent = request.headers.get("authorization", "")
        scheme, _, token = sent.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "Missing or wrong API key. Send the header: Authorization: Bearer <api_key>.",
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    return check


async def read_body(request: Request, model: type[M], limit: int) -> M:
    """The JSON body as `model`, read at most `limit` bytes (413 past it, 400 when it is not valid)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise _too_large(limit)
    if not body.strip():
        raise ApiError(400, "The request has no body. Send a JSON object (see docs/api.md).", "invalid_json")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise from_validation(exc) from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than {limit // 1024} KB (api_max_body_kb). Send less history.",
                    "body_too_large")  # fmt: skip


def chat_model(service: Service, name: str | None) -> str:
    """The registered, installed chat model `name` (the configured one when None); 404/503 otherwise."""
    name = name or service.settings.chat_model
    spec = REGISTRY.get(name)
    if spec is None or spec.kind != "chat":
        known = ", ".join(n for n, s in REGISTRY.items() if s.kind == "chat")
        raise ApiError(404, f"The model '{name}' does not exist. Use one of: {known} (GET /v1/models).",
                       "model_not_found", "model")  # fmt: skip
    if not is_installed(spec, service.settings.models_dir):
        raise ApiError(503, f"The model '{name}' is not installed. Run: rag models fetch {name}", "model_not_installed",
                       "model")  # fmt: skip
    return name


def new_job(service: Service, req: wire.ChatRequest) -> Job:
    """Check a chat request and queue it, turning every bad input into a 4xx the client can act on."""
    try:
        question, history = wire.conversation(req.messages)
    except ValueError as exc:
        raise ApiError(400, f"{exc}. Put the question last in messages.", "invalid_messages", "messages") from None
    try:
        question = clean_question(question)
    except RagError as exc:
        raise from_rag_error(exc) from None
    model = chat_model(service, req.model)
    building = service.still_building()
    if building:  # nothing is indexed yet: say so at once, with the build's progress
        raise ApiError(503, f"{building} Ask again when it is done (GET /v1/index shows the progress).",
                       "index_building", headers={"Retry-After": "30"})  # fmt: skip
    ticket = service.turns.join()
    if ticket is None:
        raise ApiError(429, f"{service.turns.limit} questions are already waiting for the model. Retry in a minute.",
                       "queue_full", headers={"Retry-After": "30"})  # fmt: skip
    return Job(question, history, model, req.k, req.answer_tokens, ticket)


# ---------------------------------------------------------------- answering


def run(service: Service, job: Job, emit: Callable[[object], None]) -> None:
    """In a worker thread: wait for the turn, answer, emit each event (or the error); always emit _END."""
    try:
        if not job.ticket.wait_unless(job.stop):
            return  # the client left while waiting
        pipeline = service.models.pipeline(job.model)
        events = pipeline.ask(job.question, job.history, k=job.k, stop=job.stop)
        try:
            tokens = 0
            for event in events:
                if isinstance(event, Restart):
                    tokens = 0
                elif isinstance(event, Token):
                    tokens += 1
                    if job.max_tokens and tokens >= job.max_tokens and not job.stop.is_set():
                        job.truncated = True
                        job.stop.set()  # the pipeline checks what was written so far and ends
                emit(event)
        finally:
            if isinstance(events, Generator):
                events.close()  # frees the model at once when the client left
    except RagError as exc:
        emit(from_rag_error(exc))
    except Exception as exc:  # reported to the client as a 500, logged here
        log.exception("answering failed")
        emit(ApiError(500, f"Answering failed: {type(exc).__name__}. The server log has the details.", "internal"))
    finally:
        job.ticket.release()
        emit(_END)


def start(service: Service, job: Job) -> asyncio.Queue[object]:
    """Run the job in a thread; its events arrive on the returned queue, _END last."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[object] = asyncio.Queue()

    def emit(item: object) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the server's loop has closed (shutdown): nobody is listening
            job.stop.set()

    threading.Thread(target=run, args=(service, job, emit), name="api-answer", daemon=True).start()
    return events


async def answer_whole(request: Request, job: Job, events: asyncio.Queue[object]) -> Answer | None:
    """Wait for the Done event; None when the client disconnected first (generation is stopped)."""
    answer = None
    while True:
        try:
            item = await asyncio.wait_for(events.get(), timeout=0.5)
        except TimeoutError:
            if await request.is_disconnected():
                job.stop.set()
                return None
            continue
        if item is _END:
            return answer
        if isinstance(item, ApiError):
            raise item
        if isinstance(item, Done):
            answer = item.answer


def sse(item: dict[str, Any] | str) -> str:
    data = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
    return f"data: {data}\n\n"


async def stream(job: Job, events: asyncio.Queue[object], cid: str, ignored: list[str]) -> AsyncIterator[str]:
    """The SSE body: a role chunk, a chunk per token, then the final chunk with citations, then [DONE].

    Leaving this generator early (the client disconnected, so the server cancels it) stops the job.
    """
    model = job.model
    try:
        yield sse(wire.chunk(cid, model, {"role": "assistant", "content": ""}))
        answer = None
        while (item := await events.get()) is not _END:
            if isinstance(item, Token):
                yield sse(wire.chunk(cid, model, {"content": item.text}))
            elif isinstance(item, Restart):  # the text so far is not the answer: the client should forget it
                yield sse(wire.chunk(cid, model, {}, restart=True))
            elif isinstance(item, Done):
                answer = item.answer
            elif isinstance(item, ApiError):
                yield sse(item.body())
        if answer is not None:
            finish = "length" if job.truncated else "stop"
            extra = {"usage": wire.usage(answer), **wire.answer_fields(answer, ignored)}
            yield sse(wire.chunk(cid, model, {}, finish, **extra))
        yield sse("[DONE]")
    finally:
        job.stop.set()


# ---------------------------------------------------------------- routes


def router(service: Service) -> APIRouter:
    """The /v1 routes, each behind the API key when one is set.

    Registered in this order on purpose: the catch-all 404 route must come last, after every endpoint.
    """
    api = APIRouter(prefix="/v1", dependencies=[Depends(authorize(service))])
    limit = service.settings.api_max_body_kb * 1024
    _chat_routes(api, service, limit)
    _model_routes(api, service)
    _search_routes(api, service, limit)
    _index_routes(api, service)
    _fallback_routes(api)
    return api


def _chat_routes(api: APIRouter, service: Service, limit: int) -> None:
    """POST /v1/chat/completions: the one endpoint that generates (and so waits its turn)."""

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        """Answer the last user message from the documents; the answer keeps its [n] and carries `citations`."""
        req = await read_body(request, wire.ChatRequest, limit)
        job = new_job(service, req)
        events = start(service, job)
        cid, ignored = wire.new_id(), req.ignored()
        if req.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream(job, events, cid, ignored), media_type="text/event-stream", headers=headers)
        answer = await answer_whole(request, job, events)
        if answer is None:  # the client has gone; nobody reads this
            return JSONResponse({"error": {"message": "client disconnected", "type": "aborted"}}, status_code=499)
        return JSONResponse(wire.completion(cid, job.model, answer, "length" if job.truncated else "stop", ignored))


def _model_routes(api: APIRouter, service: Service) -> None:
    """GET /v1/models and /v1/models/{name}: the chat models, installed and loaded or not."""

    @api.get("/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model(service, name) for name, s in REGISTRY.items() if s.kind == "chat"]}

    @api.get("/models/{name}")
    def get_model(name: str) -> dict[str, Any]:
        if name not in REGISTRY or REGISTRY[name].kind != "chat":
            chat_model(service, name)  # raises the 404 that lists the known names
        return _model(service, name)


def _search_routes(api: APIRouter, service: Service, limit: int) -> None:
    """POST /v1/search: retrieval only, so a client can see what an answer would be built from."""

    @api.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        """The ranked passages for a query, with their scores; nothing is generated (no turn is taken)."""
        req = await read_body(request, wire.SearchRequest, limit)
        try:
            hits = await asyncio.to_thread(service.pipeline.search, req.query, req.k)
        except RagError as exc:
            raise from_rag_error(exc) from None
        data = [wire.hit_dict(h, i) for i, h in enumerate(hits, start=1)]
        return {"object": "list", "query": req.query.strip(), "data": data}


def _index_routes(api: APIRouter, service: Service) -> None:
    """GET /v1/index: what the index holds and whether a build is running (see _index_state)."""

    @api.get("/index")
    def index_state() -> dict[str, Any]:
        return _index_state(service)


def _fallback_routes(api: APIRouter) -> None:
    """/v1/openapi.json (the app's schema, behind the key too) and, registered last, a 404 for any
    other /v1 path that names the real endpoints, in the API's own error format."""

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request) -> dict[str, Any]:
        return request.app.openapi()

    @api.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    def not_found(rest: str) -> None:
        raise ApiError(404, f"There is no endpoint /v1/{rest}. See GET /v1/models and docs/api.md.", "unknown_endpoint")


def _model(service: Service, name: str) -> dict[str, Any]:
    spec = REGISTRY[name]
    s = service.settings
    return wire.model_dict(name, spec.role, is_installed(spec, s.models_dir), service.models.is_loaded(name),
                           name == s.chat_model)  # fmt: skip


def _index_state(service: Service) -> dict[str, Any]:
    """Documents, chunks and whether a build is running; `state` is ready, building or missing."""
    from rag.index.lock import lock_holder

    s = service.settings
    building = lock_holder(Path(s.index_dir)) is not None or bool(service.still_building())
    state: dict[str, Any] = {"object": "index", "state": "building" if building else "ready", "building": building,
                             "corpus_dir": str(s.corpus_dir), "embed_model": s.embed_model}  # fmt: skip
    if service.indexing is not None:
        p = service.indexing.progress()
        state["first_build"] = {"stage": p.stage, "documents_read": p.files_done, "documents": p.files_total,
                                "texts_embedded": p.units_done, "texts": p.units_total, "eta_s": p.eta_s(),
                                "message": p.line(), "error": p.error or None}  # fmt: skip
    try:
        index = service.pipeline.get_index()
    except RagError as exc:
        error = None if service.still_building() else f"{exc.message} {exc.hint}".strip()  # not yet, rather than missing
        return {**state, "state": "building" if building else "missing", "documents": [], "chunks": 0, "error": error}
    m = index.manifest
    docs = [{"document": path, "title": e.title, "chunks": len(e.chunk_ids), "indexed_at": e.indexed_at}
            for path, e in sorted(m.files.items())]  # fmt: skip
    state.update(documents=docs, chunks=len(index), built_at=m.built_at, format_version=m.format_version,
                 skipped={p: v.get("reason", "") for p, v in m.skipped.items()})  # fmt: skip
    if service.kv_build is not None and s.kv_cache:
        st = service.kv_build.status()
        state["kv_store"] = {"blocks": st.blocks, "total": st.total, "complete": st.complete, "building": st.building,
                             "bytes": st.bytes, "max_bytes": st.limit_bytes,
                             "error": service.kv_build.error or None}  # fmt: skip
    return state
