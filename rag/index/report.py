"""What a build did, for the CLI, the UI's progress panel and the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[str, int, int], None]  # (stage: "read" | "embed" | "write", done, total)


def notify(on_progress: Progress | None, stage: str, done: int, total: int) -> None:
    """Tell the caller (the UI's progress bar, the CLI) how far a build stage is, if it asked."""
    if on_progress:
        on_progress(stage, done, total)


@dataclass
class BuildReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason
    documents: int = 0
    chunks: int = 0
    embedded: int = 0  # chunks embedded in this run
    pieces_embedded: int = 0  # and their sentence pieces
    seconds: float = 0.0
    wrote: bool = False  # False when nothing changed
    notes: list[str] = field(default_factory=list)  # things the user should know (a stale lock, a damaged index)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> list[str]:
        """What changed and how long it took, as lines for a person (skipped files and notes come separately).

        Example: ['Updated the index in 2.1 s: 6 documents, 130 chunks (embedded 14).',
                  '  added       1  new.md', '  updated     0', '  removed     0', '  unchanged   5']
        """
        if not self.wrote:
            return [f"No changes: {self.documents} documents, {self.chunks} chunks (checked in {self.seconds:.2f} s)."]
        head = f"Updated the index in {self.seconds:.1f} s: {self.documents} documents, {self.chunks} chunks"
        pieces = f", and {self.pieces_embedded} sentence pieces" if self.pieces_embedded else ""
        lines = [f"{head} (embedded {self.embedded}{pieces})."]
        for label, paths in (("added", self.added), ("updated", self.updated), ("removed", self.removed)):
            shown = ", ".join(paths[:10]) + (f", … and {len(paths) - 10} more" if len(paths) > 10 else "")
            lines.append(f"  {label:<9} {len(paths):>3}  {shown}".rstrip())
        lines.append(f"  {'unchanged':<9} {len(self.unchanged):>3}")
        return lines
