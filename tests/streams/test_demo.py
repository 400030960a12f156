"""``vigil demo``'s view, progress lines and summary: the degraded share is the headline.

The demo's pure parts only (counting records, rendering, the summary); the whole demo
runs against the real stack in ``make demo``.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from rich.console import Console, Group

from streams.demo import DemoResult, _Display, _summary, _view, degraded_text, progress_line
from streams.evaluation.degraded import DEGRADED_LABEL


def _score(
    pid: str, risk: float | None, reason: str | None = None, news2: int = 3
) -> dict[str, Any]:
    return {
        "patient_id": pid,
        "risk": risk,
        "news2": {"total": news2},
        "degraded": risk is None or reason is not None,
        "degraded_reason": reason,
        "provenance": {"event_ids": [f"{pid}-{risk}-{reason}-{news2}"]},
    }


def _alert(pid: str, state: str = "open", risk: float | None = 0.7) -> dict[str, Any]:
    return {
        "patient_id": pid,
        "state": state,
        "severity": "medium",
        "risk": risk,
        "degraded": risk is None,
        "explanation": "test",
    }


def _result() -> DemoResult:
    result = DemoResult(produced=40)
    result.add("scores", _score("1", 0.2))
    result.add("scores", _score("1", None, "circuit_open", news2=9))
    result.add("scores", _score("2", 0.8))
    result.add("scores", _score("2", None, "circuit_open"))
    result.add("scores", _score("2", None, "inference_error"))
    # Never sent by the worker, but a degraded record's risk must not count as the model's.
    result.add("scores", _score("1", 0.99, "inference_error"))
    result.add("alerts", _alert("2"))
    result.add("alerts", _alert("1", risk=None))
    result.add("deadletter", {})
    return result


def _plain(renderable: Any, *, terminal: bool = False) -> str:
    out = io.StringIO()
    console = Console(
        file=out,
        force_terminal=terminal,
        width=200,
        color_system="standard" if terminal else None,
    )
    console.print(renderable)
    return out.getvalue()


def test_records_are_counted_with_the_degraded_share() -> None:
    result = _result()
    assert (result.scores, result.degraded_scores, result.deadletters) == (6, 4, 1)
    assert dict(result.degraded.reasons) == {"circuit_open": 2, "inference_error": 2}
    assert result.max_risk == {"1": 0.2, "2": 0.8}  # model scores only
    assert result.max_news2 == {"1": 9, "2": 3}  # NEWS2 of every score
    assert (result.degraded.alerts, result.degraded.degraded_alerts) == (2, 1)


def test_view_headline_is_the_degraded_share_in_red() -> None:
    result = _result()
    text = degraded_text(result.degraded)
    assert text.plain == (
        f"WARNING {DEGRADED_LABEL}: 4 of 6 scores (66.7%): circuit_open 2, inference_error 2"
    )
    assert "red" in str(text.style)
    assert "bold" in str(text.style)
    view = _view(result, 100, 0.0)
    assert isinstance(view, Group)
    first = _plain(view).splitlines()[0]
    assert first.startswith(f"WARNING {DEGRADED_LABEL}: 4 of 6 scores (66.7%)")
    assert "\x1b[" in _plain(view, terminal=True).splitlines()[0]  # styled on a terminal
    assert DEGRADED_LABEL in _plain(view).split("latest alerts", 1)[1]  # the alert w/o risk


def test_no_degraded_scores_is_said_without_a_warning() -> None:
    result = DemoResult()
    result.add("scores", _score("1", 0.2))
    text = degraded_text(result.degraded)
    assert text.plain == f"{DEGRADED_LABEL}: 0 of 1 scores (0.0%)"
    assert "red" not in str(text.style)


def test_progress_line() -> None:
    line = progress_line(_result(), 100, timedelta(seconds=12.4))
    assert line == (
        "demo 12s: events produced 40/100, scores 6, alerts opened 2 (2 changes), "
        f"dead-letter 1; WARNING {DEGRADED_LABEL}: 4 of 6 scores (66.7%): "
        "circuit_open 2, inference_error 2"
    )
    assert "\n" not in line


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_not_on_a_terminal_a_progress_line_every_interval() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    clock = _Clock()
    result = _result()
    calls = iter(range(1000))

    def render() -> Group:
        raise AssertionError("no live view when the console is not a terminal")

    display = _Display(
        console,
        render=render,
        line=lambda: f"{progress_line(result, 100, timedelta(0))} #{next(calls)}",
        every=timedelta(seconds=10),
        clock=clock,
    )
    with display:
        for second in range(0, 25):
            clock.now = float(second)
            display.update()
    lines = out.getvalue().splitlines()
    # at 0, 10 and 20 s, and the final line; each on one line however wide
    assert [line.rsplit("#", 1)[1] for line in lines] == ["0", "1", "2", "3"]
    assert all(f"WARNING {DEGRADED_LABEL}: 4 of 6 scores (66.7%)" in line for line in lines)
    assert "\x1b[" not in out.getvalue()


def test_on_a_terminal_the_live_view() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    result = _result()
    display = _Display(
        console,
        render=lambda: _view(result, 100, 0.0),
        line=lambda: pytest.fail("no progress lines on a terminal"),
        every=timedelta(seconds=10),
    )
    with display:
        display.update()
    assert f"{DEGRADED_LABEL}: 4 of 6 scores" in out.getvalue()


def test_summary_leads_with_the_degraded_share() -> None:
    result = _result()
    summary = _summary(result, {"1": 1, "2": 0}, hours=48.0)
    assert next(iter(summary)) == "degraded"
    degraded = summary["degraded"]
    assert degraded["label"] == DEGRADED_LABEL
    assert (degraded["scores"], degraded["degraded"], degraded["share"]) == (6, 4, 0.666667)
    assert degraded["reasons"] == {"circuit_open": 2, "inference_error": 2}
    assert summary["degraded_scores"] == 4
    assert summary["model_metrics"] == (
        f"*_max_risk use the 2 model scores only; 4 {DEGRADED_LABEL} scores excluded"
    )
    # stay 1 died with a model peak of 0.2, stay 2 survived at 0.8: AUROC 0; had the
    # degraded record's 0.99 counted for stay 1, it would be 1.
    assert summary["auroc_max_risk"] == 0.0
    assert summary["auroc_max_news2"] == 1.0  # NEWS2 9 of a degraded score counts
    json.dumps(summary)
