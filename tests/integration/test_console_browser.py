"""The ward console in a real browser (Debian's headless Chromium, Selenium) on the real stack.

Three real demo stays (PhysioNet 2012, the model's held-out test split) are replayed up to
2.5 h after admission through a real worker (Kafka, Triton, Redis). A clinician watching the
board sees an alert appear live (no reload), opens the patient with the keyboard, sees the
imaging finding's heatmap, acknowledges, snoozes and escalates the alert, and the worker's
``audit`` topic records each action with the clinician's name. A signed-out browser gets no
patient data; a viewer sees no action buttons and is refused (403) when posting one anyway.
The run writes the screenshots of docs/console.md (board and patient pages at 1280x800; the
imaging study is a test fixture).
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from streams.console.users import UserStore
from streams.replay import DEFAULT_ANCHOR, merge, physionet2012_events, produce
from streams.replay.imaging_fixture import imaging_fixture_events
from vigil.stack.settings import StackSettings
from vigil.testing.browser import chromium
from vigil.testing.console import RunningConsole, running_console
from vigil.testing.gateway import fresh_topics
from vigil.testing.outputs import read_records
from vigil.testing.workers import running_worker, worker_env

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "physionet2012-demo" / "set-a"
SHOTS = ROOT / "docs" / "console"
# Two stays that alert (high) within 2 h of admission, one deferred for review (OOD).
STAYS = ("135240", "134864", "136810")
REPLAYED = timedelta(hours=2, minutes=30)
CLINICIAN, VIEWER = "dr.osei", "viewer.kim"
PASSWORD = "correct horse battery"  # noqa: S105 (a test user)


@dataclass
class Ward:
    console: RunningConsole
    browser: WebDriver
    prefix: str
    bootstrap: str
    imaging: Path


@pytest.fixture(scope="module")
def ward(stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ward]:
    work = tmp_path_factory.mktemp("console")
    prefix = fresh_topics(stack, "console")
    users = UserStore(work / "users.json", PasswordHasher(time_cost=1, memory_cost=8192))
    users.add(CLINICIAN, "clinician", PASSWORD)
    users.add(VIEWER, "viewer", PASSWORD)
    imaging = work / "imaging"
    imaging.mkdir()
    folders = {"imaging_file_root": str(imaging), "artifact_dir": str(imaging / "heatmaps")}
    env = worker_env(stack, prefix=prefix, app_id=prefix, data_dir=work / "worker", **folders)
    with contextlib.ExitStack() as stop:
        # The browser starts while the worker and the console do (the slowest part).
        with ThreadPoolExecutor(1) as pool:
            browser = pool.submit(lambda: stop.enter_context(chromium()))
            stop.enter_context(running_worker(env, work / "worker.log"))
            console = stop.enter_context(
                running_console(
                    work,
                    bootstrap=stack.kafka_bootstrap,
                    prefix=prefix,
                    redis_url=stack.redis_url,
                    ack_clock="event",
                    **folders,
                )
            )
            driver = browser.result()
        yield Ward(console, driver, prefix, stack.kafka_bootstrap, imaging)


def _sign_in(ward: Ward, name: str) -> None:
    browser = ward.browser
    browser.get(f"{ward.console.url}/login")
    browser.find_element(By.ID, "username").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.ID, "user-name"))


def _row(browser: WebDriver, selector: str) -> tuple[str, str, str]:
    """Patient, severity and text of the first row matching ``selector`` (rows are replaced
    live, so a row found may be gone when read: read again)."""

    def read(b: WebDriver) -> tuple[str, str, str]:
        row = b.find_element(By.CSS_SELECTOR, selector)
        return (
            str(row.get_attribute("data-patient")),
            str(row.get_attribute("data-severity")),
            row.text,
        )

    waiting = WebDriverWait(browser, 10, 0.1, ignored_exceptions=[StaleElementReferenceException])
    return waiting.until(read)


def _fits(browser: WebDriver) -> bool:
    width = browser.execute_script("return document.documentElement.scrollWidth")
    return bool(width <= 1280)


def _replay(ward: Ward) -> None:
    end = DEFAULT_ANCHOR + REPLAYED
    stays = [
        e
        for e in physionet2012_events([DEMO / f"{stay}.txt" for stay in STAYS])
        if e.event_time <= end
    ]
    # One fixture study per stay (an image sample linked to the stay: a test fixture), after
    # the alerts have opened (the image enters the next scores).
    studies = imaging_fixture_events(
        [(stay, DEFAULT_ANCHOR) for stay in STAYS], ward.imaging, hours=(2.25,)
    )
    events = list(merge([stays, sorted(studies)]))
    produce(events, bootstrap=ward.bootstrap, topic_prefix=ward.prefix)


def _audit(ward: Ward, alert_id: str, action: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in read_records(ward.bootstrap, f"{ward.prefix}.audit"):
            if record["alert_id"] == alert_id and record.get("action") == action:
                return record
        time.sleep(0.5)
    raise AssertionError(f"no {action} of {alert_id} in the audit topic")


def test_clinician_sees_alert_live_and_acts_on_it(ward: Ward) -> None:
    browser = ward.browser
    _sign_in(ward, CLINICIAN)
    assert browser.find_elements(By.ID, "empty"), "the board starts empty"
    _replay(ward)
    # The alert arrives by server-sent events: the page is not reloaded.
    alerting = "#rows tr[data-status='open'], #rows tr[data-status='escalated']"
    WebDriverWait(browser, 120, 0.1).until(lambda b: b.find_elements(By.CSS_SELECTOR, alerting))
    WebDriverWait(browser, 30, 0.2).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#rows tr")) == len(STAYS)
    )
    patient, severity, text = _row(browser, alerting)
    assert severity.upper() in text, "severity is written, not only coloured"
    assert _fits(browser)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "board.png"))

    # Keyboard only: j moves to the first patient (the most severe first), Enter opens it.
    browser.find_element(By.TAG_NAME, "body").send_keys("j")
    focused = browser.switch_to.active_element
    first = focused.text
    assert first in STAYS
    assert str(focused.get_attribute("href")).endswith(f"/patients/{first}")
    # Enter goes to whatever has the focus, as a keyboard does: a live update may have
    # replaced the row meanwhile (the page moves the focus to the new row's link), so the
    # element found above can be detached by now.
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.ID, "patient-id"))
    assert browser.find_element(By.ID, "patient-id").text == first
    if first != patient:
        browser.get(f"{ward.console.url}/patients/{patient}")
    assert browser.find_element(By.ID, "patient-id").text == patient
    card = browser.find_element(By.CSS_SELECTOR, ".alert-card")
    alert_id = str(card.get_attribute("id")).removeprefix("alert-")
    assert "Top contributing parameters" in card.text
    assert "Provenance of the latest score" in browser.page_source
    assert _fits(browser)
    browser.save_screenshot(str(SHOTS / "patient.png"))
    browser.execute_script("arguments[0].scrollIntoView()", card)
    browser.save_screenshot(str(SHOTS / "patient-alert.png"))

    # The study's finding, with the CAM heatmap over the image (the page is not live).
    shown = "return [...document.querySelectorAll('.finding img')].some(i => i.naturalWidth > 0)"
    deadline = time.monotonic() + 60
    while not browser.execute_script(shown):
        assert time.monotonic() < deadline, "no imaging finding on the patient page"
        time.sleep(1)
        browser.refresh()
    figure = browser.find_element(By.CSS_SELECTOR, ".finding")
    assert "abnormality probability" in figure.text
    browser.execute_script("arguments[0].scrollIntoView()", figure)
    browser.save_screenshot(str(SHOTS / "patient-imaging.png"))
    card = browser.find_element(By.CSS_SELECTOR, ".alert-card")
    card.find_element(By.NAME, "reason").send_keys("seen at the bedside, fluids started")
    card.find_element(By.CSS_SELECTOR, "button.ack").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.ID, "sent"))

    record = _audit(ward, alert_id, "acknowledge")
    assert record["actor"] == "user"
    assert record["user"] == CLINICIAN
    assert record["state"] == "acknowledged"
    assert record["detail"] == "seen at the bedside, fluids started"

    # Snooze for 30 min (in the stay's event time: the console runs with ack_clock=event),
    # then escalate, which ends the snooze.
    for action, reason in (("snooze", "family meeting"), ("escalate", "asked the registrar")):
        browser.get(f"{ward.console.url}/patients/{patient}")
        card = browser.find_element(By.ID, f"alert-{alert_id}")
        card.find_element(By.NAME, "reason").send_keys(reason)
        if action == "snooze":
            Select(card.find_element(By.NAME, "snooze_minutes")).select_by_value("30")
        card.find_element(By.CSS_SELECTOR, f"button[value={action}]").click()
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.ID, "sent"))
        record = _audit(ward, alert_id, action)
        assert (record["user"], record["detail"]) == (CLINICIAN, reason)
        if action == "snooze":
            until = datetime.fromisoformat(record["snooze_until"])
            assert until - datetime.fromisoformat(record["event_time"]) == timedelta(minutes=30)
        else:
            assert record["state"] == "escalated"
    console_audit = ward.console.audit_file.read_text()
    assert f'"user": "{CLINICIAN}"' in console_audit
    assert '"event": "alert_action"' in console_audit


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _request(
    url: str, *, data: dict[str, str] | None = None, cookie: str | None = None
) -> tuple[int, str, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body)  # noqa: S310 (http to the console)
    if cookie is not None:
        request.add_header("Cookie", cookie)
    try:
        with opener.open(request, timeout=10) as response:
            return (
                int(response.status),
                response.headers.get("location", ""),
                response.read().decode(),
            )
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers.get("location", ""), exc.read().decode()


def test_signed_out_sees_nothing(ward: Ward) -> None:
    patients = list(STAYS)
    for path in ["/", *(f"/patients/{p}" for p in patients)]:
        status, location, body = _request(ward.console.url + path)
        assert (status, location) == (303, "/login"), path
        assert not any(p in body for p in patients)
    status, _, body = _request(ward.console.url + "/events")
    assert status == 401
    browser = ward.browser
    browser.delete_all_cookies()
    browser.get(f"{ward.console.url}/patients/{patients[0]}")
    assert urllib.parse.urlsplit(browser.current_url).path == "/login"
    assert not any(p in browser.page_source for p in patients)


def test_viewer_cannot_acknowledge(ward: Ward) -> None:
    browser = ward.browser
    browser.delete_all_cookies()
    _sign_in(ward, VIEWER)
    alerting = "#rows tr[data-alerts]:not([data-alerts='0'])"
    WebDriverWait(browser, 30, 0.2).until(lambda b: b.find_elements(By.CSS_SELECTOR, alerting))
    patient = _row(browser, alerting)[0]
    browser.get(f"{ward.console.url}/patients/{patient}")
    card = browser.find_element(By.CSS_SELECTOR, ".alert-card")
    assert not browser.find_elements(By.CSS_SELECTOR, "form.action button")
    assert "can view alerts but not act" in card.text
    alert_id = str(card.get_attribute("id")).removeprefix("alert-")
    token = browser.find_element(By.CSS_SELECTOR, "form.signout input[name=csrf_token]")
    cookie = browser.get_cookie("vigil_console")
    assert cookie is not None
    status, _, body = _request(
        f"{ward.console.url}/patients/{patient}/alerts/{alert_id}/actions",
        data={
            "csrf_token": str(token.get_attribute("value")),
            "action": "acknowledge",
            "reason": "viewer trying",
        },
        cookie=f"vigil_console={cookie['value']}",
    )
    assert status == 403
    assert "viewer" in body
    assert '"outcome": "forbidden"' in ward.console.audit_file.read_text()
