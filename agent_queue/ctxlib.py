"""``contextlib.contextmanager`` and ``contextlib.suppress`` for the command seam's modules, without ``contextlib``.

Why: ``contextlib`` imports ``functools`` and ``collections``, ~3 ms of start-up
on the test VM against a bare ``python -c pass`` of ~13 ms, and the command seam
(``coordinator-stub call``) is a fresh process per coordinator operation that
benchmark B1 holds to 1.5x that floor. The modules a seam call imports (the file
store, its lock and job files, ``fsutil``) use these two instead; everything
else keeps ``contextlib``.

The same behaviour as contextlib's for what those modules do (a one-shot context
manager from a generator function; exceptions suppressed by class), copied from
its ``_GeneratorContextManager.__exit__`` (Python 3.11); tests/unit/test_ctxlib.py
runs both on the same cases. Left out: use as a decorator, recreating the
manager, and ``suppress``'s exception groups (3.12).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from types import TracebackType
    from typing import Any, ParamSpec, TypeVar

    P = ParamSpec("P")
    T = TypeVar("T")


class _GeneratorContext:
    """What ``contextmanager`` returns: runs the generator to its ``yield``, and on to its end on exit."""

    __slots__ = ("gen",)

    def __init__(self, gen: Iterator[Any]) -> None:
        self.gen = gen

    def __enter__(self) -> Any:
        try:
            return next(self.gen)
        except StopIteration:
            raise RuntimeError("generator didn't yield") from None

    def __exit__(self, typ: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> bool | None:
        gen: Any = self.gen  # a generator (throw, close): Iterator is what the decorated function is typed as
        if typ is None:
            try:
                next(gen)
            except StopIteration:
                return False
            try:
                raise RuntimeError("generator didn't stop")
            finally:
                gen.close()
        if value is None:  # an exception class alone: make one, to know it again when it comes back
            value = typ()
        try:
            gen.throw(value)
        except StopIteration as exc:
            # Suppressed by the generator, unless it is the StopIteration raised in the with block.
            return exc is not value
        except RuntimeError as exc:
            if exc is value:  # the block's own exception: propagate it, not re-raise it (issue27122)
                exc.__traceback__ = traceback
                return False
            if isinstance(value, StopIteration) and exc.__cause__ is value:  # PEP 479 wrapped the block's
                value.__traceback__ = traceback
                return False
            raise
        except BaseException as exc:
            if exc is not value:  # the generator raised another exception: that one propagates
                raise
            exc.__traceback__ = traceback
            return False
        try:
            raise RuntimeError("generator didn't stop after throw()")
        finally:
            gen.close()


def contextmanager(func: Callable[P, Iterator[T]]) -> Callable[P, AbstractContextManager[T]]:
    """``contextlib.contextmanager``: a generator function that yields once becomes a context manager."""

    def helper(*args: P.args, **kwargs: P.kwargs) -> AbstractContextManager[T]:
        return _GeneratorContext(func(*args, **kwargs))

    helper.__name__ = func.__name__
    helper.__qualname__ = func.__qualname__
    helper.__doc__ = func.__doc__
    return helper


class suppress:
    """``contextlib.suppress``: the block's exceptions of these classes end the block quietly."""

    __slots__ = ("_exceptions",)

    def __init__(self, *exceptions: type[BaseException]) -> None:
        self._exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        return typ is not None and issubclass(typ, self._exceptions)
