"""The Gradio chat page: streamed answers, linked citations, sources, index and uploads.

It calls the same Pipeline as the CLI. One Pipeline per chat model (see
ui/chat_models.py) serves every browser tab. Each tab is a Gradio session
with its own chat; answering runs in one queue ("chat", one at a time), so
questions from several tabs wait their turn instead of mixing tokens.

A question goes through two steps: `prepare` (not queued: shows the question
at once and takes the tab's turn) and `respond` (queued: retrieves and
streams). API clients (gradio_client) call `/ask`, which does both.
Generating then waits its turn in a GenerationQueue (rag/answer/turns.py) that
`rag serve` shares with its OpenAI-compatible /v1 API, first come first served.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag import offline  # noqa: F401  (before gradio: analytics off)

# isort: split
import gradio as gr

from rag.answer.kvstore import BackgroundBuild, separate_engine
from rag.answer.pipeline import MAX_QUESTION_CHARS, Done, Pipeline, Restart, Retrieved, Token, Turn
from rag.answer.turns import GenerationQueue
from rag.collections import for_collection
from rag.config import Settings
from rag.conversations import Conversation, ConversationStore
from rag.errors import RagError
from rag.index.background import BackgroundIndex, BuildProgress, format_eta
from rag.index.reader import index_exists
from rag.index.report import BuildReport
from rag.ingest.loaders import SUPPORTED_SUFFIXES
from ui import render, saved_chats
from ui.assets import CSS, FONTS, JS, MONO_FONTS, STORE_LANGUAGE_JS
from ui.chat_models import ChatModels, offered_models
from ui.collection_pipelines import CollectionPipelines
from ui.examples import example_questions
from ui.indexing import Progress, run_build
from ui.render import Exchange
from ui.saved_chats import MessageIds
from ui.text import DEFAULT_LANG, DETECT_LANGUAGE_JS, LANGUAGES, say
from ui.uploads import UPLOAD_TYPES, UploadResult, UploadStatus, save_upload

log = logging.getLogger(__name__)

HISTORY_TURNS = 3  # earlier turns given to the pipeline for follow-up questions
PENDING = "…"  # the answer's place in the chat until its first words arrive


# ---------------------------------------------------------------- per-tab state


@dataclass(frozen=True)
class Question:
    """A question that has taken its tab's turn and waits to be answered."""

    id: int
    text: str


@dataclass
class _Tab:
    stop: threading.Event = field(default_factory=threading.Event)
    current: int = 0  # id of the question being answered; 0 = none


class Tabs:
    """Per-session state that must not be copied (a stop flag shared with the answering thread)."""

    LIMIT = 2000  # sessions remembered; the oldest idle ones are forgotten

    def __init__(self) -> None:
        self._tabs: OrderedDict[str, _Tab] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def get(self, request: gr.Request | None) -> _Tab:
        key = (getattr(request, "session_hash", None) or "") if request is not None else ""
        with self._lock:
            tab = self._tabs.get(key)
            if tab is None:
                tab = self._tabs[key] = _Tab()
                while len(self._tabs) > self.LIMIT:
                    self._tabs.popitem(last=False)
            self._tabs.move_to_end(key)
            return tab

    def start(self, request: gr.Request | None, text: str) -> Question | None:
        """Take the tab's turn for a question; None while the tab is still answering one."""
        tab = self.get(request)
        with self._lock:
            if tab.current:
                return None
            return self._take(tab, text)

    def take_over(self, request: gr.Request | None, text: str) -> Question:
        """Take the tab's turn even if it is answering (an API client asking again): the old answer stops."""
        tab = self.get(request)
        with self._lock:
            tab.stop.set()
            return self._take(tab, text)

    def _take(self, tab: _Tab, text: str) -> Question:
        tab.current = next(self._ids)
        tab.stop = threading.Event()
        return Question(tab.current, text)


def history_turns(history: list[dict[str, Any]]) -> list[Turn]:
    """The last few question/answer pairs of a chat, as plain text for follow-up questions."""
    turns, question = [], None
    for message in history:
        text = render.plain_answer(message.get("content"))
        if message.get("role") == "user":
            question = text
        elif message.get("role") == "assistant" and question is not None:
            if text and text != PENDING:
                turns.append(Turn(question, text))
            question = None
    return turns[-HISTORY_TURNS:]


def _bot(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


# ---------------------------------------------------------------- the page


def _examples(settings: Settings, lang: str) -> list[str]:
    """The collection's own example questions (ui/examples.py): its .examples.txt, else its file names."""
    from rag.ingest.loaders import iter_corpus

    try:
        names = [Path(rel).stem.replace("_", " ").replace("-", " ") for _, rel in iter_corpus(Path(settings.corpus_dir))]
    except OSError:
        names = []
    return example_questions(Path(settings.corpus_dir), names, lang)

@dataclass
class _Answering:
    """One answer on its way into the chat: the messages it writes into and the sources panel beside them."""

    question: Question
    history: list[dict[str, Any]]
    conv: list[Exchange]
    lang: str
    details: bool
    tab: _Tab
    status: str = ""  # shown above the sources while the answer streams
    text: str = ""  # the answer's words so far
    earlier: list[Turn] = field(init=False)  # the chat's turns before this question, for follow-ups
    number: int = field(init=False)  # this exchange's turn number in the sources panel

    def __post_init__(self) -> None:
        self.earlier = history_turns(self.history[:-2])  # before the answer's placeholder rewrites the last message
        self.number = self.conv[-1].number + 1 if self.conv else 1

    def ours(self) -> bool:
        """False once "clear chat" gave the tab's turn away: the answer must stop writing."""
        return self.tab.current == self.question.id

    def show(self, status: str = "", message: str | None = None) -> tuple[list[dict[str, Any]], str, list[Exchange]]:
        """(chat, sources panel, exchanges) with `message` as the answer's text (if given) and `status` above the sources."""
        if message is not None:
            self.history[-1] = _bot(message)
        return self.history, render.sources_html(self.conv, self.lang, self.details, status), self.conv


def _wait_turn(ticket: Any, turn: _Answering) -> Iterator[tuple[list[dict[str, Any]], str, list[Exchange]]]:
    """Show the place in the generating line until the ticket's turn comes (or the reader stops or clears)."""
    while not ticket.wait(0.5):  # API clients (rag/serve) that asked first answer first
        if turn.tab.stop.is_set() or not turn.ours():
            return
        yield turn.show(say(turn.lang, "waiting", n=ticket.ahead))


def _follow(events: Iterator[Any], turn: _Answering) -> Iterator[tuple[list[dict[str, Any]], str, list[Exchange]]]:
    """The pipeline's events as chat updates: the status, the words as they come, a restart, the final answer."""
    lang, stop = turn.lang, turn.tab.stop
    for event in events:
        if not turn.ours():
            stop.set()
            return
        if isinstance(event, Retrieved):
            turn.status = say(lang, "generating", n=len(event.hits)) if event.hits else say(lang, "searching")
            yield turn.show(turn.status)
        elif isinstance(event, Token):
            turn.text += event.text
            yield turn.show(turn.status, render.streaming_text(turn.text))
        elif isinstance(event, Restart):
            turn.text, turn.status = "", say(lang, "again")  # the first try is not the answer
            yield turn.show(turn.status, PENDING)
        elif isinstance(event, Done):
            yield _finished(event, turn)


def _finished(event: Done, turn: _Answering) -> tuple[list[dict[str, Any]], str, list[Exchange]]:
    """The final answer in the chat and as the tab's newest exchange (stopped before its first word: neither)."""
    stopped = turn.tab.stop.is_set()
    if stopped and not event.answer.raw_text:  # no answer (not a refusal) and no sources
        return turn.show(message=render.answer_html_stopped(turn.lang))
    exchange = Exchange(turn.number, turn.question.text, event.answer, stopped)
    turn.conv = [*turn.conv, exchange][-render.KEEP_TURNS :]
    return turn.show(message=render.answer_html(event.answer, turn.number, turn.lang, stopped))


class _Page:
    """What the page's event handlers share: the models, the collections, the store and every tab's turn."""

    def __init__(
        self, pipeline: Pipeline, kv_build: BackgroundBuild | None, base: Settings | None,
        store: ConversationStore | None, models: ChatModels | None, turns: GenerationQueue | None, indexing: BackgroundIndex | None,
    ) -> None:  # fmt: skip
        self.pipeline, self.kv_build, self.indexing = pipeline, kv_build, indexing
        self.settings = settings = pipeline.settings
        base = base or settings
        self.store = store or ConversationStore(base.conversations_path)
        self.models = models or ChatModels(pipeline)
        self.collections = CollectionPipelines(base, self.models)
        self.line = turns or GenerationQueue(settings.api_queue_limit)  # `turns` in `answer` are a chat's turns
        self.offered = offered_models(settings.chat_model)
        self.tabs = Tabs()
        self.max_bytes = int(settings.max_file_mb * 1e6)

    def model_choices(self, lang: str) -> list[tuple[str, str]]:
        """The model picker's choices in `lang`: (role · name, name) for each offered chat model."""
        return [(f"{say(lang, 'role_' + role)} · {name}", name) for role, name in self.offered]

    # ------------------------------------------------------------ answering

    def answer(
        self, question: Question, history: list[dict[str, Any]], conv: list[Exchange], k: float, details: bool,
        model: str | None, lang: str, request: gr.Request | None, collection: str | None = None,
    ) -> Iterator[tuple[list[dict[str, Any]], str, list[Exchange]]]:  # fmt: skip
        """Stream one answer into the last chat message; yields (chat, sources panel, exchanges).

        The page waits its turn in the shared generating line first, so API clients that asked
        earlier answer earlier; what it shows meanwhile is `_wait_turn`'s, the answer `_generate`'s.
        """
        turn = _Answering(question, history, conv, lang, details, self.tabs.get(request))
        building = self.first_build(collection)
        if building is not None and building.stage != "failed":  # nothing indexed yet: say so at once, not wait
            progress = _first_build_text(building, lang)
            yield turn.show(message=render.streaming_text(say(lang, "ask_while_building", progress=progress)))
            return
        ticket = self.line.join(refusable=False)  # the page never refuses: Gradio's queue already holds the rest
        try:
            yield from _wait_turn(ticket, turn)
            if turn.tab.stop.is_set():
                yield turn.show(message=render.answer_html_stopped(lang))
            elif turn.ours():
                yield from self._generate(turn, model, collection, int(k))
        except RagError as exc:
            yield turn.show(message=f"⚠️ {render.streaming_text(exc.message)}\n\n{render.streaming_text(exc.hint)}")
        except Exception as exc:  # the page must say something, not hang on "…"
            log.exception("answering failed")
            failed = say(lang, "error", message=f"{type(exc).__name__}: {exc}")
            yield turn.show(message="⚠️ " + render.streaming_text(failed))
        finally:
            ticket.release()

    def _generate(
        self, turn: _Answering, model: str | None, collection: str | None, k: int
    ) -> Iterator[tuple[list[dict[str, Any]], str, list[Exchange]]]:
        """Load the model if needed, then follow the pipeline's events into the chat."""
        lang = turn.lang
        model = model or self.settings.chat_model
        if not self.models.is_loaded(model):
            yield turn.show(say(lang, "loading_model", name=model))
        answering = self.collections.for_answer(collection, model)
        yield turn.show(say(lang, "searching"))
        events = answering.ask(turn.question.text, turn.earlier, k=k, stop=turn.tab.stop)
        try:
            yield from _follow(events, turn)
        finally:
            if isinstance(events, Generator):
                events.close()  # releases the model at once when the answer ends early

    def prepare(self, text: str, history: list[dict[str, Any]], request: gr.Request):  # type: ignore[no-untyped-def]
        """Show the question at once and take the tab's turn (not queued)."""
        text = (text or "").strip()
        if not text:
            return gr.skip(), gr.skip(), None
        question = self.tabs.start(request, text)
        if question is None:  # still answering the last one: keep the typed text for later
            return gr.skip(), gr.skip(), None
        history = [*(history or []), {"role": "user", "content": text}, _bot(PENDING)]
        return history, "", question

    def pick_example(self, sample: list[str] | str, history: list[dict[str, Any]], request: gr.Request):  # type: ignore[no-untyped-def]
        text = sample[0] if isinstance(sample, list | tuple) else sample
        return self.prepare(str(text), history, request)

    def respond(self,  # type: ignore[no-untyped-def]
        question: Question | None, history, conv, k, details, model, lang, collection, conv_id, msg_ids,
        request: gr.Request,
    ):  # fmt: skip
        """Answer the question `prepare` queued (queued in turn with every tab's questions), saving it."""
        if question is None:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        tab = self.tabs.get(request)
        if tab.current != question.id:  # the chat was cleared while this waited
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        try:
            history, conv = list(history or []), list(conv or [])
            stream = self.answer(question, history, conv, k, details, model, lang, request, collection)
            yield from self.saving(stream, conv, collection, conv_id, msg_ids)
        finally:
            if tab.current == question.id:
                tab.current = 0

    def ask(self,  # type: ignore[no-untyped-def]
        question: str, history: list[dict[str, Any]], k: float, details: bool, model: str, lang: str, conv,
        collection: str, conv_id, msg_ids, request: gr.Request,
    ):  # fmt: skip
        """API: ask a question in this session's chat; streams (chat, sources HTML, cleared question box)."""
        history = [*(history or []), {"role": "user", "content": question}, _bot(PENDING)]
        q = self.tabs.take_over(request, question)
        tab = self.tabs.get(request)
        try:
            stream = self.answer(q, history, list(conv or []), k, details, model, lang, request, collection)
            for chat, sources, new_conv, new_id, new_ids in self.saving(stream, conv, collection, conv_id, msg_ids):
                yield chat, sources, "", new_conv, new_id, new_ids
        finally:
            if tab.current == q.id:
                tab.current = 0

    def stop_answer(self, request: gr.Request) -> None:
        self.tabs.get(request).stop.set()

    def rerender_sources(self, conv: list[Exchange], lang: str, details: bool) -> str:
        return render.sources_html(conv or [], lang, details)

    # ------------------------------------------------------------ saved chats (ui/saved_chats.py)

    def saving(
        self, stream: Iterator[tuple[list[dict[str, Any]], str, list[Exchange]]], conv: list[Exchange] | None,
        collection: str | None, conv_id: str | None, msg_ids: MessageIds | None,
    ) -> Iterator[tuple[list[dict[str, Any]], str, list[Exchange], str | None, MessageIds]]:  # fmt: skip
        """Pass the answer's updates on, saving the exchange it finishes; adds (conversation id, message ids)."""
        ids = dict(msg_ids or {})
        last = conv[-1] if conv else None  # `answer` appends a new Exchange when the answer is done
        for chat, sources, new_conv in stream:
            if new_conv and new_conv[-1] is not last:
                last = new_conv[-1]
                conv_id = self.save_exchange(last, chat, collection, conv_id, ids)
            yield chat, sources, new_conv, conv_id, ids

    def save_exchange(
        self, ex: Exchange, chat: list[dict[str, Any]], collection: str | None, conv_id: str | None, ids: MessageIds
    ) -> str | None:
        """Store one finished exchange (starting the conversation on its first); the conversation's id.

        A failing store (a full disk) must not cost the reader the answer: it is logged and the chat goes on.
        """
        name = collection or self.collections.home
        try:
            if self.store.get(conv_id) is None:
                conv_id = self.store.create(ex.question, name).id
            message = self.store.add_message(conv_id, ex.number, ex.question, ex.answer, name, ex.stopped)  # type: ignore[arg-type]
        except Exception:
            log.exception("could not save the conversation")
            return conv_id
        ids[len(chat) - 1] = message.id
        return conv_id

    def saved_list_update(self, current: str | None):  # type: ignore[no-untyped-def]
        return gr.update(choices=saved_chats.choices(self.store.recent()), value=current)

    def after_answer(self, conv_id: str | None):  # type: ignore[no-untyped-def]
        """Remember the tab's conversation in the browser (it survives a reload) and list it."""
        return conv_id, self.saved_list_update(conv_id)

    def fresh_chat(self, lang: str, request: gr.Request | None):  # type: ignore[no-untyped-def]
        """(chat, sources, exchanges, conversation id, message ids, browser's id, list): a new, empty chat."""
        tab = self.tabs.get(request)
        tab.stop.set()
        tab.current = 0
        return [], render.sources_html([], lang), [], None, {}, None, self.saved_list_update(None)

    def open_saved(self, conv_id: str | None, lang: str, details: bool, request: gr.Request | None):  # type: ignore[no-untyped-def]
        """Show a saved conversation: (chat, sources, exchanges, conversation id, message ids, browser's id, list, collection)."""
        conversation = self.store.get(conv_id)
        if conversation is None:
            return (*self.fresh_chat(lang, request), gr.skip())
        return self._show_saved(conversation, lang, details, request)

    def restore_saved(self, conv_id: str | None, lang: str, details: bool, request: gr.Request | None):  # type: ignore[no-untyped-def]
        """On load: the chat the browser kept, as before a reload (the outputs of `open_saved`).

        Nothing is touched when the reader has already asked or there is nothing to restore: on a
        slow machine the load can finish after the first question, which it must not clear.
        """
        conversation = None if self.tabs.get(request).current else self.store.get(conv_id)
        if conversation is None:
            return (gr.skip(),) * 8
        return self._show_saved(conversation, lang, details, request)

    def _show_saved(self, conversation: Conversation, lang: str, details: bool, request: gr.Request | None):  # type: ignore[no-untyped-def]
        """The outputs of `open_saved` for a stored conversation; the tab's answer in progress, if any, stops."""
        tab = self.tabs.get(request)
        tab.stop.set()
        tab.current = 0
        r = saved_chats.restore(conversation, self.store.messages(conversation.id), lang)
        collection = r.collection if r.collection in self.collections.names() else gr.skip()
        return (
            gr.update(value=r.history, feedback_value=r.feedback), render.sources_html(r.exchanges, lang, details),
            r.exchanges, conversation.id, r.message_ids, conversation.id, self.saved_list_update(conversation.id), collection,
        )  # fmt: skip

    def delete_saved(self, conv_id: str | None, lang: str, request: gr.Request | None):  # type: ignore[no-untyped-def]
        if conv_id:
            self.store.delete(conv_id)
        return self.fresh_chat(lang, request)

    def export_saved(self, conv_id: str | None, lang: str):  # type: ignore[no-untyped-def]
        path = saved_chats.export_file(self.store, conv_id)
        if path is None:
            gr.Info(say(lang, "export_none"))
            return gr.update(value=None, visible=False)
        return gr.update(value=str(path), visible=True, label=say(lang, "export_file"))

    def rate(self, conv_id: str | None, msg_ids: MessageIds | None, data: gr.LikeData) -> None:
        """A thumbs up or down on an answer: stored with its question, answer and citations."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        message_id = (msg_ids or {}).get(index)
        if message_id is not None and self.store.get(conv_id) is not None:
            self.store.rate(message_id, saved_chats.rating_of(data.liked))

    def session_language(self, lang: str) -> tuple[Any, ...]:
        """The labels of the collection picker and the saved-chats panel in `lang` (part of apply_language)."""
        return (
            # The choices again: a collection folder made since the page started shows up on reload.
            gr.update(
                label=say(lang, "collection"), info=say(lang, "collection_info"), choices=self.collections.names()
            ),
            gr.update(label=say(lang, "saved")),
            gr.update(label=say(lang, "saved_list"), info=say(lang, "saved_empty")),
            gr.update(value=say(lang, "new_chat")),
            gr.update(value=say(lang, "delete_chat")),
            gr.update(value=say(lang, "export_chat")),
        )

    # ------------------------------------------------------------ index and uploads

    def first_build(self, collection: str | None) -> BuildProgress | None:
        """The first index build's progress until it is done (or failed) for the home collection; None otherwise."""
        if self.indexing is None or (collection or self.collections.home) != self.collections.home:
            return None
        progress = self.indexing.progress()
        if not self.indexing.started or progress.stage == "done":
            return None
        failed_later = progress.stage == "failed" and index_exists(
            Path(self.collections.settings(collection).index_dir)
        )
        return None if failed_later else progress  # a failure after the index was written: show the index

    def index_view(self, lang: str, collection: str | None = None) -> tuple[str, list[list[Any]]]:
        building = self.first_build(collection)
        if building is not None:
            return _first_build_text(building, lang), []
        try:
            index = self.collections.for_index(collection).get_index()
        except RagError as exc:
            return say(lang, "index_missing", message=exc.message), []
        return render.index_summary(index, lang) + self.kv_line(lang, collection), render.documents_rows(index)

    def kv_line(self, lang: str, collection: str | None = None) -> str:
        """The passage KV store's state under the index summary ('' when there is no background build)."""
        if self.kv_build is None or (collection or self.collections.home) != self.collections.home:
            return ""
        if not self.settings.kv_cache:
            return "  \n" + say(lang, "kv_off")
        if self.kv_build.error:
            return "  \n" + say(lang, "kv_error", message=self.kv_build.error)
        st = self.kv_build.status()
        if st.complete:
            state = say(lang, "kv_ready")
        elif st.building:
            state = say(lang, "kv_building", done=self.kv_build.done, todo=self.kv_build.total or "…")
        else:
            state = say(lang, "kv_incomplete")
        if st.at_limit and not st.building:
            state = say(lang, "kv_limit")
        return "  \n" + say(lang, "kv_status", blocks=st.blocks, total=st.total, mb=f"{st.bytes / 1e6:.0f}",
                             limit=f"{st.limit_bytes / 1e6:.0f}", state=state)  # fmt: skip

    def build_messages(self, report: BuildReport, lang: str) -> list[str]:
        if report.wrote:
            lines = [say(lang, "build_done", documents=report.documents, chunks=report.chunks, seconds=report.seconds,
                         added=len(report.added), updated=len(report.updated), removed=len(report.removed))]  # fmt: skip
        else:
            lines = [say(lang, "build_nochange", documents=report.documents, chunks=report.chunks)]
        lines += [say(lang, "build_skipped", path=p, reason=r) for p, r in report.skipped.items()]
        return lines + list(getattr(report, "notes", []))  # notes: a stale lock or a damaged index was handled

    def update_index(self, lang: str, before: list[str], collection: str | None = None) -> Iterator[tuple[str, Any, Any]]:
        """Run an incremental update of a collection's index; yields (status HTML, index summary, documents table)."""
        home = (collection or self.collections.home) == self.collections.home
        try:
            for item in run_build(self.collections.settings(collection), self.pipeline.get_embedder):
                if isinstance(item, Progress):
                    yield (
                        render.status_html([*before, _progress_text(item, lang)], item.done, item.total),
                        gr.skip(),
                        gr.skip(),
                    )
                else:
                    if self.kv_build is not None and item.wrote and home:
                        self.kv_build.start()  # new or changed passages: compute their blocks in the background
                    summary, rows = self.index_view(lang, collection)
                    yield render.status_html([*before, *self.build_messages(item, lang)]), summary, rows
        except RagError as exc:
            failed = say(lang, "build_failed", message=exc.message, hint=exc.hint)
            yield render.status_html([*before, failed], error=True), gr.skip(), gr.skip()

    def rebuild(self, lang: str, collection: str | None = None):  # type: ignore[no-untyped-def]
        yield from self.update_index(lang, [], collection)

    def upload(self, files: list[str] | None, overwrite: bool, lang: str, collection: str | None = None):  # type: ignore[no-untyped-def]
        """Check and save the files, then update the index; yields (status, summary, table, files, overwrite)."""
        if not files:
            yield render.status_html([say(lang, "up_none")], error=True), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        corpus = Path(self.collections.settings(collection).corpus_dir)
        corpus.mkdir(parents=True, exist_ok=True)  # a collection declared in rag.toml before its folder existed
        results = [save_upload(Path(f), Path(f).name, corpus, self.max_bytes, overwrite=bool(overwrite)) for f in files]
        lines = [_upload_text(r, lang, self.max_bytes) for r in results]
        # A file waiting for the overwrite confirmation stays selected, so ticking the box and adding again is enough.
        files_out = gr.skip() if any(r.status is UploadStatus.EXISTS for r in results) else None
        refused = any(not r.changed_corpus and r.status is not UploadStatus.UNCHANGED for r in results)
        if not any(r.changed_corpus for r in results):
            yield render.status_html(lines, error=refused), gr.skip(), gr.skip(), files_out, False
            return
        for status, summary, rows in self.update_index(lang, lines, collection):
            yield status, summary, rows, files_out, False

    # ------------------------------------------------------------ language

    def apply_language(self, lang: str, conv: list[Exchange], details: bool, collection: str | None = None):  # type: ignore[no-untyped-def]
        """Every label, button and panel of the page in `lang` (also refreshes the index panel)."""
        summary, rows = self.index_view(lang, collection)
        return (
            f"{say(lang, 'title')}\n{say(lang, 'subtitle')}",
            gr.update(label=say(lang, "chat"), placeholder=say(lang, "chat_empty")),
            gr.update(placeholder=say(lang, "placeholder")),
            gr.update(value=say(lang, "send")),
            gr.update(value=say(lang, "stop")),
            gr.update(value=say(lang, "clear")),
            gr.update(label=say(lang, "examples")),
            render.sources_html(conv or [], lang, details),
            gr.update(label=say(lang, "sources")),
            gr.update(label=say(lang, "settings")),
            gr.update(label=say(lang, "model"), info=say(lang, "model_info"), choices=self.model_choices(lang)),
            gr.update(label=say(lang, "top_k")),
            gr.update(label=say(lang, "details")),
            gr.update(label=say(lang, "index")),
            summary,
            gr.update(value=rows, headers=_doc_headers(lang)),
            gr.update(value=say(lang, "rebuild")),
            gr.update(label=say(lang, "upload")),
            gr.update(label=say(lang, "upload_files", mb=self.settings.max_file_mb, types=UPLOAD_TYPES)),
            gr.update(label=say(lang, "overwrite")),
            gr.update(value=say(lang, "upload_btn")),
            *self.session_language(lang),
        )

    def on_load(self, lang: str, details: bool, collection: str | None):  # type: ignore[no-untyped-def]
        return (lang, *self.apply_language(lang, [], details, collection))

    def collection_changed(self, lang: str, collection: str):  # type: ignore[no-untyped-def]
        """Another collection chosen: its index in the panel (the chat goes on; its next question searches there)."""
        return self.index_view(lang, collection)

    def refresh(self, lang: str, chosen: str | None, last: str):  # type: ignore[no-untyped-def]
        """The timer's tick: the index panel again; the documents table only when the first build's phase changes."""
        now = "building" if self.first_build(chosen) is not None else "ready"
        summary, rows = self.index_view(lang, chosen)
        return summary, (rows if now != last else gr.skip()), now


# ---------------------------------------------------------------- the page's layout


@dataclass
class _View:
    """The page's components that event handlers read or update, handed from the layout to the wiring."""

    conv: gr.State  # this tab's exchanges, for the sources panel
    pending: gr.State  # the Question `prepare` hands to `respond`
    conv_id: gr.State  # this tab's conversation in the store (None until its first answer)
    msg_ids: gr.State  # which stored message each answer in the chat is (for thumbs up/down)
    saved_id: gr.BrowserState  # the conversation's id kept by the browser (a reload shows the chat again)
    title: gr.Markdown
    lang: gr.Radio
    collection: gr.Dropdown
    saved_acc: gr.Accordion
    saved_list: gr.Radio
    new_btn: gr.Button
    delete_btn: gr.Button
    export_btn: gr.Button
    export_out: gr.File
    chatbot: gr.Chatbot
    question: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    examples: gr.Dataset
    sources_acc: gr.Accordion
    sources: gr.HTML
    settings_acc: gr.Accordion
    model: gr.Dropdown
    k: gr.Slider
    details: gr.Checkbox
    index_acc: gr.Accordion
    index_info: gr.Markdown
    docs: gr.Dataframe
    rebuild_btn: gr.Button
    index_status: gr.HTML
    upload_acc: gr.Accordion
    files: gr.File
    overwrite: gr.Checkbox
    upload_btn: gr.Button
    upload_status: gr.HTML
    api_ask: gr.Button


def _layout(page: _Page) -> _View:
    """Lay the page out (inside gr.Blocks): header, side panel, chat, and the sources/settings/index column."""
    zh = DEFAULT_LANG
    states = gr.State([]), gr.State(None), gr.State(None), gr.State({})  # conv, pending, conv_id, msg_ids
    # The browser keeps the conversation's id, so a reload (or a new server) shows the chat again.
    # The secret lives in the store's file: a fixed one keeps the id readable across restarts.
    saved_id = gr.BrowserState(None, storage_key="rag-chat-conversation", secret=page.store.secret())
    with gr.Row(elem_id="header"):
        title = gr.Markdown(f"{say(zh, 'title')}\n{say(zh, 'subtitle')}")
        lang = gr.Radio(LANGUAGES, value=zh, show_label=False, elem_id="lang", container=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=220, elem_id="side-panel"):
            saved = saved_chats.choices(page.store.recent())
            side = _side_panel(page.collections.names(), page.collections.home, saved)
        with gr.Column(scale=3):
            chat = _chat_column(page.settings)
        with gr.Column(scale=2):
            panels = (*_sources_and_settings(page), *_index_panel(page), *_upload_panel(page.settings))
        api_ask = gr.Button(visible=False)  # the /ask endpoint for API clients
    return _View(*states, saved_id, title, lang, *side, *chat, *panels, api_ask)


def _chat_column(settings: Settings) -> tuple[Any, ...]:
    """The chat, the question box, its buttons and the example questions; their components, in that order."""
    zh = DEFAULT_LANG
    chatbot = gr.Chatbot(
        label=say(zh, "chat"), height=560, elem_id="chat", placeholder=say(zh, "chat_empty"),
        feedback_options=("Like", "Dislike"), buttons=["copy"],
    )  # fmt: skip
    question = gr.Textbox(
        placeholder=say(zh, "placeholder"), label="question", show_label=False, elem_id="question",
        max_length=MAX_QUESTION_CHARS,
    )  # fmt: skip
    with gr.Row():
        send = gr.Button(say(zh, "send"), variant="primary", elem_id="send", scale=2)
        stop = gr.Button(say(zh, "stop"), elem_id="stop", scale=1)
        clear = gr.Button(say(zh, "clear"), elem_id="clear", scale=1)
    shown = _examples(settings, zh)
    examples = gr.Dataset(
        components=["textbox"], samples=[[q] for q in shown], label=say(zh, "examples"),
        elem_id="examples", type="values", samples_per_page=len(shown),
    )  # fmt: skip
    return chatbot, question, send, stop, clear, examples


def _sources_and_settings(page: _Page) -> tuple[Any, ...]:
    """The sources panel and the settings (model, top-k, details); their components, in that order."""
    zh = DEFAULT_LANG
    with gr.Accordion(say(zh, "sources"), open=True, elem_id="sources-panel") as sources_acc:
        sources = gr.HTML(render.sources_html([], zh), label="sources", elem_id="sources", padding=True)
    with gr.Accordion(say(zh, "settings"), open=False, elem_id="settings") as settings_acc:
        model = gr.Dropdown(
            page.model_choices(zh), value=page.settings.chat_model, label=say(zh, "model"),
            info=say(zh, "model_info"), elem_id="model",
        )  # fmt: skip
        k = gr.Slider(1, 8, value=page.settings.top_k, step=1, label=say(zh, "top_k"), elem_id="top-k")
        details = gr.Checkbox(False, label=say(zh, "details"), elem_id="details")
    return sources_acc, sources, settings_acc, model, k, details


def _index_panel(page: _Page) -> tuple[Any, ...]:
    """The index panel (summary, documents table, rebuild button, status); its components, in that order."""
    zh = DEFAULT_LANG
    first_summary, first_rows = page.index_view(zh)
    with gr.Accordion(say(zh, "index"), open=False, elem_id="index") as index_acc:
        index_info = gr.Markdown(first_summary, elem_id="index-info")
        docs = gr.Dataframe(
            value=first_rows, headers=_doc_headers(zh), interactive=False, elem_id="documents", wrap=True
        )
        rebuild_btn = gr.Button(say(zh, "rebuild"), elem_id="rebuild")
        index_status = gr.HTML("", elem_id="index-status")
    return index_acc, index_info, docs, rebuild_btn, index_status


def _upload_panel(settings: Settings) -> tuple[Any, ...]:
    """The upload panel (files, overwrite box, button, status); its components, in that order."""
    zh = DEFAULT_LANG
    with gr.Accordion(say(zh, "upload"), open=False, elem_id="upload") as upload_acc:
        files = gr.File(
            file_count="multiple", file_types=list(SUPPORTED_SUFFIXES), type="filepath",
            label=say(zh, "upload_files", mb=settings.max_file_mb, types=UPLOAD_TYPES), elem_id="upload-files",
        )  # fmt: skip
        overwrite = gr.Checkbox(False, label=say(zh, "overwrite"), elem_id="overwrite")
        upload_btn = gr.Button(say(zh, "upload_btn"), elem_id="upload-btn")
        upload_status = gr.HTML("", elem_id="upload-status")
    return upload_acc, files, overwrite, upload_btn, upload_status


# ---------------------------------------------------------------- the page's events

_PRIVATE: dict[str, Any] = {"queue": False, "api_visibility": "private"}
_CHAT: dict[str, Any] = {
    "concurrency_id": "chat", "concurrency_limit": 1, "api_visibility": "private", "show_progress": "minimal"
}  # fmt: skip


def _wire_answering(page: _Page, v: _View) -> None:
    """Answering: prepare (instant) -> respond (queued, one answer at a time across all tabs); /ask; stop."""
    answer_inputs = [v.pending, v.chatbot, v.conv, v.k, v.details, v.model, v.lang, v.collection, v.conv_id, v.msg_ids]
    answer_outputs = [v.chatbot, v.sources, v.conv, v.conv_id, v.msg_ids]
    for trigger in (v.question.submit, v.send.click):
        trigger(
            page.prepare, [v.question, v.chatbot], [v.chatbot, v.question, v.pending], queue=False,
            api_visibility="private",
        ).then(page.respond, answer_inputs, answer_outputs, **_CHAT).then(
            page.after_answer, [v.conv_id], [v.saved_id, v.saved_list], **_PRIVATE
        )  # fmt: skip
    v.examples.click(
        page.pick_example, [v.examples, v.chatbot], [v.chatbot, v.question, v.pending], queue=False,
        api_visibility="private",
    ).then(page.respond, answer_inputs, answer_outputs, **_CHAT).then(
        page.after_answer, [v.conv_id], [v.saved_id, v.saved_list], **_PRIVATE
    )  # fmt: skip
    v.api_ask.click(
        page.ask, [v.question, v.chatbot, v.k, v.details, v.model, v.lang, v.conv, v.collection, v.conv_id, v.msg_ids],
        [v.chatbot, v.sources, v.question, v.conv, v.conv_id, v.msg_ids], api_name="ask", concurrency_id="chat",
        concurrency_limit=1,
    )  # fmt: skip
    v.stop.click(page.stop_answer, None, None, queue=False, api_visibility="private")
    v.details.change(
        page.rerender_sources, [v.conv, v.lang, v.details], v.sources, queue=False, api_visibility="private"
    )


def _fresh_outputs(v: _View) -> list[Any]:
    """What a new, opened or deleted chat updates (fresh_chat's outputs)."""
    return [v.chatbot, v.sources, v.conv, v.conv_id, v.msg_ids, v.saved_id, v.saved_list]


def _wire_saved(page: _Page, v: _View) -> None:
    """Saved chats: clear/new, open, delete, export, and thumbs up/down on answers."""
    fresh_outputs = _fresh_outputs(v)
    # "Clear", the chat's own trash icon and "new chat" all start a new conversation; the old one stays saved.
    for clearing in (v.clear.click, v.chatbot.clear, v.new_btn.click):
        clearing(page.fresh_chat, [v.lang], fresh_outputs, **_PRIVATE)
    v.saved_list.input(page.open_saved, [v.saved_list, v.lang, v.details], [*fresh_outputs, v.collection], **_PRIVATE)
    v.delete_btn.click(page.delete_saved, [v.conv_id, v.lang], fresh_outputs, **_PRIVATE)
    v.export_btn.click(page.export_saved, [v.conv_id, v.lang], [v.export_out], **_PRIVATE)
    v.chatbot.like(page.rate, [v.conv_id, v.msg_ids], None, **_PRIVATE)


def _wire_index(page: _Page, v: _View) -> None:
    """The index panel: builds' progress on a timer, rebuild, collection change, uploads."""
    index_outputs = [v.index_status, v.index_info, v.docs]
    kv_shown = page.kv_build is not None and page.settings.kv_cache
    if page.indexing is not None or kv_shown:  # builds' progress, while the page is open
        phase = gr.State("")  # the documents table is sent again only when the first build's phase changes
        gr.Timer(2 if page.indexing is not None else 10).tick(
            page.refresh, [v.lang, v.collection, phase], [v.index_info, v.docs, phase], queue=False,
            api_visibility="private",
        )  # fmt: skip
    v.rebuild_btn.click(
        page.rebuild, [v.lang, v.collection], index_outputs, api_name="rebuild", concurrency_id="index",
        concurrency_limit=1,
    )  # fmt: skip
    v.collection.change(page.collection_changed, [v.lang, v.collection], [v.index_info, v.docs], **_PRIVATE)
    v.upload_btn.click(
        page.upload, [v.files, v.overwrite, v.lang, v.collection],
        [v.upload_status, v.index_info, v.docs, v.files, v.overwrite],
        api_name="upload", concurrency_id="index", concurrency_limit=1,
    )  # fmt: skip


def _wire_language(page: _Page, v: _View, demo: gr.Blocks) -> None:
    """Language: the browser's (or the saved choice) on load, the reader's on toggle; a reload reopens the chat."""
    language_outputs = [
        v.title, v.chatbot, v.question, v.send, v.stop, v.clear, v.examples, v.sources, v.sources_acc, v.settings_acc,
        v.model, v.k, v.details, v.index_acc, v.index_info, v.docs, v.rebuild_btn, v.upload_acc, v.files, v.overwrite,
        v.upload_btn, v.collection, v.saved_acc, v.saved_list, v.new_btn, v.delete_btn, v.export_btn,
    ]  # fmt: skip
    demo.load(
        page.on_load,
        [v.lang, v.details, v.collection],
        [v.lang, *language_outputs],
        js=DETECT_LANGUAGE_JS,
        queue=False,
        api_visibility="private",
    ).then(
        page.restore_saved, [v.saved_id, v.lang, v.details], [*_fresh_outputs(v), v.collection], **_PRIVATE
    )  # as before a reload
    v.lang.change(
        page.apply_language, [v.lang, v.conv, v.details, v.collection], language_outputs, queue=False,
        api_visibility="private",
    )  # fmt: skip
    v.lang.input(None, [v.lang], None, js=STORE_LANGUAGE_JS)


def build_app(
    pipeline: Pipeline, kv_build: BackgroundBuild | None = None, base: Settings | None = None,
    store: ConversationStore | None = None, models: ChatModels | None = None, turns: GenerationQueue | None = None,
    indexing: BackgroundIndex | None = None,
) -> gr.Blocks:  # fmt: skip
    """The page. `kv_build` (from `launch`) computes the passage KV store in the background;
    `indexing` (from `rag serve` with no index yet) builds the index: the page shows its
    progress, and questions are told the index is still being built until it is done.

    `pipeline` serves the collection `base.collection`; `base` are the settings as loaded
    (rag/collections.py), from which the other collections are found (default: pipeline.settings).
    Chats are saved in `store` (default: the file settings.conversations_path names).
    The HTTP API (rag/serve) passes its `models` and `turns`, so the page and the API share
    the loaded models and one fair line for generating.
    """
    page = _Page(pipeline, kv_build, base, store, models, turns, indexing)
    with gr.Blocks(title="离线文档问答 · Offline document Q&A", analytics_enabled=False) as demo:
        view = _layout(page)
        _wire_answering(page, view)
        _wire_saved(page, view)
        _wire_index(page, view)
        _wire_language(page, view, demo)
    demo.queue(default_concurrency_limit=1)
    return demo


def _side_panel(names: list[str], chosen: str, saved: list[tuple[str, str]]) -> tuple[Any, ...]:
    """The collection picker and the saved chats (list, new, delete, export); their components, in that order."""
    zh = DEFAULT_LANG
    collection = gr.Dropdown(
        names, value=chosen, label=say(zh, "collection"), info=say(zh, "collection_info"), elem_id="collection",
        interactive=True, allow_custom_value=True,  # API clients may name a collection made after the page started
    )  # fmt: skip
    with gr.Accordion(say(zh, "saved"), open=True, elem_id="saved-chats") as saved_acc:
        saved_list = gr.Radio(
            saved, value=None, label=say(zh, "saved_list"), info=say(zh, "saved_empty"), elem_id="saved-list"
        )
        new_btn = gr.Button(say(zh, "new_chat"), elem_id="new-chat", size="sm")
        delete_btn = gr.Button(say(zh, "delete_chat"), elem_id="delete-chat", size="sm", variant="stop")
        export_btn = gr.Button(say(zh, "export_chat"), elem_id="export-chat", size="sm")
        export_out = gr.File(label=say(zh, "export_file"), visible=False, interactive=False, elem_id="export-file")
    return collection, saved_acc, saved_list, new_btn, delete_btn, export_btn, export_out


def _doc_headers(lang: str) -> list[str]:
    return [say(lang, "col_document"), say(lang, "col_chunks"), say(lang, "col_indexed")]


def _progress_text(p: Progress, lang: str) -> str:
    if p.stage in ("read", "embed") and p.total:
        return say(lang, f"build_{p.stage}", done=p.done, total=p.total)
    if p.stage == "write":
        return say(lang, "build_write")
    return say(lang, "build_start")


def _first_build_text(p: BuildProgress, lang: str) -> str:
    """The first index build's progress for the page: documents read, texts embedded, time left."""
    if p.stage == "failed":
        return say(lang, "first_build_failed", error=p.error)
    if p.stage in ("loading", "done"):
        return say(lang, "first_build_loading", documents=p.documents, chunks=p.chunks)
    eta = p.eta_s()
    shown = ""
    if eta is not None:
        left = (f"{eta:.0f} 秒" if eta < 90 else f"{eta / 60:.0f} 分钟") if lang == "zh" else format_eta(eta)
        shown = say(lang, "first_build_eta", eta=left)
    return say(lang, "first_build", files_done=p.files_done, files_total=p.files_total or "…", done=p.units_done,
               total=p.units_total or "…", eta=shown)  # fmt: skip


def _upload_text(r: UploadResult, lang: str, max_bytes: int) -> str:
    key = {
        UploadStatus.ADDED: "up_renamed" if r.name != r.original else "up_added",
        UploadStatus.REPLACED: "up_replaced",
        UploadStatus.UNCHANGED: "up_unchanged",
        UploadStatus.EXISTS: "up_exists",
        UploadStatus.BAD_TYPE: "up_bad_type",
        UploadStatus.TOO_BIG: "up_too_big",
        UploadStatus.EMPTY: "up_empty",
        UploadStatus.NOT_PDF: "up_not_pdf",
        UploadStatus.NOT_OFFICE: "up_not_office",
        UploadStatus.NOT_TEXT: "up_not_text",
        UploadStatus.FAILED: "up_failed",
    }[r.status]
    return say(lang, key, name=r.name, original=r.original, size=r.size / 1e6, limit=max_bytes / 1e6, detail=r.detail,
               types=UPLOAD_TYPES)  # fmt: skip


def launch(
    settings: Settings, host: str = "127.0.0.1", port: int = 7860, block: bool = True, pipeline: Pipeline | None = None
) -> gr.Blocks:
    """Start the page. `settings` as loaded (its `collection` is the one shown first); tests pass their own
    `pipeline` (e.g. with a scripted generator) for that collection."""
    kv_build = None
    line = GenerationQueue(settings.api_queue_limit)
    if pipeline is None:
        pipeline = Pipeline(for_collection(settings))
        # Load the index and the configured models before the first visitor, so the first answer is not slowed.
        pipeline.load()
        # The passage KV store: computed in the background; answers switch to it once it is complete.
        kv_build = BackgroundBuild(pipeline, own_engine=separate_engine(pipeline))
        kv_build.busy = lambda: line.waiting > 0  # the build pauses between blocks while a question waits
        kv_build.start()
    demo = build_app(pipeline, kv_build, base=settings, turns=line)
    print(f"Chat page: http://{host}:{port}", flush=True)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        theme=gr.themes.Default(font=FONTS, font_mono=MONO_FONTS),
        css=CSS,
        js=JS,
        footer_links=[],
        max_file_size=int(settings.max_file_mb * 1e6),
        quiet=True,
    )
    return demo


def main() -> None:
    from rag.config import load_settings

    s = load_settings()
    launch(s, s.host, s.port)


if __name__ == "__main__":
    main()
