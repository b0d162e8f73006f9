"""Text -> normalized float32 vectors. The only importer of sentence-transformers/torch and onnxruntime.

Passages are embedded by sentence-transformers. Questions, once the index exists,
go through an ONNX export of the same sentence-transformers model, run by
onnxruntime: it loads in ~2 s where importing torch and sentence-transformers
takes ~6, and gives the same vectors (to 1e-6).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from rag import offline  # noqa: F401  (sets HF_HUB_OFFLINE before any HF import)


class Embedder(Protocol):
    name: str
    dim: int

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray: ...

    def encode_query(self, text: str) -> np.ndarray: ...


def embed_distinct(
    texts: Sequence[str], encode: Callable[[Sequence[str], Callable[[int], None] | None], np.ndarray],
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed each distinct text once and copy its vector to the repeats.

    Overlapping chunks share sentence pieces (4% of the seed corpus's texts). Progress counts
    every text: the repeats are reported when the distinct ones are done.
    Example: ["a", "b", "a"] embeds ["a", "b"] and returns rows [v_a, v_b, v_a].
    """
    first: dict[str, int] = {}
    rows = [first.setdefault(t, len(first)) for t in texts]
    distinct = list(first)
    vectors = encode(distinct, progress)
    if progress and len(distinct) < len(texts):
        progress(len(texts) - len(distinct))
    return vectors[rows] if len(distinct) < len(texts) else vectors


class SentenceTransformerEmbedder:
    """Loads a sentence-transformers model from a local folder, never from a hub."""

    # Texts are sorted by length first, so a batch pads little; 8 pads less than 16 and was
    # ~10% faster per text on the seed corpus (docs/measurements.md, "Fast by default").
    batch_size = 8

    def __init__(self, name: str, path: Path, threads: int | None = None, dtype: str = "float32") -> None:
        """`dtype` "bfloat16" runs the model in bfloat16 (see `resolve_dtype`); vectors come back float32."""
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.dtype = dtype
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        if dtype == "bfloat16":
            self._model.to(torch.bfloat16)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"cannot tell the embedding size of {path}")
        self.dim = int(dim)
        self._query = lru_cache(maxsize=512)(self._encode_query_uncached)

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return embed_distinct(texts, self._encode_all, progress)

    def _encode_all(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts in length-sorted batches (a batch pads to its longest) and return them in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Texts of similar length share a batch: a batch is padded to its longest text, and
        # sentence pieces (~40 characters) batched with whole chunks (~300) would cost as much as chunks.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            out[rows] = self._model.encode_document(
                [texts[r] for r in rows], batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            if progress:
                progress(len(rows))
        if self.dtype != "float32":  # normalized in bfloat16: unit length again, in float32
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _encode_query_uncached(self, text: str) -> np.ndarray:
        vec = self._model.encode_query([text], normalize_embeddings=True, convert_to_numpy=True)[0]
        vec = np.asarray(vec, dtype=np.float32)
        vec /= max(float(np.linalg.norm(vec)), 1e-12)
        vec.setflags(write=False)  # cached: callers must not change it
        return vec

    def encode_query(self, text: str) -> np.ndarray:
        return self._query(text)


# ---------------------------------------------------------------- the question encoder (onnxruntime)

QUERY_ENCODER_FORMAT = 1  # bump when the export changes: older exports are then made again
_ONNX = "query.onnx"
_INFO = "export.json"


def query_encoder_dir(name: str, models_dir: Path) -> Path:
    return models_dir / f"{name}.query-onnx"


def _export_info(name: str, models_dir: Path) -> dict[str, object] | None:
    """What the export in the cache was made from; None when there is none, or it is not for this model."""
    from rag.models import get_spec

    try:
        info = json.loads((query_encoder_dir(name, models_dir) / _INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fresh = info.get("format") == QUERY_ENCODER_FORMAT and info.get("model_sha256") == get_spec(name).sha256
    return info if fresh and (query_encoder_dir(name, models_dir) / _ONNX).is_file() else None


def export_query_encoder(name: str, models_dir: Path) -> Path:
    """Trace the whole sentence-transformers model (transformer, pooling, dense layers) into ONNX.

    Done once, at setup (`rag models fetch`), from the verified local model; ~75 s for
    EmbeddingGemma. sentence-transformers' own ONNX backend cannot be used: it needs
    optimum-onnx, which requires transformers < 4.58.
    """
    import contextlib
    import io
    import logging
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer

    from rag.models import get_spec, locate, staged_dir

    path = locate(name, models_dir)
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True).eval()

    class Encode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

    sample = model.tokenizer(["a question", "一个稍长一些的问题？"], padding=True, return_tensors="pt")
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    target = query_encoder_dir(name, models_dir)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # it reports every pass, and torchvision's absence
    with staged_dir(target) as work:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Encode(),
                (sample["input_ids"], sample["attention_mask"]),
                str(work / _ONNX),
                input_names=["input_ids", "attention_mask"],
                output_names=["query_vector"],  # not "embedding": a node inside Gemma has that name
                dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
                dynamo=True,
                verbose=False,
            )
        info = {
            "format": QUERY_ENCODER_FORMAT,
            "model_sha256": get_spec(name).sha256,
            "prompt": (model.prompts or {}).get("query", ""),
            "max_length": int(model.max_seq_length),
            "dim": int(model.get_embedding_dimension() or 0),
        }
        (work / _INFO).write_text(json.dumps(info), encoding="utf-8")
    return target


def ensure_query_encoder(name: str, models_dir: Path) -> bool:
    """Export the question encoder unless a current one is there; True when it was made now."""
    if _export_info(name, models_dir) is not None:
        return False
    export_query_encoder(name, models_dir)
    return True


class OnnxQueryEmbedder:
    """Questions through onnxruntime; passages through sentence-transformers, loaded when first needed
    (an index update from the chat page), so answering never imports torch."""

    def __init__(self, name: str, models_dir: Path, info: dict[str, object], threads: int | None = None,
                 onnx_passages: bool = False, passage_dtype: str = "float32") -> None:  # fmt: skip

        from rag.models import locate

        self.name = name
        self.dim = int(info["dim"])  # type: ignore[call-overload]
        self._prompt = str(info["prompt"])
        self._models_dir, self._threads = models_dir, threads
        self._onnx_passages, self._passage_dtype = onnx_passages, passage_dtype
        self._tokenizer = _onnx_tokenizer(locate(name, models_dir), info)
        # Idle threads must not spin: llama.cpp needs both cores right after the question is embedded.
        self._session = _onnx_session(name, models_dir, threads)
        self._query = lru_cache(maxsize=512)(self._encode_query_uncached)
        # Its own session, made by the thread that first embeds passages (a low-priority build's
        # threads are its own, rag/priority.py), never this one, whose threads answer questions.
        self._documents: SentenceTransformerEmbedder | OnnxDocumentEmbedder | None = None
        self._lock = threading.Lock()

    def _encode_query_uncached(self, text: str) -> np.ndarray:
        encoding = self._tokenizer.encode(self._prompt + text)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        (out,) = self._session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        vec = np.asarray(out[0], dtype=np.float32)
        vec /= max(float(np.linalg.norm(vec)), 1e-12)
        vec.setflags(write=False)  # cached: callers must not change it
        return vec

    def encode_query(self, text: str) -> np.ndarray:
        return self._query(text)

    def documents(self) -> SentenceTransformerEmbedder | OnnxDocumentEmbedder:
        """The passage embedder, loaded on first use."""
        with self._lock:
            if self._documents is None:
                self._documents = load_document_embedder(
                    self.name, self._models_dir, self._threads, self._onnx_passages, self._passage_dtype
                )
            return self._documents

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return self.documents().encode_documents(texts, progress)


class OnnxDocumentEmbedder:
    """Passages through the same ONNX export as questions, with the model's document prompt.

    The export is the whole sentence-transformers model, so with the document prompt in front
    it gives encode_document's vectors; texts are batched by length (right padding, which the
    attention mask hides, so a text's vector does not depend on its batch). No torch import.
    """

    batch_size = 16

    def __init__(self, name: str, models_dir: Path, info: dict[str, object], threads: int | None = None) -> None:

        from rag.models import locate

        path = locate(name, models_dir)
        self.name = name
        self.dim = int(info["dim"])  # type: ignore[call-overload]
        self._prompt = document_prompt(path)
        self._tokenizer = _onnx_tokenizer(path, info)
        # Waiting threads must not spin: a build in the background leaves the cores to answers.
        self._session = _onnx_session(name, models_dir, threads)

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return embed_distinct(texts, self._encode_all, progress)

    def _encode_all(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts in length-sorted batches (a batch pads to its longest) and return them in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encoded = self._tokenizer.encode_batch([self._prompt + t for t in texts])
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))  # a batch pads to its longest
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            width = max(len(encoded[r].ids) for r in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                n = len(encoded[r].ids)
                ids[j, :n], mask[j, :n] = encoded[r].ids, 1
            (vectors,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            vectors = np.asarray(vectors, dtype=np.float32)
            out[rows] = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            if progress:
                progress(len(rows))
        return out

    def encode_query(self, text: str) -> np.ndarray:
        raise NotImplementedError("OnnxDocumentEmbedder embeds passages; questions go through OnnxQueryEmbedder")


def document_prompt(model_path: Path) -> str:
    """The prompt sentence-transformers' encode_document puts before a passage ('' when the model has none)."""
    try:
        config = json.loads((model_path / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    prompts = config.get("prompts") or {}
    return next((str(prompts[k]) for k in ("document", "passage", "corpus") if k in prompts), "")


def resolve_dtype(setting: str) -> str:
    """embed_dtype -> "float32" or "bfloat16". "auto" is bfloat16 where the CPU multiplies it in
    hardware (AMX or AVX-512 BF16: ~3x the passages per CPU-second on the seed corpus, vectors within
    cosine 0.998 of float32), else float32, since emulated bfloat16 is slower than float32."""
    if setting != "auto":
        return setting
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return "float32"
    return "bfloat16" if {"amx_bf16", "avx512_bf16"} & flags else "float32"


def load_document_embedder(
    name: str, models_dir: Path, threads: int | None = None, onnx: bool = False, dtype: str = "float32"
) -> SentenceTransformerEmbedder | OnnxDocumentEmbedder:
    """For building the index: the ONNX export when `onnx` (onnx_passages) and setup made a current one,
    else sentence-transformers itself, in `dtype` (embed_dtype: auto, float32 or bfloat16)."""
    from rag.models import locate

    info = _export_info(name, models_dir) if onnx else None
    if info is not None:
        return OnnxDocumentEmbedder(name, models_dir, info, threads)
    return SentenceTransformerEmbedder(name, locate(name, models_dir), threads=threads, dtype=resolve_dtype(dtype))


def load_embedder(
    name: str, models_dir: Path, threads: int | None = None, onnx_queries: bool = True, onnx_passages: bool = False,
    passage_dtype: str = "float32",
) -> SentenceTransformerEmbedder | OnnxQueryEmbedder:
    """For answering: the ONNX question encoder when setup exported a current one, else sentence-transformers
    (float32: questions keep the vectors measured). Passages, embedded on an index update, as load_document_embedder."""
    from rag.models import locate

    info = _export_info(name, models_dir) if onnx_queries else None
    if info is None:
        return SentenceTransformerEmbedder(name, locate(name, models_dir), threads=threads)
    return OnnxQueryEmbedder(name, models_dir, info, threads, onnx_passages, passage_dtype)


def _onnx_tokenizer(path: Path, info: dict[str, object]):  # type: ignore[no-untyped-def]
    """The export's tokenizer, unpadded (one text at a time) and cut at the model's length."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(info["max_length"]))  # type: ignore[call-overload]
    return tokenizer


def _onnx_session(name: str, models_dir: Path, threads: int | None):  # type: ignore[no-untyped-def]
    """An onnxruntime session on the export whose idle threads sleep instead of spinning, so the
    cores go to whatever runs next (the answer's llama.cpp, or questions beside a build)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(query_encoder_dir(name, models_dir) / _ONNX), options,
                                providers=["CPUExecutionProvider"])  # fmt: skip
