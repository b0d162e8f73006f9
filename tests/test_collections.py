"""Collections: the default one is corpus/ + index/, others are declared in rag.toml or are folders; `rag --collection`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.collections import DEFAULT, check_name, collection_names, for_collection, get_collection, list_collections
from rag.config import CollectionSpec, load_settings
from rag.errors import ConfigError
from tests.fakes import FakeEmbedder, isolate, write_corpus


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate(monkeypatch, tmp_path)


def test_without_collections_only_the_default_exists_and_nothing_moves(cwd: Path) -> None:
    s = load_settings()
    assert collection_names(s) == [DEFAULT]
    assert for_collection(s) == s  # the default collection is exactly the old corpus_dir + index_dir


def test_folders_of_collections_dir_are_collections_with_their_own_index(cwd: Path) -> None:
    (cwd / "collections" / "manuals").mkdir(parents=True)
    (cwd / "collections" / ".hidden").mkdir()
    (cwd / "collections" / "notes.txt").write_text("not a folder", encoding="utf-8")
    s = load_settings()
    assert collection_names(s) == [DEFAULT, "manuals"]
    m = for_collection(s, "manuals")
    assert (m.collection, m.corpus_dir, m.index_dir) == (
        "manuals",
        Path("collections/manuals"),
        Path("index/collections/manuals"),
    )
    assert get_collection(s, "manuals").origin == "folder"


def test_collections_declared_in_rag_toml(cwd: Path) -> None:
    (cwd / "rag.toml").write_text(
        'collection = "contracts"\n[collections.contracts]\ncorpus = "legal/docs"\n'
        '[collections.team]\ncorpus = "team"\nindex = "/srv/team-index"\n',
        encoding="utf-8",
    )
    s = load_settings()
    assert s.collections == (
        CollectionSpec("contracts", Path("legal/docs")),
        CollectionSpec("team", Path("team"), Path("/srv/team-index")),
    )
    chosen = for_collection(s)  # settings.collection picks one
    assert (chosen.collection, chosen.corpus_dir, chosen.index_dir) == (
        "contracts",
        Path("legal/docs"),
        Path("index/collections/contracts"),
    )
    assert for_collection(s, "team").index_dir == Path("/srv/team-index")
    assert for_collection(s, DEFAULT).corpus_dir == Path("corpus")


def test_collection_from_the_environment(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cwd / "collections" / "manuals").mkdir(parents=True)
    monkeypatch.setenv("RAG_COLLECTION", "manuals")
    assert for_collection(load_settings()).corpus_dir == Path("collections/manuals")


def test_an_unknown_collection_lists_the_known_ones_and_says_how_to_make_it(cwd: Path) -> None:
    (cwd / "collections" / "manuals").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no collection 'legal'. Known: default, manuals") as err:
        for_collection(load_settings(), "legal")
    assert "collections/legal" in err.value.hint and "[collections.legal]" in err.value.hint


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ('[collections.x]\nindex = "i"\n', "needs corpus"),
        ('[collections.x]\ncorpus = "c"\ncolour = "red"\n', "needs corpus"),
        ('collections = "x"\n', "must be a table"),
        ('[collections."../up"]\ncorpus = "c"\n', "cannot name a collection"),
        ('[collections.default]\ncorpus = "c"\n', "reserved name"),
    ],
)
def test_bad_collection_tables_say_what_to_write(cwd: Path, toml: str, match: str) -> None:
    (cwd / "rag.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        list_collections(load_settings())


@pytest.mark.parametrize("name", ["", ".git", "a/b", "x" * 65, "名 字"])
def test_names_that_cannot_be_folders_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot name a collection"):
        check_name(name)


def test_cli_indexes_and_searches_the_chosen_collection(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.index.embedding
    from rag.cli import app

    monkeypatch.setattr(rag.index.embedding, "load_embedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setattr(rag.index.embedding, "load_document_embedder", lambda *a, **k: FakeEmbedder())
    write_corpus(cwd / "corpus", {"soup.md": "# Soup\n\nTomato soup needs ripe tomatoes and garlic.\n"})
    write_corpus(
        cwd / "collections" / "lighthouses", {"vardo.md": "# Vardø\n\nThe Vardø lighthouse was painted purple.\n"}
    )
    run = CliRunner().invoke

    result = run(app, ["--collection", "lighthouses", "index"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (cwd / "index" / "collections" / "lighthouses" / "current").exists()
    assert not (cwd / "index" / "current").exists()  # the default collection was not touched

    result = run(app, ["--collection", "lighthouses", "search", "Vardø lighthouse", "--json"], catch_exceptions=False)
    assert {json.loads(line)["file"] for line in result.stdout.splitlines()} == {"vardo.md"}

    listing = run(app, ["--collection", "lighthouses", "collections", "--json"], catch_exceptions=False)
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert rows["lighthouses"]["indexed"] and rows["lighthouses"]["chosen"] and not rows["default"]["indexed"]

    unknown = run(app, ["--collection", "legal", "search", "x"])
    assert (
        unknown.exit_code == 1
        and "no collection 'legal'" in unknown.output
        and "default, lighthouses" in unknown.output
    )
