"""Imaging training data: MSD lung CT patches and PneumoniaMNIST, with their splits.

* CT (``msd_lung_ct_patches.npz``: ``images [130,1,48,48]`` float32 in ``[0, 1]``,
  ``masks [130,1,48,48]`` uint8, 13 patients). The file holds **no patient ids**. The
  patches are stored as 13 consecutive blocks of 10 (130 = 13 x 10): the mean correlation
  between standardised patches is 0.41 inside blocks of 10 at offset 0 and -0.01 across
  them, the highest of every block size and offset tried, and lesion areas are alike
  within a block. :func:`patient_ids` therefore takes ``index // 10`` as the patient; it
  is an inference, stated in the model card and ``docs/imaging.md``.
* Patients are split by a seeded permutation (:func:`split_patients`): test (reported
  once), validation (early stopping and the lesion threshold), train.
* PneumoniaMNIST: ``train_*`` (a reduced copy of the official training split) and
  ``val_*`` (the official validation split). The official test split is not in the
  bundle, so the official validation split is the reported set, never tuned on; a seeded
  stratified 10 % of the training split is held back for early stopping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from streams.core.imaging_ops import IMAGE_SIZE, preprocess_image
from vigil.errors import ModelError

__all__ = [
    "PATCHES_PER_PATIENT",
    "CTData",
    "XRayData",
    "data_hash",
    "load_ct",
    "load_xray",
    "patient_ids",
    "split_patients",
]

PATCHES_PER_PATIENT: Final[int] = 10
"""Inferred block length of one patient's patches in the CT file (see module docs)."""
_XRAY_TUNE_PARTS: Final[int] = 10


@dataclass(frozen=True, slots=True)
class CTData:
    """CT patches, preprocessed and native.

    Attributes:
        images: ``[N,1,S,S]`` model inputs.
        native_images: ``[N,H,W]`` as stored.
        native_masks: ``[N,H,W]`` bool reference masks (for metrics at native size).
        masks: ``[N,1,S,S]`` float32 masks resized to the model grid (training targets).
        patients: ``[N]`` inferred patient index.
    """

    images: npt.NDArray[np.float32]
    native_images: npt.NDArray[np.float32]
    native_masks: npt.NDArray[np.bool_]
    masks: npt.NDArray[np.float32]
    patients: npt.NDArray[np.int64]

    def subset(self, patients: tuple[int, ...]) -> CTData:
        """The patches of ``patients``."""
        keep = np.isin(self.patients, patients)
        return CTData(
            self.images[keep],
            self.native_images[keep],
            self.native_masks[keep],
            self.masks[keep],
            self.patients[keep],
        )


@dataclass(frozen=True, slots=True)
class XRayData:
    """PneumoniaMNIST splits as model inputs ``[N,1,S,S]`` and labels ``[N]`` (1 pneumonia).

    Attributes:
        train_images: Training part of the official training split.
        train_labels: Its labels.
        tune_images: Held-back 10 % of the official training split (early stopping).
        tune_labels: Its labels.
        val_images: The official validation split (reported).
        val_labels: Its labels.
    """

    train_images: npt.NDArray[np.float32]
    train_labels: npt.NDArray[np.float32]
    tune_images: npt.NDArray[np.float32]
    tune_labels: npt.NDArray[np.float32]
    val_images: npt.NDArray[np.float32]
    val_labels: npt.NDArray[np.float32]


def data_hash(*paths: Path) -> str:
    """SHA-256 of the files' bytes, concatenated in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def patient_ids(n_patches: int) -> npt.NDArray[np.int64]:
    """Inferred patient index of each patch: consecutive blocks of 10."""
    return np.arange(n_patches, dtype=np.int64) // PATCHES_PER_PATIENT


def _preprocess_all(images: npt.NDArray[np.generic], size: int) -> npt.NDArray[np.float32]:
    return np.stack([preprocess_image(image, size) for image in images]).astype(np.float32)


def load_ct(path: Path, size: int = IMAGE_SIZE) -> CTData:
    """Loads and preprocesses the CT patches.

    Raises:
        ModelError: A missing or malformed file.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = np.asarray(archive["images"], dtype=np.float32)[:, 0]
            masks = np.asarray(archive["masks"])[:, 0] > 0
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise ModelError(f"cannot read CT patches {path}: {exc}") from exc
    if images.shape != masks.shape or images.ndim != 3:
        raise ModelError(f"CT images and masks disagree: {images.shape} vs {masks.shape}")
    resized_masks = (_preprocess_all(masks.astype(np.float32), size) >= 0.5).astype(np.float32)
    return CTData(
        images=_preprocess_all(images, size),
        native_images=images,
        native_masks=masks,
        masks=resized_masks,
        patients=patient_ids(images.shape[0]),
    )


def split_patients(
    patients: npt.NDArray[np.int64], *, seed: int, test: int, validation: int, fold: int = 0
) -> dict[str, tuple[int, ...]]:
    """Seeded split of the distinct patient indices into test, validation and train.

    The seeded permutation is rotated left by ``fold * test`` places, then cut: the first
    ``test`` patients are test, the next ``validation`` validation, the rest train. Folds
    ``0, 1, ...`` thus hold out disjoint test patients (cross-validation by patient).

    Raises:
        ModelError: Fewer than ``test + validation + 1`` patients.
    """
    unique = np.unique(patients)
    if unique.size < test + validation + 1:
        raise ModelError(f"{unique.size} patients cannot give {test} test + {validation} val")
    order = np.roll(np.random.default_rng(seed).permutation(unique), -fold * test)
    return {
        "test": tuple(sorted(int(p) for p in order[:test])),
        "validation": tuple(sorted(int(p) for p in order[test : test + validation])),
        "train": tuple(sorted(int(p) for p in order[test + validation :])),
    }


def load_xray(
    path: Path, *, seed: int, limit: int | None = None, size: int = IMAGE_SIZE, fold: int = 0
) -> XRayData:
    """Loads PneumoniaMNIST and holds back a stratified 10 % of its training split.

    Each class of the training split is permuted by ``seed`` and cut into 10 parts of
    ``round(n k / 10)`` boundaries; part ``fold % 10`` is held back, so folds ``0, 1, ...``
    hold back disjoint tenths (image-level cross-validation; fold 0 is the original draw).

    Args:
        path: ``pneumoniamnist.npz``.
        seed: Seed of the held-back draw.
        limit: Use only the first ``limit`` training and validation images (tests).
        size: Model input side.
        fold: Which tenth is held back.

    Raises:
        ModelError: A missing or malformed file.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            train_x = np.asarray(archive["train_images"])[:limit]
            train_y = np.asarray(archive["train_labels"]).reshape(-1)[:limit]
            val_x = np.asarray(archive["val_images"])[:limit]
            val_y = np.asarray(archive["val_labels"]).reshape(-1)[:limit]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot read PneumoniaMNIST {path}: {exc}") from exc
    rng = np.random.default_rng(seed)
    tune = np.zeros(train_y.size, dtype=bool)
    part = fold % _XRAY_TUNE_PARTS
    for label in np.unique(train_y):
        members = rng.permutation(np.flatnonzero(train_y == label))
        start = round(members.size * part / _XRAY_TUNE_PARTS)
        stop = max(start + 1, round(members.size * (part + 1) / _XRAY_TUNE_PARTS))
        tune[members[start:stop]] = True
    return XRayData(
        train_images=_preprocess_all(train_x[~tune], size),
        train_labels=train_y[~tune].astype(np.float32),
        tune_images=_preprocess_all(train_x[tune], size),
        tune_labels=train_y[tune].astype(np.float32),
        val_images=_preprocess_all(val_x, size),
        val_labels=val_y.astype(np.float32),
    )
