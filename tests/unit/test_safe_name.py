"""fsutil.is_safe_name (str methods) must answer what the regex it replaces answers, for any text."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent_queue.fsutil import is_safe_name

SAFE = {n: re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{n - 1}}}") for n in (64, 128)}

# Mostly the allowed characters (so long valid names come up), with near misses: other ASCII punctuation,
# whitespace and newlines, non-ASCII letters and digits (which isalnum() alone would let through).
near = st.text(st.sampled_from(list("aZ09._-") + list("/ \n\t\x00:+^é٣ＡßİK")), max_size=140)


@settings(max_examples=1000)
@given(near | st.text(max_size=140) | st.text(st.sampled_from("aB3._-"), min_size=60, max_size=140))
@example("")
@example("a" * 128)
@example("a" * 129)
@example("a\n")
@example(".a")
@example("a..b")
def test_is_safe_name_agrees_with_the_regex(text: str) -> None:
    for n, pattern in SAFE.items():
        assert is_safe_name(text, n) == (pattern.fullmatch(text) is not None), (n, text)
    assert is_safe_name(text) == is_safe_name(text, 128)
