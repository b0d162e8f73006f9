from pathlib import Path

from rag.index import entities


def test_mined_names_are_proper_nouns_of_either_script_counted_per_passage(tmp_path: Path) -> None:
    mined = entities.mine(["张伟在北京大学读书。", "The Zorblax-7 was built by Acme.", "Acme 的张伟"])
    assert mined["张伟"] == 2 and mined["acme"] == 2 and "zorblax-7" in mined and "北京大学" in mined
    entities.save(tmp_path, mined)
    assert entities.load(tmp_path) == mined
    assert entities.load(tmp_path / "nowhere") is None
