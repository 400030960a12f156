"""Driver of ``vigil train ct-denoise``: simulate (or reuse) the pairs, train, save.

The pairs of every patch at every dose of :data:`~models.ct_denoise.simulate.DOSES` are
simulated once with :data:`PAIRS_SEED` and cached in an ``.npz`` (about a minute of
simulation on one core); both losses then train on the same rows.
"""

from __future__ import annotations

from dataclasses import asdict
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

__all__ = [
    "CT_DENOISE_SOURCES",
    "PAIRS_SEED",
    "load_or_simulate_pairs",
    "train_and_save",
    "training_pairs",
]

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
    return _cached_pairs(patches, cache, 1)


def training_pairs(
    patches: Path, cache: Path | None, realisations: int, single: DosePairs
) -> DosePairs:
    """All patches at all doses with ``realisations`` noise draws each (``single`` when 1).

    Realisation ``k`` of dose index ``j`` is seeded ``PAIRS_SEED + 1000 j + k``, so ``k = 0``
    is the cached single realisation. Cached beside ``cache`` as ``<stem>_r<R>.npz``.
    """
    if realisations == 1:
        return single
    many = None if cache is None else cache.with_name(f"{cache.stem}_r{realisations}.npz")
    return _cached_pairs(patches, many, realisations)


def _cached_pairs(patches: Path, cache: Path | None, realisations: int) -> DosePairs:
    """:func:`simulate_pairs` of every patch, read from or written to ``cache``."""
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as archive:
            return DosePairs(**{k: archive[k] for k in archive.files})
    images, _ = load_patches(patches)
    pairs = simulate_pairs(images, DOSES, realisations=realisations, base_seed=PAIRS_SEED)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, **asdict(pairs))
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
    realisations: int = 1,
) -> dict[str, Any]:
    """Trains a denoiser with ``loss`` on the training patients and writes ``out``.

    Args:
        realisations: Noise realisations of every training patch at every dose. The first
            is the cached one (:data:`PAIRS_SEED`); more show the network other draws of
            the same noise, so it cannot learn one draw by heart. Validation and test
            pairs stay the cached single realisation.

    Returns:
        The checkpoint's metadata.
    """
    torch.set_num_threads(1)
    config = config or DenoiseConfig()
    pairs = load_or_simulate_pairs(patches, cache)
    split = patient_split()
    train = training_pairs(patches, cache, realisations, pairs)
    train = train.where(np.isin(train.patient, split["train"]))
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
        "realisations": realisations,
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
