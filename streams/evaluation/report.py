"""Write an evaluation to a folder: ``metrics.json``, PNG plots and ``report.html``.

The HTML is self-contained: inline CSS, no script, images referenced by relative file
name, so the folder opens from disk (or can be zipped) without a server. NaN becomes
``null`` in the JSON. The headline, first in both files, is the degraded (NEWS2 only)
share of the scores and what the model and NEWS2 metrics were computed on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from html import escape
from pathlib import Path
from typing import Any

from streams.evaluation.burden import crossing_hours
from streams.evaluation.degraded import DEGRADED_LABEL
from streams.evaluation.evaluate import Evaluation, EvaluationConfig
from streams.evaluation.outcomes import StayOutcome
from streams.evaluation.plots import (
    plot_burden,
    plot_calibration,
    plot_pr,
    plot_roc,
    plot_timeline,
)
from streams.evaluation.stays import Track
from vigil.errors import ConfigError

__all__ = ["json_ready", "write_report"]


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if 0 < abs(value) < 0.1:  # small rates (alerts per patient-hour) keep their digits
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _ci(interval: Mapping[str, Any]) -> str:
    return (
        f"{_num(interval['estimate'])} "
        f"<span class=ci>[{_num(interval['ci_low'])}, {_num(interval['ci_high'])}]</span>"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(name: str, alt: str) -> str:
    return f'<img src="{escape(name)}" alt="{escape(alt)}">'


def _dl(items: Mapping[str, Any]) -> str:
    rows = [
        (escape(str(k)), escape(_num(v) if not isinstance(v, str) else v))
        for k, v in items.items()
        if not isinstance(v, dict | list)
    ]
    return _table(["", "value"], rows)


def _used(predictor: str, degraded: Mapping[str, Any]) -> str:
    """Which scores a predictor's numbers come from."""
    if predictor == "model":
        return escape(f"model scores only ({degraded['degraded']} {DEGRADED_LABEL} excluded)")
    if predictor == "news2":
        return escape(f"all scores ({DEGRADED_LABEL} included)")
    return "outcomes file"


def _headline(degraded: Mapping[str, Any]) -> str:
    """The degraded share, loud (red, bold) when any score was degraded."""
    warn = bool(degraded["degraded"])
    reasons = degraded["reasons"]
    carried = "; ".join(
        f"{escape(view)}: {count}"
        for view, count in degraded["model_risk_from_earlier_score"].items()
    )
    lines = [
        f"<section id=degraded class='headline {'warn' if warn else 'ok'}'>",
        f"<h2>Headline: {escape(DEGRADED_LABEL)} scores</h2>",
        f"<p class=big><strong>{escape(degraded['headline'])}</strong></p>",
    ]
    if warn:
        lines.append(
            "<p><strong>Warning:</strong> degraded scoring is the answer to a Triton outage, "
            "never to load; these scores carry no model risk. Reasons: "
            + escape(", ".join(f"{r} {n}" for r, n in reasons.items()))
            + ".</p>"
        )
    lines.append(
        "<p>"
        + escape(f"{degraded['model_metrics'][0].upper()}{degraded['model_metrics'][1:]}.")
        + " "
        + escape(f"{degraded['news2_metrics']}.")
        + f" Evaluated stays the model never scored: {degraded['stays_without_model_score']}."
        + f" {escape(degraded['model_risk_from_earlier_score_units'].capitalize())} whose model"
        + " risk comes from an earlier score than their NEWS2 (the later scores were"
        + f" {escape(DEGRADED_LABEL)}): {carried or 'n/a'}.</p>"
    )
    if degraded["alert_changes"] is not None:
        lines.append(
            f"<p>Alert state changes raised without the model ({escape(DEGRADED_LABEL)}): "
            f"{degraded['degraded_alert_changes']} of {degraded['alert_changes']}.</p>"
        )
    lines.append("</section>")
    return "\n".join(lines)


def _html(metrics: Mapping[str, Any], images: Mapping[str, str], timelines: Sequence[str]) -> str:
    degraded = metrics["degraded"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Vigil evaluation</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}",
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}",
        "th{background:#f3f3f3}.ci{color:#666;font-size:90%}img{max-width:100%}",
        ".headline{border:2px solid #2e7d32;padding:.2em 1em;margin:1em 0}",
        ".headline.warn{border-color:#c62828;background:#fdecea;color:#b71c1c}",
        ".headline .big{font-size:130%}",
        "</style></head><body>",
        f"<h1>Vigil evaluation: {escape(metrics['format'])}</h1>",
        _headline(degraded),
        "<p>Every number is also in <a href='metrics.json'>metrics.json</a>; the definitions are "
        "in docs/evaluation.md. Intervals are 95% percentile bootstrap intervals over stays.</p>",
        "<h2>Inputs</h2>",
        _dl(metrics["stays"]),
        _table(
            ["input", "lines", "records", "bad lines", "first errors"],
            [
                [
                    escape(name),
                    _num(s["lines"]),
                    _num(s["records"]),
                    _num(s["bad_lines"]),
                    escape("; ".join(s["first_errors"])),
                ]
                for name, s in metrics["inputs"]["decoded"].items()
            ],
        ),
        f"<p>Admission (hour 0): {escape(metrics['inputs']['admission'])}. "
        "Scores replaced by a later score of the same stay and event time: "
        f"{metrics['inputs']['superseded_scores']}.</p>",
        "<h2>Discrimination</h2>",
    ]
    rows = []
    for view, predictors in metrics["discrimination"].items():
        for name, d in predictors.items():
            missing = metrics["no_prediction"][view][name]
            rows.append(
                [
                    escape(view),
                    escape(name),
                    _used(name, degraded),
                    _num(d["n"]),
                    _num(d["n_positive"]),
                    _ci(d["auroc"]),
                    _ci(d["auprc"]),
                    _num(missing),
                ]
            )
    parts.append(
        _table(
            [
                "view",
                "predictor",
                "scores used",
                "n",
                "positive",
                "AUROC",
                "AUPRC",
                "stays without",
            ],
            rows,
        )
    )
    parts += [_img(images["roc"], "ROC"), _img(images["pr"], "PR")]
    parts.append(f"<h2>Calibration of the model risk ({_used('model', degraded)})</h2>")
    parts.append(
        _table(
            ["view", "n", "expected calibration error"],
            [[escape(v), _num(c["n"]), _num(c["ece"])] for v, c in metrics["calibration"].items()],
        )
    )
    parts.append(_img(images["calibration"], "calibration"))
    parts.append("<h2>Alerts</h2>")
    alerts = metrics["alerts"]
    if alerts is None:
        parts.append("<p>No alerts were given (--alerts or --alerts-topic).</p>")
    else:
        parts += ["<h3>Burden</h3>", _dl(alerts["burden"]), "<h3>First alert lead time</h3>"]
        parts.append(_dl(alerts["lead_time"]))
    parts.append("<h2>Sensitivity at a fixed burden (simulated: first crossing per stay)</h2>")
    rows = []
    for name, section in metrics["simulated_alerts"].items():
        if not isinstance(section, dict):
            continue
        for entry in section["at_burden"]:
            point = entry["operating_point"] or {}
            lead = entry["lead_time"] or {}
            rows.append(
                [
                    escape(name),
                    _used(name, degraded),
                    _num(entry["max_alerts_per_patient_hour"], 4),
                    _num(point.get("threshold")),
                    _num(point.get("alerts_per_patient_hour"), 4),
                    _num(point.get("sensitivity")),
                    _num(point.get("ppv")),
                    _num(lead.get("lead_hours_median"), 1),
                ]
            )
    parts.append(
        _table(
            [
                "signal",
                "scores used",
                "max burden /h",
                "threshold",
                "burden /h",
                "sensitivity",
                "PPV",
                "median lead h",
            ],
            rows,
        )
    )
    parts.append(_img(images["burden"], "burden"))
    utility = metrics.get("utility")
    if utility is not None:
        parts.append("<h2>PhysioNet 2019 normalised utility</h2>")
        parts.append(
            f"<p>Model: {_used('model', degraded)}. NEWS2: {_used('news2', degraded)}.</p>"
        )
        rows = [
            ["model", _num(utility["model"]["threshold"]), _num(utility["model"]["normalised"])]
        ]
        rows += [["news2", _num(u["threshold"]), _num(u["normalised"])] for u in utility["news2"]]
        best = utility["model_best_threshold_in_sample"]
        rows.append(
            [
                "model, best threshold in sample (optimistic)",
                _num(best["threshold"]),
                _num(best["normalised"]),
            ]
        )
        parts.append(_table(["predictor", "threshold", "normalised utility"], rows))
    parts.append("<h2>Alert timelines</h2>")
    parts += [f"<p>{_img(name, 'timeline')}</p>" for name in timelines]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    result: Evaluation,
    *,
    config: EvaluationConfig,
    inputs: Mapping[str, Any],
    tracks: Mapping[str, Track],
    outcomes: Mapping[str, StayOutcome],
    episodes: Mapping[str, Sequence[float]] | None,
    out_dir: Path,
) -> list[Path]:
    """Write ``metrics.json``, the PNGs and ``report.html`` into ``out_dir``.

    Returns:
        The files written.

    Raises:
        ConfigError: ``out_dir`` cannot be created or written.
    """
    # The degraded share is the headline: first after the format (a key keeps its place).
    metrics = json_ready(
        {
            "format": config.data_format,
            "degraded": result.metrics["degraded"],
            "config": asdict(config),
            "inputs": dict(inputs),
        }
        | result.metrics
    )
    images = {
        "roc": "roc.png",
        "pr": "precision_recall.png",
        "calibration": "calibration.png",
        "burden": "burden.png",
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_roc(result.views, out_dir / images["roc"])
        plot_pr(result.views, out_dir / images["pr"])
        plot_calibration(result.views, out_dir / images["calibration"], config.n_bins)
        plot_burden(result.sweeps, config.max_burdens, out_dir / images["burden"])
        timelines: list[str] = []
        for number, patient_id in enumerate(result.timeline_stays, start=1):
            name = f"timeline_{number}.png"
            track = tracks[patient_id]
            if episodes is not None:
                marks, threshold = list(episodes.get(patient_id, [])), None
            else:  # no alert stream: mark the simulated first crossing of the threshold
                crossing = crossing_hours(track, "risk", config.risk_threshold)
                marks = [] if crossing is None else [crossing]
                threshold = config.risk_threshold
            plot_timeline(
                tracks[patient_id], outcomes[patient_id], marks, threshold, out_dir / name
            )
            timelines.append(name)
        (out_dir / "metrics.json").write_text(
            json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (out_dir / "report.html").write_text(_html(metrics, images, timelines), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from exc
    names = [*images.values(), *timelines, "metrics.json", "report.html"]
    return [out_dir / name for name in names]
