"""Offline retrieval-augmented question answering over a folder of documents.

The in-process API (docs/api.md): `rag.open(corpus=..., index=...)` -> Assistant with
.search(query, k) -> list[Hit] and .ask(question, history) -> Answer. Its names load on
first use, so `import rag` stays cheap.
"""

from rag import offline  # noqa: F401  (must run before any Hugging Face import)

_LAZY = {
    "open": ("rag.answer.assistant", "open_assistant"),
    "Assistant": ("rag.answer.assistant", "Assistant"),
    "Turn": ("rag.answer.pipeline", "Turn"),
    "Answer": ("rag.schema", "Answer"),
    "Citation": ("rag.schema", "Citation"),
    "Hit": ("rag.schema", "Hit"),
    "Chunk": ("rag.schema", "Chunk"),
    "Settings": ("rag.config", "Settings"),
    "load_settings": ("rag.config", "load_settings"),
    "RagError": ("rag.errors", "RagError"),
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> object:
    """`from rag import open, Answer` imports their modules only then (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
