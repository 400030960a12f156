"""The step network's training pieces shared by every regime (central, local-only,
federated site, leave-one-site-out, site-invariant): one member, the step model's loss
(:mod:`models.deterioration.step_train`: BCE averaged over scoring hours 6…48), Adam,
seeded and deterministic, optionally a FedProx term and a site adversary.

The adversary reads the representation ``fused [B,Q,F]`` (what the OOD detector and the
head use) through a gradient-reversal layer: it learns to tell the site, the encoder is
pushed to make that impossible; ``strength`` scales the reversed gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from models.deterioration.network import NetConfig
from models.deterioration.step_network import StepEnsemble, StepInputs, StepNet
from models.deterioration.step_train import prepare
from models.deterioration.train import CALIBRATION_HOURS, EVAL_HOURS, _normalisation
from streams.core.risk_metrics import auroc
from streams.datasets.physionet2012 import Stay

__all__ = [
    "Part",
    "TrainConfig",
    "build_net",
    "calibrate",
    "fit",
    "get_parameters",
    "logits_at",
    "make_part",
    "set_parameters",
    "train_epochs",
]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loss settings (the step model's, one member)."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 32
    min_hour: int = 6
    max_hour: int = 48
    hidden: int = 64
    dropout: float = 0.3
    proximal_mu: float = 0.0
    adversary_strength: float = 0.0


@dataclass
class Part:
    """Prepared stays of one part: inputs at hours ``0..48``, labels, site index."""

    inputs: StepInputs
    labels: npt.NDArray[np.float32]
    site: npt.NDArray[np.int64]
    record_ids: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.labels.size)

    def subset(self, keep: npt.NDArray[np.bool_]) -> Part:
        """The stays where ``keep`` is True."""
        rows = torch.from_numpy(np.flatnonzero(keep))
        return Part(
            self.inputs.rows(rows),
            self.labels[keep],
            self.site[keep],
            tuple(r for r, k in zip(self.record_ids, keep, strict=True) if k),
        )


def build_net(config: TrainConfig, normalise_on: Sequence[Stay]) -> StepEnsemble:
    """A one-member step ensemble with normalisation buffers from ``normalise_on``."""
    net = StepEnsemble(NetConfig(hidden=config.hidden, dropout=config.dropout), 1)
    for name, value in _normalisation(normalise_on).items():
        getattr(net, name).copy_(value)
    return net


def make_part(
    stays: Sequence[Stay], labels: Sequence[int], sites: Sequence[int], net: StepEnsemble
) -> Part:
    """Prepares ``stays`` with ``net``'s normalisation (:func:`step_train.prepare`)."""
    inputs = prepare([s.arrays() for s in stays], net)
    return Part(
        inputs,
        np.asarray(labels, dtype=np.float32),
        np.asarray(sites, dtype=np.int64),
        tuple(s.record_id for s in stays),
    )


def get_parameters(net: StepEnsemble) -> list[npt.NDArray[np.float32]]:
    """The member's trainable parameters, in ``named_parameters`` order."""
    return [p.detach().numpy().astype(np.float32).copy() for p in net.members[0].parameters()]


def set_parameters(net: StepEnsemble, params: Sequence[npt.NDArray[np.float32]]) -> None:
    """Loads parameters produced by :func:`get_parameters`."""
    with torch.no_grad():
        for p, value in zip(net.members[0].parameters(), params, strict=True):
            p.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def make_adversary(fused: int, sites: int, seed: int) -> nn.Module:
    """The site classifier on ``fused`` (one hidden layer of 32)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(fused, 32), nn.ReLU(), nn.Linear(32, sites))


def train_epochs(
    net: StepEnsemble,
    part: Part,
    config: TrainConfig,
    *,
    epochs: int,
    seed: int,
    anchor: Sequence[npt.NDArray[np.float32]] | None = None,
    adversary: nn.Module | None = None,
) -> float:
    """``epochs`` passes over ``part`` (a fresh Adam each call); returns the last mean loss.

    Args:
        anchor: FedProx: the round's global parameters; adds
            ``proximal_mu / 2 · ‖w − anchor‖²`` when ``config.proximal_mu > 0``.
        adversary: Site classifier trained jointly through gradient reversal of
            strength ``config.adversary_strength`` (cross-entropy on ``part.site``).
    """
    member: StepNet = net.members[0]  # type: ignore[assignment]
    params = list(member.parameters()) + (
        list(adversary.parameters()) if adversary is not None else []
    )
    optimiser = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    anchors = (
        [torch.from_numpy(np.asarray(a)) for a in anchor]
        if anchor is not None and config.proximal_mu > 0
        else None
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    columns = torch.arange(config.min_hour, config.max_hour + 1)
    hours = part.inputs.hours(columns)
    n = len(part)
    targets = torch.from_numpy(part.labels).unsqueeze(1).expand(n, columns.numel())
    site = torch.from_numpy(part.site)
    mean_loss = 0.0
    for _ in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, config.batch_size):
            pick = order[start : start + config.batch_size]
            logits, fused = net.member_logits(hours.rows(pick), [0])
            loss = nn.functional.binary_cross_entropy_with_logits(logits[0], targets[pick])
            if adversary is not None:
                reversed_fused = _Reverse.apply(fused, config.adversary_strength)
                site_logits = adversary(reversed_fused)  # [b,Q,sites]
                b, q, k = site_logits.shape
                loss = loss + nn.functional.cross_entropy(
                    site_logits.reshape(b * q, k), site[pick].repeat_interleave(q)
                )
            if anchors is not None:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(member.parameters(), anchors, strict=True)
                )
                loss = loss + 0.5 * config.proximal_mu * prox
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimiser.step()
            total += float(loss.item()) * pick.numel()
        mean_loss = total / max(n, 1)
    return mean_loss


def logits_at(
    net: StepEnsemble, part: Part, hours: Sequence[int] = EVAL_HOURS
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Uncalibrated logits ``[N, len(hours)]`` and the representation ``[N, len(hours), F]``."""
    net.eval()
    cols = torch.tensor(list(hours))
    out, reps = [], []
    with torch.no_grad():
        for start in range(0, len(part), 256):
            rows = torch.arange(start, min(start + 256, len(part)))
            logits, fused = net.member_logits(part.inputs.rows(rows).hours(cols), [0])
            out.append(logits[0].numpy().astype(np.float64))
            reps.append(fused.numpy().astype(np.float64))
    return np.concatenate(out), np.concatenate(reps)


def validation_score(net: StepEnsemble, part: Part) -> float:
    """Mean validation AUROC at 24 h and 48 h (the step model's early-stopping score)."""
    logits, _ = logits_at(net, part)
    return float(np.mean([auroc(part.labels, logits[:, i]) for i in range(logits.shape[1])]))


def fit(
    net: StepEnsemble,
    train: Part,
    validation: Part,
    config: TrainConfig,
    *,
    max_epochs: int,
    patience: int,
    seed: int,
    adversary: nn.Module | None = None,
) -> dict[str, Any]:
    """Trains with early stopping on :func:`validation_score`; keeps the best epoch."""
    best, best_epoch = -1.0, 0
    best_state = copy.deepcopy(net.state_dict())
    history = []
    for epoch in range(1, max_epochs + 1):
        loss = train_epochs(net, train, config, epochs=1, seed=seed + epoch, adversary=adversary)
        score = validation_score(net, validation)
        history.append({"epoch": epoch, "loss": round(loss, 5), "val_auroc": round(score, 4)})
        if score > best:
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= patience:
            break
    net.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "best_val_auroc": round(best, 4), "history": history}


def calibrate(net: StepEnsemble, validation: Part) -> tuple[float, float]:
    """Platt scaling on validation logits at hours 6, 12, …, 48, written into ``net``."""
    from models.deterioration.baselines import fit_platt

    logits, _ = logits_at(net, validation, CALIBRATION_HOURS)
    scale, bias = fit_platt(logits.T.ravel(), np.tile(validation.labels, len(CALIBRATION_HOURS)))
    net.calibration_scale.fill_(scale)
    net.calibration_bias.fill_(bias)
    return scale, bias
