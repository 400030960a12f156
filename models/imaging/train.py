"""Training and evaluation of the imaging network, seeded and deterministic.

Pipeline (see ``docs/imaging.md``):

1. CT patches and PneumoniaMNIST are preprocessed with the serving path
   (:func:`streams.core.imaging_ops.preprocess_image`, 64 x 64); CT patients are split by
   :func:`models.imaging.data.split_patients` (test, validation, train).
2. Optional pretraining (``pretrain_epochs``): encoder and classifier on PneumoniaMNIST.
3. Joint training: each step takes a batch of augmented CT training patches (random
   flips and quarter turns, then a small rotation, a scale of 0.8-1.25 and a contrast
   change) for segmentation (BCE + soft Dice per patch) and lesion-present
   classification, plus a batch of X-rays for pneumonia classification (augmented with a
   small random rotation, scale, shift and contrast change, never flipped: a chest X-ray
   has a left and a right; each class weighs half of the loss, the training split holding
   nine pneumonia images per normal one); the classification losses are weighted by
   ``class_weight``. Weight decay acts on convolution and linear weights only (not on
   GroupNorm or biases); the learning rate decays on a cosine to 1 %. The epoch kept
   is the best by the mean of the validation patients' Dice (at 0.5, native 48 x 48)
   and the held-back X-ray AUROC. Off by default: channel dropout in the decoder
   (``decoder_dropout``) and scoring and keeping a per-step moving average of the
   weights instead of the trained ones (``ema_decay``).
4. Operating points, on validation data only: the lesion threshold, within
   ``[min_threshold, max_threshold]``, is the middle of the thresholds whose validation
   lesion recall reaches ``target_recall`` and whose false-positive components per patch
   stay within ``max_false_positives_per_patch``
   (:func:`models.imaging.metrics.choose_threshold`); a lesion is then a component at that
   threshold whose peak reaches ``lesion_peak_threshold`` (a setting, chosen on the
   validation patients of all four folds); from here on the network serves the lesion
   probability averaged over the image and its mirror (``flip_average``); the class
   logit is Platt-calibrated on the held-back X-rays and the pneumonia threshold is the
   highest reaching ``target_sensitivity`` on them.
5. Report: Dice, IoU, lesion recall, false-positive components at the operating point and
   at 0.5 on the test patients (never tuned on); AUROC, sensitivity and specificity on the
   official PneumoniaMNIST validation split (never tuned on) and on the held-back X-rays;
   lesion-present AUROC on the CT test patches; CAM pointing rate.

Determinism: seeded generators for initialisation, sampling and augmentation,
``torch.use_deterministic_algorithms(True)`` and ``threads`` intra-op threads.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from models.common.provenance import code_version, package_versions
from models.common.training_data import MSD_LUNG_CT, PNEUMONIAMNIST, require_data
from models.imaging.data import (
    CTData,
    XRayData,
    data_hash,
    load_ct,
    load_xray,
    split_patients,
)
from models.imaging.metrics import (
    choose_threshold,
    fit_platt,
    segmentation_scores,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from models.imaging.network import ImagingConfig, ImagingNet
from models.imaging.settings import ImagingSettings
from streams.core.imaging_ops import resize
from streams.core.risk_metrics import auroc

__all__ = [
    "IMAGING_SOURCES",
    "ImagingSettings",
    "ImagingTrainResult",
    "native_maps",
    "predict",
    "train_imaging",
]

IMAGING_SOURCES: Final[tuple[str, ...]] = (
    "streams/core/imaging_ops.py",
    "models/imaging/metrics.py",
    "models/imaging/network.py",
    "models/imaging/data.py",
    "models/imaging/settings.py",
    "models/imaging/train.py",
)
"""Files hashed into an imaging checkpoint's ``code_version``."""


@dataclass(frozen=True, slots=True)
class ImagingTrainResult:
    """What :func:`train_imaging` produced.

    Attributes:
        checkpoint: Path of the written checkpoint.
        metrics: Validation and test metrics (JSON-ready).
        threshold: Lesion probability threshold (operating point).
        best_epoch: Joint epoch kept (1-based).
        train_seconds: Wall time of the whole run, seconds.
    """

    checkpoint: Path
    metrics: dict[str, Any]
    threshold: float
    best_epoch: int
    train_seconds: float


def predict(
    net: ImagingNet, images: npt.NDArray[np.float32], batch_size: int = 128
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Eval-mode outputs for ``[N,1,S,S]`` images: ``mask [N,S,S]``, ``class [N]``,
    ``cam [N,S,S]``."""
    net.eval()
    masks, classes, cams = [], [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            mask, prob, _, cam = net(torch.from_numpy(images[start : start + batch_size]))
            masks.append(mask[:, 0].numpy())
            classes.append(prob[:, 0].numpy())
            cams.append(cam[:, 0].numpy())
    return np.concatenate(masks), np.concatenate(classes), np.concatenate(cams)


def native_maps(maps: npt.NDArray[np.float32], shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """``[N,S,S]`` maps resized to the native ``[H,W]`` of the reference masks."""
    return np.stack([resize(m, shape[0], shape[1]) for m in maps])


def _augment(
    images: npt.NDArray[np.float32], masks: npt.NDArray[np.float32], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Random quarter turn and horizontal flip per patch (same for image and mask)."""
    turns = rng.integers(0, 4, size=images.shape[0])
    flips = rng.integers(0, 2, size=images.shape[0])
    out_x, out_m = np.empty_like(images), np.empty_like(masks)
    for i, (k, flip) in enumerate(zip(turns, flips, strict=True)):
        x, m = np.rot90(images[i], int(k), axes=(1, 2)), np.rot90(masks[i], int(k), axes=(1, 2))
        if flip:
            x, m = x[:, :, ::-1], m[:, :, ::-1]
        out_x[i], out_m[i] = x, m
    return out_x, out_m


def _augment_ct(
    images: npt.NDArray[np.float32], masks: npt.NDArray[np.float32], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-patch CT augmentation on top of :func:`_augment`: rotation within +-15 degrees
    and scale 0.8-1.25 (tumours of other sizes than the 8 training patients'; same warp
    for image and mask, the mask re-binarised at 0.5), contrast x0.85-1.15 and brightness
    +-0.05 around the patch mean (other scanners and windows), clipped to [0, 1].

    ``[B,1,S,S]`` in, ``[B,1,S,S]`` out.
    """
    n = images.shape[0]
    angle = np.deg2rad(rng.uniform(-15.0, 15.0, n))
    scale = np.exp(rng.uniform(np.log(0.8), np.log(1.25), n))
    contrast = rng.uniform(0.85, 1.15, n)
    brightness = rng.uniform(-0.05, 0.05, n)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    zero = np.zeros(n)
    theta = np.stack([np.stack([cos, -sin, zero], 1), np.stack([sin, cos, zero], 1)], 1).astype(
        np.float32
    )
    grid = F.affine_grid(torch.from_numpy(theta), list(images.shape), align_corners=False)
    warped = F.grid_sample(
        torch.from_numpy(images), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    warped_mask = F.grid_sample(
        torch.from_numpy(masks), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    out_m: npt.NDArray[np.float32] = (warped_mask >= 0.5).to(torch.float32).numpy()
    return _contrast(warped, contrast, brightness), out_m


def _augment_xray(
    images: npt.NDArray[np.float32], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Chest-X-ray augmentation per image: rotation within +-10 degrees, scale 0.9-1.1,
    shift up to 6 % of the side, contrast x0.8-1.2 and brightness +-0.08 around the mean,
    clipped to [0, 1]. No flips (anatomy has a side) and no elastic warps."""
    n = images.shape[0]
    angle = np.deg2rad(rng.uniform(-10.0, 10.0, n))
    scale = rng.uniform(0.9, 1.1, n)
    shift = rng.uniform(-0.12, 0.12, (n, 2))  # normalised coordinates span 2
    contrast = rng.uniform(0.8, 1.2, n)
    brightness = rng.uniform(-0.08, 0.08, n)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack(
        [np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1
    ).astype(np.float32)
    x = torch.from_numpy(images)
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _contrast(warped, contrast, brightness)


def _contrast(
    images: torch.Tensor, contrast: npt.NDArray[np.float64], brightness: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """``[B,1,S,S]`` images scaled by ``contrast`` about each image's mean and shifted by
    ``brightness`` (one value per image), clipped to [0, 1]."""
    n = images.shape[0]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    gain = torch.from_numpy(contrast.astype(np.float32)).view(n, 1, 1, 1)
    offset = torch.from_numpy(brightness.astype(np.float32)).view(n, 1, 1, 1)
    out: npt.NDArray[np.float32] = torch.clamp(
        (images - mean) * gain + mean + offset, 0.0, 1.0
    ).numpy()
    return out


def _class_weights(labels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per-image loss weights giving each class half of the total (mean weight 1)."""
    positive = labels > 0.5
    n, n_pos = labels.size, int(positive.sum())
    if n_pos in (0, n):
        return np.ones_like(labels)
    return np.where(positive, n / (2.0 * n_pos), n / (2.0 * (n - n_pos))).astype(np.float32)


def _threshold_grid(settings: ImagingSettings) -> list[float]:
    """Lesion threshold candidates: 0.01 steps within ``[min_threshold, max_threshold]``."""
    grid = np.round(np.arange(1, 100) / 100, 2)
    keep = (grid >= settings.min_threshold - 1e-9) & (grid <= settings.max_threshold + 1e-9)
    return [float(t) for t in grid[keep]]


def _optimiser(net: ImagingNet, settings: ImagingSettings) -> torch.optim.Adam:
    """Adam with weight decay on convolution and linear weights only."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.Adam(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=settings.learning_rate,
    )


def _class_logits(
    net: ImagingNet, images: npt.NDArray[np.float32], batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Uncalibrated class logits ``[N]`` (eval mode)."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            _, features = net.encode(torch.from_numpy(images[start : start + batch_size]))
            out.append(net.classify(features)[1].numpy())
    return np.concatenate(out)


def _segmentation_loss(
    logit: torch.Tensor, target: torch.Tensor, per_patch: bool = False
) -> torch.Tensor:
    """BCE plus soft Dice (``[B,1,S,S]`` both), Dice pooled over the batch or, with
    ``per_patch``, the mean of each patch's Dice (a lesion-free patch then scores
    ``1 / (predicted mass + 1)``, so every false-positive blob costs on its own)."""
    bce = F.binary_cross_entropy_with_logits(logit, target)
    prob = torch.sigmoid(logit)
    dims = (1, 2, 3) if per_patch else (0, 1, 2, 3)
    inter = (prob * target).sum(dim=dims)
    dice = (2.0 * inter + 1.0) / (prob.sum(dim=dims) + target.sum(dim=dims) + 1.0)
    return bce + (1.0 - dice.mean())


def _class_loss(
    net: ImagingNet,
    images: npt.NDArray[np.float32],
    labels: Any,
    weights: npt.NDArray[np.float32] | None = None,
) -> torch.Tensor:
    _, features = net.encode(torch.from_numpy(images))
    _, logit = net.classify(features)
    return F.binary_cross_entropy_with_logits(
        logit,
        torch.as_tensor(labels, dtype=torch.float32),
        weight=None if weights is None else torch.from_numpy(weights),
    )


def _xray_loss(
    net: ImagingNet,
    xray: XRayData,
    pick: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    settings: ImagingSettings,
    rng: np.random.Generator,
) -> torch.Tensor:
    images = xray.train_images[pick]
    if settings.xray_augment:
        images = _augment_xray(images, rng)
    return _class_loss(net, images, xray.train_labels[pick], weights[pick])


def _weights(xray: XRayData, settings: ImagingSettings) -> npt.NDArray[np.float32]:
    if settings.balance_classes:
        return _class_weights(xray.train_labels)
    return np.ones_like(xray.train_labels)


def _pretrain(
    net: ImagingNet, xray: XRayData, settings: ImagingSettings, rng: np.random.Generator
) -> list[dict[str, float]]:
    """X-ray classification epochs (encoder and classifier only)."""
    optimiser = _optimiser(net, settings)
    history = []
    batch = 2 * settings.batch_size
    weights = _weights(xray, settings)
    for epoch in range(1, settings.pretrain_epochs + 1):
        net.train()
        order = rng.permutation(xray.train_labels.size)
        for start in range(0, order.size, batch):
            pick = order[start : start + batch]
            loss = _xray_loss(net, xray, pick, weights, settings, rng)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        _, tune_prob, _ = predict(net, xray.tune_images)
        history.append({"epoch": epoch, "tune_auroc": round(auroc(xray.tune_labels, tune_prob), 4)})
    return history


def _update_average(averaged: ImagingNet, net: ImagingNet, decay: float) -> None:
    """``averaged <- decay * averaged + (1 - decay) * net``, parameter by parameter."""
    with torch.no_grad():
        for mean, value in zip(averaged.parameters(), net.parameters(), strict=True):
            mean.mul_(decay).add_(value, alpha=1.0 - decay)


def _validation_score(
    net: ImagingNet, val: CTData, xray: XRayData, use_xray: bool
) -> tuple[float, dict[str, float]]:
    mask_prob, _, _ = predict(net, val.images)
    native = native_maps(mask_prob, val.native_masks.shape[1:])
    dice = segmentation_scores(native, val.native_masks, 0.5).dice
    entry = {"val_dice": round(dice, 4)}
    if not use_xray:
        return dice, entry
    _, tune_prob, _ = predict(net, xray.tune_images)
    tune_auc = auroc(xray.tune_labels, tune_prob)
    entry["tune_auroc"] = round(tune_auc, 4)
    return 0.5 * (dice + tune_auc), entry


def _evaluate(
    net: ImagingNet, part: CTData, threshold: float, peak_threshold: float
) -> tuple[dict[str, Any], npt.NDArray[np.float32]]:
    """Segmentation scores at the threshold and at 0.5 (components whose peak is below
    ``peak_threshold`` dropped, as served), CT classification, CAM pointing."""
    mask_prob, class_prob, cams = predict(net, part.images)
    shape = part.native_masks.shape[1:]
    native = native_maps(mask_prob, shape)
    present = part.native_masks.reshape(part.native_masks.shape[0], -1).any(1)
    native_cams = native_maps(cams, shape)
    hits = [
        bool(ref.flat[int(np.argmax(cam))])
        for cam, ref, has in zip(native_cams, part.native_masks, present, strict=True)
        if has and cam.max() > 0
    ]
    result = {
        "operating_point": segmentation_scores(
            native, part.native_masks, threshold, peak_threshold
        ).to_dict(),
        "operating_point_no_peak_filter": segmentation_scores(
            native, part.native_masks, threshold
        ).to_dict(),
        "at_0.5": segmentation_scores(native, part.native_masks, 0.5, peak_threshold).to_dict(),
        "lesion_present_auroc": round(auroc(present, class_prob), 4),
        "cam_pointing_rate": round(float(np.mean(hits)), 4) if hits else None,
        "patches": int(present.size),
        "patches_with_lesion": int(present.sum()),
    }
    return result, native


def train_imaging(settings: ImagingSettings) -> ImagingTrainResult:
    """Trains, picks the operating point, evaluates and writes a checkpoint.

    Raises:
        ModelError: Unreadable data or an impossible split.
    """
    require_data(settings, "ct_path", MSD_LUNG_CT)
    require_data(settings, "xray_path", PNEUMONIAMNIST)
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    config = ImagingConfig(
        base_channels=settings.base_channels, decoder_dropout=settings.decoder_dropout
    )
    ct = load_ct(settings.ct_path, config.image_size)
    xray = load_xray(
        settings.xray_path,
        seed=settings.split_seed,
        limit=settings.xray_limit,
        size=config.image_size,
        fold=settings.fold,
    )
    split = split_patients(
        ct.patients,
        seed=settings.split_seed,
        test=settings.test_patients,
        validation=settings.validation_patients,
        fold=settings.fold,
    )
    parts = {name: ct.subset(patients) for name, patients in split.items()}
    train_ct = parts["train"]
    use_xray = settings.xray_per_epoch > 0

    net = ImagingNet(config)
    pretrain_history = _pretrain(net, xray, settings, rng) if settings.pretrain_epochs else []
    optimiser = _optimiser(net, settings)
    xray_weights = _weights(xray, settings)
    ct_present = train_ct.masks.reshape(train_ct.masks.shape[0], -1).max(1)
    best_score, best_epoch, best_state = -1.0, 0, copy.deepcopy(net.state_dict())
    # With ``ema_decay`` the weights scored and kept are an exponential moving average of
    # the trained ones (per step), which smooths the epoch-to-epoch jumps of validation
    # Dice on two patients instead of keeping one lucky epoch.
    averaged = copy.deepcopy(net) if settings.ema_decay > 0 else net
    history: list[dict[str, float]] = []
    for epoch in range(1, settings.epochs + 1):
        net.train()
        if settings.cosine_schedule:
            # Cosine decay to 1 % over the joint epochs: the last epochs settle instead of
            # jumping, so the epoch kept is a converged model, not a lucky noisy one.
            progress = (epoch - 1) / max(settings.epochs - 1, 1)
            factor = 0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * progress))
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate * factor
        order = rng.permutation(np.tile(np.arange(train_ct.patients.size), settings.ct_repeats))
        steps = -(-order.size // settings.batch_size)
        xray_pick = rng.choice(
            xray.train_labels.size,
            size=min(settings.xray_per_epoch, xray.train_labels.size),
            replace=False,
        )
        xray_batches: list[npt.NDArray[np.int64] | None] = (
            list(np.array_split(xray_pick, steps)) if use_xray else [None] * steps
        )
        total = 0.0
        for step, x_batch in enumerate(xray_batches):
            pick = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            images, masks = _augment(train_ct.images[pick], train_ct.masks[pick], rng)
            if settings.ct_augment:
                images, masks = _augment_ct(images, masks, rng)
            skips, features = net.encode(torch.from_numpy(images))
            _, ct_logit = net.classify(features)
            loss = _segmentation_loss(
                net.decode(skips, features), torch.from_numpy(masks), settings.dice_per_patch
            )
            ct_target = torch.from_numpy(ct_present[pick].astype(np.float32))
            class_loss = F.binary_cross_entropy_with_logits(ct_logit, ct_target)
            if x_batch is not None and x_batch.size:
                class_loss = class_loss + _xray_loss(
                    net, xray, x_batch, xray_weights, settings, rng
                )
            loss = loss + settings.class_weight * class_loss
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            if averaged is not net:
                _update_average(averaged, net, settings.ema_decay)
            total += float(loss.item())
        score, entry = _validation_score(averaged, parts["validation"], xray, use_xray)
        history.append({"epoch": epoch, "loss": round(total / steps, 5), **entry})
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(averaged.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    # Test-time mirror averaging is part of serving, not of training: the epoch was chosen
    # on the single view; the threshold and every reported figure use what is served.
    net.flip_average = settings.flip_average
    config = dataclasses.replace(config, flip_average=settings.flip_average)

    val_prob, _, _ = predict(net, parts["validation"].images)
    val_native = native_maps(val_prob, parts["validation"].native_masks.shape[1:])
    threshold = choose_threshold(
        val_native,
        parts["validation"].native_masks,
        settings.target_recall,
        _threshold_grid(settings),
        max_false_positives_per_patch=settings.max_false_positives_per_patch,
    )
    calibration = fit_platt(_class_logits(net, xray.tune_images), xray.tune_labels)
    with torch.no_grad():
        net.get_buffer("calibration").copy_(torch.tensor(calibration, dtype=torch.float32))
    _, xray_tune_prob, _ = predict(net, xray.tune_images)
    class_threshold = round(
        threshold_for_sensitivity(xray_tune_prob, xray.tune_labels, settings.target_sensitivity),
        6,
    )
    metrics: dict[str, Any] = {
        name: _evaluate(net, parts[name], threshold, settings.lesion_peak_threshold)[0]
        for name in ("validation", "test")
    }
    _, xray_val_prob, _ = predict(net, xray.val_images)
    val_sens, val_spec = sensitivity_specificity(xray_val_prob, xray.val_labels, class_threshold)
    tune_sens, tune_spec = sensitivity_specificity(
        xray_tune_prob, xray.tune_labels, class_threshold
    )
    metrics["pneumonia"] = {
        "official_val_auroc": round(auroc(xray.val_labels, xray_val_prob), 4),
        "official_val_n": int(xray.val_labels.size),
        "official_val_pneumonia": int(xray.val_labels.sum()),
        "official_val_sensitivity": round(val_sens, 4),
        "official_val_specificity": round(val_spec, 4),
        "official_val_brier": round(float(np.mean((xray_val_prob - xray.val_labels) ** 2)), 4),
        "tune_auroc": round(auroc(xray.tune_labels, xray_tune_prob), 4),
        "tune_sensitivity": round(tune_sens, 4),
        "tune_specificity": round(tune_spec, 4),
        "tune_n": int(xray.tune_labels.size),
        "tune_pneumonia": int(xray.tune_labels.sum()),
        "class_threshold": class_threshold,
    }
    seconds = round(time.monotonic() - started, 1)
    meta = {
        "config": config.to_dict(),
        "settings": settings.model_dump(mode="json"),
        "threshold": threshold,
        "lesion_peak_threshold": settings.lesion_peak_threshold,
        "target_recall": settings.target_recall,
        "max_false_positives_per_patch": settings.max_false_positives_per_patch,
        "class_threshold": class_threshold,
        "target_sensitivity": settings.target_sensitivity,
        "calibration": [round(v, 6) for v in calibration],
        "best_epoch": best_epoch,
        "history": history,
        "pretrain_history": pretrain_history,
        "split": {name: list(patients) for name, patients in split.items()},
        "split_method": (
            "patients inferred as consecutive blocks of 10 patches (the file has no ids); "
            f"numpy default_rng({settings.split_seed}).permutation of the patient indices, "
            f"rotated left by fold ({settings.fold}) x {settings.test_patients}: "
            f"first {settings.test_patients} test, next {settings.validation_patients} "
            "validation, the rest train"
        ),
        "data_sha256": {
            "ct": data_hash(settings.ct_path),
            "pneumoniamnist": data_hash(settings.xray_path),
        },
        "metrics": metrics,
        "code_version": code_version(IMAGING_SOURCES),
        "packages": package_versions(),
        "train_seconds": seconds,
    }
    settings.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "meta": meta}, settings.checkpoint)
    return ImagingTrainResult(
        checkpoint=settings.checkpoint,
        metrics=metrics,
        threshold=threshold,
        best_epoch=best_epoch,
        train_seconds=seconds,
    )
