"""Fitting and evaluation of the step model's OOD verdict (``python -m models.ood.step_train``).

The method of ``docs/ood.md`` (:mod:`models.ood.train`) on the step model
(:mod:`models.ood.step`):

1. Load the step checkpoint and set A; recompute the split with
   :func:`models.deterioration.train.split_record_ids` and the checkpoint's split seed, and refuse
   to go on unless it equals the checkpoint's recorded split.
2. Every stay is prepared at scoring times in minutes (:func:`prepare_minutes`: the
   closed steps before the scoring time's bin, then the open bin up to the scoring time,
   as the worker sends them) and run through the ensemble's full-sequence path
   (:func:`ood_features`): all members' fused vectors, the running statistics' input
   features with the hours since each parameter was last seen at the scoring time
   (:mod:`streams.core.last_seen`, as the worker sends them), and the steps observed.
3. Representation channel: class Gaussians (in-hospital death, tied covariance, ridge
   ``1e-4`` of the mean variance) on **training** stays at
   :data:`models.ood.train.FIT_HOURS`; threshold: the 99th percentile of **validation**
   distances at the same hours.
4. Input channel: one Gaussian per step bucket (ridge ``1e-2``, buckets with fewer than
   100 windows merged) on **training** stays at :data:`models.ood.train.ALL_MINUTES`;
   one threshold per bucket, the 99th percentile of that bucket's **validation**
   distances.
5. Evaluation (nothing chosen here): flag rates on validation and **test** at every
   scoring time; on the **test** split at 48 h, each shift of :mod:`models.ood.shifts`
   (filtered and unfiltered) and a left-out ICU type (both channels refitted without
   it); the time course on 200 sampled test stays; 95 % intervals by bootstrap over
   stays; and the shipped window detector (``triton_repo/ood/1/model.pt``) on the same
   test windows, paired.

Writes ``models/weights/deterioration_step_ood.pt``; :mod:`models.deterioration.step_export` serves
it inside ``deterioration_step``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from models.common.checkpoints import checkpoint_errors, read_checkpoint
from models.common.provenance import code_version
from models.common.training_data import PHYSIONET_2012, require_data
from models.deterioration.step_network import (
    StepEnsemble,
    StepInputs,
    StepNet,
    gru_inputs,
    running_stats,
)
from models.deterioration.step_train import load_step_checkpoint
from models.deterioration.train import split_record_ids
from models.ood.detector import (
    GaussianFit,
    fit_gaussians,
    fit_summary,
    min_distance,
    percentile_threshold,
)
from models.ood.inputs import HOUR_BUCKET_EDGES, bucket_arrays, fit_buckets
from models.ood.shifts import SHIFTS, apply_shift
from models.ood.step import reference_scores, step_input_features, steps_observed
from models.ood.step_settings import StepOODSettings
from models.ood.timeline import first_flag_hours, sample_stays
from models.ood.train import ALL_MINUTES, FIT_HOURS, MIN_BUCKET_WINDOWS, RIDGE_FRACTIONS
from streams.core.features import SERIES_CODES, StayArrays, features_at
from streams.core.last_seen import stay_hours_since_seen
from streams.core.risk_metrics import auroc
from streams.core.step_features import stay_bins
from streams.datasets.physionet2012 import Stay, data_hash, load_stays
from vigil.errors import ModelError

__all__ = [
    "STEP_OOD_SOURCES",
    "StepOODFeatures",
    "StepOODSettings",
    "fit_arrays",
    "fit_step_ood",
    "hours_since_seen_at",
    "load_fit",
    "ood_features",
    "prepare_minutes",
]

STEP_OOD_SOURCES: Final[tuple[str, ...]] = (
    "models/ood/detector.py",
    "models/ood/inputs.py",
    "models/ood/shifts.py",
    "models/deterioration/step_network.py",
    "models/ood/step.py",
    "models/ood/step_train.py",
    "models/ood/step_settings.py",
    "streams/core/last_seen.py",
)
"""Files hashed into the fit's ``code_version``."""
_CHUNK: Final[int] = 256


def prepare_minutes(
    stays: Sequence[StayArrays], net: StepEnsemble, minutes: Sequence[int]
) -> StepInputs:
    """Every stay's steps and state inputs at scoring times ``minutes`` after admission.

    :func:`models.deterioration.step_train.prepare` at any minute: the closed steps are the bins
    before the bin holding the scoring time; the open bin holds that bin's observations up to the
    scoring time. At whole hours it equals ``prepare`` (tested).
    """
    p, q, n = len(SERIES_CODES), len(minutes), len(stays)
    last_bin = max(minutes) // 60
    open_index = np.asarray(minutes, dtype=np.int64) // 60
    closed = []
    for stay in stays:
        bins = stay_bins(stay, stay.admit_time + timedelta(minutes=max(minutes)))
        keep = bins.index < last_bin
        closed.append(
            (bins.index[keep], bins.values[keep], bins.mask[keep], bins.delta_hours[keep])
        )
    width = max(1, max(len(c[0]) for c in closed))
    cv = np.zeros((n, width, p), dtype=np.float32)
    cm, cd = np.zeros_like(cv), np.zeros_like(cv)
    cvalid = np.zeros((n, width), dtype=np.float32)
    n_closed = np.zeros((n, q), dtype=np.int64)
    ov = np.zeros((n, q, p), dtype=np.float32)
    om, od = np.zeros_like(ov), np.zeros_like(ov)
    ovalid = np.zeros((n, q), dtype=np.float32)
    for i, (stay, (index, values, mask, delta)) in enumerate(zip(stays, closed, strict=True)):
        k = index.size
        cv[i, :k], cm[i, :k], cd[i, :k], cvalid[i, :k] = values, mask, delta, 1.0
        n_closed[i] = np.searchsorted(index, open_index, side="left")
        for j, minute in enumerate(minutes):
            end = stay.admit_time + timedelta(minutes=int(minute))
            row = features_at(stay, end, window=timedelta(hours=1))
            if row.mask.any():
                ov[i, j], om[i, j], od[i, j] = row.values[0], row.mask[0], row.delta_hours[0]
                ovalid[i, j] = 1.0
    with torch.no_grad():
        mask_t = torch.from_numpy(cm)
        x = net.standardise(torch.from_numpy(cv), mask_t)
        seq = running_stats(torch.zeros(n, 5, p), x, mask_t)
        closed_x = gru_inputs(seq[:, 1:, 4], mask_t, torch.from_numpy(cd), net.delta_cap)
        nc = torch.from_numpy(n_closed)
        prev = torch.gather(seq, 1, nc.view(n, q, 1, 1).expand(n, q, 5, p))
        open_mask = torch.from_numpy(om).reshape(n * q, 1, p)
        open_std = net.standardise(torch.from_numpy(ov).reshape(n * q, 1, p), open_mask)
        stats = running_stats(prev.reshape(n * q, 5, p), open_std, open_mask)[:, 1]
        open_x = gru_inputs(
            stats[:, 4], open_mask[:, 0], torch.from_numpy(od).reshape(n * q, p), net.delta_cap
        )
    return StepInputs(
        closed_x=closed_x,
        closed_valid=torch.from_numpy(cvalid),
        n_closed=nc,
        open_x=open_x.view(n, q, -1),
        open_valid=torch.from_numpy(ovalid),
        stats=stats.view(n, q, 5, p),
        statics=torch.from_numpy(np.stack([s.statics for s in stays]).astype(np.float32)),
        static_mask=torch.from_numpy(np.stack([s.static_mask for s in stays]).astype(np.float32)),
    )


def hours_since_seen_at(stays: Sequence[StayArrays], minutes: Sequence[int]) -> Tensor:
    """``[N, Q, P]`` hours since each parameter was last seen, for every stay at every
    scoring time (what the worker sends as ``hours_since_seen``)."""
    return torch.from_numpy(np.stack([stay_hours_since_seen(s, minutes) for s in stays]))


class StepOODFeatures:
    """Both channels' features of ``N`` windows, ordered time-major (every stay at the
    first scoring time, then every stay at the second, ...).

    Attributes:
        representation: ``[N, M·F]`` concatenated fused vectors (float64).
        inputs: ``[N, 7P+2S]`` :func:`models.ood.step.step_input_features`.
        steps: ``[N]`` :func:`models.ood.step.steps_observed`.
    """

    def __init__(
        self,
        representation: npt.NDArray[np.float64],
        inputs: npt.NDArray[np.float64],
        steps: npt.NDArray[np.float64],
    ) -> None:
        self.representation = representation
        self.inputs = inputs
        self.steps = steps

    def rows(self, select: npt.NDArray[np.bool_]) -> StepOODFeatures:
        """The windows ``select`` picks."""
        return StepOODFeatures(self.representation[select], self.inputs[select], self.steps[select])


def ood_features(
    net: StepEnsemble, inputs: StepInputs, hours_since_seen: Tensor
) -> StepOODFeatures:
    """Every member's fused vector (concatenated), the input features and the steps
    observed at each scoring time of ``inputs`` (no images, eval mode): the full-sequence
    path of what :class:`models.ood.step.StepOODModule` reads.

    Args:
        net: The step ensemble.
        inputs: :func:`prepare_minutes` at ``Q`` scoring times.
        hours_since_seen: ``[N, Q, P]`` :func:`hours_since_seen_at` the same times.
    """
    net.eval()
    reps, feats, steps = [], [], []
    batch_total, q = inputs.n_closed.shape
    with torch.no_grad():
        for start in range(0, batch_total, _CHUNK):
            part = inputs.rows(torch.arange(start, min(start + _CHUNK, batch_total)))
            b = part.n_closed.shape[0]
            stats = part.stats.reshape(b * q, 5, -1)
            summary = torch.cat(
                [
                    stats[:, 4],
                    stats[:, 1] / torch.clamp(stats[:, 0], min=1.0),
                    stats[:, 2],
                    stats[:, 3],
                    torch.log1p(stats[:, 0]),
                ],
                1,
            )
            static_in = net.static_input(part.statics, part.static_mask)
            static_in = static_in.unsqueeze(1).expand(b, q, -1).reshape(b * q, -1)
            open_valid = part.open_valid.reshape(b * q, 1) > 0.5
            open_x = part.open_x.reshape(b * q, -1)
            fused_all = []
            for member_module in net.members:
                member: StepNet = member_module  # type: ignore[assignment]
                h_seq = member.sequence(part.closed_x, part.closed_valid)
                index = part.n_closed.unsqueeze(-1).expand(b, q, h_seq.shape[-1])
                h = torch.gather(h_seq, 1, index).reshape(b * q, -1)
                h = torch.where(open_valid, member.cell(open_x, h), h)
                fused, _ = member.head_logit(h, summary, static_in, None, net.delta_cap)
                fused_all.append(fused.view(b, q, -1))
            # time-major rows: [Q,b,·]
            reps.append(torch.cat(fused_all, -1).transpose(0, 1).numpy().astype(np.float64))
            since = hours_since_seen[start : start + b].reshape(b * q, -1)
            x = step_input_features(
                stats,
                since,
                part.statics.unsqueeze(1).expand(b, q, -1).reshape(b * q, -1),
                part.static_mask.unsqueeze(1).expand(b, q, -1).reshape(b * q, -1),
            )
            feats.append(x.view(b, q, -1).transpose(0, 1).numpy().astype(np.float64))
            steps.append(steps_observed(stats).view(b, q).t().numpy().astype(np.float64))
    width_rep, width_in = reps[0].shape[-1], feats[0].shape[-1]
    return StepOODFeatures(
        np.concatenate(reps, axis=1).reshape(-1, width_rep),
        np.concatenate(feats, axis=1).reshape(-1, width_in),
        np.concatenate(steps, axis=1).reshape(-1),
    )


def fit_arrays(
    rep: GaussianFit, rep_threshold: float, buckets: Any
) -> dict[str, npt.NDArray[np.float64]]:
    """What :class:`models.ood.step.StepOODModule` and the checkpoint store of a fit."""
    b = bucket_arrays(buckets)
    return {
        "rep_whitening": rep.whitening,
        "rep_means": rep.means,
        "rep_threshold": np.array([rep_threshold]),
        "input_centre": b["centre"],
        "input_scale": b["scale"],
        "input_edges": b["edges"],
        "input_whitening": b["whitening"],
        "input_means": b["means"],
        "input_thresholds": b["thresholds"],
    }


def _fit(
    train_rep: StepOODFeatures,
    rep_labels: npt.NDArray[Any],
    val_rep: StepOODFeatures,
    train_in: StepOODFeatures,
    val_in: StepOODFeatures,
    percentile: float,
    columns: slice = slice(None),
) -> tuple[dict[str, npt.NDArray[np.float64]], GaussianFit, Any]:
    rep = fit_gaussians(
        train_rep.representation[:, columns],
        rep_labels,
        ridge_fraction=RIDGE_FRACTIONS["representation"],
    )
    threshold = percentile_threshold(
        min_distance(rep, val_rep.representation[:, columns]), percentile
    )
    buckets = fit_buckets(
        train_in.inputs,
        train_in.steps,
        val_in.inputs,
        val_in.steps,
        edges=HOUR_BUCKET_EDGES,
        percentile=percentile,
        ridge_fraction=RIDGE_FRACTIONS["input"],
        min_windows=MIN_BUCKET_WINDOWS,
    )
    return fit_arrays(rep, threshold, buckets), rep, buckets


def _scores(arrays: dict[str, Any], w: StepOODFeatures) -> dict[str, npt.NDArray[np.float64]]:
    out = reference_scores(arrays, w.representation, w.inputs, w.steps)
    return {k: out[k] for k in ("combined", "representation", "input")}


def _interval(values: Sequence[float]) -> list[float] | None:
    finite = np.asarray([v for v in values if np.isfinite(v)])
    if finite.size == 0:
        return None
    return [
        round(float(np.percentile(finite, 2.5)), 4),
        round(float(np.percentile(finite, 97.5)), 4),
    ]


def _ood_auroc(inside: npt.NDArray[Any], outside: npt.NDArray[Any]) -> float:
    if inside.size == 0 or outside.size == 0:
        return float("nan")
    labels = np.concatenate([np.zeros(inside.size), np.ones(outside.size)])
    return auroc(labels, np.concatenate([inside, outside]))


def _flag_rates(
    scores: dict[str, npt.NDArray[np.float64]],
    minutes: Sequence[int],
    resamples: npt.NDArray[np.int64],
) -> dict[str, Any]:
    """Overall (with a stay-bootstrap interval) and per-time flag rate of each channel."""
    out: dict[str, Any] = {}
    for name, score in scores.items():
        flagged = (score > 1.0).reshape(len(minutes), -1)
        per_stay = flagged.mean(axis=0)
        out[name] = {
            "flagged_fraction": round(float(flagged.mean()), 4),
            "flagged_fraction_ci": _interval([float(per_stay[r].mean()) for r in resamples]),
            "flagged_fraction_by_hour": {
                f"{m / 60:g}h": round(float(f.mean()), 4)
                for m, f in zip(minutes, flagged, strict=True)
            },
        }
    return out


def _same_until(a: Stay, b: Stay, minute: int) -> bool:
    ka, kb = a.minutes <= minute, b.minutes <= minute
    return (
        np.array_equal(a.code_index[ka], b.code_index[kb])
        and np.array_equal(a.minutes[ka], b.minutes[kb])
        and np.array_equal(a.values[ka], b.values[kb])
        and a.descriptors == b.descriptors
    )


def _window_detector(path: Path, stays: Sequence[Stay], minute: int) -> npt.NDArray[np.float64]:
    """``[N]`` combined ``distance`` of the served window detector at ``minute``."""
    module = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(stays), 64):
            windows = [
                features_at(a, a.admit_time + timedelta(minutes=minute))
                for a in (s.arrays() for s in stays[start : start + 64])
            ]
            t = [
                torch.from_numpy(np.stack([getattr(w, n) for w in windows]))
                for n in ("values", "mask", "delta_hours", "statics", "static_mask")
            ]
            b = len(windows)
            result = module(*t, torch.zeros(b, 4, 64), torch.zeros(b, 4), torch.zeros(b, 4))
            out.append(result[0][:, 0].numpy().astype(np.float64))
    return np.concatenate(out)


def _shift_entry(
    inside: dict[str, npt.NDArray[np.float64]],
    shifted: dict[str, npt.NDArray[np.float64]],
    changed: npt.NDArray[np.bool_],
    resamples: npt.NDArray[np.int64],
) -> dict[str, Any]:
    """AUROC and flag rate per score, with stay-bootstrap intervals; the in-distribution
    windows are all test stays, the shifted ones those the shift changed (paired: one
    resample of stays for both)."""
    entry: dict[str, Any] = {"n_in": int(changed.size), "n_shifted": int(changed.sum())}
    for name in inside:
        a, b = inside[name], shifted[name]
        boot_auc, boot_flag = [], []
        for r in resamples:
            boot_auc.append(_ood_auroc(a[r], b[r][changed[r]]))
            boot_flag.append(float((b[r][changed[r]] > 1.0).mean()) if changed[r].any() else np.nan)
        entry[name] = {
            "auroc": round(_ood_auroc(a, b[changed]), 4),
            "auroc_ci": _interval(boot_auc),
            "flagged_fraction": round(float((b[changed] > 1.0).mean()), 4),
            "flagged_fraction_ci": _interval(boot_flag),
        }
    if "window_detector" in inside and "combined" in inside:
        diffs = [
            _ood_auroc(inside["combined"][r], shifted["combined"][r][changed[r]])
            - _ood_auroc(inside["window_detector"][r], shifted["window_detector"][r][changed[r]])
            for r in resamples
        ]
        entry["auroc_step_minus_window"] = {
            "difference": round(entry["combined"]["auroc"] - entry["window_detector"]["auroc"], 4),
            "ci": _interval(diffs),
        }
    return entry


def _timeline(
    score: Callable[[Sequence[Stay], Sequence[int]], npt.NDArray[np.float64]],
    stays: Sequence[Stay],
    onset_hours: int,
) -> dict[str, Any]:
    """Flag rate at every half hour to 48 h, first flag, unshifted and per shift."""
    minutes = list(range(30, 48 * 60 + 1, 30))
    hours = np.asarray(minutes, dtype=np.float64) / 60.0
    at_admission = {"temperature_fahrenheit", "fio2_percent", "population_drift"}

    def summary(group: Sequence[Stay], onset: float) -> dict[str, Any]:
        if not group:
            return {"n_stays": 0}
        flagged = (score(group, minutes) > 1.0).reshape(len(minutes), -1)
        first = first_flag_hours(flagged, hours)
        after = first_flag_hours(flagged, hours, from_hour=onset)

        def median(h: npt.NDArray[np.float64]) -> float | None:
            m = float(np.median(h))
            return m if np.isfinite(m) else None

        return {
            "n_stays": len(group),
            "onset_hour": onset,
            "flag_rate": [round(float(r), 4) for r in flagged.mean(axis=1)],
            "median_first_flag_hour": median(first),
            "median_first_flag_hour_from_onset": median(after),
            "ever_flagged_fraction": round(float(np.isfinite(first).mean()), 4),
            "ever_flagged_from_onset_fraction": round(float(np.isfinite(after).mean()), 4),
        }

    out: dict[str, Any] = {"scoring_hours": [float(h) for h in hours], "n_sampled": len(stays)}
    out["unshifted"] = summary(stays, 0.0)
    for shift in SHIFTS:
        shifted = [apply_shift(s, shift, onset_hours=onset_hours) for s in stays]
        changed = [b for a, b in zip(stays, shifted, strict=True) if not _same_until(a, b, 48 * 60)]
        out[shift] = summary(changed, 0.0 if shift in at_admission else float(onset_hours))
    return out


def fit_step_ood(settings: StepOODSettings) -> dict[str, Any]:
    """Fits both channels, evaluates them, writes the fit; returns its metadata.

    Raises:
        ModelError: Unreadable checkpoint or data, or a split unlike the checkpoint's.
    """
    require_data(settings, "data_dir", PHYSIONET_2012)
    started = time.monotonic()
    torch.manual_seed(0)
    torch.set_num_threads(settings.threads)
    net, meta = load_step_checkpoint(settings.checkpoint)
    stays, outcomes = load_stays(settings.data_dir)
    if meta["settings"].get("max_stays") is not None:
        stays = stays[: int(meta["settings"]["max_stays"])]
    labels_by_id = {s.record_id: outcomes[s.record_id].in_hospital_death for s in stays}
    split = split_record_ids(labels_by_id, seed=int(meta["settings"]["split_seed"]))
    if {k: list(v) for k, v in split.items()} != meta["split"]:
        raise ModelError("the recomputed split differs from the step checkpoint's; wrong data?")
    by_id = {s.record_id: s for s in stays}
    parts = {name: [by_id[r] for r in ids] for name, ids in split.items()}
    fit_minutes = [60 * h for h in FIT_HOURS]

    def features(group: Sequence[Stay], minutes: Sequence[int]) -> StepOODFeatures:
        arrays = [s.arrays() for s in group]
        return ood_features(
            net, prepare_minutes(arrays, net, minutes), hours_since_seen_at(arrays, minutes)
        )

    def per_window(name: str, n_times: int, values: dict[int, Any]) -> npt.NDArray[Any]:
        return np.tile(np.array([values[s.record_id] for s in parts[name]]), n_times)

    train_in = features(parts["train"], ALL_MINUTES)
    fit_rows_train = np.repeat(np.isin(ALL_MINUTES, fit_minutes), len(parts["train"]))
    train_rep = train_in.rows(fit_rows_train)
    validation = features(parts["validation"], ALL_MINUTES)
    fit_rows = np.repeat(np.isin(ALL_MINUTES, fit_minutes), len(parts["validation"]))
    test = features(parts["test"], ALL_MINUTES)
    prepared = round(time.monotonic() - started, 1)
    rep_labels = per_window("train", len(FIT_HOURS), labels_by_id)
    arrays, rep_fit, buckets = _fit(
        train_rep, rep_labels, validation.rows(fit_rows), train_in, validation, settings.percentile
    )
    width = net.config.fused
    first_arrays, _, _ = _fit(
        train_rep,
        rep_labels,
        validation.rows(fit_rows),
        train_in,
        validation,
        settings.percentile,
        slice(0, width),
    )

    def scores(w: StepOODFeatures) -> dict[str, npt.NDArray[np.float64]]:
        main = _scores(arrays, w)
        first = reference_scores(first_arrays, w.representation[:, :width], w.inputs, w.steps)[
            "representation"
        ]
        return {**main, "first_member": first}

    rng = np.random.default_rng(0)

    def resamples(n: int) -> npt.NDArray[np.int64]:
        return rng.integers(0, n, size=(settings.bootstrap_resamples, n))

    metrics: dict[str, Any] = {
        "thresholds": {
            "representation": float(arrays["rep_threshold"][0]),
            "input_step_bucket_edges": [float(e) for e in arrays["input_edges"]],
            "input_by_bucket": [float(t) for t in arrays["input_thresholds"]],
            "first_member": float(first_arrays["rep_threshold"][0]),
        },
        "fit": {
            "representation": fit_summary(rep_fit),
            "input_by_bucket": [fit_summary(g) for g in buckets.fits],
        },
        "validation": _flag_rates(
            scores(validation), ALL_MINUTES, resamples(len(parts["validation"]))
        ),
        "test": _flag_rates(scores(test), ALL_MINUTES, resamples(len(parts["test"]))),
    }

    # Shifts on the test split at eval_hour, paired with the served window detector.
    eval_minute = 60 * settings.eval_hour
    test_stays = parts["test"]
    boot = resamples(len(test_stays))
    base = scores(features(test_stays, [eval_minute]))
    if settings.window_ood is not None:
        base["window_detector"] = _window_detector(settings.window_ood, test_stays, eval_minute)
    shifts: dict[str, Any] = {}
    for shift in SHIFTS:
        for filtered in (True, False):
            shifted = [
                apply_shift(s, shift, onset_hours=settings.onset_hours, filter_artifacts=filtered)
                for s in test_stays
            ]
            changed = np.array(
                [
                    not _same_until(a, b, eval_minute)
                    for a, b in zip(test_stays, shifted, strict=True)
                ]
            )
            out = scores(features(shifted, [eval_minute]))
            if settings.window_ood is not None:
                out["window_detector"] = _window_detector(settings.window_ood, shifted, eval_minute)
            key = f"{shift}/{'filtered' if filtered else 'unfiltered'}"
            shifts[key] = _shift_entry(base, out, changed, boot)
    metrics["shifts"] = shifts

    # Left-out ICU type: both channels refitted without it (the network saw all four).
    icu_by_id = {s.record_id: s.descriptors.get("ICUType") or 0 for s in stays}
    icu_train = per_window("train", len(ALL_MINUTES), icu_by_id)
    icu_val = per_window("validation", len(ALL_MINUTES), icu_by_id)
    eval_rows = np.repeat(np.asarray(ALL_MINUTES) == eval_minute, len(test_stays))
    icu_test = np.array([icu_by_id[s.record_id] for s in test_stays])
    left_out: dict[str, Any] = {}
    for icu in (1, 2, 3, 4):
        keep_train, keep_val = icu_train != icu, icu_val != icu
        arr, _, _ = _fit(
            train_in.rows(fit_rows_train & keep_train),
            rep_labels[icu_train[fit_rows_train] != icu],
            validation.rows(fit_rows & keep_val),
            train_in.rows(keep_train),
            validation.rows(keep_val),
            settings.percentile,
        )
        s = _scores(arr, test.rows(eval_rows))
        entry: dict[str, Any] = {"n_test_left_out": int((icu_test == icu).sum())}
        for name, score in s.items():
            inside, outside = score[icu_test != icu], score[icu_test == icu]
            entry[name] = {
                "auroc": round(_ood_auroc(inside, outside), 4),
                "flagged_fraction": round(float((outside > 1.0).mean()), 4),
            }
        left_out[f"icu_type_{icu}"] = entry
    metrics["left_out_icu_type"] = left_out

    sample = sample_stays(test_stays, settings.timeline_stays, seed=settings.timeline_seed)
    metrics["timeline"] = _timeline(
        lambda group, minutes: _scores(arrays, features(group, minutes))["combined"],
        sample,
        settings.onset_hours,
    )
    elapsed = round(time.monotonic() - started, 1)
    fit_meta: dict[str, Any] = {
        "classes": list(rep_fit.classes),
        "class_meaning": "in-hospital death (Outcomes-a.txt) of the stay",
        "features": {
            "representation": "fused vectors of the step ensemble's members after the last "
            "valid bin, concatenated (member-major)",
            "input": "from the running statistics after the last valid bin: last, mean, min, "
            "max (standardised), observed-any, log1p(count) per parameter; raw statics and "
            "their mask (models/ood/step.py); one Gaussian per bucket of steps observed",
        },
        "threshold": 1.0,
        "threshold_meaning": "of the combined score distance = max(representation distance "
        "/ representation threshold, input distance / input threshold of the step bucket)",
        "percentile": settings.percentile,
        "ridge": {
            "representation": rep_fit.ridge,
            "input_by_bucket": [g.ridge for g in buckets.fits],
        },
        "fit_hours": list(FIT_HOURS),
        "input_fit_minutes": list(ALL_MINUTES),
        "eval_hour": settings.eval_hour,
        "onset_hours": settings.onset_hours,
        "settings": settings.model_dump(mode="json"),
        "step_checkpoint_sha256": hashlib.sha256(settings.checkpoint.read_bytes()).hexdigest(),
        "window_detector_sha256": (
            hashlib.sha256(settings.window_ood.read_bytes()).hexdigest()
            if settings.window_ood is not None
            else None
        ),
        "split": {name: list(ids) for name, ids in split.items()},
        "split_method": meta["split_method"],
        "fitted_on": "train split (Gaussians of both channels), validation split "
        "(thresholds); test split only for the reported metrics",
        "data_sha256": data_hash(settings.data_dir),
        "code_version": code_version(STEP_OOD_SOURCES),
        "metrics": metrics,
        "prepare_seconds": prepared,
        "seconds": elapsed,
    }
    payload = {
        **{k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()},
        "meta": fit_meta,
    }
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, settings.output)
    return fit_meta


def load_fit(path: Path) -> tuple[dict[str, npt.NDArray[np.float64]], dict[str, Any]]:
    """The arrays (:class:`models.ood.step.StepOODModule`'s ``arrays``) and metadata of a
    fit written by :func:`fit_step_ood`.

    Raises:
        ModelError: The file is missing or not a step OOD fit.
    """
    with checkpoint_errors(path, "step OOD fit"):
        payload = read_checkpoint(path)
        meta: dict[str, Any] = payload.pop("meta")
        arrays = {k: v.numpy() for k, v in payload.items()}
    return arrays, meta


def main() -> None:
    """``python -m models.ood.step_train``: fit with settings from ``VIGIL_STEP_OOD_*``."""
    import json
    import sys

    meta = fit_step_ood(StepOODSettings())
    m = meta["metrics"]
    summary = {
        "thresholds": m["thresholds"],
        "validation": {k: v["flagged_fraction"] for k, v in m["validation"].items()},
        "test": {
            k: [v["flagged_fraction"], v["flagged_fraction_ci"]] for k, v in m["test"].items()
        },
        "shifts": {
            k: {n: e[n]["auroc"] for n in ("combined", "window_detector") if n in e}
            for k, e in m["shifts"].items()
        },
        "seconds": meta["seconds"],
    }
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
