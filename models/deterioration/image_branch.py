"""Fine-tuning of the deterioration model's image branch on a synthetic **test fixture**.

PhysioNet 2012 ICU stays have no images, so no real pairing of studies and stays exists.
To give the branch weights that react to a study, this module builds a **fixture
linkage** (:data:`FIXTURE_RULE`) and trains only the branch on it. The result shows the
plumbing works (a study changes the score); it carries **no clinical evidence**.

Fixture rule: each stay gets one study at a uniformly random time after admission. A
stay that died in hospital gets a pneumonia-positive PneumoniaMNIST X-ray with
probability ``p`` (otherwise a normal one); a survivor gets a normal X-ray with
probability ``p`` (otherwise a pneumonia-positive one). The X-ray is drawn uniformly
from its class; its 64-d embedding comes from the imaging network
(``models/weights/imaging.pt``, whose SHA-256 is recorded).

* Training: stays of the deterioration **training split** only, X-rays of the imaging
  model's **training part** only (PneumoniaMNIST training split minus the 10 % it held
  back), studies in ``[0, 48)`` h, ``hours_per_stay`` scoring hours per stay in
  ``[max(min_hour, study), 48]``.
* Frozen: every parameter of every member except ``image_proj``, ``query``, ``key``,
  ``value`` and ``image_out.weight`` (:data:`BRANCH_PARAMETERS`). Without images the
  attended vector is exactly 0, so these parameters contribute exactly 0 and every
  image-free output is bit-identical to the input checkpoint's. ``image_out.bias`` is
  not part of the fine-tune: the base training already set it (it gets gradients even
  without images, acting as a constant offset of ``fused``), so it stays frozen. The
  trained parameters are re-initialised from ``seed + i`` (``image_out.weight`` zero)
  before training, so the result does not depend on the input checkpoint's branch.
* Members run in eval mode (no dropout): the image-free fused vector ``z`` and logit
  of each window are computed once, and the branch is trained by Adam on binary
  cross-entropy of ``logit0 + w_head · W_o attended`` (the served logit up to float
  rounding, the head being linear), per member, for a fixed number of epochs.
* Check: the **validation split**, linked by the same rule (another stream of the same
  seed) to X-rays of PneumoniaMNIST's official validation split (never seen by the
  imaging training nor here), studies in ``[0, 24)`` h, scored at 24 h and 48 h with and
  without the study. Platt calibration is left as it is (fitted without images).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from models.common.provenance import code_version
from models.common.training_data import PHYSIONET_2012, PNEUMONIAMNIST, require_data
from models.deterioration.export import load_checkpoint
from models.deterioration.image_branch_settings import ImageBranchSettings
from models.deterioration.network import (
    DeteriorationEnsemble,
    DeteriorationNet,
    NetConfig,
    NetInputs,
)
from models.deterioration.train import EVAL_HOURS, WindowBatch, make_windows, split_record_ids
from models.imaging.data import load_xray
from models.imaging.export import load_imaging_checkpoint
from models.imaging.network import ImagingNet
from streams.core.features import StayArrays
from streams.core.risk_metrics import auroc
from streams.datasets.physionet2012 import load_stays
from vigil.errors import ModelError

__all__ = [
    "BRANCH_PARAMETERS",
    "FIXTURE_RULE",
    "IMAGE_BRANCH_SOURCES",
    "ImageBranchResult",
    "Linkage",
    "draw_linkage",
    "embed_images",
    "finetune_image_branch",
    "frozen_state_sha256",
    "image_inputs",
]

BRANCH_PARAMETERS: Final[tuple[str, ...]] = (
    "image_proj.weight",
    "image_proj.bias",
    "query.weight",
    "query.bias",
    "key.weight",
    "key.bias",
    "value.weight",
    "value.bias",
    "image_out.weight",
)
"""Trained parameters of each member (``image_out.bias`` is not: the base training set it)."""
FIXTURE_RULE: Final[str] = (
    "TEST FIXTURE, synthetic linkage (PhysioNet stays have no images): each stay gets one "
    "study at a uniformly random time after admission; a stay that died in hospital draws "
    "a pneumonia-positive PneumoniaMNIST X-ray with probability p (else a normal one), a "
    "survivor a normal X-ray with probability p (else a pneumonia-positive one), uniformly "
    "within the class. No clinical evidence."
)
IMAGE_BRANCH_SOURCES: Final[tuple[str, ...]] = (
    "models/deterioration/network.py",
    "models/deterioration/image_branch.py",
    "models/deterioration/image_branch_settings.py",
    "models/imaging/data.py",
    "models/imaging/network.py",
)
"""Files hashed into the fine-tune's ``code_version``."""
_TRAIN_STUDY_HOURS: Final[float] = 48.0
_VALIDATION_STUDY_HOURS: Final[float] = 24.0


@dataclass(frozen=True, slots=True)
class Linkage:
    """One fixture study per stay (``N`` stays).

    Attributes:
        study_hours: ``[N]`` study time, hours after admission.
        abnormal: ``[N]`` True for a pneumonia-positive X-ray.
        image_index: ``[N]`` index into the X-rays of that class.
    """

    study_hours: npt.NDArray[np.float64]
    abnormal: npt.NDArray[np.bool_]
    image_index: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ImageBranchResult:
    """What :func:`finetune_image_branch` produced.

    Attributes:
        checkpoint: Path of the written checkpoint.
        metrics: The ``image_branch`` metadata written into it (JSON-ready).
        seconds: Wall time, seconds.
    """

    checkpoint: Path
    metrics: dict[str, Any]
    seconds: float


def draw_linkage(
    labels: npt.NDArray[Any],
    *,
    p: float,
    n_abnormal: int,
    n_normal: int,
    max_study_hour: float,
    rng: np.random.Generator,
) -> Linkage:
    """Draws the fixture studies of stays with outcome ``labels [N]`` (1 died).

    Args:
        labels: ``[N]`` in-hospital death.
        p: Probability that the study agrees with the outcome.
        n_abnormal: Pneumonia-positive X-rays to draw from.
        n_normal: Normal X-rays to draw from.
        max_study_hour: Studies fall uniformly in ``[0, max_study_hour)`` h.
        rng: The generator (consumed in a fixed order).
    """
    died = np.asarray(labels) > 0.5
    n = died.size
    study_hours = rng.uniform(0.0, max_study_hour, size=n)
    agrees = rng.random(n) < p
    abnormal = np.where(died, agrees, ~agrees)
    draw = rng.random(n)
    pool = np.where(abnormal, n_abnormal, n_normal)
    image_index = np.minimum((draw * pool).astype(np.int64), pool - 1)
    return Linkage(study_hours=study_hours, abnormal=abnormal, image_index=image_index)


def embed_images(net: ImagingNet, images: npt.NDArray[np.float32]) -> torch.Tensor:
    """``embedding [N,E]`` of preprocessed ``images [N,1,S,S]`` (the served output)."""
    net.eval()
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, images.shape[0], 256):
            _, features = net.encode(torch.from_numpy(images[start : start + 256]))
            out.append(net.classify(features)[0])
    return torch.cat(out) if out else torch.zeros(0, net.classifier.in_features)


def image_inputs(
    embeddings: torch.Tensor, age_hours: torch.Tensor, max_images: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One study per row in slot 0: ``image_embeddings [N,K,E]``, ``image_age_hours [N,K]``
    and ``image_mask [N,K]`` from ``embeddings [N,E]`` and ``age_hours [N]``."""
    n, e = embeddings.shape
    slots = torch.zeros(n, max_images, e)
    slots[:, 0] = embeddings
    ages = torch.zeros(n, max_images)
    ages[:, 0] = age_hours
    mask = torch.zeros(n, max_images)
    mask[:, 0] = 1.0
    return slots, ages, mask


def _is_branch_key(key: str) -> bool:
    return any(key.endswith("." + name) for name in BRANCH_PARAMETERS)


def frozen_state_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every entry outside :data:`BRANCH_PARAMETERS` (names and bytes, sorted)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if not _is_branch_key(key):
            digest.update(key.encode())
            digest.update(state_dict[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_image(n: int, k: int, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(n, k, e), torch.zeros(n, k), torch.zeros(n, k)


def _member_cache(
    member: DeteriorationNet, batch: WindowBatch, k: int, e: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query ``z [N,F]`` and image-free logit ``[N]`` of one (frozen, eval-mode) member.

    Without images ``fused = z + b_o`` (``image_out``'s bias), so ``z = fused - b_o``.
    """
    fused, logits = [], []
    inputs = batch.tensors(k, e)
    with torch.no_grad():
        for start in range(0, inputs[0].shape[0], 512):
            f, logit, _ = member.encode(NetInputs(*(t[start : start + 512] for t in inputs)))
            fused.append(f)
            logits.append(logit)
    return torch.cat(fused) - member.image_out.bias.detach(), torch.cat(logits)


def _reset_branch(member: DeteriorationNet, seed: int) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    for name in ("image_proj", "query", "key", "value"):
        getattr(member, name).reset_parameters()
    torch.nn.init.zeros_(member.image_out.weight)
    for parameter in member.parameters():
        parameter.requires_grad_(False)
    trainable = [member.get_parameter(name) for name in BRANCH_PARAMETERS]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def _fit_branch(
    member: DeteriorationNet,
    settings: ImageBranchSettings,
    seed: int,
    cache: tuple[torch.Tensor, torch.Tensor],
    images: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    target: torch.Tensor,
) -> list[float]:
    """Trains ``member``'s branch in place; returns the mean loss per epoch."""
    trainable = _reset_branch(member, seed)
    member.eval()
    optimiser = torch.optim.Adam(
        trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    rng = np.random.default_rng(seed)
    z, logit0 = cache
    head = member.head.weight[0].detach()
    bias = member.image_out.bias.detach()  # already in logit0
    history: list[float] = []
    for _ in range(settings.epochs):
        order = rng.permutation(target.shape[0])
        total = 0.0
        for start in range(0, order.size, settings.batch_size):
            pick = torch.from_numpy(order[start : start + settings.batch_size])
            term, _ = member.image_branch(z[pick], *(t[pick] for t in images))
            logit = logit0[pick] + (term - bias) @ head
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target[pick])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.item()) * pick.numel()
        history.append(round(total / order.size, 5))
    for parameter in member.parameters():
        parameter.requires_grad_(True)
    return history


def _risks(
    net: DeteriorationEnsemble,
    batch: WindowBatch,
    images: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> npt.NDArray[np.float64]:
    """Calibrated ensemble risk ``[N]`` of ``batch`` with ``images`` (``[N,K,E]``, …)."""
    series = [torch.from_numpy(a) for a in (batch.values, batch.mask, batch.delta_hours)]
    statics = [torch.from_numpy(a) for a in (batch.statics, batch.static_mask)]
    inputs = (*series, *statics, *images)
    out = []
    with torch.no_grad():
        for start in range(0, inputs[0].shape[0], 512):
            risk, _ = net(*(t[start : start + 512] for t in inputs))
            out.append(risk[:, 0].numpy().astype(np.float64))
    return np.concatenate(out)


def _check_validation(
    net: DeteriorationEnsemble,
    config: NetConfig,
    arrays: list[StayArrays],
    labels: npt.NDArray[Any],
    linkage: Linkage,
    pools: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, Any]:
    """AUROC with and without the fixture study, and the mean risk change, per hour."""
    abnormal_pool, normal_pool = pools
    study = _study_embeddings(linkage, abnormal_pool, normal_pool)
    out: dict[str, Any] = {
        "n": int(labels.size),
        "deaths": int(labels.sum()),
        "abnormal_studies": int(linkage.abnormal.sum()),
        "study_flag_auroc": round(auroc(labels, linkage.abnormal.astype(np.float64)), 4),
    }
    n, k, e = len(arrays), config.max_images, config.image_dim
    for hour in EVAL_HOURS:
        batch = make_windows(arrays, [hour] * n)
        without = _risks(net, batch, _no_image(n, k, e))
        age = torch.from_numpy(hour - linkage.study_hours).float()
        with_images = _risks(net, batch, image_inputs(study, age, k))
        change = with_images - without
        entry: dict[str, float] = {
            "auroc_without_images": round(auroc(labels, without), 4),
            "auroc_with_images": round(auroc(labels, with_images), 4),
            "mean_risk_without_images": round(float(without.mean()), 4),
        }
        for name, rows in (("abnormal", linkage.abnormal), ("normal", ~linkage.abnormal)):
            entry[f"mean_risk_change_{name}"] = round(float(change[rows].mean()), 4)
            entry[f"mean_abs_risk_change_{name}"] = round(float(np.abs(change[rows]).mean()), 4)
        out[f"{hour}h"] = entry
    return out


def _study_embeddings(
    linkage: Linkage, abnormal_pool: torch.Tensor, normal_pool: torch.Tensor
) -> torch.Tensor:
    """``[N,E]`` embedding of each stay's fixture study."""
    abnormal = torch.from_numpy(linkage.abnormal).unsqueeze(1)
    index = torch.from_numpy(linkage.image_index)
    return torch.where(
        abnormal,
        abnormal_pool[torch.clamp(index, max=abnormal_pool.shape[0] - 1)],
        normal_pool[torch.clamp(index, max=normal_pool.shape[0] - 1)],
    )


def _pools(
    net: ImagingNet, images: npt.NDArray[np.float32], labels: npt.NDArray[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = embed_images(net, images)
    positive = torch.from_numpy(np.asarray(labels) > 0.5)
    abnormal, normal = embeddings[positive], embeddings[~positive]
    if abnormal.shape[0] == 0 or normal.shape[0] == 0:
        raise ModelError("the fixture needs pneumonia-positive and normal X-rays")
    return abnormal, normal


def _training_set(
    arrays: list[StayArrays],
    linkage: Linkage,
    settings: ImageBranchSettings,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Stay index and scoring hour of each training window (after the stay's study)."""
    stay_index = np.repeat(np.arange(len(arrays)), settings.hours_per_stay)
    first = np.maximum(settings.min_hour, np.ceil(linkage.study_hours)).astype(np.int64)
    low = first[stay_index]
    hours = low + (rng.random(stay_index.size) * (49 - low)).astype(np.int64)
    return stay_index, np.minimum(hours, 48)


def finetune_image_branch(settings: ImageBranchSettings) -> ImageBranchResult:
    """Fine-tunes each member's image branch on the fixture linkage; writes a checkpoint.

    Args:
        settings: The run's settings.

    Returns:
        The written checkpoint, the ``image_branch`` metadata and the wall time.

    Raises:
        ModelError: Unreadable inputs, a split that differs from the checkpoint's, or a
            frozen parameter that moved.
    """
    require_data(settings, "data_dir", PHYSIONET_2012)
    require_data(settings, "xray_path", PNEUMONIAMNIST)
    started = time.monotonic()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(settings.threads)
    checkpoint_sha256 = _file_sha256(settings.checkpoint)
    net, meta = load_checkpoint(settings.checkpoint)
    require_data(settings, "data_dir", PHYSIONET_2012)
    require_data(settings, "xray_path", PNEUMONIAMNIST)
    config = NetConfig(**meta["net_config"])
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    frozen_before = frozen_state_sha256(base_state)

    stays, outcomes = load_stays(settings.data_dir)
    max_stays = meta["settings"].get("max_stays")
    if max_stays is not None:
        stays = stays[:max_stays]
    labels = {s.record_id: outcomes[s.record_id].in_hospital_death for s in stays}
    split = split_record_ids(labels, seed=int(meta["settings"]["split_seed"]))
    if {name: list(ids) for name, ids in split.items()} != meta["split"]:
        raise ModelError(f"{settings.data_dir} does not give the checkpoint's split")
    by_id = {s.record_id: s for s in stays}
    arrays = {name: [by_id[r].arrays() for r in split[name]] for name in ("train", "validation")}
    y = {
        name: np.array([labels[r] for r in split[name]], dtype=np.float32)
        for name in ("train", "validation")
    }

    imaging_net, imaging_meta = load_imaging_checkpoint(settings.imaging_checkpoint)
    xray = load_xray(
        settings.xray_path,
        seed=int(imaging_meta["settings"]["split_seed"]),
        limit=settings.xray_limit,
        size=int(imaging_meta["config"]["image_size"]),
        fold=int(imaging_meta["settings"].get("fold", 0)),
    )
    train_pools = _pools(imaging_net, xray.train_images, xray.train_labels)
    val_pools = _pools(imaging_net, xray.val_images, xray.val_labels)

    rng_train = np.random.default_rng([settings.seed, 0])
    rng_val = np.random.default_rng([settings.seed, 1])
    p = settings.abnormal_probability
    link_train = draw_linkage(
        y["train"],
        p=p,
        n_abnormal=train_pools[0].shape[0],
        n_normal=train_pools[1].shape[0],
        max_study_hour=_TRAIN_STUDY_HOURS,
        rng=rng_train,
    )
    stay_index, hours = _training_set(arrays["train"], link_train, settings, rng_train)
    batch = make_windows([arrays["train"][i] for i in stay_index], hours.tolist())
    study = _study_embeddings(link_train, *train_pools)[torch.from_numpy(stay_index)]
    age = torch.from_numpy(hours - link_train.study_hours[stay_index]).float()
    images = image_inputs(study, age, config.max_images)
    target = torch.from_numpy(y["train"][stay_index])

    members: list[dict[str, Any]] = []
    for i, member in enumerate(net.members):
        if not isinstance(member, DeteriorationNet):
            raise ModelError("an ensemble member is not a DeteriorationNet")
        member.eval()
        cache = _member_cache(member, batch, config.max_images, config.image_dim)
        history = _fit_branch(member, settings, settings.seed + i, cache, images, target)
        members.append({"seed": settings.seed + i, "loss_history": history})
    net.eval()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if frozen_state_sha256(state) != frozen_before:
        raise ModelError("a frozen parameter moved during the image-branch fine-tune")

    link_val = draw_linkage(
        y["validation"],
        p=p,
        n_abnormal=val_pools[0].shape[0],
        n_normal=val_pools[1].shape[0],
        max_study_hour=_VALIDATION_STUDY_HOURS,
        rng=rng_val,
    )
    validation = _check_validation(
        net, config, arrays["validation"], y["validation"], link_val, val_pools
    )
    image_branch: dict[str, Any] = {
        "fixture": True,
        "clinical_evidence": "none: the linkage of images to stays is synthetic",
        "rule": FIXTURE_RULE,
        "abnormal_probability": p,
        "trained_parameters": list(BRANCH_PARAMETERS),
        "frozen": "every other parameter and buffer of every member (image_out.bias "
        "included) and the ensemble's calibration",
        "frozen_state_sha256": frozen_before,
        "input_checkpoint_sha256": checkpoint_sha256,
        "imaging_checkpoint": str(settings.imaging_checkpoint),
        "imaging_checkpoint_sha256": _file_sha256(settings.imaging_checkpoint),
        "xray_path": str(settings.xray_path),
        "xray_sha256": _file_sha256(settings.xray_path),
        "train": {
            "stays": len(arrays["train"]),
            "deaths": int(y["train"].sum()),
            "abnormal_studies": int(link_train.abnormal.sum()),
            "windows": int(stay_index.size),
            "study_hours": [0.0, _TRAIN_STUDY_HOURS],
            "xrays": "PneumoniaMNIST training part of the imaging model "
            f"({train_pools[0].shape[0]} pneumonia, {train_pools[1].shape[0]} normal)",
        },
        "validation_check": {
            **validation,
            "study_hours": [0.0, _VALIDATION_STUDY_HOURS],
            "xrays": "PneumoniaMNIST official validation split "
            f"({val_pools[0].shape[0]} pneumonia, {val_pools[1].shape[0]} normal)",
        },
        "members": members,
        "settings": settings.model_dump(mode="json"),
        "code_version": code_version(IMAGE_BRANCH_SOURCES),
    }
    elapsed = round(time.monotonic() - started, 1)
    image_branch["seconds"] = elapsed
    out_meta = {**meta, "image_branch": image_branch}
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": out_meta}, settings.output)
    return ImageBranchResult(checkpoint=settings.output, metrics=image_branch, seconds=elapsed)
