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

from rag.answer import answerable, citations, hygiene, prompting
from rag.answer.retrieval import uncovered_names
from rag.errors import QuestionError
from rag.guards import ALL, Guards
from rag.index import lexical
from rag.index.entities import unknown_entities
from rag.schema import Answer, Hit

if TYPE_CHECKING:
    from rag.answer.kvstore import BlockLookup
    from rag.answer.retrieval import Retriever
    from rag.config import Settings
    from rag.index.embedding import Embedder
    from rag.index.reader import Index
    from rag.llm.generation import Generator, Usage
    from rag.llm.kvengine import CachedBlockGenerator

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


def rejection(
    question: str, raw: str, checked: citations.CheckedAnswer, hits: Sequence[Hit], guards: Guards = ALL
) -> str | None:
    """Why what the model wrote cannot stand as an answer, or None when it can.

    "refusal": the model said the documents do not answer. Otherwise the name of the guard
    that rejected it: a loop on one token, invented figures, a restatement of the question,
    a count of something else. The reader then gets a refusal instead of the text.
    """
    if prompting.is_refusal(raw):
        return "refusal"
    if guards.when("degenerate", lambda: citations.is_degenerate(raw)):
        return "degenerate"
    invented = citations.invented_reason(checked, raw, hits, question, guards)
    if invented:
        return invented
    if guards.when("misses_the_count", lambda: citations.misses_the_count(raw, question)):
        return "misses_the_count"
    return None


def not_an_answer(question: str, raw: str, checked: citations.CheckedAnswer, hits: Sequence[Hit]) -> bool:
    """`rejection` with every guard on, as a yes or no."""
    return rejection(question, raw, checked, hits) is not None


@dataclass
class _Question:
    """What one `ask` knows about its question while answering it."""

    text: str
    query: str  # what was searched: the question, or with the previous one for a follow-up
    lang: str
    stop: threading.Event | None
    t0: float
    timings: dict[str, float] = field(default_factory=dict)
    tries: list[str] = field(default_factory=list)  # the path of each generation
    answerable_score: float | None = None  # the answerable_check's score of the last checked try

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()


@dataclass(frozen=True)
class _PromptRules:
    """The prompting guards that apply to one question (see rag/guards.py)."""

    several: bool  # asks two things: full prompt; no cached blocks unless kv_several_cached
    ban_chinese: bool  # English question: no token that writes Chinese
    figures_in_english: bool  # English question: 亿 figures written in English in the passages


@dataclass
class Pipeline:
    """Holds the loaded index and models; loads each lazily, once per process."""

    settings: Settings
    embedder: Embedder | None = None
    generator: Generator | None = None
    cached_generator: CachedBlockGenerator | None = None
    block_lookup: BlockLookup | None = None
    kv_unavailable: str = ""  # why the cached path cannot be used in this process ('' = it can)
    # The answer guards that are on, and their firing counts; None: those of settings.disabled_guards.
    guards: Guards = None  # type: ignore[assignment]
    _index: Index | None = None
    _index_target: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the cached-block generator
    # One lock per model, so that `load` can read both at once.
    _embedder_lock: threading.Lock = field(default_factory=threading.Lock)
    _generator_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.guards is None:
            self.guards = Guards.without(self.settings.disabled_guards)

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
                from rag.answer.kvstore import open_engine
                from rag.errors import RagError
                from rag.llm.kvengine import CachedBlockGenerator

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
        The steps: `_retrieve` (and refuse before the model when nothing is evidence),
        `_with_retries` (each try prompts, generates and checks: `_answer`), `_finish`.
        """
        t0 = time.perf_counter()
        question = clean_question(question)
        q = _Question(question, standalone_query(question, history), prompting.language_of(question), stop, t0)
        ranked, hits = self._retrieve(q.query, q.lang, k or self.settings.top_k)
        q.timings["retrieval"] = time.perf_counter() - t0
        yield Retrieved(q.query, hits)
        if not hits:
            yield from self._refuse_unanswered(q, ranked)
            return
        attempt, raw, checked = yield from self._with_retries(q, ranked, hits, path)
        yield Done(self._finish(q, attempt, raw, checked))

    # ------------------------------------------------------------ retrieval step

    def _retrieve(self, query: str, lang: str, k: int) -> tuple[list[Hit], list[Hit]]:
        """The ranked passages (deep enough for the conflict check) and the `k` the model reads.

        None are read when retrieval found no evidence, or when a Chinese question names
        something no passage mentions: given only near misses, the small model answers
        about the wrong thing, and refusing here costs no generation.
        """
        g = self.guards
        retriever = self.retriever()
        ranked = retriever.rank(query, max(k, 3, self.settings.conflict_depth))
        if not ranked or g.when("evidence_threshold", lambda: not retriever.has_evidence(ranked[: max(k, 3)])):
            return ranked, []
        hits = ranked[:k]
        if lang == "zh" and (
            g.when("uncovered_names", lambda: uncovered_names(query, hits))
            or g.when("unknown_entities", lambda: unknown_entities(query, retriever.entities(), retriever.knows))
        ):
            return ranked, []  # the question names something no passage mentions: refuse, show the closest
        return ranked, hits

    @staticmethod
    def _refuse_unanswered(q: _Question, ranked: list[Hit]) -> Iterator[Event]:
        """No passage to answer from: say the documents do not cover it and show the closest passages."""
        text = prompting.REFUSAL[q.lang]
        yield Token(text)
        q.timings["total"] = time.perf_counter() - q.t0
        yield Done(Answer(q.text, q.query, text, [], [], refused=True, related=ranked[:3], timings=q.timings))

    # ------------------------------------------------------------ retries

    def _with_retries(
        self, q: _Question, ranked: list[Hit], hits: list[Hit], path: str
    ) -> collections.abc.Generator[Event, None, _Tried]:
        """The first try, then at most two more where a known failure of the small model is
        cheaper to retry than to show: see `_retry_whole` and `_focus_passage`."""
        tried = yield from self._answer(q, q.text, hits, path, ranked)
        if self._retry_whole(q, tried):
            yield Restart()
            tried = yield from self._answer(q, q.text, hits, "ordinary", ranked)
        plain = self._focus_passage(q, tried[1], hits)
        if plain is not None:
            yield Restart()
            note = f"{q.text}\n{prompting.FOCUS_NOTE[q.lang]}"
            return (yield from self._answer(q, note, [hits[plain]], tried[0].path, ranked))
        first = self._on_topic_first(q, tried, tried[0].prompt.hits)
        if first is None:
            return tried
        yield Restart()
        given = tried[0].prompt.hits
        again = yield from self._answer(q, q.text, [given[first], *given[:first], *given[first + 1 :]], "ordinary", ranked)
        if again[2] is not None or q.stopped():
            return again
        # Reordered, the model refused: the first answer, which passed every check, stands.
        yield Restart()
        yield Token(tried[1])
        return tried

    def _retry_whole(self, q: _Question, tried: _Tried) -> bool:
        """Whether an answer from cached blocks is written again from the whole prompt.

        Cached blocks never saw one another, and the model copies or mixes them more than
        when it reads the passages together; an answer the checker rejects, or cannot check
        (a bare name: "ACME.COM[3]"), is written again. The reader saw the first token at once.
        """
        attempt, _, checked = tried
        unchecked = checked is None or bool(checked.unsupported) or not checked.factual_sentences
        return attempt.path == "cached" and not q.stopped() and unchecked and self.guards.when("cached_retry", True)

    def _focus_passage(self, q: _Question, raw: str, hits: list[Hit]) -> int | None:
        """The passage to ask again from, alone, after a refusal; None: the refusal stands.

        The 1.5B model sometimes says "资料中没有相关信息" with the answer in a passage that is
        plainly about the question (a date in a timeline among four other passages). Asked
        again with that passage alone, as [1], told it is on topic, it answers; what it
        invents then is caught like any answer.
        """
        if q.stopped() or not prompting.is_refusal(raw) or len(hits) <= 1 or not self.guards.on("focus_retry"):
            return None
        plain = citations.most_on_topic(q.text, [h.chunk.text for h in hits])
        if plain is not None:
            self.guards.fired("focus_retry")
        return plain

    def _on_topic_first(self, q: _Question, tried: _Tried, shown: list[Hit]) -> int | None:
        """The shown passage to put first when the answer is asked again; None: the answer stands.

        The small model leans on passage [1]: asked for one figure of a thing, it gives another
        figure of the same thing from [1] (a price for a training cost) while [2] holds the words
        of the question. When every cited passage holds fewer of the question's words than a
        shown passage plainly about it, the question is asked again with that passage first and
        the others after it, so nothing the first answer read is taken away.
        """
        checked = tried[2]
        if q.stopped() or checked is None or not checked.citations or len(shown) <= 1:
            return None
        if not self.guards.on("on_topic_retry"):
            return None
        best = citations.most_on_topic(q.text, [h.chunk.text for h in shown])
        if best is None or best == 0:
            return None
        share = citations.topic_share
        cited = max(share(q.text, c.chunk.text) for c in checked.citations)
        if cited >= share(q.text, shown[best].chunk.text):
            return None
        self.guards.fired("on_topic_retry")
        return best

    # ------------------------------------------------------------ prompting and checking steps

    def _answer(
        self, q: _Question, asked: str, given: list[Hit], how: str, ranked: list[Hit]
    ) -> collections.abc.Generator[Event, None, _Tried]:
        """One try: generate from `given` on path `how`, streaming the tokens on, then check it.
        The attempt, its text, and the checked answer (None when it is no answer)."""
        attempt = self._attempt(asked, q.query, given, how, q.stop)
        q.tries.append(attempt.path)
        raw = yield from self._stream(attempt, q.timings, q.t0)
        return attempt, raw, self._check(q, raw, attempt.prompt.hits, ranked)

    def _check(self, q: _Question, raw: str, shown: list[Hit], ranked: list[Hit]) -> citations.CheckedAnswer | None:
        """The answer with its citations checked and repaired against the passages it was shown;
        None when it cannot stand as an answer (see `rejection`): the reader gets a refusal."""
        if not raw:
            return None
        further = ranked[len(shown) : self.settings.conflict_depth]
        # Each sentence said once before it is checked (hygiene.drop_repeats); loops are judged on `raw`.
        checked = citations.check(hygiene.drop_repeats(raw), shown, q.lang, q.text, further, guards=self.guards)
        refused = rejection(q.text, raw, checked, shown, self.guards) or self._unanswered(q, checked, shown)
        return None if refused else checked

    def _unanswered(self, q: _Question, checked: citations.CheckedAnswer, shown: list[Hit]) -> bool:
        """The answerable_check: no cited passage (else the first passage shown) is judged by the chat
        model to answer this exact question, P(yes) below `answerable_min`.

        Catches the answer taken from a nearby fact (another year's figure, a neighbouring
        event), which passes every lexical check because its words are the passage's. Skipped
        when the generator cannot score (an OpenAI-compatible server) or the guard is off.
        """
        q.answerable_score = None
        judge = getattr(self.get_generator(), "yes_probability", None)
        if judge is None or q.stopped() or self.settings.answerable_min < 0 or not self.guards.on("answerable_check"):
            return False
        cited = [c.chunk.text for c in checked.citations] or [h.chunk.text for h in shown[:1]]
        t = time.perf_counter()
        threshold = self.settings.answerable_min
        score = answerable.answerable_score(q.text, checked.text, cited, judge, enough=max(threshold, 0.5))
        q.timings["answerable_check"] = q.timings.get("answerable_check", 0.0) + time.perf_counter() - t
        q.answerable_score = score
        return self.guards.when("answerable_check", score is not None and score < threshold)

    def _finish(self, q: _Question, attempt: _Attempt, raw: str, checked: citations.CheckedAnswer | None) -> Answer:
        """The Answer of the last try: its checked text and citations, or a refusal that shows
        the passages it was given; with its tokens, paths and timings."""
        prompt = attempt.prompt
        if checked is None:
            text = prompting.REFUSAL[q.lang]
            answer = Answer(q.text, q.query, text, [], prompt.hits, refused=True, related=prompt.hits)
        else:
            checked = hygiene.set_aside_unsupported(checked, q.lang)  # not presented as the answer
            answer = Answer(q.text, q.query, checked.text, checked.citations, prompt.hits,
                            unsupported=checked.unsupported, factual_sentences=checked.factual_sentences)  # fmt: skip
        answer.raw_text = raw
        answer.prompt_tokens = attempt.usage.prompt_tokens
        answer.completion_tokens = attempt.usage.completion_tokens
        answer.path = attempt.path
        answer.tries = q.tries
        answer.cached_tokens = attempt.cached_tokens
        answer.answerable_score = q.answerable_score
        q.timings["total"] = time.perf_counter() - q.t0
        answer.timings = q.timings
        return answer

    def _prompt_rules(self, question: str, hits: list[Hit]) -> _PromptRules:
        """Which prompting guards apply to this question; each is counted when it does.

        With Chinese passages in view the model answers some English questions in Chinese,
        whatever the prompt says, and converts 亿 wrongly on its own; cached blocks never saw
        one another, so a question that needs two passages read together (two parts, a
        comparison) is answered from the whole prompt.
        """
        g = self.guards
        english = prompting.language_of(question) == "en"
        glossed = (prompting.english_figures(h.chunk.text) != h.chunk.text for h in hits)
        g.when("english_figures", lambda: english and any(glossed))
        return _PromptRules(
            several=g.when("several_things", lambda: prompting.asks_several_things(question)),
            ban_chinese=english and g.when("english_tokens", True),
            figures_in_english=g.on("english_figures"),
        )

    def _attempt(self, question: str, query: str, hits: list[Hit], path: str, stop: threading.Event | None) -> _Attempt:
        """Start answering from `hits`: from their stored blocks when `path` allows and all are
        stored, else from the whole prompt (passages trimmed around the `query`'s words)."""
        rules = self._prompt_rules(question, hits)
        several_ordinary = rules.several and not self.settings.kv_several_cached
        cached = self.get_cached() if path != "ordinary" and not several_ordinary else None
        if cached:
            attempt = self._cached_attempt(question, hits, cached, rules, stop)
            if attempt is not None:
                return attempt
        return self._ordinary_attempt(question, query, hits, rules, stop)

    def _cached_attempt(
        self, question: str, hits: list[Hit], cached: tuple[CachedBlockGenerator, BlockLookup],
        rules: _PromptRules, stop: threading.Event | None,
    ) -> _Attempt | None:  # fmt: skip
        """Answer from the passages' stored KV blocks; None when one is not stored or they do not fit."""
        generator, lookup = cached
        s = self.settings
        blocks = lookup.blocks([h.chunk for h in hits])
        if blocks is None or not generator.engine.fits(blocks, s.max_answer_tokens):
            return None
        placed = prompting.block_order(len(blocks), s.kv_order)
        numbered = [hits[i] for i, _ in sorted(placed, key=lambda p: p[1])]  # passage n is numbered[n-1]
        texts, numbers = [blocks[i].text for i, _ in placed], [n for _, n in placed]
        prompt = prompting.cached_prompt(question, numbered, texts, numbers)
        labels = [prompting.block_label(n, first=j == 0) for j, (_, n) in enumerate(placed)]
        stream = generator.stream_blocks(labels, [blocks[i] for i, _ in placed],
                                         prompting.question_tail(question),
                                         s.max_answer_tokens, stop, english=rules.ban_chinese)  # fmt: skip
        return _Attempt(prompt, stream, generator, "cached", sum(len(b.tokens) for b in blocks))

    def _ordinary_attempt(
        self, question: str, query: str, hits: list[Hit], rules: _PromptRules, stop: threading.Event | None
    ) -> _Attempt:
        """Answer from the whole prompt: the passages numbered and cut around the `query`'s words.

        A question that asks one thing gets the lean prompt (see lean_prompts in rag/config.py).
        """
        from rag.index.lexical import words

        generator = self.get_generator()
        s = self.settings
        lean = s.lean_prompts and not rules.several
        first, later = (s.lean_first_chars, s.lean_later_chars) if lean else (s.passage_chars, s.passage_chars)
        prompt = prompting.build_prompt(
            question, hits, generator.count_tokens, s.prompt_token_budget, first, set(words(query)), later,
            brief_headers=lean, figures_in_english=rules.figures_in_english,
        )  # fmt: skip
        stream = generator.stream(prompt.messages(), s.max_answer_tokens, stop, english=rules.ban_chinese)
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
