"""Evaluation of the step model against the shipped window model and the logistic baseline.

On each split (validation, test) and scoring hour (24 h, 48 h): AUROC and AUPRC with
percentile bootstrap intervals over stays, expected calibration error, and **paired**
bootstrap differences (the same resampled stays for both scores) of the step model's
AUROC minus the shipped window model's (``models/weights/deterioration.pt``) and minus the
logistic regression on window summaries (:mod:`models.deterioration.baselines`, fitted on the
training split at hours 6, 12, …, 48 exactly as :mod:`models.deterioration.train` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.deterioration.baselines import fit_logistic, summary_statistics
from models.deterioration.export import load_checkpoint
from models.deterioration.network import LOG_SCALED_CODES, NetConfig
from models.deterioration.step_settings import StepTrainSettings
from models.deterioration.train import CALIBRATION_HOURS, EVAL_HOURS, WindowBatch, make_windows
from streams.core.features import SERIES_CODES, StayArrays
from streams.core.risk_metrics import auprc, auroc, expected_calibration_error
from streams.datasets.physionet2012 import Stay

__all__ = ["bootstrap_compare", "evaluate", "window_model_risks"]


def _interval(values: npt.NDArray[np.float64]) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    low, high = np.percentile(finite, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def bootstrap_compare(
    labels: npt.NDArray[Any],
    scores: Mapping[str, npt.NDArray[np.float64]],
    reference: str,
    *,
    resamples: int,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC and AUPRC with 95 % intervals per score, and paired AUROC differences.

    Args:
        labels: ``[N]`` 0/1 per stay.
        scores: ``[N]`` per named score.
        reference: The score whose AUROC the others are subtracted from
            (``reference - other``).
        resamples: Bootstrap resamples of stays (with replacement).
        seed: Generator seed.
    """
    y = np.asarray(labels, dtype=np.float64)
    names = list(scores)
    rng = np.random.default_rng(seed)
    roc = {name: np.empty(resamples) for name in names}
    pr = {name: np.empty(resamples) for name in names}
    for r in range(resamples):
        index = rng.integers(0, y.size, size=y.size)
        for name in names:
            roc[name][r] = auroc(y[index], scores[name][index])
            pr[name][r] = auprc(y[index], scores[name][index])
    out: dict[str, Any] = {"n": int(y.size), "deaths": int(y.sum()), "resamples": resamples}
    for name in names:
        out[name] = {
            "auroc": round(auroc(y, scores[name]), 4),
            "auroc_ci": _interval(roc[name]),
            "auprc": round(auprc(y, scores[name]), 4),
            "auprc_ci": _interval(pr[name]),
        }
    for name in names:
        if name == reference:
            continue
        diff = roc[reference] - roc[name]
        out[f"{reference}_minus_{name}"] = {
            "auroc_diff": round(auroc(y, scores[reference]) - auroc(y, scores[name]), 4),
            "ci": _interval(diff),
            "share_above_0": round(float(np.mean(diff[np.isfinite(diff)] > 0)), 4),
        }
    return out


def window_model_risks(
    checkpoint: Path, arrays: Sequence[StayArrays], hour: int
) -> npt.NDArray[np.float64]:
    """Calibrated risks ``[N]`` of a window-model checkpoint at ``hour`` (no images)."""
    net, meta = load_checkpoint(checkpoint)
    config = NetConfig(**meta["net_config"])
    inputs = make_windows(arrays, [hour] * len(arrays)).tensors(config.max_images, config.image_dim)
    out = []
    with torch.no_grad():
        for start in range(0, len(arrays), 512):
            risk, _ = net(*(t[start : start + 512] for t in inputs))
            out.append(risk[:, 0].numpy().astype(np.float64))
    return np.concatenate(out)


def evaluate(
    settings: StepTrainSettings,
    step_risks: Mapping[str, npt.NDArray[np.float64]],
    part_stays: Mapping[str, list[Stay]],
    part_arrays: Mapping[str, list[StayArrays]],
    part_labels: Mapping[str, npt.NDArray[Any]],
) -> dict[str, Any]:
    """Metrics of the step model (``step_risks[part]`` is ``[N, 2]`` at 24 h, 48 h)."""
    del part_stays
    log_scaled = np.array([c in LOG_SCALED_CODES for c in SERIES_CODES])

    def summaries(batch: WindowBatch) -> npt.NDArray[Any]:
        return summary_statistics(
            batch.values, batch.mask, batch.statics, batch.static_mask, log_scaled
        )

    logistic = None
    if settings.baselines:
        n_train = len(part_arrays["train"])
        lr_train = make_windows(
            [a for _ in CALIBRATION_HOURS for a in part_arrays["train"]],
            [h for h in CALIBRATION_HOURS for _ in range(n_train)],
        )
        logistic = fit_logistic(
            summaries(lr_train), np.tile(part_labels["train"], len(CALIBRATION_HOURS)), l2=1e-2
        )
    metrics: dict[str, Any] = {}
    for part in ("validation", "test"):
        y = part_labels[part]
        result: dict[str, Any] = {}
        for i, hour in enumerate(EVAL_HOURS):
            scores = {"step": step_risks[part][:, i]}
            if settings.baselines and settings.shipped_checkpoint is not None:
                scores["window"] = window_model_risks(
                    settings.shipped_checkpoint, part_arrays[part], hour
                )
            if logistic is not None:
                windows = make_windows(part_arrays[part], [hour] * len(part_arrays[part]))
                scores["logistic_regression"] = logistic.predict(summaries(windows))
            entry = bootstrap_compare(
                y, scores, "step", resamples=settings.bootstrap_resamples, seed=hour
            )
            for name, risk in scores.items():
                entry[name]["ece"] = round(expected_calibration_error(y, risk), 4)
            result[f"{hour}h"] = entry
        metrics[part] = result
    return metrics
