"""The dashboard's composite page in a real browser shows a planned composite's planned children before
approval (drawn ``planned``), then their states. Chromium and Playwright as in test_dashboard_browser.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests
from test_dashboard_browser import REPO, browser_page  # noqa: F401 - the fixture, used by name

from tests.stubutil import running_stub

TOKEN = "plan-browser-token"


@pytest.fixture
def shots() -> Path:
    """Beside the main dashboard test's screenshots, never over them."""
    out = Path(os.environ.get("AQ_TEST_OUTPUT") or REPO / "test-output") / "dashboard-plan"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_a_planned_composite_shows_its_planned_children(tmp_path: Path, browser_page: tuple[Any, list[str]],  # noqa: F811
                                                        shots: Path) -> None:
    page, outside = browser_page
    with running_stub(tmp_path / "coord", token=TOKEN, lease_ttl_s=30) as stub:
        api, auth = stub.url + "/v1/fleet", stub.headers()

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            got = requests.post(api + path, json=body, headers=auth, timeout=30)
            assert got.status_code in (200, 201), got.text
            out: dict[str, Any] = got.json()
            return out

        post("/jobs", {"id": "epic", "kind": "composite", "plan": {"tool": "planner", "prompt": "Split",
                                                                    "approve": True, "tools": ["shell"]}})
        plan = {"children": [{"id": "api", "command": ["true"]},
                             {"id": "ui", "command": ["true"], "dependsOn": ["api"]}]}
        lease = post("/claim", {"factoryId": "f1"})["lease"]  # a factory runs the planning child
        post("/jobs/epic.plan-1/report", {"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped",
                                          "detail": {"answer": f"```json\n{json.dumps(plan)}\n```"}})

        page.goto(stub.url + "/")
        page.fill("#token", TOKEN)
        page.click("#submit")
        page.wait_for_selector("#factories")
        page.goto(stub.url + "/#/composite/epic")
        page.wait_for_selector('#dag .node[data-id="epic.ui"]')
        states = page.eval_on_selector_all("#dag .node", "ns => ns.map(n => [n.dataset.id, n.dataset.state])")
        assert sorted(states) == [["epic.api", "planned"], ["epic.plan-1", "shipped"], ["epic.ui", "planned"]]
        assert page.locator("#dag .edge").count() == 1  # epic.api -> epic.ui
        dash = page.eval_on_selector('#dag .node[data-id="epic.ui"] rect', "r => getComputedStyle(r).strokeDasharray")
        assert dash not in ("", "none")  # the stylesheet's planned look, not the default
        page.screenshot(path=str(shots / "planned-composite.png"), full_page=True)

        post("/jobs/epic/approve", {})
        page.wait_for_selector('#dag .node[data-id="epic.ui"][data-state="queued"]')
    assert outside == [], f"pages fetched from outside 127.0.0.1: {outside}"
