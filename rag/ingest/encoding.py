"""Bytes of a text file (.txt, .md, .csv, .html) -> str.

UTF-8 is tried first: a file that decodes as UTF-8 almost surely is UTF-8. Anything else is
left to charset-normalizer (GBK and GB18030 from Windows, Big5, Shift-JIS, Latin-1, ...), which
also tells text from binary; no encoding is guessed by hand here. On a few bytes of Chinese it
finds several encodings equally clean ("名称,数量" is valid GBK and valid Korean CP949); then
GB18030 (a superset of GBK), the common legacy encoding of Chinese documents, wins the tie.
"""

from __future__ import annotations

from rag.errors import DocumentError

_BINARY_PROBE = 8192  # NUL bytes in the first 8 KB: a binary file (or UTF-16, which is refused too)
_TIE_WINNERS = ("gb18030",)  # preferred among the encodings charset-normalizer finds equally clean


def decode_text(data: bytes, name: str) -> str:
    """The text of `data`, or DocumentError saying why it is not text (`name` is for the message).

    >>> decode_text("中文".encode("gbk") * 8, "x.txt")[:2]
    '中文'
    """
    if not data.strip():
        raise DocumentError(f"{name} is empty.", "Add text to the file or remove it from the corpus.")
    if b"\x00" in data[:_BINARY_PROBE]:
        raise _binary(name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise _binary(name)
    tied = [m for m in matches if m.chaos == best.chaos and m.encoding in _TIE_WINNERS]
    return str(tied[0] if tied else best)


def _binary(name: str) -> DocumentError:
    return DocumentError(
        f"{name} looks like a binary file, not text.",
        "Save it in its own format (.pdf, .docx, .xlsx, ...) or as UTF-8 text, or remove it from the corpus.",
    )
