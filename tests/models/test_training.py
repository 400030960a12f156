"""Training: determinism, same feature path offline and streamed, loader, metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from models.deterioration.baselines import fit_platt
from models.deterioration.train import TrainResult, make_windows, split_record_ids, train
from streams.core.features import SERIES_CODES, build_features
from streams.core.risk_metrics import auprc, auroc
from streams.datasets.physionet2012 import is_valid_value, load_stays, read_stay
from tests.models.conftest import DEMO_DIR, tiny_settings
from vigil.errors import ModelError


def test_training_is_deterministic(tiny_run: TrainResult, tmp_path: Path):
    again = train(tiny_settings(tmp_path / "again.pt"))
    assert again.state_dict.keys() == tiny_run.state_dict.keys()
    for name, tensor in tiny_run.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name
    assert again.metrics["test"] == tiny_run.metrics["test"]


def test_offline_tensors_equal_streamed_tensors():
    stays, _ = load_stays(DEMO_DIR, record_ids=None)
    admit = datetime(2024, 5, 1, 23, 17, tzinfo=UTC)
    for stay in stays[:3]:
        packed = stay.arrays(admit)
        observations = stay.observations(admit)
        for hours in (1, 6, 24, 37, 48):
            offline = make_windows([packed], [hours])
            streamed = build_features(
                observations,
                stay.descriptors,
                admit_time=admit,
                end_time=admit + timedelta(hours=hours),
            )
            np.testing.assert_array_equal(offline.values[0], streamed.values)
            np.testing.assert_array_equal(offline.mask[0], streamed.mask)
            np.testing.assert_array_equal(offline.delta_hours[0], streamed.delta_hours)
            np.testing.assert_array_equal(offline.statics[0], streamed.statics)
            np.testing.assert_array_equal(offline.static_mask[0], streamed.static_mask)


def test_loader_drops_artifacts_and_reads_descriptors(tmp_path: Path):
    path = tmp_path / "1.txt"
    path.write_text(
        "Time,Parameter,Value\n00:00,RecordID,1\n00:00,Age,70\n00:00,Gender,1\n"
        "00:00,Height,-1\n00:00,ICUType,2\n00:00,Weight,80\n00:05,Weight,81\n"
        "00:10,Temp,-17.8\n00:10,HR,0\n25:30,pH,735\n25:30,pH,7.3\n"
    )
    stay = read_stay(path)
    assert stay.record_id == 1
    assert dict(stay.descriptors) == {
        "Age": 70.0,
        "Gender": 1.0,
        "Height": None,
        "ICUType": 2.0,
        "Weight": 80.0,
    }
    codes = [SERIES_CODES[i] for i in stay.code_index]
    assert codes == ["Weight", "HR", "pH"]  # Temp -17.8 and pH 735 are artifacts
    assert stay.minutes.tolist() == [5, 10, 25 * 60 + 30]
    assert not is_valid_value("Temp", -17.8)


def test_unreadable_file_names_itself(tmp_path: Path):
    path = tmp_path / "2.txt"
    path.write_text("Time,Parameter,Value\n00:00,RecordID,2\nnot,a,row,at all\n")
    with pytest.raises(ModelError, match=r"2\.txt"):
        read_stay(path)
    with pytest.raises(ModelError, match=r"missing\.txt"):
        read_stay(tmp_path / "missing.txt")


def test_split_is_stratified_disjoint_and_fixed():
    labels = {i: int(i % 7 == 0) for i in range(1000)}
    split = split_record_ids(labels, seed=2012)
    ids = [set(v) for v in split.values()]
    assert sum(len(s) for s in ids) == 1000
    assert not ids[0] & ids[1]
    assert not ids[0] & ids[2]
    assert not ids[1] & ids[2]
    assert split == split_record_ids(labels, seed=2012)
    deaths = {name: sum(labels[i] for i in v) for name, v in split.items()}
    assert deaths["validation"] == deaths["test"] == round(0.2 * sum(labels.values()))


def test_metrics_match_definitions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # ties on purpose
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(y, s) == pytest.approx(pairs)
    assert auprc([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.2]) == pytest.approx(1.0)
    assert auprc([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx((1.0 + 2 / 3) / 2)


def test_calibration_is_monotone():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=500)
    labels = (rng.random(500) < 1 / (1 + np.exp(-2 * logits))).astype(float)
    scale, bias = fit_platt(logits, labels)
    assert scale > 0
    grid = np.linspace(-5, 5, 101)
    risk = 1 / (1 + np.exp(-(scale * grid + bias)))
    assert (np.diff(risk) > 0).all()
    # Even anti-correlated logits cannot make calibration decreasing.
    scale_rev, _ = fit_platt(-logits, labels)
    assert scale_rev > 0


def test_tiny_run_writes_checkpoint_with_split(tiny_run: TrainResult):
    payload = torch.load(tiny_run.checkpoint, weights_only=True)
    split = payload["meta"]["split"]
    assert sorted(split) == ["test", "train", "validation"]
    assert sum(len(v) for v in split.values()) == 40
    assert float(payload["state_dict"]["calibration_scale"]) > 0
