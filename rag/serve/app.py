"""`rag serve`: one uvicorn server on one port, the chat page at / and the OpenAI-compatible API at /v1.

The page (ui/app.py's Gradio Blocks) is mounted on a FastAPI app that also holds the /v1
routes (rag/serve/routes.py). Both share the loaded models and one fair line for generating
(rag/answer/turns.py), so a question from the page and one from an API client wait for each
other in arrival order.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rag import offline  # noqa: F401  (before gradio: analytics off)

# isort: split
import gradio as gr
import uvicorn
from fastapi import FastAPI

from rag.answer.kvstore import BackgroundBuild, separate_engine
from rag.answer.pipeline import Pipeline
from rag.answer.turns import GenerationQueue
from rag.collections import for_collection
from rag.config import Settings
from rag.errors import RagError
from rag.index.background import BackgroundIndex
from rag.serve import errors
from rag.serve.routes import Service, router
from ui.app import build_app
from ui.assets import CSS, FONTS, JS, MONO_FONTS
from ui.chat_models import ChatModels


def create_app(
    settings: Settings, pipeline: Pipeline | None = None, kv_build: BackgroundBuild | None = None,
    indexing: BackgroundIndex | None = None,
) -> FastAPI:  # fmt: skip
    """The FastAPI app: /v1 first (so the page's catch-all mount at / does not shadow it), then the page.

    `settings` as loaded: the page offers every collection they name; /v1 answers from the
    pipeline's collection (`settings.collection`, the default one). `indexing`: the first index
    build, running in the background (questions are told so until it is done).
    """
    pipeline = pipeline or Pipeline(for_collection(settings))
    service = Service(pipeline, ChatModels(pipeline), GenerationQueue(settings.api_queue_limit), kv_build, indexing)
    if kv_build is not None:  # the store's build pauses between blocks while a question is answered
        kv_build.busy = lambda: service.turns.waiting > 0
    # No /docs page: FastAPI's loads Swagger from a CDN, and the product is offline. The schema is
    # served by the router (/v1/openapi.json), behind the key like every /v1 call.
    app = FastAPI(title="rag-chat API", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    app.include_router(router(service))
    app.state.service = service
    page = build_app(pipeline, kv_build, base=settings, models=service.models, turns=service.turns, indexing=indexing)
    return gr.mount_gradio_app(
        app, page, path="/", server_name=settings.host, server_port=settings.port, footer_links=[],
        theme=gr.themes.Default(font=FONTS, font_mono=MONO_FONTS), css=CSS, js=JS, ssr_mode=False,
        max_file_size=int(settings.max_file_mb * 1e6),
    )  # fmt: skip


def is_loopback(host: str) -> bool:
    """127.0.0.1, ::1 and localhost stay on this machine; 0.0.0.0 or a LAN address do not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(settings: Settings, host: str) -> str:
    """What to tell the person starting a server others can reach; '' on 127.0.0.1."""
    if is_loopback(host):
        return ""
    if not settings.api_key:
        return (f"Warning: listening on {host} without an API key: anyone who can reach this machine can use /v1 "
                "and the chat page. Set api_key (RAG_API_KEY) or listen on 127.0.0.1.")  # fmt: skip
    return f"Note: the API key guards /v1 only; the chat page at / is open to anyone who can reach {host}."


@dataclass
class Server:
    """A running server (see `serve`); `close` stops it."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread | None

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)


def _start_when_up(server: uvicorn.Server, indexing: BackgroundIndex) -> None:
    """Start the first index build once the page answers (after a minute at most: it is needed either way)."""
    deadline = time.monotonic() + 60
    while not server.started and not server.should_exit and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.should_exit:
        indexing.start()


@dataclass
class Started:
    """What `start_up` set going: the pipeline, the KV store's build, and the first index build (None: there was an index)."""

    pipeline: Pipeline
    kv_build: BackgroundBuild | None
    indexing: BackgroundIndex | None


def start_up(settings: Settings) -> Started:
    """With an index: load it and the models now (seconds), then compute the KV store in the background.
    Without one: build it in the background (the page shows its progress), then load and start the store."""
    from rag.index.reader import index_exists
    from rag.models import get_spec

    pipeline = Pipeline(for_collection(settings))
    s = pipeline.settings
    kv_build = BackgroundBuild(pipeline, own_engine=separate_engine(pipeline))

    def ready() -> None:
        pipeline.load()  # before the first question, so the first answer is not slowed
        kv_build.start()

    if index_exists(Path(s.index_dir)):
        ready()
        return Started(pipeline, kv_build, None)
    # Started by `serve` once the page is up: its imports (torch) would hold Python's lock meanwhile.
    indexing = BackgroundIndex(s, pipeline.get_embedder, get_spec(s.embed_model).sha256, before=pipeline.get_embedder,
                               after=ready)  # fmt: skip
    return Started(pipeline, kv_build, indexing)


def serve(
    settings: Settings, host: str, port: int, block: bool = True, pipeline: Pipeline | None = None,
    indexing: BackgroundIndex | None = None,
) -> Server:  # fmt: skip
    """Serve the page and the API at once (see `start_up`); tests pass their own `pipeline` (and `indexing`)."""
    kv_build = None
    if pipeline is None:
        started = start_up(settings)
        pipeline, kv_build, indexing = started.pipeline, started.kv_build, started.indexing
    app = create_app(settings, pipeline, kv_build, indexing)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    warning = exposure_warning(settings, host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"Chat page: {url}/   API: {url}/v1 (docs/api.md)", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if indexing is not None and not indexing.started:
        threading.Thread(target=_start_when_up, args=(server, indexing), name="start-index-build", daemon=True).start()
    if block:
        server.run()
        return Server(url, server, None)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RagError(f"The server on {url} did not start.", "Is the port taken? Pick another with --port.")
    return Server(url, server, thread)
