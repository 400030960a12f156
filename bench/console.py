"""``vigil console`` in headless Chromium: board first render with 1,000 patients, alert on
Kafka → visible on an open board, and ack click → record in the acks topic.

The console runs as its own process on a fresh topic prefix; the load is **synthetic**
(generated records, not patients): 1,000 patients, each with 24 hourly scores (risk and
NEWS2 drawn at random, seeded), an admission naming one of 8 units, and 10% with an open
alert. No worker runs: the figures are the console's own (Kafka → browser, browser → Kafka).

- **first render**: the board (1,000 rows, sorted by severity) loaded ``--loads`` times in
  the signed-in browser; the Navigation Timing ``loadEventEnd`` (navigation start to the
  page loaded: request, server render, transfer, parse, layout) and the first contentful
  paint, from the browser's own timing API;
- **alert → visible**: ``--alerts`` new alerts, each on a patient without one, produced
  paced at ``--rate`` per second while the board is open; latency = the time a
  ``MutationObserver`` in the page saw the patient's row come back with the alert
  (``Date.now()``) minus the time just before the record was produced (same machine clock);
- **ack → acks topic**: ``--acks`` Acknowledge clicks on a patient page; latency = the time
  a consumer tailing the acks topic received the record minus the time just before the
  click.

Usage::

    .venv/bin/python -m bench.console [--patients 1000] [--loads 10] [--alerts 200] [--acks 50]
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from argon2 import PasswordHasher
from kafka import KafkaConsumer, KafkaProducer
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bench.common import LOGS, load_average, machine, write_result
from streams.console.users import UserStore
from streams.core.events import (
    AdtEvent,
    AlertRecord,
    IcuType,
    News2Score,
    Provenance,
    ScoreRecord,
    make_alert_id,
)
from vigil.stack.settings import StackSettings
from vigil.testing.browser import chromium
from vigil.testing.console import running_console
from vigil.testing.gateway import fresh_topics

T0 = datetime(2025, 1, 1, tzinfo=UTC)
USER, PASSWORD = "bench.clinician", "bench password 123"
_OBSERVER = """
window.seen = {};
new MutationObserver((changes) => {
  const now = Date.now();
  for (const change of changes) {
    for (const node of change.addedNodes) {
      if (node.dataset && node.dataset.alerts !== "0" && !(node.dataset.patient in window.seen)) {
        window.seen[node.dataset.patient] = now;
      }
    }
  }
}).observe(document.getElementById("rows"), {childList: true});
"""


def _band(total: int) -> str:
    return "high" if total >= 7 else "medium" if total >= 5 else "low"


def _score(pid: str, at: datetime, rng: random.Random) -> ScoreRecord:
    total = rng.randint(0, 12)
    return ScoreRecord(
        patient_id=pid,
        event_time=at,
        risk=round(rng.random() * 0.6, 3),
        news2=News2Score(total=total, band=_band(total), parameters={"pulse": min(total, 3)}),
        model="deterioration",
        model_version="synthetic-bench",
        degraded=False,
        provenance=Provenance(code_version="bench"),
        processing_time=datetime.now(UTC),
    )


def _alert(pid: str, at: datetime, severity: str) -> AlertRecord:
    return AlertRecord(
        alert_id=make_alert_id(pid, "deterioration", at),
        patient_id=pid,
        event_time=at,
        kind="deterioration",
        severity=severity,
        state="open",
        risk=0.7,
        news2=None,
        reason="risk_above_threshold",
        explanation="synthetic bench alert",
        policy_version="bench",
        degraded=False,
        processing_time=datetime.now(UTC),
    )


def _seed(producer: KafkaProducer, prefix: str, patients: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 (synthetic load, not security)
    ids = [f"bench{n:05d}" for n in range(patients)]
    units = [f"ICU-{chr(65 + n)}" for n in range(8)]
    for index, pid in enumerate(ids):
        adt = AdtEvent(
            event_id=f"{pid}-admit",
            patient_id=pid,
            event_time=T0,
            source="bench",
            action="admit",
            icu_type=IcuType.MEDICAL,
            care_unit=units[index % len(units)],
        )
        producer.send(f"{prefix}.adt", adt.model_dump_json().encode(), key=pid.encode())
        for hour in range(24):
            record = _score(pid, T0 + timedelta(hours=hour), rng)
            producer.send(f"{prefix}.scores", record.model_dump_json().encode(), key=pid.encode())
        if index % 10 == 0:
            alert = _alert(pid, T0 + timedelta(hours=20), rng.choice(["low", "medium", "high"]))
            producer.send(f"{prefix}.alerts", alert.model_dump_json().encode(), key=pid.encode())
    producer.flush()
    return ids


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(array, 50)), 1),
        "p95_ms": round(float(np.percentile(array, 95)), 1),
        "p99_ms": round(float(np.percentile(array, 99)), 1),
        "max_ms": round(float(array.max()), 1),
    }


def _sign_in(browser: WebDriver, url: str) -> None:
    browser.get(f"{url}/login")
    browser.find_element(By.ID, "username").send_keys(USER)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "user-name"))


def _first_render(browser: WebDriver, url: str, loads: int, patients: int) -> dict[str, Any]:
    load_s: list[float] = []
    paint_s: list[float] = []
    response_s: list[float] = []
    first_byte_s: list[float] = []
    for _ in range(loads):
        browser.get(f"{url}/")
        rows = browser.execute_script("return document.querySelectorAll('#rows tr').length")
        if rows != patients:
            raise RuntimeError(f"{rows} rows on the board, expected {patients}")
        timing = browser.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "return [n.loadEventEnd, n.responseEnd, n.transferSize, p ? p.startTime : null,"
            " n.responseStart];"
        )
        load_s.append(timing[0] / 1000)
        response_s.append(timing[1] / 1000)
        first_byte_s.append(timing[4] / 1000)
        if timing[3] is not None:
            paint_s.append(timing[3] / 1000)
    return {
        "load_event_end": _percentiles(load_s),
        "first_contentful_paint": _percentiles(paint_s) if paint_s else None,
        "response_start": _percentiles(first_byte_s),
        "response_end": _percentiles(response_s),
        "html_bytes": int(timing[2]),
    }


def _alert_to_visible(
    browser: WebDriver,
    url: str,
    producer: KafkaProducer,
    prefix: str,
    candidates: list[str],
    count: int,
    rate: float,
) -> dict[str, Any]:
    browser.get(f"{url}/")
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "live").text == "Live")
    browser.execute_script(_OBSERVER)
    sent: dict[str, float] = {}
    started = time.monotonic()
    for index, pid in enumerate(candidates[:count]):
        pause = started + index / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        record = _alert(pid, T0 + timedelta(hours=23, minutes=index % 60), "high")
        sent[pid] = time.time()
        producer.send(f"{prefix}.alerts", record.model_dump_json().encode(), key=pid.encode())
        producer.flush()
    deadline = time.monotonic() + 30
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        seen = browser.execute_script("return window.seen")
        if len(seen) >= len(sent):
            break
        time.sleep(0.5)
    latencies = [seen[pid] / 1000 - at for pid, at in sent.items() if pid in seen]
    return {"produced": len(sent), "seen": len(latencies), **_percentiles(latencies)}


def _ack_to_topic(
    browser: WebDriver, url: str, bootstrap: str, prefix: str, pid: str, clicks: int
) -> dict[str, Any]:
    received: list[float] = []
    stop = threading.Event()
    consumer = KafkaConsumer(
        f"{prefix}.acks",
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    while not consumer.assignment():
        consumer.poll(100)

    def tail() -> None:
        while not stop.is_set():
            for records in consumer.poll(20).values():
                received.extend(time.time() for _ in records)

    thread = threading.Thread(target=tail, daemon=True)
    thread.start()
    clicked: list[float] = []
    try:
        for index in range(clicks):
            browser.get(f"{url}/patients/{pid}")
            card = browser.find_element(By.CSS_SELECTOR, ".alert-card")
            card.find_element(By.NAME, "reason").send_keys(f"bench acknowledgement {index}")
            button = card.find_element(By.CSS_SELECTOR, "button.ack")
            clicked.append(time.time())
            button.click()
            WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.ID, "sent"))
            deadline = time.monotonic() + 10
            while len(received) <= index and time.monotonic() < deadline:
                time.sleep(0.002)
    finally:
        stop.set()
        thread.join(5)
        consumer.close()
    latencies = [r - c for c, r in zip(clicked, received, strict=False)]
    return {"clicks": len(clicked), "records": len(received), **_percentiles(latencies)}


def main() -> None:
    """Run the console benchmark and write ``bench/results/console.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="alerts per second")
    parser.add_argument("--acks", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stack = StackSettings()
    prefix = fresh_topics(stack, "bench-console")
    work = LOGS / prefix
    work.mkdir(parents=True, exist_ok=True)
    UserStore(work / "users.json", PasswordHasher()).add(USER, "clinician", PASSWORD)
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=0)
    before = load_average()
    ids = _seed(producer, prefix, args.patients, args.seed)
    without_alert = [pid for index, pid in enumerate(ids) if index % 10 != 0]
    with (
        running_console(
            work, bootstrap=stack.kafka_bootstrap, prefix=prefix, redis_url=stack.redis_url
        ) as console,
        chromium() as browser,
    ):
        _sign_in(browser, console.url)
        render = _first_render(browser, console.url, args.loads, args.patients)
        visible = _alert_to_visible(
            browser, console.url, producer, prefix, without_alert, args.alerts, args.rate
        )
        acks = _ack_to_topic(browser, console.url, stack.kafka_bootstrap, prefix, ids[0], args.acks)
    producer.close()
    result = {
        "benchmark": "console",
        "synthetic_load": True,
        "patients": args.patients,
        "first_render": render,
        "alert_to_visible": visible,
        "ack_to_acks_topic": acks,
        "targets": {"first_render_s": 1.0, "alert_visible_p99_s": 1.0, "ack_p99_s": 0.5},
        "browser": "Debian chromium (headless), 1280x800",
        "load_average_before": before,
        "load_average_after": load_average(),
        "machine": machine(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_result("console", result)
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
