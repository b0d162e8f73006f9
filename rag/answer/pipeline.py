"""ask(question, history) -> events ending in an Answer. The one entry point of UI and CLI."""

from __future__ import annotations

import collections.abc
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rag.answer import citations
from rag.index import lexical
from rag.answer import prompting
from rag.errors import QuestionError
from rag.answer.retrieval import uncovered_names
from rag.index.entities import unknown_entities
from rag.schema import Answer, Hit

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index.embedding import Embedder
    from rag.llm.generation import Generator, Usage
    from rag.index.reader import Index
    from rag.llm.kvengine import CachedBlockGenerator
    from rag.answer.kvstore import BlockLookup
    from rag.answer.retrieval import Retriever

MAX_QUESTION_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Words that point back into the conversation ("它是哪家公司发布的？").
_FOLLOW_UP = re.compile(r"它|他们|她|其|该|这个|那个|这款|这些|上述|前者|后者|\b(it|its|they|them|this|that|these)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


@dataclass(frozen=True)
class Retrieved:
    query: str
    hits: list[Hit]


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Restart:
    """Forget the tokens streamed so far: the answer is being written again."""


@dataclass(frozen=True)
class Done:
    answer: Answer


Event = Retrieved | Token | Restart | Done


@dataclass
class _Attempt:
    """One generation under way: the prompt it reads and where its tokens come from."""

    prompt: prompting.Prompt
    stream: Iterator[str]
    source: Generator | CachedBlockGenerator  # whose `usage` counts its tokens
    path: str  # "cached" or "ordinary"
    cached_tokens: int = 0

    @property
    def usage(self) -> Usage:
        return self.source.usage


_Tried = tuple[_Attempt, str, "citations.CheckedAnswer | None"]
PATHS = ("auto", "cached", "ordinary")  # how `ask` may answer; "cached" falls back when a passage is not stored


def clean_question(question: str) -> str:
    question = _CONTROL.sub(" ", question or "").strip()
    if not question:
        raise QuestionError("The question is empty.", "Type a question about the documents.")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(
            f"The question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}.",
            "Ask a shorter question; paste only the part you want answered.",
        )
    return question


def standalone_query(question: str, history: Sequence[Turn]) -> str:
    """A search query that makes sense without the chat.

    A follow-up that refers back ('它是哪家公司发布的？') or is very short is
    searched together with the previous question, which names the subject.
    """
    if not history:
        return question
    if _FOLLOW_UP.search(question) or len(question) <= 8:
        return f"{history[-1].question} {question}"
    return question


def not_an_answer(question: str, raw: str, checked: citations.CheckedAnswer, hits: Sequence[Hit]) -> bool:
    """The model said the documents do not answer, or what it wrote cannot stand as an answer:
    a loop on one token, invented figures, a restatement of the question, or a count of something else."""
    return (
        prompting.is_refusal(raw)
        or citations.is_degenerate(raw)
        or citations.is_invented(checked, raw, hits, question)
        or citations.misses_the_count(raw, question)
    )


@dataclass
class Pipeline:
    """Holds the loaded index and models; loads each lazily, once per process."""

    settings: Settings
    embedder: Embedder | None = None
    generator: Generator | None = None
    cached_generator: CachedBlockGenerator | None = None
    block_lookup: BlockLookup | None = None
    kv_unavailable: str = ""  # why the cached path cannot be used in this process ('' = it can)
    _index: Index | None = None
    _index_target: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the cached-block generator
    # One lock per model, so that `load` can read both at once.
    _embedder_lock: threading.Lock = field(default_factory=threading.Lock)
    _generator_lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ parts

    def get_embedder(self) -> Embedder:
        with self._embedder_lock:
            if self.embedder is None:
                from rag.index.embedding import load_embedder

                s = self.settings
                self.embedder = load_embedder(s.embed_model, s.models_dir, s.n_threads, s.onnx_queries, s.onnx_passages, s.embed_dtype)
            return self.embedder

    def get_generator(self) -> Generator:
        with self._generator_lock:
            if self.generator is None:
                from rag.llm.generation import open_generator

                self.generator = open_generator(self.settings)
            return self.generator

    def load(self, chat_model: bool = True) -> dict[str, float]:
        """Load the index, the embedder and (unless told not to) the chat model; the seconds each took.

        The chat model loads in a second thread: llama.cpp reads and lays out its
        weights in C, without Python's lock, while this thread loads the question
        encoder, so both are ready in about the time of the slower.
        """
        seconds: dict[str, float] = {}
        failed: list[BaseException] = []

        def timed(name: str, load: collections.abc.Callable[[], object]) -> None:
            t = time.perf_counter()
            load()
            seconds[name] = time.perf_counter() - t

        def chat() -> None:
            try:
                timed("chat model", self.get_generator)
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=chat, name="load-chat-model", daemon=True) if chat_model else None
        if thread:
            thread.start()
        try:
            timed("index", self.get_index)
            timed("embedder", self.get_embedder)
            timed("jieba", lexical.words_ready)  # its dictionary, else the first question waits ~0.6 s for it
        finally:
            if thread:
                thread.join()
        if failed:
            raise failed[0]
        return seconds

    def get_cached(self) -> tuple[CachedBlockGenerator, BlockLookup] | None:
        """The cached-block generator on the ordinary generator's model, and the store lookup; None when off.

        Created once; a failure (a model whose cache cannot shift, no chat template)
        is remembered in `kv_unavailable` and the ordinary path answers.
        """
        if not self.settings.kv_cache or self.kv_unavailable:
            return None
        if self.cached_generator is not None and self.block_lookup is not None:
            return self.cached_generator, self.block_lookup
        generator = self.get_generator()
        with self._lock:
            if self.cached_generator is None:
                from rag.errors import RagError
                from rag.llm.kvengine import CachedBlockGenerator
                from rag.answer.kvstore import open_engine

                s = self.settings
                try:
                    engine = open_engine(s, generator)
                except RagError as exc:
                    self.kv_unavailable = exc.message
                    return None
                except Exception as exc:  # noqa: BLE001 - the fast path is optional: never let it break answering
                    self.kv_unavailable = f"{exc.__class__.__name__}: {exc}"
                    return None
                placed = prompting.block_order(s.top_k, s.kv_order)
                engine.warm_up([prompting.block_label(n, first=j == 0) for j, (_, n) in enumerate(placed) if j or n != 1])
                self.cached_generator = CachedBlockGenerator(engine, s.chat_model, s.temperature)
            if self.block_lookup is None:
                from rag.answer.kvstore import BlockLookup

                self.block_lookup = BlockLookup(self.settings, self.cached_generator.engine.prefix_sha256)
            return self.cached_generator, self.block_lookup

    def get_index(self) -> Index:
        """The live index, reloaded when a rebuild has swapped in a new one."""
        from rag.index.reader import Index
        from rag.models import get_spec

        root = Path(self.settings.index_dir)
        link = root / "current"
        target = link.resolve() if link.exists() else None
        if self._index is None or target != self._index_target:
            spec = get_spec(self.settings.embed_model)
            self._index = Index.load(root, self.settings.embed_model, spec.sha256)
            self._index_target = target
        return self._index

    def retriever(self) -> Retriever:
        from rag.answer.retrieval import RetrievalParams, Retriever

        return Retriever(self.get_index(), self.get_embedder(), RetrievalParams.from_settings(self.settings))

    # ------------------------------------------------------------ actions

    def search(self, query: str, k: int) -> list[Hit]:
        query = clean_question(query)  # before loading anything: a bad query costs nothing
        return self.retriever().rank(query, k)

    def ask(
        self,
        question: str,
        history: Sequence[Turn] = (),
        k: int | None = None,
        stop: threading.Event | None = None,
        path: str = "auto",
    ) -> Iterator[Event]:
        """Retrieve, then answer from cached passage blocks when every passage is stored, else from the prompt.

        `path`: "auto" and "cached" use the stored blocks when they can (the answer's
        `path` says which served it); "ordinary" always reads the whole prompt.
        """
        t0 = time.perf_counter()
        question = clean_question(question)
        k = k or self.settings.top_k
        lang = prompting.language_of(question)
        query = standalone_query(question, history)

        retriever = self.retriever()
        ranked = retriever.rank(query, max(k, 3, self.settings.conflict_depth))
        hits = ranked[:k] if retriever.has_evidence(ranked[: max(k, 3)]) else []
        if lang == "zh" and (uncovered_names(query, hits) or unknown_entities(query, retriever.entities(), retriever.knows)):
            hits = []  # the question names something no passage mentions: refuse, show the closest
        timings = {"retrieval": time.perf_counter() - t0}
        yield Retrieved(query, hits)

        if not hits:
            text = prompting.REFUSAL[lang]
            yield Token(text)
            timings["total"] = time.perf_counter() - t0
            yield Done(Answer(question, query, text, [], [], refused=True, related=ranked[:3], timings=timings))
            return

        tries: list[str] = []

        def stopped() -> bool:
            return stop is not None and stop.is_set()

        def answer_from(asked: str, given: list[Hit], how: str) -> collections.abc.Generator[Event, None, _Tried]:
            """Generate from `given` on path `how`; the attempt, its text, and the checked answer
            (None when it is no answer: a refusal, invented, or a count of something else)."""
            attempt = self._attempt(asked, query, given, how, stop)
            tries.append(attempt.path)
            raw = yield from self._stream(attempt, timings, t0)
            further = ranked[len(attempt.prompt.hits) : self.settings.conflict_depth]
            checked = citations.check(raw, attempt.prompt.hits, lang, question, further) if raw else None
            good = checked is not None and not not_an_answer(question, raw, checked, attempt.prompt.hits)
            return attempt, raw, checked if good else None

        attempt, raw, checked = yield from answer_from(question, hits, path)
        unchecked = checked is None or checked.unsupported or not checked.factual_sentences
        if attempt.path == "cached" and not stopped() and unchecked:
            # Cached blocks never saw one another, and the model copies or mixes them more than
            # when it reads the passages together; an answer the checker rejects, or cannot check
            # (a bare name: "IBM.COM[3]"), is written again from the whole prompt. The reader
            # saw the first token at once.
            yield Restart()
            attempt, raw, checked = yield from answer_from(question, hits, "ordinary")
        if not stopped() and prompting.is_refusal(raw) and len(hits) > 1:
            # The 1.5B model sometimes says "资料中没有相关信息" with the answer in a passage that is
            # plainly about the question (a release date in a timeline among four other passages).
            # Asked again with that passage alone, as [1], told it is on topic, it answers; what it
            # invents then is caught like any answer.
            plain = citations.most_on_topic(question, [h.chunk.text for h in hits])
            if plain is not None:
                yield Restart()
                note = f"{question}\n{prompting.FOCUS_NOTE[lang]}"
                attempt, raw, checked = yield from answer_from(note, [hits[plain]], attempt.path)

        prompt = attempt.prompt
        if checked is None:
            text = prompting.REFUSAL[lang]
            answer = Answer(question, query, text, [], prompt.hits, refused=True, related=prompt.hits)
        else:
            answer = Answer(
                question,
                query,
                checked.text,
                checked.citations,
                prompt.hits,
                unsupported=checked.unsupported,
                factual_sentences=checked.factual_sentences,
            )
        answer.raw_text = raw
        answer.prompt_tokens = attempt.usage.prompt_tokens
        answer.completion_tokens = attempt.usage.completion_tokens
        answer.path = attempt.path
        answer.tries = tries
        answer.cached_tokens = attempt.cached_tokens
        timings["total"] = time.perf_counter() - t0
        answer.timings = timings
        yield Done(answer)

    def _attempt(self, question: str, query: str, hits: list[Hit], path: str, stop: threading.Event | None) -> _Attempt:
        """Start answering from `hits`: from their stored blocks when `path` allows and all are
        stored, else from the whole prompt (passages trimmed around the `query`'s words)."""
        generator = self.get_generator()
        s = self.settings
        # With Chinese passages in view the model answers some English questions in Chinese,
        # whatever the prompt says; the generators then never choose a token that writes Chinese.
        english = prompting.language_of(question) == "en"
        # Cached blocks never saw one another, so a question that needs two passages read together
        # (two parts, a comparison) is answered from the whole prompt.
        several = prompting.asks_several_things(question)
        cached = self.get_cached() if path != "ordinary" and not several else None
        blocks = cached[1].blocks([h.chunk for h in hits]) if cached else None
        if cached and blocks is not None and cached[0].engine.fits(blocks, s.max_answer_tokens):
            placed = prompting.block_order(len(blocks), s.kv_order)
            numbered = [hits[i] for i, _ in sorted(placed, key=lambda p: p[1])]  # passage n is numbered[n-1]
            prompt = prompting.cached_prompt(question, numbered, [blocks[i].text for i, _ in placed], [n for _, n in placed])
            labels = [prompting.block_label(n, first=j == 0) for j, (_, n) in enumerate(placed)]
            stream = cached[0].stream_blocks(labels, [blocks[i] for i, _ in placed], prompting.question_tail(question),
                                             s.max_answer_tokens, stop, english=english)  # fmt: skip
            return _Attempt(prompt, stream, cached[0], "cached", sum(len(b.tokens) for b in blocks))
        from rag.index.lexical import words

        # A question that asks one thing gets the lean prompt (see lean_prompts in rag/config.py).
        lean = s.lean_prompts and not several
        first, later = (s.lean_first_chars, s.lean_later_chars) if lean else (s.passage_chars, s.passage_chars)
        prompt = prompting.build_prompt(
            question, hits, generator.count_tokens, s.prompt_token_budget, first, set(words(query)), later,
            brief_headers=lean,
        )
        stream = generator.stream(prompt.messages(), s.max_answer_tokens, stop, english=english)
        return _Attempt(prompt, stream, generator, "ordinary")

    @staticmethod
    def _stream(attempt: _Attempt, timings: dict[str, float], t0: float) -> collections.abc.Generator[Event, None, str]:
        """Pass the attempt's tokens on; return the whole text. The first token of the first
        attempt is the one the reader saw first, so a retry does not move `first_token`;
        `answer_first_token` is the first token of the text finally kept."""
        pieces: list[str] = []
        t_gen = time.perf_counter()
        for piece in attempt.stream:
            if not pieces:
                timings["answer_first_token"] = time.perf_counter() - t0
                timings.setdefault("first_token", timings["answer_first_token"])
            pieces.append(piece)
            yield Token(piece)
        timings["generation"] = timings.get("generation", 0.0) + time.perf_counter() - t_gen
        return "".join(pieces).strip()
