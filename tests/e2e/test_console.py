"""The console in a real browser (Debian's Chromium, driven by Playwright) against a real
collector, broker and enrolled agent: sign-in, the fleet, live latest values, the chart, a
hostile device name, roles, and the phone-width enrollment-token page.

Screenshots go to the test's folder; with OUTPOST_SAVE_SCREENSHOTS=1 they also replace the
ones docs/console.md shows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outpost_iot.dev._processes import free_port, spawn, stop
from tests._wait import wait_until
from tests.collector.test_notify import Receiver
from tests.conftest import require_service
from tests.e2e._harness import Harness
from tests.provisioning.test_enrollment import (
    _api_up,
    collector,
    enroll,
    gateway_id_of,
    new_token,
    trust,
    tune,
    url,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
# A device whose name is markup: the console must show these characters, and run nothing.
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture
def site(harness: Harness) -> Iterator[dict[str, Any]]:
    """A collector with its API and one enrolled agent whose simulated devices have a hostile
    name; an operator's and a viewer's API tokens."""
    require_service("chromium", Path(CHROMIUM).exists(), "apt-get install chromium")
    harness.api_port = free_port()
    # A webhook receiver on this machine, for the console's "Send a test".
    harness.collector_extra = "[alarms]\nallow_http = true\nallow_private_targets = true\n"
    harness.start_collector()
    wait_until(lambda: _api_up(harness), timeout=20, what="the collector's API")
    result = enroll(harness, new_token(harness, site="Warehouse 3"), "con")
    assert result.exit_code == 0, result.output
    gw = gateway_id_of(harness, "con")
    # A second gateway that never runs: a rollout to both stays open until it is aborted.
    assert enroll(harness, new_token(harness, site="Warehouse 3"), "silent").exit_code == 0
    config = harness.root / "con" / "agent.toml"
    tune(config)
    with config.open("a") as f:
        name = HOSTILE.replace('"', '\\"')
        f.write(
            f'\n[[sources]]\ntype = "simulated"\nname = "{name}"\ninterval = 0.5\ndevices = 2\n'
        )
    tokens = {
        role: collector(
            harness, "api-token", "create", "--tenant", "acme", "--role", role, "--name", role
        ).split()[0]
        for role in ("operator", "viewer")
    }
    agent = spawn(
        ["outpost_iot.agent.cli", "run", "--config", str(config)], log=harness.root / "con.log"
    )
    try:
        yield {"h": harness, "gw": gw, "tokens": tokens}
    finally:
        stop(agent)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",  # the tests may run as root
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield b
        finally:
            b.close()


def _page(browser: Any, width: int = 1440, height: int = 900) -> Any:
    # The collector's certificate is from the test's own CA, which Chromium does not know.
    context = browser.new_context(
        ignore_https_errors=True, viewport={"width": width, "height": height}
    )
    context.set_default_timeout(20_000)
    return context.new_page()


def _sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/console/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Fleet").wait_for()


def _shot(page: Any, tmp_path: Path, name: str, part: str | None = None) -> None:
    """The page (or the element ``part`` selects) as a PNG."""
    path = tmp_path / f"{name}.png"
    if part is None:
        page.screenshot(path=str(path), full_page=True)
    else:
        page.locator(part).screenshot(path=str(path))
    if os.environ.get("OUTPOST_SAVE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / f"{name}.png")


def _api(s: dict[str, Any], path: str, **params: object) -> Any:
    r = httpx.get(
        f"{url(s['h'])}{path}",
        params=params,  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {s['tokens']['viewer']}"},
        verify=trust(s["h"]),
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


def test_an_operator_follows_a_gateway_live_and_a_hostile_name_stays_text(
    site: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    base, gw = url(site["h"]), site["gw"]
    page = _page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Script errors; a failed request shows in the console too, and the one expected (asking
    # for the session before signing in: 401) is left out.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and "status of 401" not in m.text else None
        ),
    )

    # The session is a cookie the page cannot read; the token is not kept anywhere.
    _sign_in(page, base, site["tokens"]["operator"])
    assert page.evaluate("document.cookie") == ""
    row = page.locator(f'tr[data-gateway="{gw}"]')
    row.wait_for()
    assert "Warehouse 3" in row.inner_text()
    wait_until(lambda: "online" in row.inner_text(), timeout=30, what="the gateway online")
    _shot(page, tmp_path, "fleet")

    row.get_by_role("link", name=gw).click()
    page.get_by_role("heading", name=f"Gateway {gw}").wait_for()
    device = f"{HOSTILE}-1"
    shown_ts = """([series, device]) => Math.max(-1, ...[...document.querySelectorAll('td.latest-value')]
        .filter((el) => el.dataset.series === series && el.dataset.device === device)
        .map((el) => parseFloat(el.dataset.ts)))"""
    wait_until(
        lambda: page.evaluate(shown_ts, ["power.power_w", device]) > 0,
        timeout=30,
        what="the device's latest power on the page",
    )

    # A reading the pipeline stores reaches the page within 2 s, without a reload.
    delays = []
    for _ in range(3):
        before = page.evaluate(shown_ts, ["power.power_w", device])
        deadline = time.monotonic() + 30
        stored_at = None
        while time.monotonic() < deadline:
            found = _api(site, "/api/v1/series/latest", measurement="power", tag=f"gateway:{gw}")
            newest = max(x["ts"] for x in found if x["tags"]["device"] == device)
            if newest > before:
                stored_at = time.monotonic()
                break
            time.sleep(0.05)
        assert stored_at is not None, "no new reading was stored in 30 s"
        page.wait_for_function(
            f"(args) => ({shown_ts})(args) >= args[2]",
            arg=["power.power_w", device, newest],
            timeout=10_000,
        )
        delays.append(time.monotonic() - stored_at)
    assert max(delays) < 2.0, delays

    # The hostile name is text: shown as typed, no element made from it, nothing ran.
    devices = page.locator("td.device-name")
    assert f"{HOSTILE}-1" in devices.all_inner_texts()
    assert page.locator("main img").count() == 0
    assert page.title() == "Outpost console"

    # The chart has the points the series API has for the same query.
    page.get_by_label("Series", exact=True).select_option("power.power_w")
    page.get_by_role("button", name="Show").click()
    chart = page.locator(".chart canvas")
    chart.first.wait_for()
    shown = int(page.locator(".chart").get_attribute("data-points") or 0)
    end = time.time()
    api_points = sum(
        len(g["points"])
        for g in _api(
            site,
            "/api/v1/series",
            measurement="power",
            field="power_w",
            bucket="10s",
            tag=f"gateway:{gw}",
            group_by="device",
            start=_iso(end - 3600),
            end=_iso(end),
        )["groups"]
    )
    assert shown > 0
    assert abs(shown - api_points) <= 4  # the two queries' windows differ by a bucket or so
    _shot(page, tmp_path, "gateway")
    assert errors == []


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def test_a_viewer_gets_no_operator_actions(site: dict[str, Any], browser: Any) -> None:
    page = _page(browser)
    _sign_in(page, url(site["h"]), site["tokens"]["viewer"])
    for section, button in (("tokens", "Create token"), ("rollouts", "Start rollout")):
        page.goto(f"{url(site['h'])}/console/#/{section}")
        page.get_by_text("this session is a viewer's").wait_for()
        assert page.get_by_role("button", name=button).count() == 0
    # The API refuses a viewer's change made with the session, whatever the page shows.
    status = page.evaluate(
        """async () => (await fetch('/api/v1/enrollment-tokens', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: '{"site": "x"}'})).status"""
    )
    assert status == 403


def test_a_technician_makes_a_token_on_a_phone_and_watches_the_gateway_come_online(
    site: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    h = site["h"]
    page = _page(browser, width=360, height=740)
    _sign_in(page, url(h), site["tokens"]["operator"])
    page.get_by_role("link", name="Enrollment tokens").click()
    page.get_by_label("Site").fill("Depot 7")
    page.get_by_label("Valid for").select_option("24h")
    page.get_by_label("Gateways").fill("2")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").inner_text()
    assert token.startswith("opt_") or len(token) > 20
    arrivals = page.locator("[aria-live] tbody tr")
    page.get_by_text("None yet").wait_for()
    # Readable at 360 px: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360

    # On site: the gateway enrolls with the token from the page, then its agent starts.
    result = enroll(h, token, "depot")
    assert result.exit_code == 0, result.output
    gw = gateway_id_of(h, "depot")
    arrivals.filter(has_text=gw).get_by_text("waiting for it to connect").wait_for()
    config = h.root / "depot" / "agent.toml"
    tune(config)
    agent = spawn(
        ["outpost_iot.agent.cli", "run", "--config", str(config)], log=h.root / "depot.log"
    )
    try:
        arrivals.filter(has_text=gw).locator(".state-online").wait_for(timeout=60_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        _shot(page, tmp_path, "tokens-phone")
    finally:
        stop(agent)

    # The token has a use left; the technician revokes it before leaving.
    listed = page.locator("tbody tr", has_text="Depot 7").filter(has_text="1 of 2")
    listed.wait_for()
    page.once("dialog", lambda d: d.accept())
    listed.get_by_role("button", name="Revoke").click()
    page.locator("tbody tr", has_text="Depot 7").get_by_text("revoked").wait_for()

    # Every page is readable at 360 px: wide tables scroll inside their box, nothing else does.
    for where, ready in (
        ("#/fleet", "tr[data-gateway]"),
        (f"#/gateway/{site['gw']}", "td.latest-value"),
        ("#/data", ".chart canvas"),
        ("#/rollouts", "#rollout-patch"),
        ("#/alarms", "#alarm-status"),
        ("#/rules", "#rule-kind"),
    ):
        page.goto(f"{url(h)}/console/{where}")
        page.locator(ready).first.wait_for()
        wide = page.evaluate(
            """() => [...document.querySelectorAll('body *')].filter((e) => !e.closest('.table-wrap') && e.getBoundingClientRect().right > 361).map((e) => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)).slice(0, 15)"""
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, (where, wide)


def _operator_call(s: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(
        method,
        f"{url(s['h'])}{path}",
        json=body,
        headers={"Authorization": f"Bearer {s['tokens']['operator']}"},
        verify=trust(s["h"]),
        timeout=10,
    )
    assert r.status_code < 300, r.text
    return r.json()


def test_with_the_keyboard_alone_an_operator_charts_a_series_and_exports_it_as_csv(
    site: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    base, gw = url(site["h"]), site["gw"]
    page = _page(browser)
    page.goto(f"{base}/console/")
    # Keyboard only: the token field has the focus; Enter signs in; Tab reaches the sections,
    # each focused element shows a visible outline, and Enter follows a link.
    page.get_by_label("API token").wait_for()
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(site["tokens"]["viewer"])
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Fleet").wait_for()
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Data":
            break
    else:
        pytest.fail("Tab never reached the Data section's link")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Data").wait_for()

    # A measurement, a field, one gateway, a line per device.
    measurement = page.get_by_label("Measurement")
    measurement.locator("option", has_text="power").wait_for(state="attached")
    measurement.focus()
    measurement.select_option("power")
    page.get_by_label("Field").select_option("power_w")
    page.get_by_label("gateway", exact=True).select_option(gw)
    page.get_by_label("One line per").select_option("device")
    page.get_by_role("button", name="Show").focus()
    page.keyboard.press("Enter")
    chart = page.locator(".chart canvas")
    chart.first.wait_for()
    page.wait_for_function("() => Number(document.querySelector('.chart')?.dataset.points) > 0")
    assert "measurement=power" in page.url
    assert "field=power_w" in page.url
    end = time.time()
    api = _api(site, "/api/v1/series", measurement="power", field="power_w", bucket="10s",
               tag=f"gateway:{gw}", group_by="device", start=_iso(end - 3600), end=_iso(end))  # fmt: skip
    shown = int(page.locator(".chart").get_attribute("data-points") or 0)
    assert abs(shown - sum(len(g["points"]) for g in api["groups"])) <= 4
    legend = page.locator(".u-legend .u-series:not(:first-child) .u-label").all_inner_texts()
    assert sorted(legend) == sorted(g["tags"]["device"] for g in api["groups"])  # as text
    _shot(page, tmp_path, "data")

    # The link is the chart: opened again, the same choices.
    page.reload()
    page.wait_for_function("() => Number(document.querySelector('.chart')?.dataset.points) > 0")
    assert page.get_by_label("Field").input_value() == "power_w"
    assert page.get_by_label("gateway", exact=True).input_value() == gw

    # Export: every raw reading of the range, this gateway's only, device names as text.
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    assert download.value.suggested_filename.startswith("power-")
    rows = list(
        csv.DictReader(io.StringIO(Path(download.value.path()).read_bytes().decode(), newline=""))
    )
    assert rows
    assert {r["measurement"] for r in rows} == {"power"}
    assert all(f"gateway={gw}" in r["tags"] for r in rows)
    assert any(f"device={HOSTILE}-1" in r["tags"] for r in rows)
    assert "power_w" in {r["field"] for r in rows}


def test_an_operator_sees_desired_against_reported_config_tags_and_decommissions(
    site: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    base, gw = url(site["h"]), site["gw"]
    silent = gateway_id_of(site["h"], "silent")
    for n in (400, 600):
        _operator_call(site, "PATCH", f"/api/v1/gateways/{gw}/config",
                       {"patch": {"buffer": {"batch_max_readings": n}}})  # fmt: skip
    page = _page(browser)
    _sign_in(page, base, site["tokens"]["operator"])
    page.goto(f"{base}/console/#/gateway/{gw}")
    state = page.locator("#config-state")
    state.get_by_text("In sync", exact=True).wait_for(timeout=60_000)  # the agent applied version 2
    assert "desired version 2" in state.inner_text()
    assert "applied version 2" in state.inner_text()
    assert '"batch_max_readings": 600' in page.locator("pre.config").inner_text()
    page.get_by_text("buffer.batch_max_readings: 400 → 600").wait_for()
    page.get_by_role("button", name="Show version 1").click()
    assert '"batch_max_readings": 400' in page.locator("pre.config").inner_text()

    # Tags: saved and shown; a bad one is named, with what a tag may be.
    tags = page.get_by_label("Tags (comma-separated)")
    tags.fill("cold-store, eu:north")
    page.get_by_role("button", name="Save tags").click()
    page.locator("dl.facts").get_by_text("cold-store, eu:north").wait_for()
    assert _api(site, f"/api/v1/gateways/{gw}")["tags"] == ["cold-store", "eu:north"]
    page.get_by_label("Tags (comma-separated)").fill("cold-store, bad tag!")
    page.get_by_role("button", name="Save tags").click()
    page.get_by_text('tag "bad tag!"').wait_for()
    assert page.get_by_label("Tags (comma-separated)").get_attribute("aria-invalid") == "true"
    _shot(page, tmp_path, "gateway-config", "#gateway-config")

    # Decommission only once the gateway's id is typed.
    page.goto(f"{base}/console/#/gateway/{silent}")
    go = page.get_by_role("button", name="Decommission")
    assert go.is_disabled()
    page.get_by_label("Type the gateway's id").fill(silent[:-1])
    assert go.is_disabled()
    page.get_by_label("Type the gateway's id").fill(silent)
    go.click()
    page.get_by_text("Decommissioned:").wait_for()
    page.locator("dl.facts .state-decommissioned").wait_for()
    assert _api(site, f"/api/v1/gateways/{silent}")["state"] == "decommissioned"


def test_a_change_without_the_csrf_token_is_refused(site: dict[str, Any], browser: Any) -> None:
    """The session cookie alone does not let a page make changes: the CSRF token must come too."""
    page = _page(browser)
    _sign_in(page, url(site["h"]), site["tokens"]["operator"])
    status = page.evaluate(
        """async () => (await fetch('/api/v1/enrollment-tokens', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: '{"site": "x"}'})).status"""
    )
    assert status == 403
    csrf = page.evaluate("async () => (await (await fetch('/api/v1/session')).json()).csrf")
    status = page.evaluate(
        """async (csrf) => (await fetch('/api/v1/enrollment-tokens', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
            body: '{"site": "x"}'})).status""",
        csrf,
    )
    assert status == 201


def test_an_operator_starts_a_rollout_sees_field_errors_and_aborts_it(
    site: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    page = _page(browser)
    _sign_in(page, url(site["h"]), site["tokens"]["operator"])
    page.get_by_role("link", name="Rollouts").click()
    patch = page.get_by_label("Patch")
    # A patch that does not validate: the problem is named by its field, nothing is started.
    patch.fill('{"buffer": {"batch_max_readings": -5}}')
    page.get_by_role("button", name="Start rollout").click()
    page.get_by_role("alert").get_by_text("config.buffer.batch_max_readings").wait_for()
    assert page.locator("tr[data-rollout]").count() == 0
    patch.fill('{"buffer": {"batch_max_readings": 500}}')
    page.get_by_label("Waves").fill("1, 100%")
    page.get_by_role("button", name="Start rollout").click()
    row = page.locator("tr[data-rollout]").first
    row.wait_for()
    wait_until(
        lambda: "running" in row.inner_text() and "1:" in row.inner_text(),
        timeout=30,
        what="the rollout's first wave on the page",
    )
    _shot(page, tmp_path, "rollouts")
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Abort").click()
    row.locator(".rollout-status", has_text="aborted").wait_for()
    rid = row.get_attribute("data-rollout")
    r = httpx.get(
        f"{url(site['h'])}/api/v1/rollouts/{rid}",
        headers={"Authorization": f"Bearer {site['tokens']['operator']}"},
        verify=trust(site["h"]),
        timeout=10,
    )
    assert r.json()["status"] == "aborted"
    assert r.json()["reason"] == "aborted by an operator"


def test_an_operator_adds_a_rule_sees_its_alarm_arrive_live_and_acknowledges_it(
    site: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    base, gw = url(site["h"]), site["gw"]
    page = _page(browser)
    _sign_in(page, base, site["tokens"]["operator"])
    page.get_by_role("link", name="Rules").click()
    page.get_by_role("heading", name="Rules & notifications").wait_for()
    # A threshold with no level: refused, the field named.
    page.get_by_label("Name").first.fill("Plug on")
    page.get_by_label("Measurement").fill("power")
    page.get_by_label("Field", exact=True).fill("power_w")
    page.get_by_role("button", name="Add rule").click()
    page.get_by_role("alert").get_by_text("give one of above or below").wait_for()
    assert page.evaluate("document.querySelectorAll('.alarm-active').length") == 0
    # The simulated plugs draw more than 1 W: the alarm is raised as soon as a reading is.
    page.get_by_label("Above").fill("1")
    page.get_by_label("Severity").first.select_option("critical")
    page.get_by_label("Device").fill(f"{HOSTILE}-1")
    page.get_by_role("button", name="Add rule").click()
    rule_row = page.locator("tr[data-rule]", has_text="Plug on")
    rule_row.wait_for()
    # Disabled and enabled again from the list (the API's PUT, the whole rule).
    rule_row.get_by_role("button", name="Disable").click()
    rule_row.locator(".rule-enabled", has_text="off").wait_for()
    rule_row.get_by_role("button", name="Enable").click()
    rule_row.locator(".rule-enabled", has_text="on").wait_for()
    # Edited in place: the form takes the rule, a bad series tag is refused before it is
    # sent, and the saved rule is the one the API then has.
    rule_row.get_by_role("button", name="Edit").click()
    page.get_by_role("heading", name='Edit rule "Plug on"').wait_for()
    assert page.get_by_label("Above").input_value() == "1"
    assert page.get_by_label("Device").input_value() == f"{HOSTILE}-1"
    page.get_by_label("Series tags").fill("phase")
    page.get_by_role("button", name="Save rule").click()
    page.get_by_role("alert").get_by_text("write tags as key=value").wait_for()
    assert page.get_by_label("Series tags").get_attribute("aria-invalid") == "true"
    page.get_by_label("Series tags").fill("")
    page.get_by_label("Above").fill("0.5")
    page.get_by_role("button", name="Save rule").click()
    page.get_by_role("heading", name="New rule").wait_for()
    rule_row.get_by_text("above 0.5").wait_for()
    [rule] = _api(site, "/api/v1/alarm-rules")
    assert (rule["name"], rule["condition"]["above"], rule["enabled"]) == ("Plug on", 0.5, True)
    assert rule["scope"]["device"] == f"{HOSTILE}-1"
    # A webhook whose URL carries credentials is refused, saying why; a good one gets a test
    # notification from its "Send a test" button, and the page counts it delivered.
    receiver = Receiver()
    try:
        page.get_by_label("Name").nth(1).fill("ops")
        page.get_by_label("URL").fill("https://user:secret@hooks.example.com/x")
        page.get_by_role("button", name="Add endpoint").click()
        page.get_by_text("credentials in the URL are refused").wait_for()
        page.get_by_label("URL").fill(receiver.url)
        page.get_by_role("button", name="Add endpoint").click()
        ep_row = page.locator("tr[data-endpoint]", has_text="ops")
        ep_row.get_by_role("button", name="Send a test").click()
        # (The rule's own alarm may reach the receiver too: only the test is looked for.)
        tests = lambda: [h for h, b in receiver.requests if json.loads(b)["event"] == "test"]  # noqa: E731
        wait_until(tests, timeout=30, what="the test notification", seen=lambda: receiver.requests)
        assert tests()[0]["x-outpost-signature"].startswith("t=")
        delivered = ep_row.locator("td.num").first
        wait_until(lambda: delivered.inner_text() != "0", timeout=30, what="the delivered count")
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    _shot(page, tmp_path, "rules")

    # The alarms page, open before the alarm is raised, shows it when it is (the stream).
    page.get_by_role("link", name="Alarms").click()
    row = page.locator("tr[data-alarm]").first
    row.wait_for(timeout=60_000)
    assert "critical" in row.inner_text()
    assert "Plug on" in row.inner_text()
    assert f"device={HOSTILE}-1" in row.locator("td.originator").inner_text()  # as text
    assert page.locator("main img").count() == 0
    row.get_by_role("button", name="Acknowledge").click()
    row.locator(".alarm-status", has_text="acknowledged").wait_for()
    [alarm] = _api(site, "/api/v1/alarms", status="open")
    assert alarm["acknowledged_by"].startswith("token:")
    _shot(page, tmp_path, "alarms")
    # The fleet shows the gateway's open alarm.
    page.get_by_role("link", name="Fleet").click()
    page.locator(f'tr[data-gateway="{gw}"] .sev-critical').wait_for()
