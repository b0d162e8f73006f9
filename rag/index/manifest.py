"""What a build says about itself: the format version, the embedder, the chunker, each file's chunks
(manifest.json), and every file's sha256 (SHA256SUMS, written last).

Layout of one build, `builds/<id>/` under the index directory:

    manifest.json                format version, embedder, chunker, files
    chunks.jsonl                 one Chunk per line, row order = vector order
    dense.faiss                  inner-product index of normalized vectors
    pieces.faiss, pieces.npy     vectors of each chunk's sentence pieces, and the row each belongs to
    bm25/                        bm25s state over jieba tokens
    entities.json                names mined from the passages (rag.index.entities)
    SHA256SUMS                   every file's sha256, written last (`sha256sum -c` format)

Loading checks SHA256SUMS before FAISS sees a byte, so a truncated or edited file is reported with
the fix (`rag index --full`) instead of crashing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag.errors import IndexStateError
from rag.ingest.loaders import file_sha256

FORMAT_VERSION = 2  # 2: BM25 tokens include Chinese character bigrams
REBUILD_HINT = "Run: rag index --full"
CHECKSUMS = "SHA256SUMS"
MANIFEST_FILE = "manifest.json"
CHUNKS_FILE = "chunks.jsonl"
# The vector files of a build; rag_eval/rgb.py writes its pooled index in the same layout.
DENSE_FILE = "dense.faiss"
PIECES_FILE = "pieces.faiss"
PIECE_OWNERS_FILE = "pieces.npy"


@dataclass
class FileEntry:
    sha256: str
    title: str
    chunk_ids: list[str]
    indexed_at: str


@dataclass
class Manifest:
    format_version: int
    embed_model: str
    embed_sha256: str
    dim: int
    chunker: dict[str, Any]
    files: dict[str, FileEntry]
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> {sha256, max_bytes, reason}
    built_at: str = ""
    piece_chars: int = 0  # the chunks' sentence pieces were embedded too (pieces.faiss); 0: none
    # Where the vectors are when not in this folder's FAISS files (store.py): {"kind": "milvus", "uri": ...,
    # "chunks": collection, "pieces": collection}. Empty for FAISS, and then not written, so FAISS builds
    # keep the manifest they had before the store seam.
    vector_store: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        if not data["vector_store"]:
            del data["vector_store"]
        return json.dumps(data, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["files"] = {k: FileEntry(**v) for k, v in data["files"].items()}
        return cls(**data)


def now() -> str:
    """The time stamps of manifests and locks: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_checksums(directory: Path) -> None:
    """Record every file's sha256; called last, so a build without SHA256SUMS was never finished."""
    lines = [
        f"{file_sha256(p)}  {p.relative_to(directory).as_posix()}\n"
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    ]
    (directory / CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def _damaged(directory: Path, what: str) -> IndexStateError:
    return IndexStateError(f"The index in {directory} is damaged: {what}.", REBUILD_HINT)


def _read_checksums(directory: Path) -> dict[str, str]:
    """SHA256SUMS as {file name: sha256}; a malformed line means the file itself was damaged."""
    listed: dict[str, str] = {}
    try:
        for line in (directory / CHECKSUMS).read_text(encoding="utf-8").splitlines():
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                raise ValueError(f"bad line {line[:80]!r}")
            listed[name] = digest
    except (OSError, ValueError) as exc:
        raise _damaged(directory, f"{CHECKSUMS} is unreadable ({exc})") from exc
    return listed


def verify_checksums(directory: Path, vector_files: frozenset[str] = frozenset({DENSE_FILE})) -> None:
    """Every file listed in SHA256SUMS is present and unchanged, and it lists the build's essential files
    (`vector_files`: none when a database holds the vectors). Builds made before checksums pass unchecked."""
    if not (directory / CHECKSUMS).exists():
        return
    listed = _read_checksums(directory)
    for name in sorted({MANIFEST_FILE, CHUNKS_FILE, *vector_files} - set(listed)):
        raise _damaged(directory, f"{CHECKSUMS} does not list {name}")
    for name, digest in listed.items():
        path = directory / name
        try:
            if ".." in Path(name).parts or not path.is_file():
                raise _damaged(directory, f"{name} is missing")
            if file_sha256(path) != digest:
                raise _damaged(directory, f"{name} was truncated or changed after the build (its sha256 differs from {CHECKSUMS})")
        except OSError as exc:
            raise _damaged(directory, f"{name} is unreadable ({exc})") from exc
