"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

A real ``serve`` and two real ``agent-queue run`` daemons ship jobs over HTTP
while the page is open. The test refuses a wrong token, logs in, watches one
job go queued -> leased -> shipped without a reload, sees a composite's DAG
with every child coloured by state, sees a fenced attempt (a zombie's late
report, 409) on a job page, and scrapes /metrics with Prometheus' parser to
check it against what happened. Every request the pages make is checked to
stay on 127.0.0.1. Each page's screenshot is saved in ``$AQ_TEST_OUTPUT``
(default ``test-output/``) under ``dashboard/``.

Without Chromium (or Playwright) the test is skipped and says why; with
``AQ_REQUIRE_BROWSER=1`` (set by .ci/run) that skip is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from cli_support import wait_for
from fleet_support import Daemons, daemons, fleet_env
from prometheus_client.parser import text_string_to_metric_families

from tests.stubutil import RunningStub, running_stub

REPO = Path(__file__).resolve().parents[2]
TOKEN = "browser-fleet-token"
TTL_S = 3.0
WAIT_MS = 60_000  # an upper bound on waiting for the page, never a speed requirement


def chromium() -> str | None:
    found = os.environ.get("AQ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if chromium() is None:
        return "no Chromium on this machine (Debian: apt-get install chromium; or set AQ_CHROMIUM)"
    return None


@pytest.fixture
def browser_page(shots: Path) -> Iterator[tuple[Any, list[str]]]:
    why = _unavailable()
    if why is not None:
        if os.environ.get("AQ_REQUIRE_BROWSER") == "1":
            pytest.fail(f"AQ_REQUIRE_BROWSER=1 but the browser test cannot run: {why}")
        pytest.skip(f"browser test skipped: {why}")
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})

            def guard(route: Any) -> None:  # nothing may leave 127.0.0.1: record it and refuse it
                if urlsplit(route.request.url).hostname != "127.0.0.1":
                    outside.append(route.request.url)
                    route.abort()
                else:
                    route.continue_()

            context.route("**/*", guard)
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page, outside
        finally:
            browser.close()


@pytest.fixture
def shots() -> Path:
    out = Path(os.environ.get("AQ_TEST_OUTPUT") or REPO / "test-output") / "dashboard"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


@pytest.fixture
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def gated(gate: Path) -> list[str]:
    """A job command that runs until the test creates ``gate`` (argv, no shell)."""
    return [sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"]


def test_the_dashboard_follows_a_live_fleet(tmp_path: Path, browser_page: tuple[Any, list[str]], shots: Path,
                                             ds: Daemons) -> None:
    page, outside = browser_page
    with running_stub(tmp_path / "coord", token=TOKEN, lease_ttl_s=TTL_S) as stub:
        _run(page, stub, tmp_path, shots, ds)
    assert outside == [], f"pages fetched from outside 127.0.0.1: {outside}"
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(
        f"{n}.png" for n in ("01-login-refused", "02-fleet", "03-job-queued", "04-job-leased", "05-fleet-live",
                             "06-job-shipped", "07-job-fenced", "08-composite-dag", "09-queue", "10-composites",
                             "11-shadow", "12-events"))


def _run(page: Any, stub: RunningStub, tmp: Path, shots: Path, ds: Daemons) -> None:
    api, auth = stub.url + "/v1/fleet", stub.headers()

    def post(path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(api + path, json=body, headers=auth, timeout=30)

    def job(job_id: str) -> dict[str, Any]:
        got: dict[str, Any] = requests.get(api + f"/jobs/{job_id}", headers=auth, timeout=30).json()
        return got

    # 5. A wrong token is refused; 1. the right one logs in.
    page.goto(stub.url + "/")
    assert page.url.endswith("/login")
    page.fill("#token", "not-the-token")
    page.click("#submit")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "wrong token" in page.text_content("#login-error")
    page.screenshot(path=str(shots / "01-login-refused.png"), full_page=True)
    assert page.context.cookies() == []
    page.fill("#token", TOKEN)
    page.click("#submit")
    page.wait_for_selector("#factories")
    cookie = page.context.cookies()[0]
    assert cookie["name"] == "aq_session" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in page.url and page.evaluate("window.localStorage.length") == 0
    page.screenshot(path=str(shots / "02-fleet.png"), full_page=True)

    # A zombie holds fence-me; watch-me waits in the queue; no daemon runs yet.
    gate_fence, gate_watch = tmp / "open-fence-me", tmp / "open-watch-me"
    assert post("/jobs", {"id": "fence-me", "command": gated(gate_fence), "priority": 10}).status_code == 201
    zombie = post("/claim", {"factoryId": "zombie"}).json()["lease"]
    assert (zombie["jobId"], zombie["leaseEpoch"]) == ("fence-me", 1)
    assert post("/jobs", {"id": "watch-me", "command": gated(gate_watch), "priority": 5}).status_code == 201

    # 2. One job, queued -> leased -> shipped, on one page that is never reloaded.
    page.goto(stub.url + "/#/job/watch-me")
    page.wait_for_selector('#job-state [data-state="queued"]')
    page.evaluate("window.__notReloaded = 'still the same page'")
    page.screenshot(path=str(shots / "03-job-queued.png"), full_page=True)
    env = fleet_env(api=stub.url, token=TOKEN)
    for fid in ("f1", "f2"):
        ds.start(tmp / fid, env, factory=fid)
    page.wait_for_selector('#job-state [data-state="leased"]')
    page.screenshot(path=str(shots / "04-job-leased.png"), full_page=True)
    fleet = page.context.new_page()  # a second tab: the first one keeps watching
    fleet.goto(stub.url + "/#/fleet")
    fleet.wait_for_selector('#factories .held a[href="#/job/watch-me"]')
    assert fleet.locator("#factories tr[data-factory]").count() >= 2  # f1, f2 (and the zombie)
    fleet.screenshot(path=str(shots / "05-fleet-live.png"), full_page=True)
    fleet.close()
    gate_watch.touch()
    page.wait_for_selector('#job-state [data-state="shipped"]')
    page.screenshot(path=str(shots / "06-job-shipped.png"), full_page=True)
    assert page.evaluate("window.__notReloaded") == "still the same page"

    # 4. The zombie's lease expired and a daemon took fence-me (epoch 2); the zombie's late report is fenced.
    lease = wait_for(lambda: (job("fence-me").get("lease") or {}).get("leaseEpoch") == 2 and job("fence-me")["lease"],
                     "a daemon to take fence-me over", WAIT_MS / 1000)
    late = post("/jobs/fence-me/report", {"factoryId": "zombie", "leaseEpoch": 1, "outcome": "shipped"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "fenced"
    gate_fence.touch()
    page.goto(stub.url + "/#/job/fence-me")
    page.wait_for_selector('#job-state [data-state="shipped"]')
    page.wait_for_selector('#leases tr[data-epoch="1"] .fenced[data-code="fenced"]')
    assert "zombie" in page.text_content('#leases tr[data-epoch="1"]')
    assert lease["factoryId"] in page.text_content('#leases tr[data-epoch="2"]')
    assert "held by " + lease["factoryId"] in page.text_content("#story")
    page.screenshot(path=str(shots / "07-job-fenced.png"), full_page=True)

    # 3. A composite's DAG, every child coloured by its state, and the rollup.
    epic = {"id": "epic", "kind": "composite", "children": [
        {"id": "e-lint", "command": ["true"]},
        {"id": "e-api", "command": ["true"], "dependsOn": ["e-lint"]},
        {"id": "e-ui", "command": ["true"], "dependsOn": ["e-lint"]},
        {"id": "e-release", "command": ["true"], "dependsOn": ["e-api", "e-ui"]}]}
    assert post("/jobs", epic).status_code == 201
    page.goto(stub.url + "/#/composite/epic")
    page.wait_for_selector("#dag .node")
    assert page.locator("#dag .node").count() == 4 and page.locator("#dag .edge").count() == 4
    page.wait_for_selector('#rollup-state [data-state="shipped"]')
    states = page.eval_on_selector_all("#dag .node", "ns => ns.map(n => [n.dataset.id, n.dataset.state])")
    assert sorted(states) == [["e-api", "shipped"], ["e-lint", "shipped"], ["e-release", "shipped"],
                              ["e-ui", "shipped"]]
    fill = page.eval_on_selector('#dag .node[data-id="e-lint"] rect', "r => getComputedStyle(r).fill")
    assert fill == "rgb(46, 139, 87)"  # the stylesheet's shipped colour, not the default
    page.screenshot(path=str(shots / "08-composite-dag.png"), full_page=True)

    # The other pages, for people to look at; each shows what happened.
    post("/shadow-reports", {"factoryId": "f1-shadow", "shadow": True, "verdict": "AGREE",
                             "localJobId": "watch-me", "coordJobId": "watch-me"})
    post("/shadow-reports", {"factoryId": "f1-shadow", "shadow": True, "verdict": "DIVERGE",
                             "localJobId": "watch-me", "coordJobId": "fence-me"})
    for name, selector, shot in (("queue?state=shipped", '#jobs tr[data-job-id="watch-me"]', "09-queue"),
                                 ("composites", '#composites tr[data-job-id="epic"]', "10-composites"),
                                 ("shadow", "#divergences tbody tr", "11-shadow"),
                                 ("events?status=409", '#events tr[data-op="report"]', "12-events")):
        page.goto(stub.url + "/#/" + name)
        page.wait_for_selector(selector)
        page.screenshot(path=str(shots / f"{shot}.png"), full_page=True)
    assert "50.0% agree" in page.evaluate("fetch('/ui/api/shadow').then(r => r.json()).then(d => "
                                          "(100 * d.rate).toFixed(1) + '% agree')")

    # Metrics, parsed as Prometheus parses them, against what happened above.
    text = requests.get(stub.url + "/metrics", headers=auth, timeout=30).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("aq_conflicts_total", (("code", "fenced"), ("op", "report")))] == 1
    assert samples[("aq_operations_total", (("op", "reclaim"), ("outcome", "queued")))] == 1
    assert samples[("aq_operations_total", (("op", "report"), ("outcome", "shipped")))] == 6
    assert samples[("aq_jobs", (("state", "shipped"),))] == 6
    assert samples[("aq_reclaim_delay_seconds_count", ())] == 1
