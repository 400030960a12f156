"""Analytical validity: the software computes the same thing, reliably.

* **Replay determinism**: a recording (stays) is replayed twice, hour by hour, through
  the worker's pure step path (:func:`streams.core.step_features.bin_inputs` and
  :func:`~streams.core.step_features.pack_bins`, the functions the worker calls) and the
  step model's eager forward carrying the state, with fresh objects each time; the two
  runs' risks must be bit-identical. This is offline (no Kafka, no Triton, not
  :class:`streams.core.pipeline.Processor`).
* **Measurement noise**: each parameter's values are perturbed by Gaussian noise with
  a standard deviation of its **recording resolution** (the most common gap between
  distinct recorded values in the stays given; a floor on measurement error, not a
  device accuracy specification), and the change in risk at 48 h is summarised.
* **Unit round trips**: for every accepted unit of every code, canonical values are
  converted to that unit and back through :func:`streams.core.units.normalise`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.deterioration.step_network import StepEnsemble
from models.deterioration.step_train import prepare
from streams.core.codes import CODES
from streams.core.features import SERIES_CODES
from streams.core.step_features import bin_inputs, pack_bins
from streams.core.units import CONVERSIONS, normalise
from streams.datasets.physionet2012 import Stay

__all__ = ["noise_sensitivity", "recording_resolution", "replay_twice", "unit_round_trips"]


def _replay(net: StepEnsemble, stay: Stay, hours: int) -> npt.NDArray[np.float32]:
    """Risk after each closed hourly bin ``0..hours-1`` (a bin without observations
    leaves the state and scores it again)."""
    arrays = stay.arrays()
    observations = stay.observations(arrays.admit_time)
    state = torch.zeros(1, net.layout.width)
    statics = torch.from_numpy(arrays.statics.astype(np.float32)).unsqueeze(0)
    static_mask = torch.from_numpy(arrays.static_mask.astype(np.float32)).unsqueeze(0)
    images = (torch.zeros(1, 4, 64), torch.zeros(1, 4), torch.zeros(1, 4))
    risks = []
    with torch.no_grad():
        for index in range(hours):
            step = bin_inputs(observations, admit_time=arrays.admit_time, index=index)
            values, mask, delta, valid = pack_bins([] if step is None else [step])
            risk, state, _ = net(
                state,
                torch.from_numpy(values).unsqueeze(0),
                torch.from_numpy(mask).unsqueeze(0),
                torch.from_numpy(delta).unsqueeze(0),
                torch.from_numpy(valid).unsqueeze(0),
                torch.tensor([[float(valid.sum())]]),
                statics,
                static_mask,
                *images,
            )
            risks.append(float(risk[0, 0]))
    return np.array(risks, dtype=np.float32)


def replay_twice(net: StepEnsemble, stays: Sequence[Stay], hours: int = 48) -> dict[str, Any]:
    """Replays ``stays`` twice with separate copies of the model; compares the bytes."""
    net.eval()
    first = [_replay(copy.deepcopy(net), s, hours) for s in stays]
    second = [_replay(copy.deepcopy(net), s, hours) for s in stays]
    identical = all(a.tobytes() == b.tobytes() for a, b in zip(first, second, strict=True))
    gap = max(float(np.abs(a - b).max()) for a, b in zip(first, second, strict=True))
    return {
        "path": "offline: streams.core.step_features.bin_inputs + pack_bins (the worker's "
        "step functions) into the step model's eager forward, state carried hour by hour",
        "stays": len(stays),
        "scores_per_run": int(sum(a.size for a in first)),
        "identical": identical,
        "max_abs_diff": gap,
        "trajectories": [a.tolist() for a in first],
    }


def recording_resolution(stays: Sequence[Stay]) -> dict[str, float]:
    """Per code, the most common positive gap between sorted distinct recorded values."""
    out = {}
    codes = np.concatenate([s.code_index for s in stays])
    values = np.concatenate([s.values for s in stays])
    for p, code in enumerate(SERIES_CODES):
        distinct = np.unique(np.round(values[codes == p], 6))
        gaps = np.round(np.diff(distinct), 6)
        gaps = gaps[gaps > 0]
        if gaps.size:
            vals, counts = np.unique(gaps, return_counts=True)
            out[code] = float(vals[np.argmax(counts)])
    return out


def _risk48(net: StepEnsemble, stays: Sequence[Stay]) -> npt.NDArray[np.float64]:
    inputs = prepare([s.arrays() for s in stays], net)
    with torch.no_grad():
        risk, _, _ = net.score_hours(inputs.hours(torch.tensor([48])))
    return risk[:, 0].numpy().astype(np.float64)


def noise_sensitivity(
    net: StepEnsemble,
    stays: Sequence[Stay],
    resolution: dict[str, float],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Per parameter: absolute change of the 48 h risk when only that parameter's values
    get ``N(0, resolution²)`` noise (values kept inside the code's plausible range)."""
    net.eval()
    clean = _risk48(net, stays)
    rng = np.random.default_rng(seed)
    rows = {}
    for p, code in enumerate(SERIES_CODES):
        sd = resolution.get(code)
        if sd is None:
            continue
        info = CODES[code]
        noisy_stays = []
        touched = 0
        for stay in stays:
            pick = stay.code_index == p
            touched += int(pick.any())
            values = stay.values.copy()
            values[pick] = np.clip(
                values[pick] + rng.normal(0, sd, int(pick.sum())), info.low, info.high
            )
            noisy_stays.append(replace(stay, values=values))
        change = np.abs(_risk48(net, noisy_stays) - clean)
        rows[code] = {
            "noise_sd": sd,
            "unit": info.unit,
            "stays_with_values": touched,
            "median_abs_change": float(np.median(change)),
            "p95_abs_change": float(np.percentile(change, 95)),
            "max_abs_change": float(change.max()),
        }
    return {"stays": len(stays), "score_hour": 48, "parameters": rows}


def unit_round_trips(points: int = 25) -> dict[str, Any]:
    """Canonical → each accepted unit → canonical, over ``points`` values spanning each
    code's plausible range; the largest relative error per code."""
    rows = {}
    worst = 0.0
    for code, conversions in CONVERSIONS.items():
        info = CODES.get(code)
        if info is None:
            continue
        grid = np.linspace(info.low, info.high, points)
        err = 0.0
        spellings = 0
        for row in conversions:
            for spelling in row.spellings:
                spellings += 1
                for value in grid:
                    there = (float(value) - row.offset) / row.scale
                    back = normalise(code, there, spelling)
                    err = max(err, abs(back - value) / max(abs(value), 1e-9))
        rows[code] = {"spellings": spellings, "max_rel_error": err}
        worst = max(worst, err)
    return {"codes": len(rows), "max_rel_error": worst, "per_code": rows}
