"""rag.llm.generation's pure parts: which tokens an English answer may not use."""

from __future__ import annotations

import numpy as np

from rag.llm.generation import chinese_token_ids, english_only


def test_tokens_that_write_chinese_are_found_whole_or_in_parts() -> None:
    pieces = [
        b"The",
        "模型".encode(),
        "模".encode()[:1],  # the first byte of a character a byte-level vocabulary spells in parts
        "模".encode()[1:],  # its continuation bytes alone write nothing
        "é".encode(),  # accented Latin letters stay free
        "，".encode(),  # full-width comma
        "。".encode(),
        b" 557.6",
        b"$",
        "—".encode(),  # an em dash is three bytes too, but not Chinese
        b"",
    ]
    assert chinese_token_ids(pieces).tolist() == [1, 2, 5, 6]


def test_the_processor_takes_the_banned_tokens_out_of_the_choice() -> None:
    logits = np.array([0.5, 3.0, 1.0, 2.0], dtype=np.float32)
    out = english_only(np.array([1, 3]))(None, logits)
    assert int(np.argmax(out)) == 2 and np.isneginf(out[[1, 3]]).all()
