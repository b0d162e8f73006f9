"""Passage KV blocks on a low-level llama.cpp context: the cache layout (rag/llm/kvengine.py adds the decode loop).

The high-level `Llama` class keeps one token sequence; placing precomputed
passages needs sequences and cache surgery, so this module drives a second
context on the same loaded model (no second copy of the weights):

    index time    prefix (system prompt + "资料：") in seq 0, kept for the process;
                  label "[1] " + passage evaluated in seq 1 after the prefix,
                  the prefix dropped from seq 1, its cells (label + passage) saved
    question time everything after the prefix cleared; passage 1 restored where
                  it was computed; for passage n > 1: the cells of its label
                  "\\n\\n[n] " (computed once per process after the prefix) and
                  then its own cells without the stored label, each restored
                  into a scratch sequence, shifted (RoPE, applied at the next
                  decode) to follow what precedes, tagged into seq 0; then the
                  question is read (the one decode call), then the answer

So the model reads only the question (~40 tokens) before it writes, instead
of the whole prompt (~650). Subtle: a cached passage never
saw the other passages (each was computed after the prefix alone), which is
the price of reuse; the first passage sits exactly where it was computed,
so its restore is bit-exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag import offline  # noqa: F401
from rag.errors import ModelError

KV_TYPES = ("f16", "q8_0")  # q4_0 broke the RoPE shift in the probe (issue #8)
SEQ_MAIN, SEQ_SCRATCH, SEQ_LABEL = 0, 1, 2
N_SEQ = 3
_USER_SLOT = "\u2063RAG-USER-SLOT\u2063"  # stands in for the user message when splitting the chat template


@dataclass(frozen=True)
class Block:
    """One passage's saved KV cells, computed right after the prefix as `label` + `text`.

    The text's tokens sit at positions start..start+len(tokens)-1; the label's
    n_label cells just before them are saved too, so passage [1] is restored
    exactly as computed (no shift, no label to read).
    """

    text: str
    tokens: list[int]
    start: int
    state: bytes
    label: str = "[1] "
    n_label: int = 0


class KVCache:
    """A llama.cpp context with several sequences on an already loaded model, laid out as above.

    `llm` is a llama_cpp.Llama (the ordinary generator's); its model is shared.
    Not thread-safe by itself: callers hold `lock` (the ordinary generator's lock,
    so the two never compete for the cores).
    """

    def __init__(
        self,
        llm: Any,
        n_ctx: int,
        n_threads: int,
        n_batch: int,
        kv_type: str,
        prefix_text: str,
        system_prompt: str,
        lock: threading.Lock | None = None,
    ) -> None:
        import llama_cpp as L

        _check_kv_type(kv_type)
        self._L = L
        self.llm = llm  # keeps the model alive as long as this context
        self.kv_type = kv_type
        self.n_batch = n_batch
        self.lock = lock or threading.Lock()
        self.vocab = llm._model.vocab
        self.ctx = _open_context(L, llm._model.model, _context_params(L, n_ctx, n_threads, n_batch, kv_type))
        self._closed = False
        self._batch: Any = None
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.mem = L.llama_get_memory(self.ctx)
        self._require_shift()
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self._batch = L.llama_batch_init(n_batch, 0, 1)
        self._label_blocks: dict[str, Block] = {}
        self._read_prefix(prefix_text, system_prompt)

    def _require_shift(self) -> None:
        """Placing a block anywhere but where it was computed shifts its positions; refuse a cache that cannot."""
        if not self._L.llama_memory_can_shift(self.mem):
            self.close()
            raise ModelError(
                "This model's KV cache cannot be shifted, so cached passages cannot be placed.", "Set kv_cache = 0."
            )

    def _read_prefix(self, prefix_text: str, system_prompt: str) -> None:
        """Evaluate the chat template's opening + `prefix_text` into seq 0, where it stays for the process.

        Its sha256 names the stores built after it: blocks computed after another prefix are not reused.
        """
        before, self._after = chat_frame(self.llm, system_prompt)
        self.prefix_tokens = self.tokenize(before + prefix_text, special=True, add_special=True)
        self.prefix_sha256 = hashlib.sha256(np.asarray(self.prefix_tokens, dtype=np.int32).tobytes()).hexdigest()
        self._decode(self.prefix_tokens, 0, SEQ_MAIN, logits=False)
        self.n_prefix = len(self.prefix_tokens)

    def close(self) -> None:
        """Free the context and its batch now (the model stays: it belongs to the ordinary generator)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._batch is not None:
            self._L.llama_batch_free(self._batch)
        self._L.llama_free(self.ctx)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown llama_cpp may be gone already
            self.close()

    # ------------------------------------------------------------ tokens

    def tokenize(self, text: str, special: bool = False, add_special: bool = False) -> list[int]:
        """The model's tokens for `text`, through the low-level API (the buffer grows if llama.cpp asks)."""
        data = text.encode("utf-8")
        n = len(data) + 8
        buf = (self._L.llama_token * n)()
        got = self._L.llama_tokenize(self.vocab, data, len(data), buf, n, add_special, special)
        if got < 0:
            n = -got
            buf = (self._L.llama_token * n)()
            got = self._L.llama_tokenize(self.vocab, data, len(data), buf, n, add_special, special)
        return list(buf[:got])

    def count_tokens(self, text: str) -> int:
        """How long a passage is in this model's tokens (the store cuts blocks to kv_block_tokens)."""
        return len(self.tokenize(text))

    def after_tokens(self) -> list[int]:
        """The chat template after the user message (the assistant turn's opener), read after the question."""
        return self.tokenize(self._after, special=True)

    # ------------------------------------------------------------ low level

    def _decode(self, tokens: Sequence[int], start: int, seq: int, logits: bool = True) -> np.ndarray | None:
        """Evaluate `tokens` at positions start.. in sequence `seq`; the last token's logits if asked."""
        if start + len(tokens) > self.n_ctx:
            raise ModelError(
                f"The cached prompt needs {start + len(tokens)} positions; the KV context has {self.n_ctx}.",
                "Lower top_k or kv_block_tokens, or raise n_ctx.",
            )
        for i in range(0, len(tokens), self.n_batch):
            self._fill_batch(tokens[i : i + self.n_batch], start + i, seq)
            if logits and i + self.n_batch >= len(tokens):
                self._batch.logits[self._batch.n_tokens - 1] = 1
            rc = self._L.llama_decode(self.ctx, self._batch)
            if rc != 0:
                raise ModelError(
                    f"llama.cpp could not evaluate the prompt (llama_decode returned {rc}).", "Set kv_cache = 0."
                )
        if not logits or not tokens:
            return None
        ptr = self._L.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _fill_batch(self, part: Sequence[int], start: int, seq: int) -> None:
        """Put `part` into the reusable batch at positions start.., all in `seq`, asking for no logits."""
        b = self._batch
        b.n_tokens = len(part)
        for j, tok in enumerate(part):
            b.token[j] = tok
            b.pos[j] = start + j
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq
            b.logits[j] = 0

    def _reset(self) -> None:
        """Drop everything but the prefix in seq 0."""
        L = self._L
        L.llama_memory_seq_rm(self.mem, SEQ_SCRATCH, -1, -1)
        L.llama_memory_seq_rm(self.mem, SEQ_MAIN, self.n_prefix, -1)

    def _save(self, seq: int) -> bytes:
        """The cells of sequence `seq` as bytes (what a Block stores)."""
        L = self._L
        size = L.llama_state_seq_get_size(self.ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        n = L.llama_state_seq_get_data(self.ctx, buf, size, seq)
        return ctypes.string_at(buf, n)

    def _restore(self, state: bytes, seq: int) -> None:
        """Put saved cells back into sequence `seq`, at the positions they were saved from."""
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if self._L.llama_state_seq_set_data(self.ctx, buf, len(state), seq) == 0:
            raise ModelError("A cached passage block could not be restored (made by another model or version?).",
                             "Run: rag index --kv (a store made for another model is rebuilt)")  # fmt: skip

    # ------------------------------------------------------------ index time

    def compute_block(self, text: str, first_label: str) -> Block:
        """Evaluate `first_label` + `text` after the prefix; save their cells (not the prefix)."""
        L = self._L
        label = self.tokenize(first_label)
        tokens = self.tokenize(text)
        self._reset()
        L.llama_memory_seq_cp(self.mem, SEQ_MAIN, SEQ_SCRATCH, -1, -1)  # tags the prefix cells, copies nothing
        self._decode(label + tokens, self.n_prefix, SEQ_SCRATCH, logits=False)
        L.llama_memory_seq_rm(self.mem, SEQ_SCRATCH, 0, self.n_prefix)  # the prefix stays in seq 0 only
        state = self._save(SEQ_SCRATCH)
        L.llama_memory_seq_rm(self.mem, SEQ_SCRATCH, -1, -1)
        return Block(text, tokens, self.n_prefix + len(label), state, first_label, len(label))

    # ------------------------------------------------------------ question time

    def place(self, labels: Sequence[str], blocks: Sequence[Block], tail: str) -> tuple[np.ndarray, int, int]:
        """Labels and blocks one after another after the prefix, then the tail (+ the assistant turn opener).

        Returns the logits after the last token, the next free position, and
        how many tokens were evaluated: the tail's (everything else came from the blocks).
        """
        for i, (label, block) in enumerate(zip(labels, blocks, strict=True)):
            if i > 0 or label != block.label:
                self.label_block(label)  # before the reset below: computing one uses the cache
        self._reset()
        pos = self.n_prefix
        for label, block in zip(labels, blocks, strict=True):
            pos = self._place_passage(label, block, pos)
        tail_tokens = self.tokenize(tail) + self.after_tokens()
        logits = self._decode(tail_tokens, pos, SEQ_MAIN)
        assert logits is not None
        return logits, pos + len(tail_tokens), len(tail_tokens)

    def _place_passage(self, label: str, block: Block, pos: int) -> int:
        """Restore one passage into seq 0 behind `label`, starting at `pos`; the next free position.

        Where it was computed, after this very label, it is restored as is (exact, nothing to read);
        elsewhere its stored label is dropped, this label's cells go in first and the passage is shifted
        to follow them.
        """
        L = self._L
        if pos + len(label) + len(block.tokens) + 16 > self.n_ctx:
            raise ModelError("The cached passages do not fit the KV context.", "Lower top_k or raise n_ctx.")
        self._restore(block.state, SEQ_SCRATCH)  # wipes seq 1 first
        if label == block.label and pos == block.start - block.n_label:
            pos = block.start  # where it was computed, after this very label: exact, nothing to read
        else:
            L.llama_memory_seq_rm(self.mem, SEQ_SCRATCH, 0, block.start)  # the stored label goes…
            pos = self._place(self.label_block(label), pos, SEQ_LABEL)  # …this one comes in
            if pos != block.start:
                L.llama_memory_seq_add(self.mem, SEQ_SCRATCH, -1, -1, pos - block.start)
        L.llama_memory_seq_cp(self.mem, SEQ_SCRATCH, SEQ_MAIN, -1, -1)
        L.llama_memory_seq_rm(self.mem, SEQ_SCRATCH, -1, -1)
        return pos + len(block.tokens)

    def label_block(self, label: str) -> Block:
        """The KV cells of a label such as "\\n\\n[2] ", computed once per process after the prefix.

        Restoring labels instead of reading them leaves a single decode call per
        question (the question itself), so the RoPE shift, which rewrites the whole
        cache, runs once instead of once per passage (~1 s each on 2 busy cores).
        """
        block = self._label_blocks.get(label)
        if block is None:
            block = self.compute_block(label, "")
            self._label_blocks[label] = block
        return block

    def warm_up(self, labels: Sequence[str]) -> None:
        """Compute the labels' cells and place one shifted block, so the first question does not pay for
        setting up the shift and decode graphs (the first cached answer took 6.3 s instead of ~2 s)."""
        for label in labels:
            self.label_block(label)
        if labels:
            self.place([labels[-1]], [self.label_block(labels[0])], "")
            self._reset()

    def _place(self, block: Block, pos: int, seq: int) -> int:
        """Restore `block` (without a stored label) into seq 0 at `pos` via `seq`; the next free position."""
        L = self._L
        self._restore(block.state, seq)
        if pos != block.start:
            L.llama_memory_seq_add(self.mem, seq, -1, -1, pos - block.start)
        L.llama_memory_seq_cp(self.mem, seq, SEQ_MAIN, -1, -1)
        L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        return pos + len(block.tokens)

    def fits(self, blocks: Sequence[Block], answer_tokens: int) -> bool:
        """Whether these blocks, their labels, a question and an answer fit the context (more passages
        than top_k, chosen on the page, may not: then the ordinary path answers)."""
        need = self.n_prefix + sum(len(b.tokens) + 8 for b in blocks) + 128 + answer_tokens
        return need <= self.n_ctx

    def evaluate(self, segments: Sequence[Sequence[int]]) -> np.ndarray:
        """Reference: evaluate token segments after the prefix in seq 0, one decode call each; last logits."""
        self._reset()
        pos, logits = self.n_prefix, None
        for seg in segments:
            logits = self._decode(list(seg), pos, SEQ_MAIN)
            pos += len(seg)
        assert logits is not None
        return logits


def _check_kv_type(kv_type: str) -> None:
    """Only the cache types whose RoPE shift was checked to hold are accepted."""
    if kv_type not in KV_TYPES:
        raise ModelError(
            f"KV cache type '{kv_type}' is not supported.", f"Set kv_cache_type to one of {', '.join(KV_TYPES)}."
        )


def _context_params(L: Any, n_ctx: int, n_threads: int, n_batch: int, kv_type: str) -> Any:
    """The context settings the layout relies on: N_SEQ sequences in one unified cache of `kv_type` cells."""
    params = L.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = N_SEQ
    params.kv_unified = True  # with separate buffers a sequence copy replaces the destination instead of tagging
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    kv = {"f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0}[kv_type]
    params.type_k = kv
    params.type_v = kv
    # A quantized V cache needs flash attention.
    params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED if kv_type == "f16" else L.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.no_perf = True
    return params


def _open_context(L: Any, model: Any, params: Any) -> Any:
    """A second context on the loaded model (its weights are shared), or an error that says how to do without."""
    ctx = L.llama_init_from_model(model, params)
    if not ctx:
        raise ModelError(
            "llama.cpp could not create a context for the passage KV cache.", "Set kv_cache = 0 in rag.toml."
        )
    return ctx


def chat_frame(llm: Any, system_prompt: str) -> tuple[str, str]:
    """The chat template's text before and after the user message, with the given system prompt.

    Rendered with the model's own template (GGUF metadata), as create_chat_completion does.
    Example (Qwen2.5): ('<|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\n', '<|im_end|>\\n<|im_start|>assistant\\n')
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelError("The chat model has no chat template, so its prompt cannot be cut into cached blocks.",
                         "Set kv_cache = 0 or use a model with a chat template.")  # fmt: skip
    model = llm._model
    eos, bos = model.token_eos(), model.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(eos) if eos != -1 else "",
        bos_token=model.token_get_text(bos) if bos != -1 else "",
    )
    rendered = formatter(
        messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": _USER_SLOT}]
    ).prompt
    before, sep, after = rendered.partition(_USER_SLOT)
    if not sep:
        raise ModelError("The chat template did not place the user message where expected.", "Set kv_cache = 0.")
    return before, after


def context_size(settings: Any) -> int:
    """Positions the cached path needs: prefix, top_k labelled blocks, question, answer; rounded up to 256.

    Kept small on purpose: a RoPE shift touches every cell of the cache.
    Example: top_k 5, blocks of 320, answers of 384 -> 2560.
    """
    need = 256 + settings.top_k * (settings.kv_block_tokens + 8) + 128 + settings.max_answer_tokens
    return -(-need // 256) * 256
