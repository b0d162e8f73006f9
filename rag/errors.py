"""Errors for people: each says what went wrong and what to do next."""

from __future__ import annotations


class RagError(Exception):
    """Base error. `hint` is the next step for the user (a command, usually)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message


class ConfigError(RagError):
    pass


class ModelError(RagError):
    """A model is missing, corrupt or unknown."""


class IndexStateError(RagError):
    """The on-disk index is missing, stale, corrupt or locked."""


class DocumentError(RagError):
    """One input file cannot be read; indexing skips it and reports why."""


class QuestionError(RagError):
    """The question itself cannot be answered as given (empty, too long)."""
