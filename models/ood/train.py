"""Fitting and evaluation of the OOD detector (``vigil train ood``).

1. Load the deterioration checkpoint and set A; recompute the split with
   :func:`models.deterioration.train.split_record_ids` and the checkpoint's split seed, and refuse
   to go on unless it equals the checkpoint's recorded split.
2. Representation channel: Gaussians (class = in-hospital death, tied covariance) on the
   ensemble's concatenated fused vectors of **training** stays at :data:`FIT_HOURS`; its
   threshold is the ``percentile`` of the **validation** distances at the same hours.
3. Input channel (:mod:`models.ood.inputs`): per bucket of hours observed, Gaussians on
   window statistics of **training** stays at :data:`ALL_MINUTES`; one threshold
   per bucket, the ``percentile`` of that bucket's **validation** distances.
4. In-distribution flag rates (either channel) on validation and **test** at the same times.
5. Evaluation on the **test** split only: each shift of :mod:`models.ood.shifts` at
   ``eval_hour`` (with the stream's artifact filter, and without it); a left-out ICU type
   (both channels refitted without it; the network itself was trained on all four); and
   the time course at every scoring time of a sample of test stays
   (:mod:`models.ood.timeline`). OOD AUROC compares the scores of all in-distribution
   test windows with those of the shifted windows the shift actually changed.
6. Comparisons, evaluated the same way but not served: the first member's fused vector
   alone, and the input channel without its stuck-sensor (identical-run) features.

The result (both channels, thresholds, metrics, record ids used) is written to
``models/weights/ood.pt``; :mod:`models.ood.export` serves it.
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

from models.common.provenance import code_version
from models.common.training_data import PHYSIONET_2012, require_data
from models.deterioration.export import load_checkpoint
from models.deterioration.network import DeteriorationEnsemble, NetConfig
from models.deterioration.train import split_record_ids
from models.ood.detector import fit_gaussians, fit_summary, min_distance, percentile_threshold
from models.ood.inputs import HOUR_BUCKET_EDGES, BucketFit, bucket_arrays, fit_buckets
from models.ood.settings import OODSettings
from models.ood.shifts import SHIFTS, apply_shift
from models.ood.timeline import sample_stays, timeline
from models.ood.windows import ChannelScorer, WindowFeatures, window_features
from streams.core.features import SERIES_CODES
from streams.core.risk_metrics import auroc
from streams.datasets.physionet2012 import Stay, data_hash, load_stays
from vigil.errors import ModelError

__all__ = [
    "ALL_MINUTES",
    "FIT_HOURS",
    "OOD_SOURCES",
    "RIDGE_FRACTIONS",
    "OODResult",
    "fit_ood",
]

FIT_HOURS: Final[tuple[int, ...]] = (6, 12, 18, 24, 30, 36, 42, 48)
"""Hours whose windows fit and threshold the representation channel (the network's
training range)."""
ALL_MINUTES: Final[tuple[int, ...]] = (*range(30, 361, 30), *range(420, 48 * 60 + 1, 60))
"""Scoring times (minutes after admission) whose windows fit and threshold the input
channel, and where flag rates are reported: every half hour to 6 h (the worker scores
every 30 min, and the first buckets change fastest), then every hour to 48 h."""
MIN_BUCKET_WINDOWS: Final[int] = 100
"""Fewest training and validation windows an hour bucket keeps (else it is merged)."""
OOD_SOURCES: Final[tuple[str, ...]] = (
    "models/ood/detector.py",
    "models/ood/inputs.py",
    "models/ood/shifts.py",
    "models/ood/timeline.py",
    "models/ood/train.py",
    "models/ood/windows.py",
    "models/ood/export.py",
)
"""Files hashed into the OOD checkpoint's and model card's ``code_version``."""
RIDGE_FRACTIONS: Final[dict[str, float]] = {"representation": 1e-4, "input": 1e-2}
"""Ridge of each channel's covariance, as a fraction of its mean variance."""


@dataclass(frozen=True, slots=True)
class OODResult:
    """What :func:`fit_ood` produced.

    Attributes:
        path: The written OOD checkpoint.
        representation_threshold: The representation channel's distance threshold.
        input_thresholds: The input channel's threshold per hour bucket.
        metrics: Validation, test and shift metrics (JSON-ready).
        seconds: Wall time, seconds.
    """

    path: Path
    representation_threshold: float
    input_thresholds: tuple[float, ...]
    metrics: dict[str, Any]
    seconds: float


def _ood_auroc(inside: npt.NDArray[Any], outside: npt.NDArray[Any]) -> float:
    labels = np.concatenate([np.zeros(inside.size), np.ones(outside.size)])
    return auroc(labels, np.concatenate([inside, outside]))


def _evaluate(inside: npt.NDArray[Any], outside: npt.NDArray[Any]) -> dict[str, Any]:
    """OOD AUROC and flag rate of normalised scores (flagged: score above 1)."""
    return {
        "auroc": round(_ood_auroc(inside, outside), 4) if outside.size else None,
        "flagged_fraction": round(float((outside > 1.0).mean()), 4) if outside.size else None,
        "n_in": int(inside.size),
        "n_shifted": int(outside.size),
        "median_score_shifted": round(float(np.median(outside)), 3) if outside.size else None,
    }


def _changed(a: WindowFeatures, b: WindowFeatures) -> npt.NDArray[np.bool_]:
    """Windows whose inputs differ (the representation is a function of the inputs)."""
    return np.asarray(np.abs(a.inputs - b.inputs).max(axis=1) > 0.0)


def _flag_rates(scores: dict[str, npt.NDArray[Any]], minutes: Sequence[int]) -> dict[str, Any]:
    """Overall and per-scoring-time flag rate of each channel (windows time-major)."""
    out: dict[str, Any] = {}
    for name, score in scores.items():
        flagged = (score > 1.0).reshape(len(minutes), -1)
        out[name] = {
            "flagged_fraction": round(float(flagged.mean()), 4),
            "flagged_fraction_by_hour": {
                f"{m / 60:g}h": round(float(f.mean()), 4)
                for m, f in zip(minutes, flagged, strict=True)
            },
        }
    return out


@dataclass(frozen=True, slots=True)
class _Data:
    """Features and per-window labels of the three splits."""

    train_inputs: WindowFeatures  # training stays at ALL_MINUTES, no representation
    train_rep: WindowFeatures  # training stays at FIT_HOURS
    validation: WindowFeatures  # validation stays at ALL_MINUTES
    test: WindowFeatures  # test stays at ALL_MINUTES
    labels: dict[str, npt.NDArray[Any]]  # "train_rep" (the representation's classes)
    icu: dict[str, npt.NDArray[Any]]  # "train_inputs", "train_rep", "validation", "test"
    fit_rows: npt.NDArray[np.bool_]  # validation windows at FIT_HOURS


_RUN_FREE: Final[str] = "input_without_runs"


def _fit_channels(
    data: _Data, settings: OODSettings, keep: Callable[[str], npt.NDArray[np.bool_]]
) -> tuple[ChannelScorer, ChannelScorer]:
    """The served scorer, and the same with the input channel fitted without its
    identical-run columns (the last ``P``), on the windows ``keep(key)`` selects."""
    rep_x = data.train_rep.representation
    val_rep = data.validation.representation
    if rep_x is None or val_rep is None:
        raise ModelError("representation features missing")
    rep_fit = fit_gaussians(
        rep_x[keep("train_rep")],
        data.labels["train_rep"][keep("train_rep")],
        ridge_fraction=RIDGE_FRACTIONS["representation"],
    )
    rep_threshold = percentile_threshold(
        min_distance(rep_fit, val_rep[data.fit_rows & keep("validation")]), settings.percentile
    )
    width = data.train_inputs.inputs.shape[1]
    params = len(SERIES_CODES)  # the identical-run columns come last
    scorers: list[ChannelScorer] = []
    for columns in (np.arange(width), np.arange(width - params)):
        train = data.train_inputs.rows(keep("train_inputs"))
        val = data.validation.rows(keep("validation"))
        buckets: BucketFit = fit_buckets(
            train.inputs[:, columns],
            train.hours,
            val.inputs[:, columns],
            val.hours,
            edges=HOUR_BUCKET_EDGES,
            percentile=settings.percentile,
            ridge_fraction=RIDGE_FRACTIONS["input"],
            min_windows=MIN_BUCKET_WINDOWS,
        )
        scorers.append(ChannelScorer(rep_fit, rep_threshold, buckets, slice(None), columns))
    return scorers[0], scorers[1]


def _all_scores(
    served: ChannelScorer, run_free: ChannelScorer, first: ChannelScorer, w: WindowFeatures
) -> dict[str, npt.NDArray[np.float64]]:
    """Every evaluated score (normalised; above 1 = flagged) of windows ``w``."""
    main, free = served.scores(w), run_free.scores(w)
    return {
        **main,
        _RUN_FREE: free["input"],
        "combined_without_runs": free["combined"],
        "first_member": first.scores(w)["representation"],
    }


def _shift_metrics(
    net: DeteriorationEnsemble,
    config: NetConfig,
    score: Callable[[WindowFeatures], dict[str, npt.NDArray[np.float64]]],
    test: list[Stay],
    settings: OODSettings,
) -> dict[str, Any]:
    minutes = [settings.eval_hour * 60]
    base = window_features(net, config, test, minutes)
    base_scores = score(base)
    out: dict[str, Any] = {}
    for shift in SHIFTS:
        for filtered in (True, False):
            shifted = [
                apply_shift(s, shift, onset_hours=settings.onset_hours, filter_artifacts=filtered)
                for s in test
            ]
            feats = window_features(net, config, shifted, minutes)
            changed = _changed(base, feats)
            scores = score(feats.rows(changed))
            entry: dict[str, Any] = {"stays_changed": int(changed.sum()), "n_test": len(test)}
            for name, inside in base_scores.items():
                entry[name] = _evaluate(inside, scores[name])
            out[f"{shift}/{'filtered' if filtered else 'unfiltered'}"] = entry
    return out


def _icu_type_metrics(data: _Data, settings: OODSettings, eval_rows: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for left_out in (1, 2, 3, 4):

        def keep(key: str, left_out: int = left_out) -> npt.NDArray[np.bool_]:
            return np.asarray(data.icu[key] != left_out)

        scorer, _ = _fit_channels(data, settings, keep)
        at_eval = data.test.rows(eval_rows)
        icu = data.icu["test"][eval_rows]
        scores = scorer.scores(at_eval)
        entry: dict[str, Any] = {"n_test_left_out": int((icu == left_out).sum())}
        for name, score in scores.items():
            entry[name] = _evaluate(score[icu != left_out], score[icu == left_out])
        out[f"icu_type_{left_out}"] = entry
    return out


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fit_ood(settings: OODSettings) -> OODResult:
    """Fits both channels and their thresholds, evaluates, writes the OOD checkpoint.

    Raises:
        ModelError: Unreadable checkpoint or data, or a split that differs from the
            checkpoint's.
    """
    require_data(settings, "data_dir", PHYSIONET_2012)
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
    icu_by_id = {s.record_id: s.descriptors.get("ICUType") or 0 for s in stays}

    def per_window(name: str, times: Sequence[int], values: dict[int, Any]) -> Any:
        return np.tile(np.array([values[s.record_id] for s in parts[name]]), len(times))

    fit_minutes = [60 * h for h in FIT_HOURS]

    data = _Data(
        train_inputs=window_features(
            net, config, parts["train"], ALL_MINUTES, representation=False
        ),
        train_rep=window_features(net, config, parts["train"], fit_minutes),
        validation=window_features(net, config, parts["validation"], ALL_MINUTES),
        test=window_features(net, config, parts["test"], ALL_MINUTES),
        labels={
            "train_rep": per_window("train", fit_minutes, labels_by_id),
        },
        icu={
            "train_inputs": per_window("train", ALL_MINUTES, icu_by_id),
            "train_rep": per_window("train", fit_minutes, icu_by_id),
            "validation": per_window("validation", ALL_MINUTES, icu_by_id),
            "test": per_window("test", ALL_MINUTES, icu_by_id),
        },
        fit_rows=np.repeat(np.isin(ALL_MINUTES, fit_minutes), len(parts["validation"])),
    )

    def everything(key: str) -> npt.NDArray[np.bool_]:
        return np.ones(data.icu[key].shape[0], dtype=bool)

    served, run_free = _fit_channels(data, settings, everything)
    width = config.fused
    first_fit = fit_gaussians(
        data.train_rep.representation[:, :width],  # type: ignore[index]
        data.labels["train_rep"],
        ridge_fraction=RIDGE_FRACTIONS["representation"],
    )
    first_threshold = percentile_threshold(
        min_distance(first_fit, data.validation.representation[data.fit_rows, :width]),  # type: ignore[index]
        settings.percentile,
    )
    first = ChannelScorer(first_fit, first_threshold, served.inputs, slice(0, width))

    def score(w: WindowFeatures) -> dict[str, npt.NDArray[np.float64]]:
        return _all_scores(served, run_free, first, w)

    eval_rows = np.repeat(np.asarray(ALL_MINUTES) == 60 * settings.eval_hour, len(parts["test"]))
    metrics: dict[str, Any] = {
        "thresholds": {
            "representation": served.representation_threshold,
            "input_hour_bucket_edges": list(served.inputs.edges),
            "input_by_bucket": list(served.inputs.thresholds),
            "first_member": first_threshold,
            "input_without_runs_by_bucket": list(run_free.inputs.thresholds),
        },
        "fit": {
            "representation": fit_summary(served.representation),
            "input_by_bucket": [fit_summary(g) for g in served.inputs.fits],
        },
        "validation": _flag_rates(score(data.validation), ALL_MINUTES),
        "test": _flag_rates(score(data.test), ALL_MINUTES),
    }
    metrics["shifts"] = _shift_metrics(net, config, score, parts["test"], settings)
    metrics["left_out_icu_type"] = _icu_type_metrics(data, settings, eval_rows)
    sample = sample_stays(parts["test"], settings.timeline_stays, seed=settings.timeline_seed)
    metrics["timeline"] = timeline(net, config, served, sample, onset_hours=settings.onset_hours)
    elapsed = round(time.monotonic() - started, 1)
    rep = served.representation
    arrays = bucket_arrays(served.inputs)
    payload = {
        "means": torch.from_numpy(rep.means),
        "covariance": torch.from_numpy(rep.covariance),
        "whitening": torch.from_numpy(rep.whitening),
        **{f"input_{k}": torch.from_numpy(np.asarray(v)) for k, v in arrays.items()},
        "meta": {
            "classes": list(rep.classes),
            "class_meaning": "in-hospital death (Outcomes-a.txt) of the stay",
            "features": {
                "representation": "fused vectors of the ensemble's members, concatenated",
                "input": "window statistics, hours since last seen and longest identical "
                "run per parameter, statics (models/ood/inputs.py), per hour bucket",
            },
            "threshold": 1.0,
            "threshold_meaning": "of the combined score distance = max(representation "
            "distance / representation threshold, input distance / input threshold)",
            "representation_threshold": served.representation_threshold,
            "input_hour_bucket_edges": list(served.inputs.edges),
            "input_thresholds": list(served.inputs.thresholds),
            "ridge": {
                "representation": rep.ridge,
                "input_by_bucket": [g.ridge for g in served.inputs.fits],
            },
            "counts": list(rep.counts),
            "percentile": settings.percentile,
            "fit_hours": list(FIT_HOURS),
            "input_fit_minutes": list(ALL_MINUTES),
            "eval_hour": settings.eval_hour,
            "onset_hours": settings.onset_hours,
            "settings": settings.model_dump(mode="json"),
            "deterioration_checkpoint_sha256": _file_sha256(settings.checkpoint),
            "split": {name: list(ids) for name, ids in split.items()},
            "split_method": meta["split_method"],
            "fitted_on": "train split (Gaussians of both channels), validation split "
            "(thresholds); test split only for the reported metrics",
            "data_sha256": data_hash(settings.data_dir),
            "code_version": code_version(OOD_SOURCES),
            "metrics": metrics,
            "seconds": elapsed,
        },
    }
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, settings.output)
    return OODResult(
        settings.output,
        served.representation_threshold,
        tuple(served.inputs.thresholds),
        metrics,
        elapsed,
    )
