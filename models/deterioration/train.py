"""Training of the deterioration model on PhysioNet 2012 set A, seeded and deterministic.

Pipeline (see ``docs/deterioration.md``):

1. Read set A (:mod:`streams.datasets.physionet2012`, artifacts dropped by the code table).
2. Split by a stratified seeded permutation of RecordIDs (:func:`split_record_ids`):
   60 % train, 20 % validation (early stopping, calibration, architecture choice), 20 %
   test (reported once, never tuned on).
3. Tensors come from :func:`streams.core.features.features_at`, the stream's own path.
   Each epoch samples ``hours_per_stay`` scoring hours per training stay, uniformly in
   ``[min_hour, 48]``, so the model learns to score at every hour.
4. Adam on binary cross-entropy; the best epoch by mean validation AUROC at 24 h and
   48 h is kept; Platt scaling is fitted on validation logits at hours 6, 12, …, 48.
5. Evaluation at 24 h and 48 h on validation and test, with baselines (SAPS-I, SOFA,
   NEWS2 worst-in-window, logistic regression on summary statistics) and a reliability
   table.

Determinism: every random draw comes from seeded generators, ``torch`` runs with
``use_deterministic_algorithms(True)`` and ``threads`` intra-op threads (1 by default).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from models.common.provenance import code_version, package_versions
from models.common.training_data import PHYSIONET_2012, require_data
from models.deterioration.baselines import fit_logistic, fit_platt, news2_hourly, summary_statistics
from models.deterioration.network import (
    LOG_SCALED_CODES,
    DeteriorationEnsemble,
    DeteriorationNet,
    NetConfig,
    NetInputs,
    RiskModel,
    window_statistics,
)
from models.deterioration.settings import TrainSettings
from streams.core.features import SERIES_CODES, StayArrays, features_at
from streams.core.risk_metrics import auprc, auroc, expected_calibration_error, reliability_table
from streams.datasets.physionet2012 import Outcome, Stay, data_hash, load_stays
from vigil.errors import ModelError

__all__ = [
    "EVAL_HOURS",
    "TRAINING_SOURCES",
    "TrainResult",
    "TrainSettings",
    "WindowBatch",
    "make_windows",
    "split_record_ids",
    "train",
]

EVAL_HOURS: Final[tuple[int, ...]] = (24, 48)
"""Scoring hours reported (end time = admission + hours)."""

CALIBRATION_HOURS: Final[tuple[int, ...]] = (6, 12, 18, 24, 30, 36, 42, 48)
VALIDATION_FRACTION: Final[float] = 0.2
TEST_FRACTION: Final[float] = 0.2
TRAINING_SOURCES: Final[tuple[str, ...]] = (
    "streams/core/features.py",
    "streams/datasets/physionet2012.py",
    "models/deterioration/network.py",
    "models/deterioration/baselines.py",
    "streams/core/risk_metrics.py",
    "models/deterioration/train.py",
)
"""Files (relative to the repository root) hashed into a checkpoint's ``code_version``."""


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        checkpoint: Path of the written checkpoint.
        state_dict: Trained (and calibrated) weights and buffers.
        metrics: Validation and test metrics (JSON-ready).
        best_epochs: Epoch kept (1-based) per member.
        train_seconds: Wall time of the whole run, seconds.
    """

    checkpoint: Path
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    best_epochs: tuple[int, ...]
    train_seconds: float


@dataclass(frozen=True, slots=True)
class WindowBatch:
    """Feature windows stacked along a batch axis (``N``).

    Attributes:
        values: ``[N,T,P]``.
        mask: ``[N,T,P]``.
        delta_hours: ``[N,T,P]``.
        statics: ``[N,S]``.
        static_mask: ``[N,S]``.
    """

    values: npt.NDArray[np.float32]
    mask: npt.NDArray[np.float32]
    delta_hours: npt.NDArray[np.float32]
    statics: npt.NDArray[np.float32]
    static_mask: npt.NDArray[np.float32]

    def tensors(self, max_images: int, image_dim: int) -> NetInputs:
        """The network inputs, with empty image slots."""
        n = self.values.shape[0]
        return NetInputs(
            torch.from_numpy(self.values),
            torch.from_numpy(self.mask),
            torch.from_numpy(self.delta_hours),
            torch.from_numpy(self.statics),
            torch.from_numpy(self.static_mask),
            torch.zeros(n, max_images, image_dim),
            torch.zeros(n, max_images),
            torch.zeros(n, max_images),
        )


def make_windows(stays: Sequence[StayArrays], hours: Sequence[int]) -> WindowBatch:
    """Windows of ``stays[i]`` at admission + ``hours[i]`` hours, via ``features_at``."""
    windows = [
        features_at(stay, stay.admit_time + timedelta(hours=int(h)))
        for stay, h in zip(stays, hours, strict=True)
    ]
    return WindowBatch(
        values=np.stack([w.values for w in windows]),
        mask=np.stack([w.mask for w in windows]),
        delta_hours=np.stack([w.delta_hours for w in windows]),
        statics=np.stack([w.statics for w in windows]),
        static_mask=np.stack([w.static_mask for w in windows]),
    )


def split_record_ids(labels: dict[int, int], *, seed: int) -> dict[str, tuple[int, ...]]:
    """Stratified split: per class, a seeded permutation of sorted RecordIDs is cut
    into test (first 20 %), validation (next 20 %) and train (the rest).

    Returns:
        ``{"train": …, "validation": …, "test": …}``, each sorted.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in (0, 1):
        ids = np.array(sorted(r for r, y in labels.items() if y == label), dtype=np.int64)
        perm = rng.permutation(ids)
        n_test = round(TEST_FRACTION * len(ids))
        n_val = round(VALIDATION_FRACTION * len(ids))
        parts["test"] += perm[:n_test].tolist()
        parts["validation"] += perm[n_test : n_test + n_val].tolist()
        parts["train"] += perm[n_test + n_val :].tolist()
    return {name: tuple(sorted(ids)) for name, ids in parts.items()}


def _normalisation(stays: Sequence[Stay]) -> dict[str, torch.Tensor]:
    codes = np.concatenate([s.code_index for s in stays])
    vals = np.concatenate([s.values for s in stays])
    log_scaled = np.array([c in LOG_SCALED_CODES for c in SERIES_CODES])
    vals = np.where(log_scaled[codes], np.log1p(np.maximum(vals, 0.0)), vals)
    mean = np.zeros(len(SERIES_CODES))
    std = np.ones(len(SERIES_CODES))
    for p in range(len(SERIES_CODES)):
        sel = vals[codes == p]
        if sel.size:
            mean[p] = sel.mean()
            std[p] = max(float(sel.std()), 1e-3)
    arrays = [s.arrays() for s in stays]
    statics = np.stack([a.statics for a in arrays]).astype(np.float64)
    smask = np.stack([a.static_mask for a in arrays]).astype(bool)
    s_mean = np.zeros(statics.shape[1])
    s_std = np.ones(statics.shape[1])
    for j in range(statics.shape[1]):
        sel = statics[smask[:, j], j]
        if sel.size:
            s_mean[j] = sel.mean()
            s_std[j] = max(float(sel.std()), 1e-3)
    return {
        "value_mean": torch.tensor(mean, dtype=torch.float32),
        "value_std": torch.tensor(std, dtype=torch.float32),
        "log_scaled": torch.tensor(log_scaled, dtype=torch.float32),
        "static_mean": torch.tensor(s_mean, dtype=torch.float32),
        "static_std": torch.tensor(s_std, dtype=torch.float32),
    }


def _logits(net: RiskModel, batch: WindowBatch, config: NetConfig) -> npt.NDArray[Any]:
    net.eval()
    out: list[npt.NDArray[Any]] = []
    inputs = batch.tensors(config.max_images, config.image_dim)
    with torch.no_grad():
        for start in range(0, inputs[0].shape[0], 512):
            _, logit, _ = net.encode(NetInputs(*(t[start : start + 512] for t in inputs)))
            out.append(logit.numpy().astype(np.float64))
    return np.concatenate(out)


def _window_stats(
    net: DeteriorationNet, stays: Sequence[StayArrays], hours: Sequence[int]
) -> npt.NDArray[np.float64]:
    """:func:`window_statistics` ``[len(hours)·N, 6P+2S]`` of every stay at each hour."""
    out: list[npt.NDArray[np.float64]] = []
    for h in hours:
        batch = make_windows(stays, [h] * len(stays))
        stats = window_statistics(
            torch.from_numpy(batch.values),
            torch.from_numpy(batch.mask),
            torch.from_numpy(batch.statics),
            torch.from_numpy(batch.static_mask),
            net.log_scaled,
        )
        out.append(stats.numpy().astype(np.float64))
    return np.concatenate(out)


def _json_number(value: float | int) -> float | int | None:
    if isinstance(value, int):
        return value
    return None if np.isnan(value) else round(value, 4)


def _scores(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> dict[str, float]:
    return {
        "auroc": round(auroc(labels, scores), 4),
        "auprc": round(auprc(labels, scores), 4),
        "n": int(labels.size),
        "deaths": int(labels.sum()),
    }


def _seed_everything(settings: TrainSettings) -> None:
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(settings.threads)


def _fit_member(
    config: NetConfig,
    settings: TrainSettings,
    seed: int,
    normalisation: dict[str, torch.Tensor],
    part_arrays: dict[str, list[StayArrays]],
    part_labels: dict[str, npt.NDArray[Any]],
    val_eval: dict[int, WindowBatch],
) -> tuple[DeteriorationNet, int, list[dict[str, float]]]:
    """Trains one network from ``seed``; returns it at its best epoch, the epoch (1-based)
    and the per-epoch history (loss, validation AUROC)."""
    torch.manual_seed(seed)
    net = DeteriorationNet(config)
    for name, value in normalisation.items():
        getattr(net, name).copy_(value)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    train_arrays = part_arrays["train"]
    n_train = len(train_arrays)
    y_train = part_labels["train"]
    best_score, best_epoch, best_state = -1.0, 0, copy.deepcopy(net.state_dict())
    history: list[dict[str, float]] = []
    for epoch in range(1, settings.epochs + 1):
        net.train()
        stay_index = np.repeat(np.arange(n_train), settings.hours_per_stay)
        hours = rng.integers(settings.min_hour, 49, size=stay_index.size)
        order = rng.permutation(stay_index.size)
        total_loss = 0.0
        for start in range(0, order.size, settings.batch_size):
            pick = order[start : start + settings.batch_size]
            batch = make_windows([train_arrays[i] for i in stay_index[pick]], hours[pick])
            target = torch.from_numpy(y_train[stay_index[pick]])
            _, logit, _ = net.encode(batch.tensors(config.max_images, config.image_dim))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimiser.step()
            total_loss += float(loss.item()) * pick.size
        val_auc = {
            h: auroc(part_labels["validation"], _logits(net, val_eval[h], config))
            for h in EVAL_HOURS
        }
        score = float(np.mean(list(val_auc.values())))
        history.append(
            {"epoch": epoch, "loss": round(total_loss / order.size, 5)}
            | {f"val_auroc_{h}h": round(v, 4) for h, v in val_auc.items()}
        )
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
    net.load_state_dict(best_state)
    return net, best_epoch, history


def train(settings: TrainSettings) -> TrainResult:
    """Trains, calibrates, evaluates and writes a checkpoint.

    Args:
        settings: The run's settings.

    Returns:
        The checkpoint path, weights, metrics, kept epoch and wall time.

    Raises:
        ModelError: Unreadable data, or too few stays of a class to split.
    """
    require_data(settings, "data_dir", PHYSIONET_2012)
    started = time.monotonic()
    _seed_everything(settings)
    stays, outcomes = load_stays(settings.data_dir)
    if settings.max_stays is not None:
        stays = stays[: settings.max_stays]
    labels = {s.record_id: outcomes[s.record_id].in_hospital_death for s in stays}
    if len(set(labels.values())) < 2:
        raise ModelError("training needs survivors and deaths in the data")
    split = split_record_ids(labels, seed=settings.split_seed)
    by_id = {s.record_id: s for s in stays}
    part_stays = {name: [by_id[r] for r in ids] for name, ids in split.items()}
    part_arrays = {name: [s.arrays() for s in ss] for name, ss in part_stays.items()}
    part_labels = {
        name: np.array([labels[r] for r in ids], dtype=np.float32) for name, ids in split.items()
    }

    config = NetConfig(
        encoder=settings.encoder,
        hidden=settings.hidden,
        dropout=settings.dropout,
        summary=settings.summary,
        wide=settings.wide != "none",
    )
    normalisation = _normalisation(part_stays["train"])
    if config.wide:
        probe = DeteriorationNet(config)  # only its log_scaled buffer is used
        probe.log_scaled.copy_(normalisation["log_scaled"])
        stats = _window_stats(probe, part_arrays["train"], CALIBRATION_HOURS)
        normalisation["wide_mean"] = torch.from_numpy(stats.mean(axis=0)).float()
        normalisation["wide_std"] = torch.from_numpy(np.maximum(stats.std(axis=0), 1e-3)).float()
    val_eval = {
        h: make_windows(part_arrays["validation"], [h] * len(split["validation"]))
        for h in EVAL_HOURS
    }
    net = DeteriorationEnsemble(config, settings.members)
    members: list[dict[str, Any]] = []
    for i in range(settings.members):
        member, epoch, history = _fit_member(
            config, settings, settings.seed + i, normalisation, part_arrays, part_labels, val_eval
        )
        net.members[i].load_state_dict(member.state_dict())
        members.append({"seed": settings.seed + i, "best_epoch": epoch, "history": history})
    net.eval()

    # Platt scaling on validation logits over the scoring hours.
    n_val = len(split["validation"])
    cal_batch = make_windows(
        [a for h in CALIBRATION_HOURS for a in part_arrays["validation"]],
        [h for h in CALIBRATION_HOURS for _ in range(n_val)],
    )
    cal_logits = _logits(net, cal_batch, config)
    scale, bias = fit_platt(cal_logits, np.tile(part_labels["validation"], len(CALIBRATION_HOURS)))
    net.calibration_scale.fill_(scale)
    net.calibration_bias.fill_(bias)

    metrics: dict[str, Any] = {
        "members": members,
        "calibration": {"scale": scale, "bias": bias, "hours": list(CALIBRATION_HOURS)},
    }
    test_eval = {h: make_windows(part_arrays["test"], [h] * len(split["test"])) for h in EVAL_HOURS}
    for part, windows in (("validation", val_eval), ("test", test_eval)):
        y = part_labels[part]
        result: dict[str, Any] = {"model": {}}
        for h in EVAL_HOURS:
            eval_logit = _logits(net, windows[h], config)
            risk = 1.0 / (1.0 + np.exp(-(scale * eval_logit + bias)))
            result["model"][f"{h}h"] = _scores(y, risk)
            result["model"][f"{h}h"]["ece"] = round(expected_calibration_error(y, risk), 4)
            result[f"reliability_{h}h"] = [
                {k: _json_number(v) for k, v in asdict(b).items()}
                for b in reliability_table(y, risk)
            ]
        metrics[part] = result
    if settings.baselines:
        _baselines(
            metrics,
            part_stays,
            part_arrays,
            part_labels,
            outcomes,
            {"validation": val_eval, "test": test_eval},
        )

    state = {k: v.clone() for k, v in net.state_dict().items()}
    elapsed = round(time.monotonic() - started, 1)
    meta: dict[str, Any] = {
        "net_config": config.to_dict(),
        "members": settings.members,
        "settings": settings.model_dump(mode="json"),
        "split": {name: list(ids) for name, ids in split.items()},
        "split_method": "stratified seeded permutation of sorted RecordIDs per outcome "
        f"class (numpy default_rng({settings.split_seed})): test 20 %, validation 20 %, "
        "train 60 %",
        "data_dir": str(settings.data_dir),
        "data_sha256": data_hash(settings.data_dir),
        "code_version": code_version(TRAINING_SOURCES),
        "packages": package_versions(with_pydantic=True),
        "metrics": metrics,
        "train_seconds": elapsed,
    }
    settings.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, settings.checkpoint)
    return TrainResult(
        checkpoint=settings.checkpoint,
        state_dict=state,
        metrics=metrics,
        best_epochs=tuple(m["best_epoch"] for m in members),
        train_seconds=elapsed,
    )


def _baselines(
    metrics: dict[str, Any],
    part_stays: dict[str, list[Stay]],
    part_arrays: dict[str, list[StayArrays]],
    part_labels: dict[str, npt.NDArray[Any]],
    outcomes: dict[int, Outcome],
    eval_windows: dict[str, dict[int, Any]],
) -> None:
    log_scaled = np.array([c in LOG_SCALED_CODES for c in SERIES_CODES])

    def summaries(batch: WindowBatch) -> npt.NDArray[Any]:
        return summary_statistics(
            batch.values, batch.mask, batch.statics, batch.static_mask, log_scaled
        )

    n_train = len(part_arrays["train"])
    lr_train = make_windows(
        [a for h in CALIBRATION_HOURS for a in part_arrays["train"]],
        [h for h in CALIBRATION_HOURS for _ in range(n_train)],
    )
    logistic = fit_logistic(
        summaries(lr_train), np.tile(part_labels["train"], len(CALIBRATION_HOURS)), l2=1e-2
    )
    for part in ("validation", "test"):
        y = part_labels[part]
        result = metrics[part]
        result["logistic_regression"] = {
            f"{h}h": _scores(y, logistic.predict(summaries(eval_windows[part][h])))
            for h in EVAL_HOURS
        }
        for name, attr in (("saps_i", "saps_i"), ("sofa", "sofa")):
            raw = [getattr(outcomes[s.record_id], attr) for s in part_stays[part]]
            known = np.array([v is not None for v in raw])
            vals = np.array([v for v in raw if v is not None], dtype=np.float64)
            entry = _scores(y[known], vals)
            entry["missing"] = int((~known).sum())
            result[name] = {f"{h}h": entry for h in EVAL_HOURS}
        news = np.stack([news2_hourly(s, max(EVAL_HOURS)) for s in part_stays[part]])
        result["news2_worst"] = {
            f"{h}h": _scores(y, news[:, max(0, h - 48) : h + 1].max(axis=1).astype(np.float64))
            for h in EVAL_HOURS
        }
    metrics["logistic_regression_l2"] = 1e-2
