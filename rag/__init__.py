"""Offline retrieval-augmented question answering over a folder of documents."""

from rag import offline  # noqa: F401  (must run before any Hugging Face import)
