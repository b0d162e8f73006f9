"""ui.uploads: names that cannot escape the corpus, type and size checks, no overwrite without confirmation."""

from __future__ import annotations

from pathlib import Path

import pytest

from ui.uploads import MAX_NAME_BYTES, UploadStatus, safe_name, save_upload

MB = 1_000_000


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("notes.md", "notes.md"),
        ("../../etc/passwd.md", "passwd.md"),
        ("..\\..\\windows\\win.ini.txt", "win.ini.txt"),
        ("/abs/path/报告.PDF", "报告.pdf"),
        (".hidden.md", "hidden.md"),  # a leading dot would hide it from the index
        ("...md", "md"),
        ("a\x00b\x07c.txt", "abc.txt"),
        ("evil\u202egpj.md", "evilgpj.md"),  # right-to-left override: spoofs the shown name
        ('what?<is>:"this"|*.md', "what__is___this___.md"),
        ("  lots   of\tspace .md ", "lots of space.md"),
        ("e\u0301cole.md", "\u00e9cole.md"),  # NFC: one name, one spelling
        (".md", "md"),
        ("noext", "noext"),
    ],
)
def test_safe_name(original: str, expected: str) -> None:
    assert safe_name(original) == expected


def test_safe_name_is_never_a_path_or_too_long() -> None:
    for original in ["../" * 50 + "x.md", "a/" * 300 + "b.md", "长" * 400 + ".md", "..", ".", "/", "\\"]:
        name = safe_name(original)
        assert "/" not in name and "\\" not in name and name not in ("", ".", "..")
        assert len(name.encode()) <= MAX_NAME_BYTES
    assert safe_name("长" * 400 + ".md").endswith(".md")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "existing.md").write_text("# Old\n\nold text\n", encoding="utf-8")
    return d


def upload(tmp_path: Path, name: str, data: bytes) -> Path:
    src = tmp_path / "uploads" / "x"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return src


def test_new_file_is_added(tmp_path: Path, corpus: Path) -> None:
    r = save_upload(upload(tmp_path, "n", "# 新文档\n\n内容。".encode()), "新文档.md", corpus, MB)
    assert (r.status, r.name, r.changed_corpus) == (UploadStatus.ADDED, "新文档.md", True)
    assert (corpus / "新文档.md").read_text(encoding="utf-8") == "# 新文档\n\n内容。"
    assert sorted(p.name for p in corpus.iterdir()) == ["existing.md", "新文档.md"]  # no temp file left


def test_traversal_lands_inside_the_corpus(tmp_path: Path, corpus: Path) -> None:
    r = save_upload(upload(tmp_path, "n", b"hello"), "../../outside.txt", corpus, MB)
    assert r.status is UploadStatus.ADDED and r.name == "outside.txt"
    assert (corpus / "outside.txt").exists() and not (tmp_path / "outside.txt").exists()


def test_existing_file_is_not_overwritten_without_confirmation(tmp_path: Path, corpus: Path) -> None:
    src = upload(tmp_path, "n", b"# New\n\nnew text\n")
    r = save_upload(src, "existing.md", corpus, MB)
    assert r.status is UploadStatus.EXISTS and not r.changed_corpus
    assert (corpus / "existing.md").read_text() == "# Old\n\nold text\n"

    r = save_upload(src, "existing.md", corpus, MB, overwrite=True)
    assert r.status is UploadStatus.REPLACED and r.changed_corpus
    assert (corpus / "existing.md").read_text() == "# New\n\nnew text\n"


def test_identical_file_is_left_alone(tmp_path: Path, corpus: Path) -> None:
    r = save_upload(upload(tmp_path, "n", b"# Old\n\nold text\n"), "existing.md", corpus, MB)
    assert r.status is UploadStatus.UNCHANGED and not r.changed_corpus


def test_overwrite_replaces_a_link_not_its_target(tmp_path: Path, corpus: Path) -> None:
    outside = tmp_path / "outside.md"
    outside.write_text("keep me")
    (corpus / "link.md").symlink_to(outside)
    r = save_upload(upload(tmp_path, "n", b"new"), "link.md", corpus, MB, overwrite=True)
    assert r.status is UploadStatus.REPLACED
    assert outside.read_text() == "keep me"
    assert not (corpus / "link.md").is_symlink() and (corpus / "link.md").read_text() == "new"


def test_a_folder_of_that_name_is_reported(tmp_path: Path, corpus: Path) -> None:
    (corpus / "dir.md").mkdir()
    assert save_upload(upload(tmp_path, "n", b"x"), "dir.md", corpus, MB).status is UploadStatus.EXISTS
    r = save_upload(upload(tmp_path, "n", b"x"), "dir.md", corpus, MB, overwrite=True)
    assert r.status is UploadStatus.FAILED and (corpus / "dir.md").is_dir()


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("run.exe", b"MZ\x90\x00", UploadStatus.BAD_TYPE),
        ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", UploadStatus.BAD_TYPE),
        ("fake.docx", b"just text, not a Word file", UploadStatus.NOT_OFFICE),
        ("locked.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504, UploadStatus.NOT_OFFICE),
        ("data.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00", UploadStatus.NOT_TEXT),
        ("noext", b"text", UploadStatus.BAD_TYPE),
        ("empty.md", b"  \n", UploadStatus.EMPTY),
        ("fake.pdf", b"just text, not a pdf", UploadStatus.NOT_PDF),
        ("binary.txt", b"\x00\x01\x02\x03" * 10, UploadStatus.NOT_TEXT),
        ("latin1.txt", "café crème brûlée".encode("latin-1") + b"\xff\xfe\x81", UploadStatus.NOT_TEXT),
    ],
)
def test_wrong_type_or_content_is_refused(
    tmp_path: Path, corpus: Path, name: str, data: bytes, status: UploadStatus
) -> None:
    before = sorted(corpus.iterdir())
    r = save_upload(upload(tmp_path, "n", data), name, corpus, MB)
    assert r.status is status and not r.changed_corpus
    assert sorted(corpus.iterdir()) == before


def test_text_and_pdf_that_pass(tmp_path: Path, corpus: Path) -> None:
    assert (
        save_upload(upload(tmp_path, "n", "中文 GBK".encode("gb18030")), "gbk.txt", corpus, MB).status
        is UploadStatus.ADDED
    )
    assert save_upload(upload(tmp_path, "n", b"%PDF-1.4\n..."), "doc.PDF", corpus, MB).name == "doc.pdf"


def test_the_new_types_pass(tmp_path: Path, corpus: Path) -> None:
    from tests.documents import docx_bytes, html_page, pptx_bytes, xlsx_bytes

    files = {"手册.docx": docx_bytes([("p", "正文。")]), "deck.pptx": pptx_bytes([("T", ["x"])]),
             "表.xlsx": xlsx_bytes({"S": [["a"], [1]]}), "page.HTM": html_page("t", [("p", "x")]).encode(),
             "gbk.csv": "名称,数量\n苹果,3\n".encode("gbk")}  # fmt: skip
    for name, data in files.items():
        assert save_upload(upload(tmp_path, "n", data), name, corpus, MB).status is UploadStatus.ADDED, name
    assert (corpus / "page.htm").exists()


def test_too_big_is_refused(tmp_path: Path, corpus: Path) -> None:
    r = save_upload(upload(tmp_path, "n", b"x" * 2001), "big.txt", corpus, max_bytes=2000)
    assert r.status is UploadStatus.TOO_BIG and r.size == 2001
    assert not (corpus / "big.txt").exists()
