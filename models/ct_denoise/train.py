"""Training of the CT denoiser on simulated pairs (``vigil train ct-denoise``).

Two losses, same network, same data, same seed, so that the comparison isolates the loss:

* ``poisson``: the Gaussian likelihood of the target under the signal-dependent variance
  that Poisson counts give after filtered back-projection,
  ``mean(w * (f(y) - x)^2)`` with ``w`` the relative inverse variance of
  :func:`models.ct_denoise.data.poisson_weight` (pixels behind dense tissue, whose rays
  counted fewer photons, weigh less).
* ``mse``: plain ``mean((f(y) - x)^2)``.

Adam, flips and quarter turns, one torch thread, deterministic algorithms. The epoch kept
is the best by the mean PSNR over the low doses of the validation patients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import torch

from models.ct_denoise.data import DosePairs
from models.ct_denoise.network import (
    DenoiseConfig,
    DenoiseNet,
    SelfEnsemble,
    poisson_noise_std,
)

__all__ = ["LossKind", "TrainResult", "denoise", "psnr", "train_denoiser"]

LossKind = Literal["poisson", "mse"]
_LR: Final[float] = 1e-3


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A trained denoiser and its history.

    Attributes:
        net: Eval-mode network of the best epoch.
        best_epoch: 1-based.
        history: Per epoch: mean training loss and validation PSNR (dB).
        train_seconds: Wall time.
    """

    net: DenoiseNet
    best_epoch: int
    history: list[dict[str, float]]
    train_seconds: float


def psnr(estimate: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]) -> float:
    """PSNR in dB of an ``[H,W]`` image in ``[0, 1]`` (peak 1)."""
    mse = float(np.mean((estimate.astype(np.float64) - reference) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def denoise(
    net: DenoiseNet,
    noisy: npt.NDArray[np.float32],
    dose: npt.NDArray[np.float32],
    turns: int = 1,
    flips: bool = False,
) -> npt.NDArray[np.float32]:
    """Eval-mode outputs ``[M,1,H,W]`` for ``noisy [M,1,H,W]`` at ``dose [M]``, averaged
    over ``turns`` quarter turns and, with ``flips``, their mirror images
    (:class:`SelfEnsemble`; 1 turn, the network alone, while training)."""
    net.eval()
    ensemble = SelfEnsemble(net, turns, flips).eval()
    out = []
    with torch.no_grad():
        for start in range(0, noisy.shape[0], 64):
            image = torch.from_numpy(noisy[start : start + 64])
            level = torch.from_numpy(dose[start : start + 64, None].astype(np.float32))
            out.append(ensemble(image, level).numpy())
    return np.concatenate(out)


def _augment(batch: npt.NDArray[np.float32], k: int, flip: bool) -> npt.NDArray[np.float32]:
    out = np.rot90(batch, k, axes=(2, 3))
    return np.ascontiguousarray(out[:, :, :, ::-1] if flip else out)


def _noise_maps(images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        maps = [
            poisson_noise_std(torch.from_numpy(images[start : start + 64])).numpy()
            for start in range(0, images.shape[0], 64)
        ]
    return np.concatenate(maps)


def _validation_psnr(net: DenoiseNet, pairs: DosePairs) -> float:
    low = pairs.where(pairs.dose < 1.0)
    out = denoise(net, low.noisy, low.dose)
    return float(np.mean([psnr(o[0], c[0]) for o, c in zip(out, low.clean, strict=True)]))


def train_denoiser(
    train: DosePairs,
    validation: DosePairs,
    *,
    loss: LossKind,
    config: DenoiseConfig,
    epochs: int,
    batch_size: int = 32,
    seed: int = 7,
) -> TrainResult:
    """Trains one denoiser; returns the best epoch's network (by validation PSNR).

    Args:
        train: Training patients' pairs.
        validation: Validation patients' pairs (epoch choice only).
        loss: ``poisson`` or ``mse`` (module docs).
        config: Network hyper-parameters.
        epochs: Passes over the training pairs.
        batch_size: Rows per step.
        seed: Seed of the initialisation, order and augmentation.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    net = DenoiseNet(config)
    optimiser = torch.optim.Adam(net.parameters(), lr=_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(epochs, 1))
    best_state: dict[str, Any] = {k: v.clone() for k, v in net.state_dict().items()}
    best, best_epoch, history = -np.inf, 0, []
    started = time.perf_counter()
    # the noise map of each training input, once (a quarter turn or flip of the image
    # turns its map the same way: the projection angles are symmetric under both)
    std = _noise_maps(train.noisy) if config.noise_map else None
    for epoch in range(1, epochs + 1):
        net.train()
        order = rng.permutation(train.noisy.shape[0])
        losses = []
        for start in range(0, order.size, batch_size):
            rows = order[start : start + batch_size]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            noisy = torch.from_numpy(_augment(train.noisy[rows], k, flip))
            clean = torch.from_numpy(_augment(train.clean[rows], k, flip))
            weight = torch.from_numpy(_augment(train.weight[rows], k, flip))
            level = torch.from_numpy(train.dose[rows, None].astype(np.float32))
            noise_std = None if std is None else torch.from_numpy(_augment(std[rows], k, flip))
            error = (net(noisy, level, noise_std) - clean) ** 2
            value = (weight * error).mean() if loss == "poisson" else error.mean()
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            losses.append(float(value.item()))
        schedule.step()
        score = _validation_psnr(net, validation)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_psnr_db": score})
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    return TrainResult(net, best_epoch, history, round(time.perf_counter() - started, 1))
