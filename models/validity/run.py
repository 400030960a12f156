"""``vigil validate``: analytical and clinical validity into ``validity.json`` and
``report.html`` (with SVG plots) under ``--out``."""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

import numpy as np
import torch

from models.deterioration.step_train import load_step_checkpoint
from models.validity.analytical import (
    noise_sensitivity,
    recording_resolution,
    replay_twice,
    unit_round_trips,
)
from models.validity.clinical import REGIMES, clinical_validity, load_predictions
from models.validity.plots import (
    plot_calibration,
    plot_forest,
    plot_frontier,
    plot_loso,
    plot_noise,
    plot_replay,
)
from models.validity.settings import ValidateSettings
from streams.datasets.physionet2012 import load_stays
from vigil.errors import ConfigError

__all__ = ["run_validate"]


def run_validate(settings: ValidateSettings) -> dict[str, Any]:
    """Writes ``validity.json``, the plots and ``report.html``; returns the JSON content.

    Raises:
        ConfigError: No federation output, checkpoint or recording.
    """
    began = time.monotonic()
    fed_path = settings.federation_dir / "federation.json"
    if not fed_path.is_file():
        raise ConfigError(
            f"{fed_path} not found; run vigil federate --out {settings.federation_dir} first"
        )
    federation = json.loads(fed_path.read_text())
    predictions = load_predictions(settings.federation_dir)
    if not settings.checkpoint.is_file():
        raise ConfigError(f"step checkpoint {settings.checkpoint} not found")
    torch.set_num_threads(settings.threads)
    net, _ = load_step_checkpoint(settings.checkpoint)
    stays, _ = load_stays(settings.recording_dir)
    if not stays:
        raise ConfigError(f"no stays in {settings.recording_dir}")
    resolution = recording_resolution(stays)
    analytical: dict[str, Any] = {
        "checkpoint": str(settings.checkpoint),
        "recording": str(settings.recording_dir),
        "replay": replay_twice(net, stays[: settings.replay_stays]),
        "measurement_noise": {
            "noise": "Gaussian, sd = the parameter's recording resolution in the recording "
            "(most common gap between distinct values): a floor on measurement error, not a "
            "device accuracy specification",
            **noise_sensitivity(net, stays[: settings.noise_stays], resolution, seed=settings.seed),
        },
        "unit_round_trips": unit_round_trips(),
    }
    clinical = clinical_validity(predictions, federation, resamples=settings.bootstrap_resamples)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    labels = predictions["label"].astype(np.float64)
    plot_forest(clinical["groups"], "auroc", out / "auroc_by_group.svg")
    plot_forest(clinical["groups"], "ece", out / "ece_by_group.svg")
    plot_calibration(
        labels,
        {r: predictions[f"risk_{r}"].astype(np.float64) for r in REGIMES},
        out / "calibration.svg",
    )
    images = ["auroc_by_group.svg", "ece_by_group.svg", "calibration.svg"]
    if clinical["leave_one_site_out"]:
        plot_loso(clinical["leave_one_site_out"], out / "leave_one_site_out.svg")
        images.append("leave_one_site_out.svg")
    if federation.get("site_invariance_frontier"):
        plot_frontier(federation["site_invariance_frontier"], out / "site_invariance.svg")
        images.append("site_invariance.svg")
    plot_noise(analytical["measurement_noise"]["parameters"], out / "noise.svg")
    plot_replay(analytical["replay"]["trajectories"], out / "replay.svg")
    report: dict[str, Any] = {
        "simulated_sites": federation.get("simulated_sites"),
        "federation": str(fed_path),
        "analytical": analytical,
        "clinical": clinical,
        "site_invariance_frontier": federation.get("site_invariance_frontier", []),
        "wall_seconds": round(time.monotonic() - began, 1),
    }
    (out / "validity.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "report.html").write_text(_html(report, images), encoding="utf-8")
    return report


def _fmt(entry: Any) -> str:
    if not entry:
        return "–"
    ci = entry["interval"]
    tail = f" <span class=ci>[{ci[0]:.3f}, {ci[1]:.3f}]</span>" if ci else ""
    return f"{entry['estimate']:.3f}{tail}"


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "th{background:#f3f3f3}.ci{color:#666;font-size:90%}img{max-width:100%}"
    ".warn{background:#fff3e0;padding:.5em 1em}"
)


def _row(cells: list[Any], head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _analytical_html(an: dict[str, Any]) -> list[str]:
    replay, units, noise = an["replay"], an["unit_round_trips"], an["measurement_noise"]
    return [
        "<h2>Analytical validity</h2>",
        f"<p><b>Replay</b> ({escape(replay['path'])}): {replay['stays']} stays, "
        f"{replay['scores_per_run']} scores per run, identical: <b>{replay['identical']}</b> "
        f"(max difference {replay['max_abs_diff']:.3g}).</p><img src='replay.svg'>",
        f"<p><b>Unit round trips</b>: {units['codes']} codes, every accepted unit, "
        f"largest relative error {units['max_rel_error']:.2g}.</p>",
        f"<p><b>Measurement noise</b> ({escape(noise['noise'])}); {noise['stays']} stays, "
        "risk at 48 h.</p><img src='noise.svg'>",
    ]


def _clinical_html(cl: dict[str, Any]) -> list[str]:
    parts = ["<h2>Clinical validity</h2>"]
    regimes = list(cl["groups"])
    first = cl["groups"][regimes[0]]
    for metric in ("auroc", "auprc", "calibration_slope", "calibration_intercept", "ece"):
        parts.append(f"<h3>{metric.replace('_', ' ')}</h3><table>")
        parts.append(_row(["group", *regimes, "n (events)"], head=True))
        for group, entry in first.items():
            cells = [_fmt(cl["groups"][r].get(group, {}).get(metric)) for r in regimes]
            parts.append(_row([escape(group), *cells, f"{entry['n']} ({entry['events']})"]))
        parts.append("</table>")
    if cl["leave_one_site_out"]:
        parts.append("<h3>Leave one site out (AUROC, left-out site's test stays)</h3><table>")
        heads = ["left out", "central", "federated", "local-only (mean of other sites' models)"]
        parts.append(_row(heads, head=True))
        for row in cl["leave_one_site_out"]:
            parts.append(
                _row(
                    [
                        escape(row["site"]),
                        row["central"],
                        row["federated"],
                        row["local_only_mean_of_other_sites"],
                    ]
                )
            )
        parts.append("</table>")
    return parts


def _html(report: dict[str, Any], images: list[str]) -> str:
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Vigil validity</title><style>{_STYLE}</style></head><body>",
        "<h1>Vigil validity report</h1>",
        f"<p class=warn>{escape(str(report['simulated_sites']))}</p>",
        "<p>Every number is in <a href='validity.json'>validity.json</a>; definitions in "
        "docs/validity.md. Intervals: 95% percentile bootstrap over stays. Test stays only, "
        "risk at 48 h.</p>",
        *_analytical_html(report["analytical"]),
        *_clinical_html(report["clinical"]),
    ]
    if report["site_invariance_frontier"]:
        parts.append("<h3>Site invariance (gradient reversal on the representation)</h3><table>")
        heads = ["strength", "pooled test AUROC", "site probe AUROC (one-vs-rest, mean)"]
        parts.append(_row(heads, head=True))
        for row in report["site_invariance_frontier"]:
            cells = [f"{row['strength']:g}", row["pooled_test_auroc"], row["site_probe_auroc_mean"]]
            parts.append(_row(cells))
        parts.append("</table>")
    parts += [f"<img src='{name}' alt='{name}'>" for name in images]
    parts.append("</body></html>")
    return "\n".join(parts)
