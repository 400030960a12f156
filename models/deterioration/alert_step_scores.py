"""Hourly risks and OOD verdicts of the step model ``deterioration_step``, as served.

The input of :mod:`models.deterioration.alert_operating_point` with ``--model step``. Every stay is
scored the worker's way (as ``tests/models/test_step_ood.py`` serves it): at hour ``h``
after admission one call of the served module with the stored state, bin ``h - 1``
(closed, committed) and the open bin ``h`` up to the scoring time
(:func:`streams.core.step_features.bin_inputs`, :func:`~streams.core.step_features.pack_bins`);
``state_out`` is carried to the next hour. The module is the eager
:class:`models.ood.step.StepOODModule` built from the step checkpoint and its OOD fit: the
module ``python -m models.deterioration.step_export`` scripts into
``triton_repo/deterioration_step/1/model.pt``, so the risk and the verdict come from one
call, as in the stream, and the verdict's threshold is the one ``config.pbtxt`` serves
(:data:`models.deterioration.step_export.COMBINED_THRESHOLD`). As a check, the calibrated risks of
the full-sequence path (:meth:`models.deterioration.step_network.StepEnsemble.score_hours`, the
reference of ``tests/models/test_step_parity.py``) are computed too; the largest difference is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from models.deterioration.alert_split import HOURS, split_stays
from models.deterioration.network import NetConfig
from models.deterioration.step_export import COMBINED_THRESHOLD
from models.deterioration.step_network import StepEnsemble
from models.deterioration.step_train import load_step_checkpoint, prepare
from models.ood.step import StepOODModule
from models.ood.step_train import load_fit
from streams.core.last_seen import stay_hours_since_seen
from streams.core.step_features import bin_inputs, pack_bins
from streams.datasets.physionet2012 import Stay
from vigil.errors import ModelError

__all__ = [
    "SERVED_NAMES",
    "build_served_module",
    "full_sequence_risk",
    "hourly_step_scores",
    "serve_hourly",
]

SERVED_NAMES: Final = ("risk", "distance", "ood", "representation_ood", "input_ood")
"""What :func:`serve_hourly` returns, named as the served outputs."""
_OUTPUT_INDEX: Final = {"risk": 0, "distance": 3, "ood": 4, "representation_ood": 8, "input_ood": 9}
"""Positions in the module's outputs (``config.pbtxt`` order)."""
_CHUNK: Final = 256


def build_served_module(
    checkpoint: Path, ood_checkpoint: Path
) -> tuple[StepOODModule, StepEnsemble, dict[str, Any]]:
    """The eager served module (eval mode), the step ensemble it wraps and the step
    checkpoint's metadata.

    Raises:
        ModelError: An unreadable file, or an OOD fit of another step checkpoint (which
            the exporter refuses too).
    """
    net, meta = load_step_checkpoint(checkpoint)
    arrays, ood_meta = load_fit(ood_checkpoint)
    if ood_meta["step_checkpoint_sha256"] != hashlib.sha256(checkpoint.read_bytes()).hexdigest():
        raise ModelError(f"the OOD fit {ood_checkpoint} is of another step checkpoint")
    return StepOODModule(net, arrays).eval(), net, meta


def serve_hourly(
    module: Callable[..., Sequence[torch.Tensor]],
    stays: Sequence[Stay],
    n_hours: int,
    *,
    config: NetConfig,
    state_width: int,
) -> dict[str, npt.NDArray[Any]]:
    """Every stay stepped through ``module`` at hours ``1..n_hours``, the worker's way.

    Args:
        module: The served step module, eager or TorchScript (eval mode).
        stays: ``N`` stays (admission at the reference time).
        n_hours: ``H``, the last scoring hour.
        config: The network configuration (image slots ``K``, width ``E``).
        state_width: ``D``.

    Returns:
        :data:`SERVED_NAMES`, ``[N, H]`` each (risk and distance float64, flags bool).
    """
    arrays = [s.arrays() for s in stays]
    observations = [s.observations(a.admit_time) for s, a in zip(stays, arrays, strict=True)]
    n, k = len(stays), config.max_images
    statics = torch.from_numpy(np.stack([a.statics for a in arrays]).astype(np.float32))
    static_mask = torch.from_numpy(np.stack([a.static_mask for a in arrays]).astype(np.float32))
    images = (torch.zeros(n, k, config.image_dim), torch.zeros(n, k), torch.zeros(n, k))
    state = torch.zeros(n, state_width)
    since = np.stack([stay_hours_since_seen(a, range(60, 60 * n_hours + 1, 60)) for a in arrays])
    out = {
        name: np.zeros((n, n_hours), dtype=np.bool_ if name.endswith("ood") else np.float64)
        for name in SERVED_NAMES
    }
    with torch.no_grad():
        for hour in range(1, n_hours + 1):
            packed, commits = [], []
            for stay, obs in zip(arrays, observations, strict=True):
                admit = stay.admit_time
                closed = bin_inputs(obs, admit_time=admit, index=hour - 1)
                open_bin = bin_inputs(
                    obs, admit_time=admit, index=hour, end_time=admit + timedelta(hours=hour)
                )
                packed.append(pack_bins([b for b in (closed, open_bin) if b is not None]))
                commits.append([0.0 if closed is None else 1.0])
            bins = [torch.from_numpy(np.stack([p[i] for p in packed])) for i in range(4)]
            result = module(
                state,
                *bins,
                torch.tensor(commits),
                statics,
                static_mask,
                *images,
                torch.from_numpy(since[:, hour - 1]),
            )
            state = result[1]
            for name, index in _OUTPUT_INDEX.items():
                out[name][:, hour - 1] = result[index].reshape(-1).numpy()
    return out


def full_sequence_risk(net: StepEnsemble, stays: Sequence[Stay], n_hours: int) -> npt.NDArray[Any]:
    """``[N, H]`` calibrated risks at hours ``1..n_hours`` from the full-sequence path."""
    out = []
    with torch.no_grad():
        for start in range(0, len(stays), _CHUNK):
            arrays = [s.arrays() for s in stays[start : start + _CHUNK]]
            risk, _, _ = net.score_hours(prepare(arrays, net, n_hours))
            out.append(risk[:, 1:].numpy().astype(np.float64))
    return np.concatenate(out)


def hourly_step_scores(
    data_dir: Path,
    checkpoint: Path,
    ood_checkpoint: Path,
    threads: int = 1,
    split_name: str = "validation",
) -> dict[str, npt.NDArray[Any]]:
    """Served risks and OOD verdicts at hours 1…48 of one split of the step checkpoint.

    The split is recomputed from the checkpoint's seed and checked against the one it
    recorded (:func:`models.deterioration.alert_split.split_stays`).

    Returns:
        :data:`models.deterioration.alert_operating_point.RISK_KEYS` and
        :data:`~models.deterioration.alert_operating_point.OOD_KEYS`, and
        ``full_sequence_max_abs_diff`` (``[]``, the largest |served - full-sequence| risk).
    """

    torch.set_num_threads(threads)
    module, net, meta = build_served_module(checkpoint, ood_checkpoint)
    stays, labels = split_stays(data_dir, meta, split_name)
    served = serve_hourly(
        module, stays, len(HOURS), config=net.config, state_width=net.layout.width
    )
    reference = full_sequence_risk(net, stays, len(HOURS))
    return {
        "record_ids": np.array([s.record_id for s in stays]),
        "death": np.array([labels[s.record_id] for s in stays]),
        "risk": served["risk"],
        "ood_distance": served["distance"],
        "ood_flag": served["ood"],
        "ood_representation": served["representation_ood"],
        "ood_input": served["input_ood"],
        "threshold": np.array(COMBINED_THRESHOLD),
        "full_sequence_max_abs_diff": np.array(float(np.abs(served["risk"] - reference).max())),
    }
