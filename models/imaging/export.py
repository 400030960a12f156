"""Export of the imaging network to ``triton_repo/imaging/`` (``vigil export imaging``).

The served model takes ``image [1,S,S]`` (TYPE_FP32, the output of
:func:`streams.core.imaging_ops.preprocess_image`, ``S = 64``) and returns, in this
order (all TYPE_FP32):

* ``mask_probability [1,S,S]``: per-pixel lesion probability;
* ``class_probability [1]``: abnormality present (tumour on CT, pneumonia on X-ray);
* ``embedding [E]``: the deterioration model's ``image_embeddings`` slot (``E = 64``);
* ``cam [1,S,S]``: class activation map in ``[0, 1]``.

Written through the common export path (:func:`models.common.export.export_family`):
``imaging/config.pbtxt`` (:func:`render_config`, with the lesion threshold, the operating
point chosen on validation patients, as the ``mask_threshold`` parameter),
``imaging/<version>/model.pt`` (TorchScript :class:`models.imaging.network.ImagingNet`),
the shared wrapper ``imaging/<version>/model.py``, and ``imaging/model_card.json`` and
``model_card.md``.

Before writing, the reloaded TorchScript module is compared with the eager network; a
gap above :data:`~models.common.torchscript.PARITY_TOLERANCE` raises
:class:`~vigil.errors.ModelError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import torch

from models.common import triton_config
from models.common.checkpoints import checkpoint_errors, read_checkpoint
from models.common.export import (
    COMMON_EXPORT_SOURCES,
    ExportResult,
    ServedModel,
    check_positive,
    export_family,
)
from models.common.provenance import code_version
from models.common.torchscript import max_abs_gap, script, scripted_bytes
from models.common.triton_config import InstanceKind, TensorSpec
from models.imaging.network import ImagingConfig, ImagingNet
from models.imaging.train import IMAGING_SOURCES

__all__ = [
    "IMAGING_EXPORT_SOURCES",
    "IMAGING_MODEL_NAME",
    "class_threshold_of",
    "example_images",
    "export_imaging",
    "imaging_tensor_specs",
    "load_imaging_checkpoint",
    "render_config",
]

IMAGING_MODEL_NAME: Final[str] = "imaging"
IMAGING_EXPORT_SOURCES: Final[tuple[str, ...]] = (
    *IMAGING_SOURCES,
    "models/imaging/export.py",
    *COMMON_EXPORT_SOURCES,
)
"""Files hashed into the model card's ``code_version`` at export time."""


def imaging_tensor_specs(
    config: ImagingConfig,
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of ``imaging``, in forward order (dims exclude the batch)."""
    side, fp32 = config.image_size, "TYPE_FP32"
    return (TensorSpec("image", fp32, (1, side, side)),), (
        TensorSpec("mask_probability", fp32, (1, side, side)),
        TensorSpec("class_probability", fp32, (1,)),
        TensorSpec("embedding", fp32, (config.embedding_dim,)),
        TensorSpec("cam", fp32, (1, side, side)),
    )


def render_config(
    config: ImagingConfig,
    *,
    mask_threshold: float,
    class_threshold: float | None = None,
    lesion_peak_threshold: float = 0.0,
    max_batch_size: int = 16,
    instance_kind: InstanceKind = "KIND_CPU",
) -> str:
    """The ``config.pbtxt`` text of ``imaging`` (``class_threshold``: the pneumonia
    operating point on the calibrated ``class_probability``, when the checkpoint has one;
    ``lesion_peak_threshold``: the peak a lesion component must reach, see
    :func:`streams.core.imaging_ops.lesion_mask`)."""
    inputs, outputs = imaging_tensor_specs(config)
    parameters = [
        ("mask_threshold", repr(mask_threshold)),
        ("lesion_peak_threshold", repr(lesion_peak_threshold)),
    ]
    if class_threshold is not None:
        parameters.append(("class_threshold", repr(class_threshold)))
    return triton_config.render_config(
        IMAGING_MODEL_NAME,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
        parameters=parameters,
    )


def load_imaging_checkpoint(path: Path) -> tuple[ImagingNet, dict[str, Any]]:
    """Rebuilds the eager network (eval mode) from a checkpoint; returns it and its metadata.

    Raises:
        ModelError: The file is missing or not an imaging checkpoint.
    """
    with checkpoint_errors(path, "imaging checkpoint"):
        payload = read_checkpoint(path)
        meta: dict[str, Any] = payload["meta"]
        net = ImagingNet(ImagingConfig(**meta["config"]))
        net.load_state_dict(payload["state_dict"])
    net.eval()
    return net, meta


def class_threshold_of(meta: dict[str, Any]) -> float | None:
    """The checkpoint's pneumonia operating point (None for checkpoints before issue 17)."""
    value = meta.get("class_threshold")
    return None if value is None else float(value)


def example_images(config: ImagingConfig, *, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """``[batch,1,S,S]`` inputs for parity checks: noise, a bright disc, and zeros."""
    gen = torch.Generator().manual_seed(seed)
    side = config.image_size
    images = torch.rand(batch, 1, side, side, generator=gen)
    grid = torch.arange(side, dtype=torch.float32) - side / 2
    disc = ((grid[:, None] ** 2 + grid[None, :] ** 2) < (side / 6) ** 2).float()
    if batch > 1:
        images[1, 0] = 0.3 + 0.5 * disc
    if batch > 2:
        images[2] = 0.0
    return images


def _served(
    net: ImagingNet,
    config: ImagingConfig,
    *,
    mask_threshold: float,
    class_threshold: float | None,
    lesion_peak_threshold: float,
    max_batch_size: int,
    instance_kind: InstanceKind,
) -> ServedModel:
    """The network scripted and checked against the eager one."""
    images = example_images(config, batch=4)

    def parity(reloaded: torch.jit.ScriptModule) -> float:
        with torch.no_grad():
            return max_abs_gap(net(images), reloaded(images))

    blob, gap = scripted_bytes(IMAGING_MODEL_NAME, script(net), parity)
    inputs, outputs = imaging_tensor_specs(config)
    return ServedModel(
        name=IMAGING_MODEL_NAME,
        blob=blob,
        inputs=inputs,
        outputs=outputs,
        config=render_config(
            config,
            mask_threshold=mask_threshold,
            class_threshold=class_threshold,
            lesion_peak_threshold=lesion_peak_threshold,
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
        ),
        max_batch_size=max_batch_size,
        parity_gap=gap,
    )


def _scores_row(label: str, entry: dict[str, Any]) -> str:
    return (
        f"| {label} | {entry['threshold']:.2f} | {entry['dice']:.3f} | {entry['iou']:.3f} | "
        f"{entry['lesion_recall']:.3f} ({entry['lesions_found']}/{entry['lesions']}) | "
        f"{entry['large_lesion_recall']:.3f} "
        f"({entry['large_lesions_found']}/{entry['large_lesions']}) | "
        f"{entry['false_positives_per_patch']:.2f} |"
    )


def _served_mask_text(card: dict[str, Any]) -> str:
    if card["config"].get("flip_average"):
        return "the mean over the image and its left-right mirror (two passes; `flip_average`)"
    return "the image alone"


def _model_card_markdown(card: dict[str, Any]) -> str:
    metrics = card["metrics"]
    rows = "\n".join(
        _scores_row(f"{part} patients, {point}", metrics[part][key])
        for part in ("test", "validation")
        for point, key in (
            ("operating point", "operating_point"),
            ("operating point, every component kept", "operating_point_no_peak_filter"),
            ("0.5", "at_0.5"),
        )
        if key in metrics[part]
    )
    outputs = ", ".join(f"`{o['name']} {list(o['dims'])}`" for o in card["outputs"])
    return (
        f"# Model card: {IMAGING_MODEL_NAME} v{card['version']}\n\n"
        "Multi-task U-Net: lung-tumour segmentation (MSD Task06 Lung CT patches, CC BY-SA 4.0; "
        "Antonelli et al. 2022), abnormality classification (tumour on CT, pneumonia on "
        "PneumoniaMNIST, CC BY 4.0; Yang et al. 2023, Kermany et al. 2018), a 64-d "
        "embedding for the deterioration model and a CAM heatmap. Research data, decision "
        "support only; see docs/imaging.md.\n\n"
        f"- Input `image [1, {card['config']['image_size']}, {card['config']['image_size']}]` "
        f"FP32 (streams.core.imaging_ops.preprocess_image); outputs {outputs}; max_batch_size "
        f"{card['max_batch_size']}; `model.pt` SHA-256 `{card['model_pt_sha256']}`\n"
        f"- Lesion threshold (`mask_threshold`): {card['threshold']}, chosen in "
        f"[{card['settings'].get('min_threshold', 0.01)}, "
        f"{card['settings'].get('max_threshold', 0.95)}]: the middle of the "
        f"thresholds with validation lesion recall >= {card['target_recall']} (or the best "
        f"recall reached) and at most {card.get('max_false_positives_per_patch')} "
        "false-positive components per patch (when no threshold meets both, the middle of "
        "those reaching the recall)\n"
        f"- Lesion peak threshold (`lesion_peak_threshold`): "
        f"{card.get('lesion_peak_threshold', 0.0)}; a component at `mask_threshold` is a "
        "lesion only when its highest probability reaches it (set on the validation "
        "patients of the four cross-validation folds; docs/imaging.md)\n"
        f"- Served `mask_probability`: {_served_mask_text(card)}; the other outputs come "
        "from the image alone\n"
        f"- Pneumonia threshold (`class_threshold`): {card.get('class_threshold')}, the "
        f"highest with sensitivity >= {card.get('target_sensitivity')} on the held-back "
        f"X-rays; `class_probability` is Platt-calibrated there "
        f"(scale, offset {card.get('calibration')})\n"
        f"- Split: {card['split_method']}; patients {card['split']}\n"
        f"- Configuration {card['config']}; best joint epoch {card['best_epoch']}; "
        f"pretraining epochs {card['settings']['pretrain_epochs']}\n"
        f"- Data SHA-256: {card['data_sha256']}\n"
        f"- Code at export: `{card['code_version']['source_sha256']}`, git "
        f"`{card['code_version']['git_commit']}`; at training "
        f"`{card['training_code_version']['source_sha256']}`\n"
        f"- Packages: {card['packages']}; training time {card['train_seconds']} s\n\n"
        "## Segmentation (native 48 x 48 masks; lesion = 8-connected component)\n\n"
        "| Set | Threshold | Dice | IoU | Lesion recall | Lesion recall, >= 2 px | "
        "False-positive components / patch |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + rows + "\n\n"
        "## Classification\n\n"
        f"- PneumoniaMNIST official validation split (never tuned on; the official test split "
        f"is not bundled): AUROC {metrics['pneumonia']['official_val_auroc']:.3f} "
        f"(n = {metrics['pneumonia']['official_val_n']}); at `class_threshold`: sensitivity "
        f"{metrics['pneumonia'].get('official_val_sensitivity')}, specificity "
        f"{metrics['pneumonia'].get('official_val_specificity')}\n"
        f"- Held-back X-rays (threshold and calibration chosen here): AUROC "
        f"{metrics['pneumonia']['tune_auroc']}, sensitivity "
        f"{metrics['pneumonia'].get('tune_sensitivity')}, specificity "
        f"{metrics['pneumonia'].get('tune_specificity')}\n"
        f"- CT test patches, lesion present: AUROC {metrics['test']['lesion_present_auroc']} "
        f"({metrics['test']['patches_with_lesion']} of {metrics['test']['patches']} with lesion)\n"
        f"- CAM pointing rate on CT test patches with lesion (CAM peak inside the tumour): "
        f"{metrics['test']['cam_pointing_rate']}\n"
    )


def export_imaging(
    checkpoint: Path,
    repo_dir: Path = Path("triton_repo"),
    *,
    version: int = 1,
    max_batch_size: int = 16,
    instance_kind: InstanceKind = "KIND_CPU",
) -> ExportResult:
    """Writes ``<repo_dir>/imaging/`` for a trained checkpoint.

    Args:
        checkpoint: Checkpoint written by :func:`models.imaging.train.train_imaging`.
        repo_dir: Triton model repository root.
        version: Model version folder (positive).
        max_batch_size: Triton's dynamic-batching limit.
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.

    Raises:
        ModelError: An unreadable checkpoint, a bad argument, or a parity failure.
    """
    check_positive(version, max_batch_size)
    net, meta = load_imaging_checkpoint(checkpoint)
    config = ImagingConfig(**meta["config"])
    served = _served(
        net,
        config,
        mask_threshold=float(meta["threshold"]),
        class_threshold=class_threshold_of(meta),
        lesion_peak_threshold=float(meta.get("lesion_peak_threshold", 0.0)),
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
    )
    card: dict[str, Any] = {
        **meta,
        "name": IMAGING_MODEL_NAME,
        "version": version,
        **served.card_entry(),
        "training_code_version": meta["code_version"],
        "code_version": code_version(IMAGING_EXPORT_SOURCES),
    }
    return export_family(
        repo_dir,
        version,
        [served],
        card_dir=IMAGING_MODEL_NAME,
        card=card,
        markdown=_model_card_markdown(card),
    )
