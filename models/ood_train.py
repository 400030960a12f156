"""Fitting and evaluation of the OOD detector (``vigil train ood``).

1. Load the deterioration checkpoint and set A; recompute the split with
   :func:`models.train.split_record_ids` and the checkpoint's split seed, and refuse to go
   on unless it equals the checkpoint's recorded split.
2. Features (:func:`models.ood.ensemble_features`) of every **training** stay at hours
   :data:`FIT_HOURS`; class-conditional Gaussians (class = in-hospital death) with a tied
   covariance (:func:`models.ood.fit_gaussians`).
3. Threshold: the ``percentile`` of the distances of **validation** stays at the same
   hours.
4. Evaluation on the **test** split at ``eval_hour``: in-distribution test windows against
   the same stays under each shift of :mod:`models.ood_shifts` (with the stream's
   artifact filter, and without it), and a left-out ICU type (Gaussians and threshold
   refitted without that type; the network itself was trained on all four). OOD AUROC
   compares the distances of all in-distribution test windows with those of the shifted
   windows that the shift actually changed.
5. Comparisons, evaluated the same way but not served: the first member's fused vector
   alone (the ``fused`` output of ``deterioration``), and Gaussians on input-space
   statistics (:func:`input_statistics`), to tell a shift the inputs show from one the
   learned representation ignores.

The result (Gaussians, threshold, metrics, record ids used) is written to
``models/weights/ood.pt``; :mod:`models.ood_export` serves it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from models.export import load_checkpoint
from models.metrics import auroc
from models.network import (
    DeteriorationEnsemble,
    DeteriorationNet,
    NetConfig,
    window_statistics,
)
from models.ood import (
    GaussianFit,
    ensemble_features,
    fit_gaussians,
    fit_summary,
    min_distance,
    percentile_threshold,
)
from models.ood_shifts import SHIFTS, apply_shift
from models.physionet2012 import Stay, data_hash, load_stays
from models.settings import OODSettings
from models.train import code_version, make_windows, split_record_ids
from vigil.errors import ModelError

__all__ = [
    "FIT_HOURS",
    "OOD_SOURCES",
    "RIDGE_FRACTIONS",
    "OODResult",
    "fit_ood",
    "input_statistics",
    "stay_features",
]

FIT_HOURS: Final[tuple[int, ...]] = (6, 12, 18, 24, 30, 36, 42, 48)
"""Scoring hours whose windows are fitted and thresholded (the model's training range)."""
EARLY_HOURS: Final[tuple[int, ...]] = (1, 2, 3, 4, 5)
"""Hours before the model's training range; their flag rate is reported, not fitted."""
OOD_SOURCES: Final[tuple[str, ...]] = (
    "models/ood.py",
    "models/ood_shifts.py",
    "models/ood_train.py",
    "models/ood_export.py",
)
"""Files hashed into the OOD checkpoint's and model card's ``code_version``."""
RIDGE_FRACTIONS: Final[dict[str, float]] = {
    "concatenated": 1e-4,
    "first_member": 1e-4,
    "input_statistics": 1e-2,
}
"""Ridge of each representation's covariance, as a fraction of its mean variance."""
_CHUNK: Final[int] = 512


@dataclass(frozen=True, slots=True)
class OODResult:
    """What :func:`fit_ood` produced.

    Attributes:
        path: The written OOD checkpoint.
        threshold: Distance threshold.
        metrics: Validation, test and shift metrics (JSON-ready).
        seconds: Wall time, seconds.
    """

    path: Path
    threshold: float
    metrics: dict[str, Any]
    seconds: float


def stay_features(
    net: DeteriorationEnsemble, config: NetConfig, stays: Sequence[Stay], hours: Sequence[int]
) -> npt.NDArray[np.float64]:
    """``[len(hours)·N, members·F]`` features of every stay at each hour (hour-major)."""
    arrays = [s.arrays() for s in stays]
    out: list[npt.NDArray[np.float64]] = []
    net.eval()
    with torch.no_grad():
        for hour in hours:
            for start in range(0, len(arrays), _CHUNK):
                chunk = arrays[start : start + _CHUNK]
                batch = make_windows(chunk, [hour] * len(chunk))
                inputs = batch.tensors(config.max_images, config.image_dim)
                out.append(ensemble_features(net, inputs).numpy().astype(np.float64))
    return np.concatenate(out)


def input_statistics(
    net: DeteriorationEnsemble, config: NetConfig, stays: Sequence[Stay], hours: Sequence[int]
) -> npt.NDArray[np.float64]:
    """``[len(hours)·N, 7P+2S]`` input-space comparison features (hour-major):
    :func:`models.network.window_statistics` (last, mean, min, max, observed-any,
    ``log1p(count)`` per parameter, statics and their mask) and the hours since each
    parameter was last observed, at the window's last bin."""
    arrays = [s.arrays() for s in stays]
    first = net.members[0]
    if not isinstance(first, DeteriorationNet):
        raise ModelError("the ensemble's members must be DeteriorationNet")
    log_scaled = first.log_scaled
    out: list[npt.NDArray[np.float64]] = []
    for hour in hours:
        batch = make_windows(arrays, [hour] * len(arrays))
        stats = window_statistics(
            torch.from_numpy(batch.values),
            torch.from_numpy(batch.mask),
            torch.from_numpy(batch.statics),
            torch.from_numpy(batch.static_mask),
            log_scaled,
        ).numpy()
        out.append(np.concatenate([stats, batch.delta_hours[:, -1, :]], axis=1))
    return np.concatenate(out).astype(np.float64)


def _features(
    net: DeteriorationEnsemble, config: NetConfig, stays: Sequence[Stay], hours: Sequence[int]
) -> npt.NDArray[np.float64]:
    """Served features, then the input-space comparison features, side by side."""
    return np.concatenate(
        [stay_features(net, config, stays, hours), input_statistics(net, config, stays, hours)],
        axis=1,
    )


def _ood_auroc(inside: npt.NDArray[Any], outside: npt.NDArray[Any]) -> float:
    labels = np.concatenate([np.zeros(inside.size), np.ones(outside.size)])
    return auroc(labels, np.concatenate([inside, outside]))


def _evaluate(
    fit: GaussianFit, threshold: float, inside: npt.NDArray[Any], outside: npt.NDArray[Any]
) -> dict[str, Any]:
    d_in, d_out = min_distance(fit, inside), min_distance(fit, outside)
    return {
        "auroc": round(_ood_auroc(d_in, d_out), 4),
        "flagged_fraction": round(float((d_out > threshold).mean()), 4) if d_out.size else None,
        "n_in": int(d_in.size),
        "n_shifted": int(d_out.size),
        "median_distance_shifted": round(float(np.median(d_out)), 3) if d_out.size else None,
    }


def _changed(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    return np.asarray(np.abs(a - b).max(axis=1) > 0.0)


def _shift_metrics(
    net: DeteriorationEnsemble,
    config: NetConfig,
    fits: dict[str, tuple[GaussianFit, float, slice]],
    test: list[Stay],
    settings: OODSettings,
    standardise: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
) -> dict[str, Any]:
    hour = [settings.eval_hour]
    base = standardise(_features(net, config, test, hour))
    out: dict[str, Any] = {}
    for shift in SHIFTS:
        for filtered in (True, False):
            shifted = [
                apply_shift(s, shift, onset_hours=settings.onset_hours, filter_artifacts=filtered)
                for s in test
            ]
            feats = standardise(_features(net, config, shifted, hour))
            changed = _changed(base, feats)
            entry: dict[str, Any] = {"stays_changed": int(changed.sum()), "n_test": len(test)}
            for name, (fit, threshold, cols) in fits.items():
                entry[name] = _evaluate(fit, threshold, base[:, cols], feats[changed][:, cols])
            out[f"{shift}/{'filtered' if filtered else 'unfiltered'}"] = entry
    return out


def _icu_type_metrics(
    features: dict[str, npt.NDArray[Any]],
    labels: dict[str, npt.NDArray[Any]],
    icu: dict[str, npt.NDArray[Any]],
    settings: OODSettings,
    columns: dict[str, slice],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for left_out in (1, 2, 3, 4):
        entry: dict[str, Any] = {"n_test_left_out": int((icu["test"] == left_out).sum())}
        for name, cols in columns.items():
            keep_train = icu["train"] != left_out
            fit = fit_gaussians(
                features["train"][keep_train][:, cols],
                labels["train"][keep_train],
                ridge_fraction=RIDGE_FRACTIONS[name],
            )
            keep_val = icu["validation"] != left_out
            threshold = percentile_threshold(
                min_distance(fit, features["validation"][keep_val][:, cols]), settings.percentile
            )
            inside = features["test"][icu["test"] != left_out][:, cols]
            outside = features["test"][icu["test"] == left_out][:, cols]
            entry[name] = _evaluate(fit, threshold, inside, outside)
        out[f"icu_type_{left_out}"] = entry
    return out


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fit_ood(settings: OODSettings) -> OODResult:
    """Fits the Gaussians and threshold, evaluates the shifts, writes the OOD checkpoint.

    Raises:
        ModelError: Unreadable checkpoint or data, or a split that differs from the
            checkpoint's.
    """
    started = time.monotonic()
    torch.manual_seed(0)
    torch.set_num_threads(settings.threads)
    net, meta = load_checkpoint(settings.checkpoint)
    stays, outcomes = load_stays(settings.data_dir)
    if meta["settings"].get("max_stays") is not None:
        stays = stays[: int(meta["settings"]["max_stays"])]  # as training did
    labels_by_id = {s.record_id: outcomes[s.record_id].in_hospital_death for s in stays}
    split = split_record_ids(labels_by_id, seed=int(meta["settings"]["split_seed"]))
    if {k: list(v) for k, v in split.items()} != meta["split"]:
        raise ModelError("the recomputed split differs from the checkpoint's; wrong data?")
    by_id = {s.record_id: s for s in stays}
    parts = {name: [by_id[r] for r in ids] for name, ids in split.items()}
    config = NetConfig(**meta["net_config"])
    served = config.fused * int(meta["members"])
    columns = {
        "concatenated": slice(0, served),
        "first_member": slice(0, config.fused),
        "input_statistics": slice(served, None),
    }

    def per_window(name: str, hours: Sequence[int], values: dict[int, Any]) -> Any:
        return np.tile(np.array([values[s.record_id] for s in parts[name]]), len(hours))

    icu_by_id = {s.record_id: s.descriptors.get("ICUType") or 0 for s in stays}
    train_features = _features(net, config, parts["train"], FIT_HOURS)
    # Input statistics have raw units; standardise them with training moments so the
    # ridge means the same for every column. (Mahalanobis itself is affine-invariant.)
    centre = np.zeros(train_features.shape[1])
    scale = np.ones(train_features.shape[1])
    centre[columns["input_statistics"]] = train_features[:, served:].mean(axis=0)
    scale[columns["input_statistics"]] = train_features[:, served:].std(axis=0) + 1e-3

    def standardise(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return (x - centre) / scale

    features = {
        "train": standardise(train_features),
        "validation": standardise(_features(net, config, parts["validation"], FIT_HOURS)),
        "test": standardise(_features(net, config, parts["test"], [settings.eval_hour])),
    }
    labels = {
        "train": per_window("train", FIT_HOURS, labels_by_id),
        "validation": per_window("validation", FIT_HOURS, labels_by_id),
    }
    icu = {
        "train": per_window("train", FIT_HOURS, icu_by_id),
        "validation": per_window("validation", FIT_HOURS, icu_by_id),
        "test": per_window("test", [settings.eval_hour], icu_by_id),
    }
    fits: dict[str, tuple[GaussianFit, float, slice]] = {}
    metrics: dict[str, Any] = {"validation": {}, "test": {}}
    early = standardise(_features(net, config, parts["validation"], EARLY_HOURS))
    for name, cols in columns.items():
        fit = fit_gaussians(
            features["train"][:, cols], labels["train"], ridge_fraction=RIDGE_FRACTIONS[name]
        )
        val_d = min_distance(fit, features["validation"][:, cols])
        threshold = percentile_threshold(val_d, settings.percentile)
        fits[name] = (fit, threshold, cols)
        by_hour = val_d.reshape(len(FIT_HOURS), -1)
        early_d = min_distance(fit, early[:, cols]).reshape(len(EARLY_HOURS), -1)
        test_d = min_distance(fit, features["test"][:, cols])
        metrics["validation"][name] = {
            "fit": fit_summary(fit),
            "threshold": threshold,
            "flagged_fraction_by_hour": {
                f"{h}h": round(float((d > threshold).mean()), 4)
                for h, d in zip(EARLY_HOURS + FIT_HOURS, [*early_d, *by_hour], strict=True)
            },
        }
        metrics["test"][name] = {
            "flagged_fraction": round(float((test_d > threshold).mean()), 4),
            "median_distance": round(float(np.median(test_d)), 3),
        }
    metrics["shifts"] = _shift_metrics(net, config, fits, parts["test"], settings, standardise)
    metrics["left_out_icu_type"] = _icu_type_metrics(features, labels, icu, settings, columns)
    fit, threshold, _ = fits["concatenated"]
    elapsed = round(time.monotonic() - started, 1)
    payload = {
        "means": torch.from_numpy(fit.means),
        "covariance": torch.from_numpy(fit.covariance),
        "whitening": torch.from_numpy(fit.whitening),
        "meta": {
            "classes": list(fit.classes),
            "class_meaning": "in-hospital death (Outcomes-a.txt) of the stay",
            "features": "fused vectors of the ensemble's members, concatenated",
            "threshold": threshold,
            "percentile": settings.percentile,
            "fit_hours": list(FIT_HOURS),
            "eval_hour": settings.eval_hour,
            "onset_hours": settings.onset_hours,
            "settings": settings.model_dump(mode="json"),
            "deterioration_checkpoint_sha256": _file_sha256(settings.checkpoint),
            "split": {name: list(ids) for name, ids in split.items()},
            "split_method": meta["split_method"],
            "fitted_on": "train split (Gaussians), validation split (threshold)",
            "data_sha256": data_hash(settings.data_dir),
            "code_version": code_version(OOD_SOURCES),
            "metrics": metrics,
            "seconds": elapsed,
        },
    }
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, settings.output)
    return OODResult(settings.output, threshold, metrics, elapsed)
