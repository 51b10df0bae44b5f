"""The planner's pure parts: finding the plan in an answer, composing and checking it, drawing it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_queue import composite, plan_prompt, plan_spec, plan_view
from agent_queue.agent_output import answer_text
from agent_queue.errors import InvalidJob
from agent_queue.jobs import Job

PLAN = {"children": [{"id": "a", "command": ["true"]}]}


def no_check(job: Job) -> None:
    return None


def test_the_last_fenced_json_block_wins_and_a_broken_block_is_skipped() -> None:
    answer = ("First idea:\n```json\n{\"children\": []}\n```\nBetter:\n```json\n" + json.dumps(PLAN)
              + "\n```\nand a draft I abandoned:\n```json\n{\"children\": [\n```\n")
    assert plan_spec.extract(answer) == PLAN


def test_without_a_fence_the_last_top_level_object_wins_not_a_nested_one() -> None:
    answer = 'Plan v1 {"children": [{"id": "old"}]} then v2: ' + json.dumps(PLAN) + " done {not json"
    assert plan_spec.extract(answer) == PLAN


def test_an_answer_without_json_says_so() -> None:
    with pytest.raises(plan_spec.NoPlan, match="holds no JSON object"):
        plan_spec.extract("Let us talk about it first. [1, 2]")


@given(st.text(alphabet=st.characters(blacklist_characters="{}`"), max_size=200),
       st.text(alphabet=st.characters(blacklist_characters="{}`"), max_size=200))
def test_a_plan_is_found_whatever_prose_surrounds_it(before: str, after: str) -> None:
    assert plan_spec.extract(before + json.dumps(PLAN) + after) == PLAN


@pytest.mark.parametrize(("fmt", "output"), [
    ("claude-json", json.dumps({"type": "result", "result": "THE ANSWER", "total_cost_usd": 0.1})),
    ("gemini-json", json.dumps({"response": "THE ANSWER", "stats": {}})),
    ("codex-jsonl", "\n".join(json.dumps(o) for o in (
        {"type": "item.completed", "item": {"type": "agent_message", "text": "thinking"}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "THE ANSWER"}},
        {"type": "turn.completed", "usage": {}}))),
    ("none", "THE ANSWER"),
])
def test_the_answer_is_unwrapped_from_each_output_format(fmt: str, output: str) -> None:
    assert answer_text(fmt, output) == "THE ANSWER"


def test_an_unparsable_structured_output_is_read_as_plain_text() -> None:
    assert answer_text("claude-json", "crashed: ```json\n{}\n```") == "crashed: ```json\n{}\n```"


def test_compose_prefixes_ids_and_dependencies_and_gives_children_the_repo() -> None:
    plan = {"children": [{"id": "a", "command": ["true"], "parentId": "x"},
                         {"id": "b", "command": ["true"], "dependsOn": ["a"], "repo": "/other"}]}
    spec = plan_spec.compose(plan, {"id": "epic", "repo": "/r", "prompt": "p"})
    assert spec["kind"] == "composite" and spec["prompt"] == "p"
    assert spec["children"] == [{"id": "epic.a", "command": ["true"], "repo": "/r"},
                                {"id": "epic.b", "command": ["true"], "dependsOn": ["epic.a"], "repo": "/other"}]


def test_problems_are_one_line_each_and_name_the_child() -> None:
    spec = plan_spec.compose({"children": [{"id": "a"}, {"id": "b", "tool": "claude"}, {"id": "c c"}]},
                             {"id": "epic"})
    lines = plan_spec.problems(spec, no_check)
    assert lines == ["job epic.a.command: tool 'shell' needs a non-empty argv list",
                     "job epic.b.prompt: tool 'claude' needs a prompt",
                     lines[2]]
    assert "'epic.c c' is not a valid id" in lines[2] and all("\n" not in line for line in lines)
    assert plan_spec.problems({"id": "epic", "kind": "composite", "children": []}, no_check) == [
        'the plan needs a non-empty "children" list']


def test_a_replan_may_not_redefine_a_kept_child() -> None:
    kept = [{"id": "epic.a", "command": ["true"]}]
    spec = plan_spec.compose({"children": [{"id": "a", "command": ["false"]}]}, {"id": "epic"}, kept)
    assert plan_spec.problems(spec, no_check, ["epic.a"])[0] == (
        "child 'epic.a' already shipped: it is kept as it is, do not plan it again")


def test_budget_problems_name_each_child_over_the_parent_and_the_sum() -> None:
    job = Job.from_dict({"id": "e", "kind": "composite", "budget": {"timeoutS": 60, "costUsd": 1},
                         "children": [{"id": "a", "command": ["true"], "budget": {"timeoutS": 70}},
                                      {"id": "b", "command": ["true"], "budget": {"timeoutS": 10, "costUsd": 0.5}}]})
    assert composite.budget_problems(job, where="plan") == [
        "plan: child 'a' budget.timeoutS 70 exceeds the parent's budget.timeoutS 60",
        "plan: the children's budget.timeoutS add up to 80, over the parent's budget.timeoutS 60"]
    with pytest.raises(InvalidJob, match="add up to 80"):
        composite.validate_budget(job)
    fits = Job.from_dict({"id": "e", "kind": "composite", "budget": {"timeoutS": 80},
                          "children": [{"id": "a", "command": ["true"], "budget": {"timeoutS": 80}}]})
    assert composite.budget_problems(fits) == []


def spec_of(*children: dict[str, Any]) -> dict[str, Any]:
    return {"id": "e", "kind": "composite", "children": list(children)}


def test_the_tree_puts_a_child_under_its_last_dependency_and_the_drawing_escapes_labels() -> None:
    spec = spec_of({"id": "a", "command": ["true"]}, {"id": "b", "tool": "claude", "prompt": 'say "hi" [now]'},
                   {"id": "c", "command": ["true"], "dependsOn": ["b", "a"], "phase": 2})
    assert plan_view.tree(spec).splitlines() == [
        "e: 3 children", "  - a shell: true", "  - b claude: say \"hi\" [now]",
        "    - c [phase 2] (also after a) shell: true"]
    drawing = plan_view.mermaid(spec)
    assert 'n1["b: say #quot;hi#quot; #91;now#93;"]' in drawing
    assert "  n1 --> n2\n  n0 --> n2\n" in drawing


def test_the_prompt_carries_the_epic_the_rules_the_problems_and_the_history() -> None:
    text = plan_prompt.build("Add OAuth", tool="claude", tools=["claude", "shell"], profiles=["default"],
                             budget="timeoutS 60", problems=["cycle x -> y -> x"], context=["epic.a shipped"])
    assert "EPIC:\nAdd OAuth" in text and "one of: claude, shell" in text and "timeoutS 60" in text
    assert "- cycle x -> y -> x" in text and "- epic.a shipped" in text
