"""Dict subclasses that note which hot records an operation changed, so a commit journals only those.

A file-store commit writes one journal line with the records the operation
changed. Comparing the whole hot document (hundreds of records) per commit
would cost more than the write; instead the hot ``jobs`` mapping and each
record note their id in the store's change set on every top-level change.
Copies and pickles are plain dicts: the tracking stays with the store.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class HotRecord(dict):  # type: ignore[type-arg]
    """A hot job record that notes its id in the store's change set whenever it changes.

    This is how a commit knows which records its journal entry must carry without
    comparing 600 records. Only top-level changes are seen: the core replaces nested
    values (``rec["lease"] = {...}``) instead of mutating them in place, and
    ``AQ_STUB_SELFCHECK=1`` (set by the test suite) checks every commit against a
    full reload, so a missed change cannot go unnoticed.
    """

    __slots__ = ("_id", "_changed")

    def __init__(self, data: dict[str, Any], job_id: str, changed: set[str]) -> None:
        super().__init__(data)
        self._id = job_id
        self._changed = changed

    def __reduce__(self) -> Any:  # copies and pickles are plain dicts: the tracking stays with the store
        return (dict, (dict(self),))

    def __setitem__(self, key: str, value: Any) -> None:
        self._changed.add(self._id)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed.add(self._id)
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed.add(self._id)
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        self._changed.add(self._id)
        return super().pop(*args)

    def popitem(self) -> Any:
        self._changed.add(self._id)
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self._changed.add(self._id)
        return super().setdefault(*args)

    def clear(self) -> None:
        self._changed.add(self._id)
        super().clear()

    def __ior__(self, other: Any) -> HotRecord:  # type: ignore[misc]
        self._changed.add(self._id)
        super().update(other)
        return self


class HotJobs(dict):  # type: ignore[type-arg]
    """The hot ``jobs`` mapping: adding, replacing or removing a record notes its id (see ``HotRecord``)."""

    __slots__ = ("_changed",)

    def __init__(self, data: dict[str, Any], changed: set[str]) -> None:
        super().__init__(data)
        self._changed = changed

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))

    def __setitem__(self, key: str, value: Any) -> None:
        self._changed.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed.add(key)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._changed.add(key)
        return super().pop(key, *default)

    def popitem(self) -> Any:
        key, value = super().popitem()
        self._changed.add(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._changed.add(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key in dict(*args, **kwargs):
            self._changed.add(key)
        super().update(*args, **kwargs)

    def clear(self) -> None:
        self._changed.update(self)
        super().clear()
