"""The daemon's token source (fleet/token_source.py): re-read after a 401 only when the file changed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent_queue.fleet.token_source import TokenSource


def test_a_token_without_a_file_is_never_re_read() -> None:
    src = TokenSource("aqf_0123456789ab_one")
    assert src.current() == "aqf_0123456789ab_one" and src.reread() is False
    assert "aqf_" not in repr(src) and "set" in repr(src)


def test_the_file_is_re_read_and_a_new_token_taken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t"
    path.write_text("aqf_0123456789ab_one\n")
    src = TokenSource("aqf_0123456789ab_one", path)
    assert src.reread() is False  # unchanged: the 401 stands
    path.write_text("aqf_ba9876543210_two\n")
    with caplog.at_level(logging.INFO):
        assert src.reread() is True
    assert src.current() == "aqf_ba9876543210_two"
    assert src.redact("x aqf_0123456789ab_one y aqf_ba9876543210_two") == "x *** y ***"
    path.write_text("")
    with caplog.at_level(logging.INFO):
        assert src.reread() is False  # an empty (half-written) file keeps the token held
    assert src.current() == "aqf_ba9876543210_two"
    assert "aqf_" not in caplog.text and str(path) in caplog.text
