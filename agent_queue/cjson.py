"""``json.loads`` / ``json.dumps`` through the stdlib's C accelerator ``_json``, without importing ``json``.

Why: ``import json`` imports ``re`` (``json.decoder`` and ``json.scanner``
compile patterns), and ``re`` with ``enum``, ``functools`` and ``collections``
is ~8 ms of start-up on the test VM, over half a bare ``python -c pass``
(~13 ms). The command seam (``coordinator-stub call``) is a fresh process per
coordinator operation, and benchmark B1 holds it to 1.5x that floor: every
module a seam call imports reads and writes JSON through here instead.

The same results as ``json``, byte for byte: ``_json.make_scanner`` and
``_json.make_encoder`` are what ``json.loads`` and ``json.dumps`` run
themselves (for no ``indent``), built here with the options json would give
them. Anything the fast path does not answer goes to ``json`` itself: input
that does not parse (so the error is json's own ``json.JSONDecodeError``, a
``ValueError``, message included), and an interpreter whose ``_json`` lacks
the two (then ``json`` is imported on first use). tests/unit/test_cjson.py
holds both functions to ``json`` on generated values and inputs.
"""

from __future__ import annotations

import codecs

TYPE_CHECKING = False  # no typing import at run time: this module's whole point is start-up cost
if TYPE_CHECKING:
    from typing import Any

try:
    from _json import encode_basestring as _c_plain
    from _json import encode_basestring_ascii as _c_ascii
    from _json import make_encoder as _c_make_encoder
    from _json import make_scanner as _c_make_scanner
except ImportError:  # pragma: no cover - CPython always builds _json; another interpreter may not
    _c_make_encoder = _c_make_scanner = None  # type: ignore[assignment, misc]

_WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE: what may stand around the value
_NOT_UTF8_FIRST = (b"", b"\x00", b"\xef", b"\xfe", b"\xff")  # first bytes of a BOM or of UTF-16/32 (and empty)


class _Context:
    """What ``_json.make_scanner`` reads of a ``json.JSONDecoder()`` with no options."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scan = None if _c_make_scanner is None else _c_make_scanner(_Context())  # type: ignore[arg-type]


def _detect_encoding(b: bytes | bytearray) -> str:
    """``json.detect_encoding``: the encoding of a JSON document given as bytes (RFC 4627 section 3)."""
    if b.startswith((codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE)):
        return "utf-32"
    if b.startswith((codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)):
        return "utf-16"
    if b.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if len(b) >= 4:
        if not b[0]:
            return "utf-16-be" if b[1] else "utf-32-be"
        if not b[1]:
            return "utf-16-le" if b[2] or b[3] else "utf-32-le"
    elif len(b) == 2:
        if not b[0]:
            return "utf-16-be"
        if not b[1]:
            return "utf-16-le"
    return "utf-8"


def _skip_whitespace(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WHITESPACE:
        i += 1
    return i


def _decode(b: bytes | bytearray) -> str:
    """``b`` as json decodes it; UTF-8 told from its first two bytes, without the detector's call.

    The store parses every journal line of its state in each seam call (B1): the
    detector's call was a third of a short line's parse.
    """
    if b[:1] not in _NOT_UTF8_FIRST and b[1:2] != b"\x00":  # no BOM, no UTF-16/32: what json detects as UTF-8
        return b.decode("utf-8", "surrogatepass")
    return b.decode(_detect_encoding(b), "surrogatepass")


def loads(s: str | bytes | bytearray) -> Any:
    """``json.loads(s)``: the same value for the same input, and json's own error for bad input."""
    if _scan is None or not isinstance(s, str | bytes | bytearray):
        return _json_module().loads(s)
    text = s if isinstance(s, str) else _decode(s)
    if not text.startswith("\ufeff"):  # json refuses a BOM in a str: leave that error to it
        try:
            value, end = _scan(text, _skip_whitespace(text, 0) if text[:1] in _WHITESPACE else 0)
        except (StopIteration, SystemError):
            # StopIteration: no value where one must start. SystemError: before Python 3.12, _json
            # raises its errors as json.decoder.JSONDecodeError only once json.decoder is imported.
            pass
        else:
            if end == len(text) or not text[end:].strip(_WHITESPACE):  # (the store's lines end in 32 of them)
                return value
    return _json_module().loads(s)  # bad input: raises exactly what json raises


def _default(o: Any) -> Any:
    """``json.JSONEncoder.default``: what is not a JSON type is refused, with json's message."""
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj: Any, *, sort_keys: bool = False, ensure_ascii: bool = True,
          separators: tuple[str, str] | None = None) -> str:
    """``json.dumps(obj, sort_keys=..., ensure_ascii=..., separators=...)``, the same string (no ``indent``)."""
    if _c_make_encoder is None:
        return _json_module().dumps(obj, sort_keys=sort_keys, ensure_ascii=ensure_ascii,  # type: ignore[no-any-return]
                                    separators=separators)
    encode_str = _c_ascii if ensure_ascii else _c_plain
    if isinstance(obj, str):  # as JSONEncoder.encode
        return encode_str(obj)
    item_sep, key_sep = separators if separators is not None else (", ", ": ")
    # A new encoder per call, as json builds one: its circular-reference markers start empty.
    encoder = _c_make_encoder({}, _default, encode_str, None, key_sep, item_sep, sort_keys, False, True)
    return "".join(encoder(obj, 0))


def _json_module() -> Any:
    import json

    return json
