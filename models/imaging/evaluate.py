"""Cross-validated figures of the imaging model with bootstrap intervals (``vigil train
imaging-eval``).

Reads the checkpoints of the cross-validation folds (``<cv_dir>/imaging_fold<k>.pt``,
written by ``vigil train imaging --fold k``) and reports, on data each fold never trained
on nor chose anything with:

* **CT, by patient.** Each fold's test patients at the fold's own operating point and at
  fixed thresholds: lesion recall (all lesions and lesions of >= 2 px), pooled Dice,
  false-positive components per patch. Pooled over the folds' test patients, with 95 %
  percentile intervals from resampling **patients** with replacement.
* Every threshold keeps only the lesion components whose peak reaches the fold's
  ``lesion_peak_threshold`` (as the worker does); ``operating_point_no_peak_filter`` is
  the operating point with every component kept.
* **Flatness**: recall and false positives at 0.4, 0.5 and 0.6, and the highest lesion
  probability of every lesion patch (the segmentation ceiling of issue 17).
* **X-rays, by image** (PneumoniaMNIST has no patient ids). Each fold's held-back tenth
  of the training split (disjoint across folds: image-level cross-validation) at the
  fold's calibrated threshold, pooled; and the official validation split, which no choice
  looked at, for each fold's model. Intervals resample images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from models.imaging.data import load_ct, load_xray
from models.imaging.export import load_imaging_checkpoint
from models.imaging.metrics import (
    LARGE_LESION_PIXELS,
    lesion_counts,
    lesion_masks,
    sensitivity_specificity,
)
from models.imaging.settings import ImagingEvalSettings
from models.imaging.train import native_maps, predict
from streams.core.risk_metrics import auroc
from vigil.errors import ModelError

__all__ = ["FIXED_THRESHOLDS", "PatientCounts", "evaluate_imaging", "patient_counts"]

FIXED_THRESHOLDS: Final[tuple[float, ...]] = (0.4, 0.5, 0.6)
_FIELDS: Final[tuple[str, ...]] = (
    "intersection",
    "predicted",
    "reference",
    "lesions",
    "found",
    "large_lesions",
    "large_found",
    "false_positives",
    "patches",
)


@dataclass(frozen=True, slots=True)
class PatientCounts:
    """Sufficient counts of one patient's patches at one threshold (pooled metrics add)."""

    intersection: int
    predicted: int
    reference: int
    lesions: int
    found: int
    large_lesions: int
    large_found: int
    false_positives: int
    patches: int


def patient_counts(
    probability: npt.NDArray[np.float32],
    reference: npt.NDArray[np.bool_],
    threshold: float,
    peak_threshold: float = 0.0,
) -> PatientCounts:
    """Counts of ``[N,H,W]`` probabilities against references at ``threshold`` (lesion
    components whose peak is below ``peak_threshold`` dropped, as served)."""
    pred = lesion_masks(probability, threshold, peak_threshold)
    totals = np.zeros(6, dtype=np.int64)
    for p, r in zip(pred, reference, strict=True):
        n, f, fp = lesion_counts(p, r)
        big, big_found, _ = lesion_counts(p, r, LARGE_LESION_PIXELS)
        totals += (n, f, big, big_found, fp, 1)
    return PatientCounts(
        int((pred & reference).sum()),
        int(pred.sum()),
        int(reference.sum()),
        *(int(v) for v in totals),
    )


def _figures(counts: npt.NDArray[np.int64]) -> dict[str, float]:
    """Pooled figures of a ``[P, 9]`` array of :class:`PatientCounts` rows."""
    c = dict(zip(_FIELDS, counts.sum(axis=0), strict=True))
    denominator = c["predicted"] + c["reference"]
    return {
        "dice": 2.0 * c["intersection"] / denominator if denominator else 1.0,
        "lesion_recall": c["found"] / c["lesions"] if c["lesions"] else float("nan"),
        "large_lesion_recall": (
            c["large_found"] / c["large_lesions"] if c["large_lesions"] else float("nan")
        ),
        "false_positives_per_patch": c["false_positives"] / c["patches"],
    }


def _patient_bootstrap(counts: npt.NDArray[np.int64], resamples: int, seed: int) -> dict[str, Any]:
    """Point figures, raw counts and 95 % intervals from resampling patients (rows)."""
    point = _figures(counts)
    rng = np.random.default_rng(seed)
    draws = [
        _figures(counts[rng.integers(0, counts.shape[0], counts.shape[0])])
        for _ in range(resamples)
    ]
    out: dict[str, Any] = {"patients": int(counts.shape[0])}
    out.update(dict(zip(_FIELDS, (int(v) for v in counts.sum(axis=0)), strict=True)))
    for key, value in point.items():
        values = np.array([d[key] for d in draws], dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [2.5, 97.5]) if values.size else (np.nan, np.nan)
        out[key] = round(value, 4)
        out[f"{key}_ci95"] = [round(float(low), 4), round(float(high), 4)]
    return out


def _image_bootstrap(
    probability: npt.NDArray[np.float64],
    labels: npt.NDArray[np.float64],
    threshold: float,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """AUROC, sensitivity and specificity at ``threshold``, 95 % intervals over images."""

    def figures(p: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[float, ...]:
        sens, spec = sensitivity_specificity(p, y, threshold)
        return auroc(y, p), sens, spec

    rng = np.random.default_rng(seed)
    point = figures(probability, labels)
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, labels.size, labels.size)
        draws.append(figures(probability[pick], labels[pick]))
    table = np.array(draws, dtype=np.float64)
    out: dict[str, Any] = {
        "n": int(labels.size),
        "pneumonia": int(labels.sum()),
        "threshold": round(threshold, 6),
        "brier": round(float(np.mean((probability - labels) ** 2)), 4),
    }
    for i, key in enumerate(("auroc", "sensitivity", "specificity")):
        column = table[:, i][np.isfinite(table[:, i])]
        low, high = np.percentile(column, [2.5, 97.5]) if column.size else (np.nan, np.nan)
        out[key] = round(point[i], 4)
        out[f"{key}_ci95"] = [round(float(low), 4), round(float(high), 4)]
    return out


def evaluate_imaging(settings: ImagingEvalSettings) -> dict[str, Any]:
    """The cross-validated report (JSON-ready); also written to ``settings.report``.

    Raises:
        ModelError: A missing checkpoint or unreadable data.
    """
    checkpoints = [settings.cv_dir / f"imaging_fold{k}.pt" for k in range(settings.folds)]
    missing = [str(p) for p in checkpoints if not p.is_file()]
    if missing:
        raise ModelError(f"missing cross-validation checkpoints: {', '.join(missing)}")
    ct = None
    keys = [
        "operating_point",
        "operating_point_no_peak_filter",
        *(str(t) for t in FIXED_THRESHOLDS),
    ]
    counts: dict[str, list[PatientCounts]] = {key: [] for key in keys}
    folds: list[dict[str, Any]] = []
    peaks: list[float] = []
    tune_prob: list[npt.NDArray[np.float64]] = []
    tune_labels: list[npt.NDArray[np.float64]] = []
    tune_thresholds: list[npt.NDArray[np.float64]] = []
    official: list[dict[str, Any]] = []
    for fold, path in enumerate(checkpoints):
        net, meta = load_imaging_checkpoint(path)
        size = int(meta["config"]["image_size"])
        if ct is None:
            ct = load_ct(settings.ct_path, size)
        test = tuple(int(p) for p in meta["split"]["test"])
        peak = float(meta.get("lesion_peak_threshold", 0.0))
        entry: dict[str, Any] = {"fold": fold, "test_patients": list(test)}
        for patient in test:
            part = ct.subset((patient,))
            prob, _, _ = predict(net, part.images)
            native = native_maps(prob, part.native_masks.shape[1:])
            has = part.native_masks.reshape(len(native), -1).any(1)
            peaks.extend(float(v) for v in native[has].reshape(int(has.sum()), -1).max(1))
            counts["operating_point"].append(
                patient_counts(native, part.native_masks, float(meta["threshold"]), peak)
            )
            counts["operating_point_no_peak_filter"].append(
                patient_counts(native, part.native_masks, float(meta["threshold"]))
            )
            for t in FIXED_THRESHOLDS:
                counts[str(t)].append(patient_counts(native, part.native_masks, t, peak))
        entry["threshold"] = float(meta["threshold"])
        entry["lesion_peak_threshold"] = peak
        entry["class_threshold"] = meta.get("class_threshold")
        xray = load_xray(
            settings.xray_path, seed=int(meta["settings"]["split_seed"]), size=size, fold=fold
        )
        if int(meta["settings"]["fold"]) != fold:
            raise ModelError(f"{path} was trained as fold {meta['settings']['fold']}, not {fold}")
        _, tune, _ = predict(net, xray.tune_images)
        _, val, _ = predict(net, xray.val_images)
        class_threshold = float(meta.get("class_threshold", 0.5))
        tune_prob.append(tune.astype(np.float64))
        tune_labels.append(xray.tune_labels.astype(np.float64))
        tune_thresholds.append(np.full(tune.size, class_threshold))
        entry["held_back"] = _image_bootstrap(
            tune_prob[-1], tune_labels[-1], class_threshold, settings.resamples, settings.seed
        )
        official.append(
            _image_bootstrap(
                val.astype(np.float64),
                xray.val_labels.astype(np.float64),
                class_threshold,
                settings.resamples,
                settings.seed + fold,
            )
        )
        entry["official_val"] = official[-1]
        folds.append(entry)
    report: dict[str, Any] = {"folds": folds}
    report["ct"] = {
        key: _patient_bootstrap(
            np.array([[getattr(c, f) for f in _FIELDS] for c in rows], dtype=np.int64),
            settings.resamples,
            settings.seed,
        )
        for key, rows in counts.items()
    }
    report["ct"]["lesion_patch_peak_probability"] = {
        "min": round(min(peaks), 4),
        "median": round(float(np.median(peaks)), 4),
        "below_0.9": int(sum(p < 0.9 for p in peaks)),
        "patches": len(peaks),
    }
    # Held-back tenths pooled, each image at its own fold's threshold (prob - threshold
    # >= 0); the AUROC is the mean of the folds' (scores of different models do not pool).
    labels = np.concatenate(tune_labels)
    margin = np.concatenate(tune_prob) - np.concatenate(tune_thresholds)
    pooled = _image_bootstrap(margin, labels, 0.0, settings.resamples, settings.seed)
    pooled.pop("auroc")
    pooled.pop("auroc_ci95")
    pooled.pop("brier")
    pooled["threshold"] = "each fold's own"
    pooled["mean_fold_auroc"] = round(float(np.mean([f["held_back"]["auroc"] for f in folds])), 4)
    report["xray_cv"] = pooled
    report["settings"] = settings.model_dump(mode="json")
    settings.report.parent.mkdir(parents=True, exist_ok=True)
    settings.report.write_text(json.dumps(report, indent=2) + "\n")
    return report
