"""Degraded (NEWS2 only) scores: counted in the headline, kept out of the model's metrics.

The report tests run the real evaluation (decoding, tracks, bootstrap, report files) on
small score files; nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.core.events import ScoreRecord
from streams.core.risk_metrics import auroc
from streams.evaluation.degraded import (
    DEGRADED_LABEL,
    DegradedShare,
    degraded_share,
    model_risk_from_earlier_score,
)
from streams.evaluation.run import EvaluateRequest, run_evaluation
from streams.evaluation.stays import build_tracks, value_at

from .factory import alert, score

N_STAYS = 20
MODEL_HOURS = range(0, 41, 8)  # 6 model scores per stay


def _degraded(record: ScoreRecord, reason: str) -> ScoreRecord:
    """``record`` as the worker would never send it: degraded, yet carrying a risk."""
    return record.model_copy(update={"degraded": True, "degraded_reason": reason})


def _model_risk(stay: int, died: bool, hour: int) -> float:
    rng = np.random.default_rng(stay * 100 + hour)
    return float(np.clip(0.3 + 0.3 * died + rng.normal(0, 0.2), 0.01, 0.99))


def _write(tmp_path: Path, *, with_degraded: bool) -> tuple[Path, Path, Path]:
    """Scores, alerts and outcomes of N_STAYS stays (every other one dies).

    With ``with_degraded``, each stay also gets two degraded scores after its last model
    score and before 48 h: one carrying an inverted risk (1 for survivors, 0 for deaths)
    and a NEWS2 that separates perfectly, one with no risk at all.
    """
    rows = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    lines: list[str] = []
    alerts: list[str] = []
    for i in range(N_STAYS):
        pid = str(150000 + i)
        died = i % 2 == 0
        rows.append(f"{pid},{10 + i},{i % 7},5,-1,{int(died)}")
        for hour in MODEL_HOURS:
            lines.append(score(pid, hour, _model_risk(i, died, hour), news2=3).model_dump_json())
        if with_degraded:
            leaky = score(pid, 44, 0.0 if died else 1.0, news2=9 if died else 0)
            lines.append(_degraded(leaky, "inference_error").model_dump_json())
            lines.append(score(pid, 46, None, news2=9 if died else 0).model_dump_json())
            if died:
                degraded_alert = alert(pid, 46).model_copy(update={"degraded": True})
                alerts.append(degraded_alert.model_dump_json())
        alerts.append(alert(pid, 40).model_dump_json())
    (tmp_path / "Outcomes-a.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "scores.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "alerts.jsonl").write_text("\n".join(alerts) + "\n")
    return tmp_path / "scores.jsonl", tmp_path / "alerts.jsonl", tmp_path / "Outcomes-a.txt"


def _evaluate(tmp_path: Path, *, with_degraded: bool) -> tuple[dict[str, Any], str]:
    folder = tmp_path / ("degraded" if with_degraded else "clean")
    folder.mkdir()
    scores, alerts, outcomes = _write(folder, with_degraded=with_degraded)
    report = folder / "report"
    run_evaluation(
        EvaluateRequest(
            scores=scores,
            topic=None,
            alerts=alerts,
            alerts_topic=None,
            outcomes=[outcomes],
            data_format="physionet2012",
            report=report,
            kafka_bootstrap="127.0.0.1:9092",
            n_resamples=20,
        )
    )
    metrics: dict[str, Any] = json.loads((report / "metrics.json").read_text())
    return metrics, (report / "report.html").read_text()


def _offline_model_auroc(hours: float) -> float:
    """The model's AUROC from the model scores alone: the last one at or before ``hours``."""
    labels, risks = [], []
    for i in range(N_STAYS):
        died = i % 2 == 0
        last = max(h for h in MODEL_HOURS if h <= hours)
        labels.append(float(died))
        risks.append(_model_risk(i, died, last))
    return auroc(np.array(labels), np.array(risks))


def test_degraded_scores_never_reach_the_model_metrics(tmp_path: Path) -> None:
    clean, _ = _evaluate(tmp_path, with_degraded=False)
    mixed, _ = _evaluate(tmp_path, with_degraded=True)
    for view, hours in (("48h", 48.0), ("24h", 24.0)):
        model = mixed["discrimination"][view]["model"]
        assert model == clean["discrimination"][view]["model"], view
        assert model["auroc"]["estimate"] == pytest.approx(_offline_model_auroc(hours))
        assert mixed["calibration"][view] == clean["calibration"][view]
    # Had the inverted risks at 44 h leaked in, the model's 48 h AUROC would be 0.
    assert mixed["discrimination"]["48h"]["model"]["auroc"]["estimate"] > 0.5

    # Simulated alerts on the risk: the same crossings (patient time, the burden's
    # denominator, is observation time and rightly grows with the degraded scores).
    def crossings(metrics: dict[str, Any]) -> list[tuple[float, int, float, float]]:
        curve = metrics["simulated_alerts"]["model"]["curve"]
        return [(p["threshold"], p["stays_alerted"], p["sensitivity"], p["ppv"]) for p in curve]

    assert crossings(mixed) == crossings(clean)
    assert max(p[0] for p in crossings(mixed)) < 1.0  # the leaked risk 1.0 never appears
    assert mixed["no_prediction"]["48h"]["model"] == 0


def test_news2_baseline_uses_every_score_and_says_so(tmp_path: Path) -> None:
    clean, _ = _evaluate(tmp_path, with_degraded=False)
    mixed, html = _evaluate(tmp_path, with_degraded=True)
    # Every model score has NEWS2 3 (no discrimination); the degraded ones separate.
    assert clean["discrimination"]["48h"]["news2"]["auroc"]["estimate"] == pytest.approx(0.5)
    assert mixed["discrimination"]["48h"]["news2"]["auroc"]["estimate"] == pytest.approx(1.0)
    assert mixed["degraded"]["news2_metrics"] == (
        f"NEWS2 baselines use all {N_STAYS * 8} scores, {DEGRADED_LABEL} scores included"
    )
    assert f"all scores ({DEGRADED_LABEL} included)" in html


def test_the_headline_is_the_degraded_share(tmp_path: Path) -> None:
    metrics, html = _evaluate(tmp_path, with_degraded=True)
    total, degraded = N_STAYS * 8, N_STAYS * 2
    assert list(metrics)[:2] == ["format", "degraded"]  # first thing in metrics.json
    section = metrics["degraded"]
    assert section["label"] == DEGRADED_LABEL
    assert (section["scores"], section["degraded"], section["model_scores"]) == (
        total,
        degraded,
        total - degraded,
    )
    assert section["share"] == pytest.approx(0.25)
    assert section["reasons"] == {"circuit_open": N_STAYS, "inference_error": N_STAYS}
    assert section["model_metrics"] == (
        f"model metrics use the {total - degraded} model scores only; "
        f"{degraded} {DEGRADED_LABEL} scores excluded"
    )
    assert section["stays_without_model_score"] == 0
    # At 48 h every stay's latest score is degraded, so its model risk is the 40 h one.
    assert section["model_risk_from_earlier_score"] == {"48h": N_STAYS, "24h": 0}
    assert section["alert_changes"] == N_STAYS + N_STAYS // 2
    assert section["degraded_alert_changes"] == N_STAYS // 2

    headline = f"{DEGRADED_LABEL}: {degraded} of {total} scores (25.0%)"
    assert section["headline"] == f"{headline}: circuit_open 20, inference_error 20"
    top = html.index("<h2>Inputs</h2>")
    assert headline in html[:top], "the degraded share left the top of report.html"
    assert "class='headline warn'" in html[:top]
    assert "circuit_open 20, inference_error 20" in html[:top]
    assert f"{degraded} {DEGRADED_LABEL} scores excluded" in html[:top]
    assert f"model scores only ({degraded} {DEGRADED_LABEL} excluded)" in html


def test_a_clean_run_says_zero_degraded_in_the_headline(tmp_path: Path) -> None:
    metrics, html = _evaluate(tmp_path, with_degraded=False)
    total = N_STAYS * 6
    assert metrics["degraded"]["degraded"] == 0
    assert metrics["degraded"]["share"] == 0
    assert metrics["degraded"]["reasons"] == {}
    top = html.index("<h2>Inputs</h2>")
    assert f"{DEGRADED_LABEL}: 0 of {total} scores (0.0%)" in html[:top]
    assert "class='headline ok'" in html[:top]


def test_share_counts_and_text() -> None:
    share = DegradedShare()
    assert share.share is None
    assert share.headline() == f"{DEGRADED_LABEL}: no scores yet"
    for _ in range(1999):
        share.add(False)
    share.add(True, None)
    assert share.share == pytest.approx(0.0005)
    assert share.headline() == f"{DEGRADED_LABEL}: 1 of 2000 scores (<0.1%): unspecified 1"
    share.add(True, "inference_error")
    share.add(True, "circuit_open")
    share.add(True, "circuit_open")
    assert share.reasons_text() == "circuit_open 2, inference_error 1, unspecified 1"
    assert share.as_dict()["reasons"] == {
        "circuit_open": 2,
        "inference_error": 1,
        "unspecified": 1,
    }
    assert share.as_dict()["alert_changes"] is None


def test_degraded_share_of_records() -> None:
    records = [score("a", 0, 0.2), score("a", 1, None), _degraded(score("b", 0, 0.9), "x")]
    share = degraded_share(records, alerts=[alert("a", 1)])
    assert (share.scores, share.degraded, share.model_scores) == (3, 2, 1)
    assert dict(share.reasons) == {"circuit_open": 1, "x": 1}
    assert (share.alerts, share.degraded_alerts) == (1, 0)
    assert "patient" not in json.dumps(share.as_dict())


def test_a_degraded_record_with_a_risk_is_not_a_model_score() -> None:
    tracks, _ = build_tracks([score("a", 0, 0.2), _degraded(score("a", 5, 0.9), "x")])
    assert value_at(tracks["a"], "risk", 6) == pytest.approx(0.2)
    assert value_at(tracks["a"], "news2", 6) == 3


def test_model_risk_from_an_earlier_score() -> None:
    tracks, _ = build_tracks(
        [score("a", 0, None), score("a", 2, 0.3), score("a", 4, None), score("a", 6, 0.5)]
    )
    a = tracks["a"]
    # -1: no score; 0: degraded but nothing earlier; 3: latest is 2 h (model);
    # 4 and 5: latest is the degraded 4 h, the model's 2 h is used; 7: latest is model.
    assert model_risk_from_earlier_score(a, [-1, 0, 3, 4, 5, 7]) == 2
