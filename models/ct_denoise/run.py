"""Driver of ``vigil train ct-denoise``: simulate (or reuse) the pairs, train, save.

The pairs of every patch at every dose of :data:`~models.ct_denoise.simulate.DOSES` are
simulated once with :data:`PAIRS_SEED` and cached in an ``.npz`` (about a minute of
simulation on one core); both losses then train on the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from models.common.provenance import code_version, package_versions
from models.ct_denoise.data import DosePairs, load_patches, patient_split, simulate_pairs
from models.ct_denoise.network import DenoiseConfig
from models.ct_denoise.simulate import DOSES, SimulationConstants
from models.ct_denoise.train import LossKind, train_denoiser
from models.imaging.data import data_hash

__all__ = ["CT_DENOISE_SOURCES", "PAIRS_SEED", "load_or_simulate_pairs", "train_and_save"]

PAIRS_SEED: Final[int] = 19
CT_DENOISE_SOURCES: Final[tuple[str, ...]] = (
    "models/ct_denoise/simulate.py",
    "models/ct_denoise/data.py",
    "models/ct_denoise/network.py",
    "models/ct_denoise/train.py",
    "models/ct_denoise/run.py",
)


def load_or_simulate_pairs(patches: Path, cache: Path | None) -> DosePairs:
    """All patches at all doses (one realisation, :data:`PAIRS_SEED`), cached in ``cache``."""
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as archive:
            return DosePairs(**{k: archive[k] for k in archive.files})
    images, _ = load_patches(patches)
    pairs = simulate_pairs(images, DOSES, realisations=1, base_seed=PAIRS_SEED)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            cache,
            noisy=pairs.noisy,
            clean=pairs.clean,
            dose=pairs.dose,
            patient=pairs.patient,
            patch=pairs.patch,
            weight=pairs.weight,
        )
    return pairs


def train_and_save(
    patches: Path,
    out: Path,
    *,
    loss: LossKind,
    epochs: int,
    cache: Path | None,
    config: DenoiseConfig | None = None,
    seed: int = 7,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Trains a denoiser with ``loss`` on the training patients and writes ``out``.

    Returns:
        The checkpoint's metadata.
    """
    torch.set_num_threads(1)
    config = config or DenoiseConfig()
    pairs = load_or_simulate_pairs(patches, cache)
    split = patient_split()
    train = pairs.where(np.isin(pairs.patient, split["train"]))
    validation = pairs.where(np.isin(pairs.patient, split["validation"]))
    result = train_denoiser(
        train,
        validation,
        loss=loss,
        config=config,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    meta: dict[str, Any] = {
        "config": config.to_dict(),
        "loss": loss,
        "epochs": epochs,
        "batch_size": batch_size,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "seed": seed,
        "pairs_seed": PAIRS_SEED,
        "doses": list(DOSES),
        "split": {k: list(v) for k, v in split.items()},
        "split_method": "imaging split: patient = index // 10 (inferred), seed 2024, fold 0",
        "simulation": SimulationConstants().to_dict(),
        "data_sha256": data_hash(patches),
        "code_version": code_version(CT_DENOISE_SOURCES),
        "packages": package_versions(),
        "train_seconds": result.train_seconds,
        "simulated": True,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": result.net.state_dict(), "meta": meta}, out)
    return meta
