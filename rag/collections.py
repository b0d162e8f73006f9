"""Collections: several named document folders, each with its own index.

A collection is a name for a pair (corpus folder, index folder). Three kinds:

- "default": `corpus_dir` and `index_dir` of the settings, as before collections existed;
- declared in rag.toml: `[collections.contracts]` with `corpus = "..."` (and optionally `index`);
- discovered: each sub-folder of `collections_dir` (`collections/manuals/` -> "manuals").

Declared and discovered collections without an index folder of their own index into
`index_dir/collections/NAME`. Every function here takes the settings as `load_settings`
returns them (the default collection's folders, `collection` naming the choice), so the CLI,
the page and the HTTP API look collections up the same way:

>>> s = for_collection(load_settings(), "manuals")   # doctest: +SKIP
>>> s.corpus_dir, s.index_dir                        # doctest: +SKIP
(PosixPath('collections/manuals'), PosixPath('index/collections/manuals'))
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from rag.config import Settings
from rag.errors import ConfigError

DEFAULT = "default"
# A name is also a folder name: letters, digits, '-', '_' and '.', not starting with '.'.
_NAME = re.compile(r"^[\w-][\w.-]{0,63}$")


@dataclass(frozen=True)
class Collection:
    name: str
    corpus_dir: Path
    index_dir: Path
    origin: str  # "default", "declared" (rag.toml) or "folder" (a sub-folder of collections_dir)


def check_name(name: str) -> str:
    """The name, if it can name a collection (and a folder); else a ConfigError that says what can."""
    if not _NAME.match(name or ""):
        raise ConfigError(
            f"'{name}' cannot name a collection.",
            "Use letters, digits, '-', '_' or '.' (up to 64, not starting with '.'), e.g. contracts or team-docs.",
        )
    return name


def list_collections(settings: Settings) -> list[Collection]:
    """Every known collection: default first, then the declared ones, then the discovered folders, by name."""
    found = {DEFAULT: Collection(DEFAULT, Path(settings.corpus_dir), Path(settings.index_dir), DEFAULT)}
    for spec in settings.collections:
        check_name(spec.name)
        if spec.name in found:
            raise ConfigError(
                f"Collection '{spec.name}' is declared twice or uses a reserved name.", "Rename it in rag.toml."
            )
        found[spec.name] = Collection(
            spec.name, spec.corpus_dir, spec.index_dir or _own_index(settings, spec.name), "declared"
        )
    folder = Path(settings.collections_dir)
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and sub.name not in found and _NAME.match(sub.name):
                found[sub.name] = Collection(sub.name, sub, _own_index(settings, sub.name), "folder")
    return list(found.values())


def _own_index(settings: Settings, name: str) -> Path:
    return Path(settings.index_dir) / "collections" / name


def get_collection(settings: Settings, name: str | None = None) -> Collection:
    """The collection called `name` (settings.collection when None); unknown names list the known ones."""
    name = name or settings.collection or DEFAULT
    known = list_collections(settings)
    for c in known:
        if c.name == name:
            return c
    raise ConfigError(
        f"There is no collection '{name}'. Known: {', '.join(c.name for c in known)}.",
        f"Create the folder {Path(settings.collections_dir) / name} (its documents form the collection),"
        f' or declare [collections.{name}] with corpus = "folder" in rag.toml.',
    )


def for_collection(settings: Settings, name: str | None = None) -> Settings:
    """The settings with `corpus_dir` and `index_dir` of collection `name` (settings.collection when None).

    The result is for building and answering; look other collections up from the settings
    `load_settings` returned, not from a result (its corpus_dir is no longer the default's).
    """
    c = get_collection(settings, name)
    return replace(settings, collection=c.name, corpus_dir=c.corpus_dir, index_dir=c.index_dir)


def collection_names(settings: Settings) -> list[str]:
    """The names to offer (the page's menu, `rag collections`), default first."""
    return [c.name for c in list_collections(settings)]
