"""Training of the step deterioration model on whole stays, seeded and deterministic.

Pipeline (``docs/deterioration.md``, "Step model"):

1. Read set A and split it exactly as :mod:`models.deterioration.train` does
   (:func:`models.deterioration.train.split_record_ids`, seed 2012; same normalisation statistics
   from the training split).
2. Each stay becomes its steps from admission (:func:`streams.core.step_features.stay_bins`,
   no 48-hour window) and, for every scoring hour ``0..max_hour``, the open bin at that
   hour (:func:`prepare`): the same bins the stream sends.
3. Each member (seed ``seed + i``) runs the GRU once over a stay's closed steps and is
   scored at **every** hour ``min_hour..max_hour`` from the state at that hour (closed
   steps before it, then the open bin provisionally): binary cross-entropy averaged over
   those hours. Adam; early stopping on mean validation AUROC at 24 h and 48 h.
4. Ensemble size by evidence (:func:`choose_members`), Platt scaling on validation logits
   at hours 6, 12, …, 48.
5. Validation and test metrics at 24 h and 48 h with bootstrap intervals, AUPRC, ECE,
   and paired bootstrap differences against the shipped window model and the logistic
   regression on window summaries (:mod:`models.deterioration.step_eval`). Nothing is chosen on
   test.

Determinism: seeded generators, ``use_deterministic_algorithms(True)``, ``threads``
intra-op threads (1 by default).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from models.common.checkpoints import checkpoint_errors, read_checkpoint
from models.common.provenance import code_version, package_versions
from models.common.training_data import PHYSIONET_2012, require_data
from models.deterioration.network import NetConfig
from models.deterioration.step_network import (
    StepEnsemble,
    StepInputs,
    StepNet,
    gru_inputs,
    running_stats,
)
from models.deterioration.step_settings import StepTrainSettings
from models.deterioration.train import (
    CALIBRATION_HOURS,
    EVAL_HOURS,
    _normalisation,
    split_record_ids,
)
from streams.core.features import SERIES_CODES, StayArrays, features_at
from streams.core.risk_metrics import auroc
from streams.core.step_features import stay_bins
from streams.datasets.physionet2012 import data_hash, load_stays
from vigil.errors import ModelError

__all__ = [
    "STEP_TRAINING_SOURCES",
    "StepTrainResult",
    "choose_members",
    "load_step_checkpoint",
    "prepare",
    "train_step",
]

STEP_TRAINING_SOURCES: Final[tuple[str, ...]] = (
    "streams/core/features.py",
    "streams/core/step_features.py",
    "streams/datasets/physionet2012.py",
    "models/deterioration/network.py",
    "models/deterioration/step_network.py",
    "models/deterioration/step_settings.py",
    "models/deterioration/step_train.py",
    "models/deterioration/step_eval.py",
    "models/deterioration/baselines.py",
    "streams/core/risk_metrics.py",
)
"""Files hashed into the step checkpoint's ``code_version``."""


class StepTrainResult:
    """What :func:`train_step` produced: checkpoint path, metrics and wall time."""

    def __init__(self, checkpoint: Path, metrics: dict[str, Any], train_seconds: float) -> None:
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.train_seconds = train_seconds


def prepare(stays: Sequence[StayArrays], net: StepEnsemble, max_hour: int = 48) -> StepInputs:
    """Every stay's steps and its state inputs at scoring hours ``0..max_hour``.

    Closed steps are the bins before ``max_hour`` (all observations in them); the open
    bin at hour ``h`` holds the observations in ``[h, h]`` h after admission (the stream's
    open bin at that scoring time). Standardisation uses ``net``'s buffers.
    """
    p, n_hours = len(SERIES_CODES), max_hour + 1
    n = len(stays)
    closed = []
    for stay in stays:
        bins = stay_bins(stay, stay.admit_time + timedelta(hours=max_hour))
        keep = bins.index < max_hour
        closed.append(
            (bins.index[keep], bins.values[keep], bins.mask[keep], bins.delta_hours[keep])
        )
    width = max(1, max(len(c[0]) for c in closed))
    cv = np.zeros((n, width, p), dtype=np.float32)
    cm = np.zeros_like(cv)
    cd = np.zeros_like(cv)
    cvalid = np.zeros((n, width), dtype=np.float32)
    n_closed = np.zeros((n, n_hours), dtype=np.int64)
    ov = np.zeros((n, n_hours, p), dtype=np.float32)
    om = np.zeros_like(ov)
    od = np.zeros_like(ov)
    ovalid = np.zeros((n, n_hours), dtype=np.float32)
    hours = np.arange(n_hours)
    for i, (stay, (index, values, mask, delta)) in enumerate(zip(stays, closed, strict=True)):
        k = index.size
        cv[i, :k], cm[i, :k], cd[i, :k], cvalid[i, :k] = values, mask, delta, 1.0
        n_closed[i] = np.searchsorted(index, hours, side="left")
        for h in range(n_hours):
            row = features_at(stay, stay.admit_time + timedelta(hours=h), window=timedelta(hours=1))
            if row.mask.any():
                ov[i, h], om[i, h], od[i, h], ovalid[i, h] = (
                    row.values[0],
                    row.mask[0],
                    row.delta_hours[0],
                    1.0,
                )
    with torch.no_grad():
        mask_t = torch.from_numpy(cm)
        x = net.standardise(torch.from_numpy(cv), mask_t)
        seq = running_stats(torch.zeros(n, 5, p), x, mask_t)  # [n,width+1,5,P]
        closed_x = gru_inputs(seq[:, 1:, 4], mask_t, torch.from_numpy(cd), net.delta_cap)
        nc = torch.from_numpy(n_closed)
        prev = torch.gather(seq, 1, nc.view(n, n_hours, 1, 1).expand(n, n_hours, 5, p))
        open_mask = torch.from_numpy(om).reshape(n * n_hours, 1, p)
        open_x_std = net.standardise(torch.from_numpy(ov).reshape(n * n_hours, 1, p), open_mask)
        stats = running_stats(prev.reshape(n * n_hours, 5, p), open_x_std, open_mask)[:, 1]
        open_x = gru_inputs(
            stats[:, 4],
            open_mask[:, 0],
            torch.from_numpy(od).reshape(n * n_hours, p),
            net.delta_cap,
        )
    statics = np.stack([s.statics for s in stays]).astype(np.float32)
    static_mask = np.stack([s.static_mask for s in stays]).astype(np.float32)
    return StepInputs(
        closed_x=closed_x,
        closed_valid=torch.from_numpy(cvalid),
        n_closed=nc,
        open_x=open_x.view(n, n_hours, -1),
        open_valid=torch.from_numpy(ovalid),
        stats=stats.view(n, n_hours, 5, p),
        statics=torch.from_numpy(statics),
        static_mask=torch.from_numpy(static_mask),
    )


def _member_logits(
    net: StepEnsemble, inputs: StepInputs, members: list[int], chunk: int = 256
) -> npt.NDArray[np.float64]:
    """``[M', B, Q]`` logits in eval mode, computed in chunks of stays."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, inputs.statics.shape[0], chunk):
            rows = torch.arange(start, min(start + chunk, inputs.statics.shape[0]))
            logits, _ = net.member_logits(inputs.rows(rows), members)
            out.append(logits.numpy().astype(np.float64))
    return np.concatenate(out, axis=1)


def _fit_member(
    net: StepEnsemble,
    index: int,
    settings: StepTrainSettings,
    train_inputs: StepInputs,
    y_train: npt.NDArray[np.float32],
    val_inputs: StepInputs,
    y_val: npt.NDArray[np.float32],
) -> tuple[int, list[dict[str, float]]]:
    """Trains member ``index`` from seed ``seed + index``; keeps its best epoch."""
    seed = settings.seed + index
    torch.manual_seed(seed)
    net.members[index] = StepNet(net.config)
    member = net.members[index]
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(
        member.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    columns = torch.arange(settings.min_hour, settings.max_hour + 1)
    train_hours = train_inputs.hours(columns)
    n_train = y_train.size
    targets = torch.from_numpy(y_train).unsqueeze(1).expand(n_train, columns.numel())
    best_score, best_epoch = -1.0, 0
    best_state = copy.deepcopy(member.state_dict())
    history: list[dict[str, float]] = []
    for epoch in range(1, settings.epochs + 1):
        net.train()
        order = torch.from_numpy(rng.permutation(n_train))
        total = 0.0
        for start in range(0, n_train, settings.batch_size):
            pick = order[start : start + settings.batch_size]
            logits, _ = net.member_logits(train_hours.rows(pick), [index])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[0], targets[pick])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(member.parameters(), 5.0)
            optimiser.step()
            total += float(loss.item()) * pick.numel()
        val = _member_logits(net, val_inputs, [index])[0]
        val_auc = {h: auroc(y_val, val[:, i]) for i, h in enumerate(EVAL_HOURS)}
        score = float(np.mean(list(val_auc.values())))
        history.append(
            {"epoch": epoch, "loss": round(total / n_train, 5)}
            | {f"val_auroc_{h}h": round(v, 4) for h, v in val_auc.items()}
        )
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(member.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
    member.load_state_dict(best_state)
    return best_epoch, history


def choose_members(
    member_logits: npt.NDArray[np.float64], labels: npt.NDArray[Any], min_gain: float
) -> tuple[int, dict[str, Any]]:
    """Ensemble size by validation evidence.

    Args:
        member_logits: ``[M, N, 2]`` validation logits at 24 h and 48 h per member.
        labels: ``[N]`` outcomes.
        min_gain: Mean-AUROC gain of the ``M``-member mean logit over the average single
            member needed to keep all ``M``.

    Returns:
        ``M`` or 1, and the evidence (single members, mean of the first ``k``).
    """

    def mean_auc(logits: npt.NDArray[np.float64]) -> float:
        return float(np.mean([auroc(labels, logits[:, i]) for i in range(logits.shape[1])]))

    m = member_logits.shape[0]
    singles = [mean_auc(member_logits[i]) for i in range(m)]
    firsts = [mean_auc(member_logits[:k].mean(0)) for k in range(1, m + 1)]
    gain = firsts[-1] - float(np.mean(singles))
    chosen = m if gain >= min_gain else 1
    evidence = {
        "single_member_mean_auroc": [round(v, 4) for v in singles],
        "first_k_mean_logit_mean_auroc": [round(v, 4) for v in firsts],
        "gain_over_mean_single": round(gain, 4),
        "min_gain": min_gain,
        "chosen_members": chosen,
        "rule": f"keep all {m} members if the mean validation AUROC (24 h, 48 h) of their "
        f"mean logit beats the average single member by at least {min_gain}; else 1",
    }
    return chosen, evidence


def load_step_checkpoint(path: Path) -> tuple[StepEnsemble, dict[str, Any]]:
    """Rebuilds the shipped step ensemble from a checkpoint; returns it and its metadata.

    Raises:
        ModelError: The file is missing or not a step checkpoint.
    """
    with checkpoint_errors(path, "step checkpoint"):
        payload = read_checkpoint(path)
        meta: dict[str, Any] = payload["meta"]
        net = StepEnsemble(NetConfig(**meta["net_config"]), int(meta["members"]))
        net.load_state_dict(payload["state_dict"])
    net.eval()
    return net, meta


def train_step(settings: StepTrainSettings) -> StepTrainResult:
    """Trains, chooses the ensemble size, calibrates, evaluates, writes a checkpoint.

    Raises:
        ModelError: Unreadable data, or too few stays of a class to split.
    """
    from models.deterioration.baselines import fit_platt
    from models.deterioration.step_eval import evaluate

    require_data(settings, "data_dir", PHYSIONET_2012)
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(settings.threads)
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
    config = NetConfig(hidden=settings.hidden, dropout=settings.dropout)
    net = StepEnsemble(config, settings.members)
    for name, value in _normalisation(part_stays["train"]).items():
        getattr(net, name).copy_(value)
    inputs = {name: prepare(arr, net, settings.max_hour) for name, arr in part_arrays.items()}
    prepared_seconds = round(time.monotonic() - started, 1)
    eval_columns = torch.tensor(EVAL_HOURS)
    val_eval = inputs["validation"].hours(eval_columns)
    members: list[dict[str, Any]] = []
    for i in range(settings.members):
        epoch, history = _fit_member(
            net,
            i,
            settings,
            inputs["train"],
            part_labels["train"],
            val_eval,
            part_labels["validation"],
        )
        members.append({"seed": settings.seed + i, "best_epoch": epoch, "history": history})
    all_logits = _member_logits(net, val_eval, list(range(settings.members)))
    chosen, evidence = choose_members(
        all_logits, part_labels["validation"], settings.min_ensemble_gain
    )
    shipped = StepEnsemble(config, chosen)
    shipped.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.startswith("members.")}
        | {
            k: v
            for k, v in net.state_dict().items()
            if k.startswith("members.") and int(k.split(".")[1]) < chosen
        }
    )
    cal_columns = torch.tensor(CALIBRATION_HOURS)
    cal_logits = _member_logits(
        shipped, inputs["validation"].hours(cal_columns), list(range(chosen))
    ).mean(0)
    scale, bias = fit_platt(
        cal_logits.T.ravel(), np.tile(part_labels["validation"], len(CALIBRATION_HOURS))
    )
    shipped.calibration_scale.fill_(scale)
    shipped.calibration_bias.fill_(bias)
    shipped.eval()

    risks: dict[str, npt.NDArray[np.float64]] = {}
    for part in ("validation", "test"):
        with torch.no_grad():
            risk, _, _ = shipped.score_hours(inputs[part].hours(eval_columns))
        risks[part] = risk.numpy().astype(np.float64)
    metrics = evaluate(settings, risks, part_stays, part_arrays, part_labels)
    metrics["members"] = members
    metrics["ensemble_choice"] = evidence
    metrics["calibration"] = {"scale": scale, "bias": bias, "hours": list(CALIBRATION_HOURS)}
    elapsed = round(time.monotonic() - started, 1)
    meta: dict[str, Any] = {
        "net_config": config.to_dict(),
        "members": chosen,
        "state_layout": shipped.layout.to_dict(),
        "settings": settings.model_dump(mode="json"),
        "split": {name: list(ids) for name, ids in split.items()},
        "split_method": "models.deterioration.train.split_record_ids (stratified seeded "
        f"permutation of sorted RecordIDs per outcome class, default_rng({settings.split_seed})): "
        "test 20 %, validation 20 %, train 60 %",
        "data_dir": str(settings.data_dir),
        "data_sha256": data_hash(settings.data_dir),
        "code_version": code_version(STEP_TRAINING_SOURCES),
        "packages": package_versions(with_pydantic=True),
        "metrics": metrics,
        "prepare_seconds": prepared_seconds,
        "train_seconds": elapsed,
    }
    settings.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in shipped.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, settings.checkpoint)
    return StepTrainResult(settings.checkpoint, metrics, elapsed)


def main() -> None:
    """``python -m models.deterioration.step_train``: train with settings from
    ``VIGIL_STEP_TRAIN_*``."""
    import json
    import sys

    result = train_step(StepTrainSettings())
    summary = {k: result.metrics[k] for k in ("validation", "test", "ensemble_choice")}
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    sys.stdout.write(f"checkpoint {result.checkpoint} in {result.train_seconds} s\n")


if __name__ == "__main__":
    main()
