"""agent_queue.ctxlib must behave as contextlib for every way a with block and its generator can end."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_queue import ctxlib

REPO = Path(__file__).resolve().parents[2]


class Boom(Exception):
    pass


# Generators: each appends what it saw to ``log`` and behaves one way around its yield.
def plain(log: list[str]) -> Iterator[int]:
    try:
        yield 1
    finally:
        log.append("finally")


def swallows(log: list[str]) -> Iterator[int]:
    try:
        yield 2
    except Boom:
        log.append("swallowed")


def replaces(log: list[str]) -> Iterator[int]:
    try:
        yield 3
    except Boom as exc:
        raise KeyError("other") from exc


def reraises(log: list[str]) -> Iterator[int]:
    try:
        yield 4
    except Boom:
        log.append("seen")
        raise


def never_yields(log: list[str]) -> Iterator[int]:
    log.append("ran")
    return
    yield 0  # a generator, that returns before its yield


def yields_twice(log: list[str]) -> Iterator[int]:
    try:
        yield 5
    except Boom:
        log.append("caught")
    yield 6


def stop_inside(log: list[str]) -> Iterator[int]:
    yield 7
    raise StopIteration  # becomes RuntimeError (PEP 479)


# With-block bodies.
def body_ok(value: int) -> str:
    return f"body got {value}"


def body_boom(value: int) -> str:
    raise Boom(f"from the body ({value})")


def body_stop(value: int) -> str:
    raise StopIteration(value)


def body_runtime(value: int) -> str:
    raise RuntimeError("the body's own")


def body_interrupt(value: int) -> str:
    raise KeyboardInterrupt


def body_class_only(value: int) -> str:
    raise Boom  # the class: Python makes the instance


GENERATORS = [plain, swallows, replaces, reraises, never_yields, yields_twice, stop_inside]
BODIES = [body_ok, body_boom, body_stop, body_runtime, body_interrupt, body_class_only]


def run(decorator: Callable[[Any], Any], gen: Callable[[list[str]], Iterator[int]],
        body: Callable[[int], str]) -> tuple[Any, ...]:
    """What happened: the log, then the answer or the exception (type, text, cause, context, where it was raised)."""
    log: list[str] = []
    cm = decorator(gen)
    raised_in_body: list[BaseException] = []

    def recording(value: int) -> str:
        try:
            return body(value)
        except BaseException as exc:
            raised_in_body.append(exc)
            raise

    answer = "suppressed"  # unless the block finishes
    try:
        with cm(log) as value:
            answer = recording(value)
    except BaseException as exc:  # the comparison is the point
        frames = traceback.extract_tb(exc.__traceback__)
        return (tuple(log), "raised", type(exc).__name__, str(exc), type(exc.__cause__).__name__,
                type(exc.__context__).__name__, bool(raised_in_body) and exc is raised_in_body[0],
                frames[-1].name if frames else None)
    return tuple(log), "answered", answer


@pytest.mark.parametrize("body", BODIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("gen", GENERATORS, ids=lambda f: f.__name__)
def test_contextmanager_behaves_as_contextlib_s(gen: Any, body: Any) -> None:
    assert run(ctxlib.contextmanager, gen, body) == run(contextlib.contextmanager, gen, body)


def test_contextmanager_keeps_the_function_s_name_and_doc() -> None:
    def opened(log: list[str]) -> Iterator[int]:
        """Docs."""
        yield 1

    wrapped = ctxlib.contextmanager(opened)
    assert (wrapped.__name__, wrapped.__doc__) == ("opened", "Docs.")


@pytest.mark.parametrize("raised", [None, Boom, KeyError, OSError, FileNotFoundError, KeyboardInterrupt])
@pytest.mark.parametrize("caught", [(Boom,), (OSError,), (KeyError, OSError), ()], ids=repr)
def test_suppress_behaves_as_contextlib_s(raised: type[BaseException] | None,
                                          caught: tuple[type[BaseException], ...]) -> None:
    def outcome(suppress: Callable[..., Any]) -> str:
        try:
            with suppress(*caught):
                if raised is not None:
                    raise raised("x")
                return "no exception"
        except BaseException as exc:
            return f"propagated {type(exc).__name__}"
        return "suppressed"

    assert outcome(ctxlib.suppress) == outcome(contextlib.suppress)


def test_ctxlib_imports_no_contextlib() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from agent_queue import ctxlib\n"
            "print(sorted(m for m in ('contextlib', 'functools', 'collections', 'typing') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == "[]"
