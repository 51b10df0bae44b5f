"""Job spec validation: every refusal names the field, every accepted spec round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_queue.errors import InvalidJob
from agent_queue.jobs import Job, new_job_id, validate_id


def shell(**kw: object) -> dict[str, object]:
    return {"id": "j1", "command": ["true"], **kw}


def test_round_trip_keeps_unknown_fields() -> None:
    spec = shell(futureField={"a": 1}, priority=5, budget={"timeoutS": 10, "maxAttempts": 2})
    job = Job.from_dict(spec)
    again = Job.from_dict(job.to_dict())
    assert again == job
    assert job.to_dict()["futureField"] == {"a": 1}
    assert job.budget.max_attempts == 2


@pytest.mark.parametrize(
    "bad_id",
    ["a/b", "..", "a..b", "has space", "x" * 129, "", ".hidden", "-dash", "a\x00b", 7, None],
)
def test_bad_ids_are_refused(bad_id: object) -> None:
    with pytest.raises(InvalidJob, match="id"):
        Job.from_dict(shell(id=bad_id))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"command": ["true"]}, "'id'"),
        (shell(command="echo hi"), "command"),
        (shell(command=[]), "command"),
        (shell(command=["a", 1]), "command"),
        (shell(priority="high"), "priority"),
        (shell(priority=True), "priority"),
        (shell(budget={"timeoutS": -1}), "timeoutS"),
        (shell(budget={"maxAttempts": 0}), "maxAttempts"),
        (shell(budget=[]), "budget"),
        (shell(requires="macos"), "requires"),
        (shell(kind="epic"), "kind"),
        ({"id": "a", "tool": "claude"}, "prompt"),
        (shell(tool="../bin"), "tool"),
        (shell(children=[{"id": "c", "command": ["true"]}]), "children"),
        ([1, 2], "object"),
    ],
)
def test_bad_fields_are_named(spec: object, field: str) -> None:
    with pytest.raises(InvalidJob, match=field):
        Job.from_dict(spec)


def test_composite_children_get_parent_id() -> None:
    job = Job.from_dict(
        {"id": "p", "kind": "composite", "children": [{"id": "c1", "command": ["true"]}]}
    )
    assert job.children[0].parent_id == "p"


def test_big_non_ascii_prompt_is_accepted() -> None:
    prompt = "héllo wörld ✓ " * 80_000  # > 1 MB of UTF-8
    job = Job.from_dict({"id": "p", "tool": "claude", "prompt": prompt})
    assert job.prompt == prompt


def test_generated_ids_are_valid_sortable_and_unique() -> None:
    ids = [new_job_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(validate_id(i, "id") == i for i in ids)
    assert [i[:25] for i in ids] == sorted(i[:25] for i in ids)


@given(st.text(min_size=1, max_size=200))
def test_validate_id_never_accepts_a_path(text: str) -> None:
    try:
        validate_id(text, "id")
    except InvalidJob:
        return
    assert "/" not in text and ".." not in text and not text.startswith(".")
    assert text.strip() == text and " " not in text
