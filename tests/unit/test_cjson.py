"""agent_queue.cjson must answer exactly what json answers: the same strings, the same values, the same errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_queue import cjson

REPO = Path(__file__).resolve().parents[2]

# Every option set the code uses (seam answer, journal lines, store sidecars), and the rest of the grid.
OPTIONS = [{"sort_keys": s, "ensure_ascii": a, "separators": sep}
           for s in (False, True) for a in (True, False) for sep in (None, (",", ":"))]

chars = st.characters(codec=None, categories=None)  # any code point, lone surrogates included
texts = st.text(chars, max_size=20)
scalars = st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**40), max_value=10**40) | \
    st.floats() | texts
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
                      max_leaves=30)
# dumps takes non-str keys too (json turns them into strings); sort_keys then needs keys of one kind.
mixed_keys = st.dictionaries(st.none() | st.booleans() | st.integers() | st.floats(), scalars, max_size=5)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    """("ok", canonical JSON of the result) or (exception type, message): comparable even with NaN inside."""
    try:
        value = fn(*args, **kwargs)
    except (ValueError, TypeError, RecursionError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", json.dumps(value) + ("" if isinstance(value, str) else repr(type(value)))


@settings(max_examples=300)
@given(values)
def test_dumps_gives_json_s_string(value: Any) -> None:
    for opts in OPTIONS:
        assert cjson.dumps(value, **opts) == json.dumps(value, **opts), opts


@given(mixed_keys)
def test_dumps_with_keys_that_are_not_strings(value: dict[Any, Any]) -> None:
    for opts in OPTIONS:
        if opts["sort_keys"] and len({type(k) for k in value}) > 1:
            continue  # json cannot order keys of mixed types either; see test_dumps_refuses_like_json
        assert cjson.dumps(value, **opts) == json.dumps(value, **opts), opts


@settings(max_examples=300)
@given(values, st.sampled_from(OPTIONS), st.sampled_from(["str", "utf-8", "utf-8-sig", "utf-16", "utf-16-le",
                                                          "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]))
def test_loads_reads_what_json_reads(value: Any, opts: dict[str, Any], encoding: str) -> None:
    text = " \n" + json.dumps(value, **opts) + "\t\r\n "
    if encoding != "str":
        try:
            doc: str | bytes = text.encode(encoding, "surrogatepass")
        except UnicodeEncodeError:  # lone surrogates have no UTF-16/32 encoding
            return
    else:
        doc = text
    got = cjson.loads(doc)
    assert outcome(lambda: got) == outcome(json.loads, doc)
    assert json.dumps(got, sort_keys=True) == json.dumps(value, sort_keys=True)  # NaN is "NaN" on both sides


# Text near JSON: mostly malformed, some valid; both functions must agree on each.
json_ish = st.text(st.sampled_from(list('{}[],:"0123456789.eE+-truefalsnIiNy \t\n\\u\ufeff\x00é')), max_size=30)


@settings(max_examples=500)
@given(json_ish)
def test_loads_agrees_with_json_on_any_text(text: str) -> None:
    assert outcome(cjson.loads, text) == outcome(json.loads, text)


@settings(max_examples=300)
@given(st.binary(max_size=30) | json_ish.map(lambda t: t.encode("utf-8")))
def test_loads_agrees_with_json_on_any_bytes(raw: bytes) -> None:
    assert outcome(cjson.loads, raw) == outcome(json.loads, raw)


BAD = ["", " ", "{", "}", "[1,]", "[1,", '{"a" 1}', '{"a": 1,}', "1 2", "[] x", "\ufeff{}", '"\x01"', "tru",
       "01", "-", "1.", '"\\x"', '"\\ud800', "{'a': 1}", "NaNx", b"", b"\xff\xfe\x00", b"\xff", b"\xef\xbb\xbf",
       bytearray(b"[1"), 5, None, ["[]"]]


@pytest.mark.parametrize("doc", BAD, ids=repr)
def test_loads_refuses_like_json(doc: Any) -> None:
    got = outcome(cjson.loads, doc)
    assert got[0] != "ok"
    assert got == outcome(json.loads, doc)


def test_loads_takes_json_s_extensions_and_big_numbers() -> None:
    for doc in ("NaN", "[Infinity, -Infinity]", "1e400", "-0", "-0.0", "12345678901234567890123456789",
                b'\xef\xbb\xbf{"a": [1, 2.5, null, true, false, "\\u00e9\\ud83d\\ude00"]}', bytearray(b"[]")):
        assert outcome(cjson.loads, doc) == outcome(json.loads, doc), doc


def test_loads_recursion_is_json_s() -> None:
    doc = "[" * 200_000 + "]" * 200_000
    with pytest.raises(RecursionError):
        json.loads(doc)
    with pytest.raises(RecursionError):
        cjson.loads(doc)


class Thing:
    pass


@pytest.mark.parametrize("value", [Thing(), {"a": {1, 2}}, {(1, 2): 3}, {"a": 1, 2: "b"}, b"x"], ids=repr)
def test_dumps_refuses_like_json(value: Any) -> None:
    for opts in OPTIONS:
        got = outcome(cjson.dumps, value, **opts)
        if not opts["sort_keys"] and isinstance(value, dict) and 2 in value:
            assert got[0] == "ok"  # mixed keys are fine unsorted
        else:
            assert got[0] != "ok"
        assert got == outcome(json.dumps, value, **opts), opts


def test_dumps_refuses_a_cycle_like_json_and_then_works() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    assert outcome(cjson.dumps, cycle) == outcome(json.dumps, cycle) == ("ValueError", "Circular reference detected")
    shared = [1]
    assert cjson.dumps([shared, shared, {"a": shared}]) == "[[1], [1], {\"a\": [1]}]"  # seen twice is no cycle


def test_the_fallback_to_json_gives_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    value = {"b": [1, 2.5, None, "é\ud800"], "a": {"x": float("inf")}}
    fast = [cjson.dumps(value, **opts) for opts in OPTIONS]
    monkeypatch.setattr(cjson, "_scan", None)
    monkeypatch.setattr(cjson, "_c_make_encoder", None)
    assert [cjson.dumps(value, **opts) for opts in OPTIONS] == fast
    assert cjson.dumps(cjson.loads(fast[0])) == fast[0]
    assert outcome(cjson.loads, "[1,") == outcome(json.loads, "[1,")


def test_valid_json_needs_neither_json_nor_re() -> None:
    """The point of the module (benchmark B1): a fresh interpreter reads and writes JSON without importing them."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from agent_queue import cjson\n"
            "v = cjson.loads(b'{\"a\": [1, 2.5, null, true, \"\\\\u00e9\"], \"b\": {}}  \\t')\n"
            "cjson.loads('\\n[]'); cjson.dumps(v); cjson.dumps(v, sort_keys=True, separators=(',', ':'))\n"
            "cjson.dumps('x', ensure_ascii=False)\n"
            "print(sorted(m for m in ('json', 're', 'enum', 'functools') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == "[]"
