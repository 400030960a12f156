"""``deterioration_step``'s own OOD verdict: the committed TorchScript against the float64
numpy reference on real stays stepped hour by hour, a synthetic shift flagged, the OOD
part of the config contract (names, dtypes and the ``threshold`` parameter of ``ood``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.common.triton_model import Runner
from models.deterioration.step_export import BLOCK_ROWS, MODEL_NAME, OOD_FIT, tensor_specs
from models.deterioration.step_train import load_step_checkpoint
from models.ood.shifts import apply_shift
from models.ood.step import OOD_OUTPUT_NAMES, reference_scores
from models.ood.step_train import hours_since_seen_at, load_fit, ood_features, prepare_minutes
from streams.core.last_seen import hours_since_seen_on_ticks
from streams.core.step_features import bin_inputs, pack_bins
from streams.datasets.physionet2012 import Stay, load_stays

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "models" / "weights" / "deterioration_step.pt"
MODEL_DIR = ROOT / "triton_repo" / MODEL_NAME
DEMO_DIR = ROOT / "data" / "physionet2012-demo"
ADMIT = datetime(2012, 1, 1, tzinfo=UTC)
HOURS = 48
N_STAYS = 16
RELATIVE = 1e-3
"""float32 served distances against the float64 reference (measured: 1.1e-6)."""

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    stays, _ = load_stays(DEMO_DIR)
    net, _ = load_step_checkpoint(CHECKPOINT)
    module = torch.jit.load(str(MODEL_DIR / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    module.eval()
    inputs, outputs = tensor_specs(net.config, net.layout.width)
    bool_out = {s.name for s in outputs if s.data_type == "TYPE_BOOL"}
    runner = Runner(
        module,
        [(s.name, np.float32, s.dims) for s in inputs],
        [(s.name, np.bool_ if s.name in bool_out else np.float32) for s in outputs],
        block_rows=BLOCK_ROWS,
    )
    arrays, meta = load_fit(ROOT / OOD_FIT)
    return {"stays": stays[:N_STAYS], "net": net, "runner": runner, "fit": arrays, "meta": meta}


def _serve_hourly(
    setup: dict[str, Any],
    stays: list[Stay],
    requests: list[dict[str, npt.NDArray[Any]]] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Every OOD output ``[H+1, N]`` at hours 0..48, the worker's way: each hour the bin
    closed since the last call (committed) and the open bin, ``state_out`` carried. Each
    hour's request is appended to ``requests`` when given."""
    net, runner = setup["net"], setup["runner"]
    config, n = net.config, len(stays)
    arrays = [s.arrays(ADMIT) for s in stays]
    observations = [s.observations(ADMIT) for s in stays]
    state = np.zeros((n, net.layout.width), dtype=np.float32)
    out: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in OOD_OUTPUT_NAMES}
    for hour in range(HOURS + 1):
        packed, commits = [], []
        for obs in observations:
            closed = bin_inputs(obs, admit_time=ADMIT, index=hour - 1) if hour > 0 else None
            open_bin = bin_inputs(
                obs, admit_time=ADMIT, index=hour, end_time=ADMIT + timedelta(hours=hour)
            )
            packed.append(pack_bins([b for b in (closed, open_bin) if b is not None]))
            commits.append([0.0 if closed is None else 1.0])
        request = {
            "state": state,
            "bins_values": np.stack([p[0] for p in packed]),
            "bins_mask": np.stack([p[1] for p in packed]),
            "bins_delta_hours": np.stack([p[2] for p in packed]),
            "bins_valid": np.stack([p[3] for p in packed]),
            "commit_bins": np.array(commits, dtype=np.float32),
            "statics": np.stack([a.statics for a in arrays]),
            "static_mask": np.stack([a.static_mask for a in arrays]),
            "image_embeddings": np.zeros((n, config.max_images, config.image_dim), np.float32),
            "image_age_hours": np.zeros((n, config.max_images), np.float32),
            "image_mask": np.zeros((n, config.max_images), np.float32),
            "hours_since_seen": np.stack([_since(obs, hour) for obs in observations]),
        }
        assert runner.check(request) == n
        if requests is not None:
            requests.append(request)
        result = runner.run(request)
        state = result["state_out"]
        for name in OOD_OUTPUT_NAMES:
            out[name].append(result[name][:, 0])
    return {name: np.stack(v) for name, v in out.items()}


def _since(observations: Any, hour: int) -> npt.NDArray[np.float32]:
    """``hours_since_seen`` the worker's way: its epoch-ms series at the scoring time."""

    def ms(moment: datetime) -> int:
        return int(moment.timestamp() * 1000)

    series = {code: [(ms(t), v) for t, v in points] for code, points in observations.items()}
    return hours_since_seen_on_ticks(
        series, admit=ms(ADMIT), at=ms(ADMIT + timedelta(hours=hour)), ticks_per_hour=3.6e6
    )


def _reference(setup: dict[str, Any], stays: list[Stay]) -> dict[str, npt.NDArray[Any]]:
    """The float64 reference ``[H+1, N]`` from the full-sequence path of the checkpoint."""
    net = setup["net"]
    arrays = [s.arrays(ADMIT) for s in stays]
    minutes = range(0, HOURS * 60 + 1, 60)
    w = ood_features(
        net, prepare_minutes(arrays, net, minutes), hours_since_seen_at(arrays, minutes)
    )
    ref = reference_scores(setup["fit"], w.representation, w.inputs, w.steps)
    return {k: v.reshape(HOURS + 1, len(stays)) for k, v in ref.items()}


def test_served_verdict_equals_the_reference_on_real_stays(setup):
    served = _serve_hourly(setup, setup["stays"])
    ref = _reference(setup, setup["stays"])
    for name in ("representation_distance", "input_distance", "input_threshold"):
        gap = np.abs(served[name] - ref[name]) / np.maximum(np.abs(ref[name]), 1.0)
        assert float(gap.max()) <= RELATIVE, name
    gap = np.abs(served["distance"] - ref["combined"]) / np.maximum(ref["combined"], 1.0)
    assert float(gap.max()) <= RELATIVE
    for flag, score in (
        ("ood", ref["combined"]),
        ("representation_ood", ref["representation"]),
        ("input_ood", ref["input"]),
    ):
        clear = np.abs(score - 1.0) > RELATIVE  # away from the threshold
        np.testing.assert_array_equal(served[flag][clear], score[clear] > 1.0)
    np.testing.assert_array_equal(served["ood"], served["representation_ood"] | served["input_ood"])
    np.testing.assert_array_equal(served["ood"], served["distance"] > 1.0)
    assert float(ref["combined"].max()) > 0.0  # real distances, not a degenerate fit


def test_a_rows_outputs_do_not_depend_on_the_other_rows_of_its_block(setup):
    """Real rows from every hour (so every OOD bucket, from a single row in its bucket to
    a whole block of them): each row's outputs in blocks of mixed rows are bit-identical to
    its outputs alone (a block of copies of it). Replays group rows differently; they must
    not score them differently (docs/replay.md, "Determinism of step scoring")."""
    hourly: list[dict[str, npt.NDArray[Any]]] = []
    _serve_hourly(setup, setup["stays"], hourly)
    pool = {name: np.concatenate([r[name] for r in hourly]) for name in hourly[0]}
    rows = len(pool["state"])
    runner = setup["runner"]
    rng = np.random.default_rng(20261206)
    alone: dict[int, dict[str, npt.NDArray[Any]]] = {}
    for trial in range(12):
        size = int(rng.integers(2, 2 * BLOCK_ROWS + 1))
        pick = rng.choice(rows, size=size, replace=False)
        mixed = runner.run({name: values[pick] for name, values in pool.items()})
        for position in rng.choice(size, size=4, replace=False):
            row = int(pick[position])
            if row not in alone:
                alone[row] = runner.run(
                    {name: values[row : row + 1] for name, values in pool.items()}
                )
            for name, value in alone[row].items():
                assert np.array_equal(mixed[name][position], value[0]), (trial, row, name)


def test_a_synthetic_shift_is_flagged(setup):
    """Temperatures in °F read as °C are dropped by the artifact filter (a stay with no
    temperature at all): flagged by the input channel once the stay has data (docs/ood.md,
    'OOD on the step model'). Synthetic shift, not a clinical finding."""
    stays = [s for s in setup["stays"] if (s.code_index == _temp_index()).any()]
    shifted = [apply_shift(s, "temperature_fahrenheit") for s in stays]
    served = _serve_hourly(setup, shifted)
    assert len(stays) >= 8
    assert served["input_ood"][HOURS].all()
    assert served["ood"][HOURS].all()
    plain = _serve_hourly(setup, stays)
    assert float(plain["ood"][HOURS].mean()) < 0.5


def _temp_index() -> int:
    from streams.core.features import SERIES_CODES

    return SERIES_CODES.index("Temp")


def _outputs(text: str) -> list[tuple[str, str]]:
    block = text.split("output [", 1)[1].split("\n]\n", 1)[0]
    return re.findall(r'name: "(\w+)"\s+data_type: (\w+)', block)


def test_config_declares_the_ood_models_outputs_and_threshold():
    step = (MODEL_DIR / "config.pbtxt").read_text()
    ood = (ROOT / "triton_repo" / "ood" / "config.pbtxt").read_text()
    step_outputs, ood_outputs = dict(_outputs(step)), _outputs(ood)
    for name in ("distance", "ood", "representation_ood", "input_ood"):
        assert name in step_outputs
    for name, dtype in ood_outputs:
        assert step_outputs[name] == dtype, name
    assert list(step_outputs)[:3] == ["risk", "state_out", "fused"]
    assert 'key: "threshold"\n  value: { string_value: "1.0" }' in step
    for dims in re.findall(
        r'name: "(?:distance|ood|\w+_ood)"\s+data_type: \w+\s+dims: \[ (.*?) \]', step
    ):
        assert dims == "1"
