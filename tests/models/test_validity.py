"""The validity report's pure pieces: calibration line, bootstrap summary, unit round
trips, site partition, and the command's refusal (one error, exit 1) without a federation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.federated.simulate import fedavg
from models.federated.sites import SITE_NAMES, make_sites
from models.validity.analytical import unit_round_trips
from models.validity.metrics import calibration_line, summarise
from streams.datasets.physionet2012 import load_stays
from vigil.cli import app

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"


def test_calibration_line_recovers_a_known_miscalibration() -> None:
    rng = np.random.default_rng(0)
    logit = rng.normal(-1.5, 1.5, 20000)
    true = 1 / (1 + np.exp(-logit))
    labels = (rng.random(logit.size) < true).astype(np.float64)
    # the model over-states: its logit is twice the truth, shifted by +0.5
    risks = 1 / (1 + np.exp(-(2 * logit + 0.5)))
    slope, intercept = calibration_line(labels, risks)
    assert slope == pytest.approx(0.5, abs=0.03)
    assert intercept == pytest.approx(-0.25, abs=0.05)


def test_summary_has_intervals_and_refuses_one_class() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.2).astype(np.float64)
    risks = np.clip(labels * 0.3 + rng.random(400) * 0.6, 0.01, 0.99)
    out = summarise(labels, risks, resamples=50)
    lo, hi = out["auroc"]["interval"]
    assert lo <= out["auroc"]["estimate"] <= hi
    assert out["n"] == 400
    assert summarise(np.zeros(10), np.full(10, 0.1), resamples=10)["auroc"] is None


def test_unit_round_trips_are_exact_to_rounding() -> None:
    result = unit_round_trips(points=7)
    assert result["codes"] > 30
    assert result["max_rel_error"] < 1e-12


def test_sites_are_disjoint_and_cover_the_split() -> None:
    stays, outcomes = load_stays(DEMO)
    sites = make_sites(stays, outcomes)
    assert [s.name for s in sites] == list(SITE_NAMES.values())
    seen = [r for s in sites for r in s.all_ids()]
    assert len(seen) == len(set(seen)) == len(stays)
    icu = {s.record_id: s.descriptors["ICUType"] for s in stays}
    assert all(icu[r] == s.icu_type for s in sites for r in s.all_ids())


def test_fedavg_weights_by_examples() -> None:
    got = fedavg([[np.ones(3, np.float32)], [np.zeros(3, np.float32)]], [3, 1])
    assert np.allclose(got[0], 0.75)


def test_validate_without_a_federation_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["validate", "--out", str(tmp_path / "v"), "--federation-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # the console wraps at the terminal width
    assert text.startswith("error: ")
    assert "federation.json not found; run vigil federate --out" in text
