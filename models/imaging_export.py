"""Export of the imaging network to ``triton_repo/imaging/`` (``vigil export imaging``).

The served model takes ``image [1,S,S]`` (TYPE_FP32, the output of
:func:`streams.core.imaging_ops.preprocess_image`, ``S = 64``) and returns, in this
order (all TYPE_FP32):

* ``mask_probability [1,S,S]``: per-pixel lesion probability;
* ``class_probability [1]``: abnormality present (tumour on CT, pneumonia on X-ray);
* ``embedding [E]``: the deterioration model's ``image_embeddings`` slot (``E = 64``);
* ``cam [1,S,S]``: class activation map in ``[0, 1]``.

Written files:

* ``imaging/config.pbtxt``: the contract (:func:`render_config`), with the lesion
  threshold (operating point chosen on validation patients) as the ``mask_threshold``
  parameter, and the queue policy and threads of
  :func:`models.export.render_serving`.
* ``imaging/<version>/model.pt``: TorchScript :class:`models.imaging_network.ImagingNet`.
* ``imaging/<version>/model.py``: a copy of :mod:`models.triton_model` (the wrapper shared
  with the deterioration models; it reads names and dtypes from the config).
* ``imaging/model_card.json`` and ``model_card.md``.

Before writing, the reloaded TorchScript module is compared with the eager network; a
gap above :data:`PARITY_TOLERANCE` raises :class:`~vigil.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch

from models.export import TensorSpec, render_serving
from models.imaging_network import ImagingConfig, ImagingNet
from models.imaging_train import IMAGING_SOURCES
from models.train import code_version
from vigil.errors import ModelError

__all__ = [
    "IMAGING_EXPORT_SOURCES",
    "IMAGING_MODEL_NAME",
    "PARITY_TOLERANCE",
    "ImagingExportResult",
    "example_images",
    "export_imaging",
    "imaging_tensor_specs",
    "load_imaging_checkpoint",
    "render_config",
]

IMAGING_MODEL_NAME: Final[str] = "imaging"
PARITY_TOLERANCE: Final[float] = 1e-5
IMAGING_EXPORT_SOURCES: Final[tuple[str, ...]] = (
    *IMAGING_SOURCES,
    "models/imaging_export.py",
    "models/triton_model.py",
)
"""Files hashed into the model card's ``code_version`` at export time."""
_TRITON_MODEL_SOURCE: Final[Path] = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True, slots=True)
class ImagingExportResult:
    """Paths written by :func:`export_imaging` and the measured parity gap."""

    config: Path
    model: Path
    model_card: Path
    max_abs_diff: float


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
    max_batch_size: int = 16,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
) -> str:
    """The ``config.pbtxt`` text of ``imaging``."""
    inputs, outputs = imaging_tensor_specs(config)

    def block(kind: str, specs: tuple[TensorSpec, ...]) -> str:
        items = [
            f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n'
            f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]\n  }}"
            for spec in specs
        ]
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    return (
        f'name: "{IMAGING_MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        + block("input", inputs)
        + block("output", outputs)
        + render_serving(instance_kind=instance_kind)
        + 'parameters {\n  key: "mask_threshold"\n'
        + f'  value: {{ string_value: "{mask_threshold!r}" }}\n}}\n'
    )


def load_imaging_checkpoint(path: Path) -> tuple[ImagingNet, dict[str, Any]]:
    """Rebuilds the eager network (eval mode) from a checkpoint; returns it and its metadata.

    Raises:
        ModelError: The file is missing or not an imaging checkpoint.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta: dict[str, Any] = payload["meta"]
        net = ImagingNet(ImagingConfig(**meta["config"]))
        net.load_state_dict(payload["state_dict"])
    except (OSError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot load imaging checkpoint {path}: {exc}") from exc
    net.eval()
    return net, meta


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


def _scripted_bytes(net: ImagingNet, config: ImagingConfig) -> tuple[bytes, float]:
    """Serialised TorchScript and its parity gap with the eager network."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        torch.jit.save(torch.jit.script(net), buffer)
        buffer.seek(0)
        reloaded = torch.jit.load(buffer)  # type: ignore[no-untyped-call]
    images = example_images(config, batch=4)
    with torch.no_grad():
        expected, served = net(images), reloaded(images)
    gap = max(float((a - b).abs().max()) for a, b in zip(expected, served, strict=True))
    if gap > PARITY_TOLERANCE:
        raise ModelError(f"export parity failed for imaging: max |eager - TorchScript| = {gap:.3g}")
    return buffer.getvalue(), gap


def _scores_row(label: str, entry: dict[str, Any]) -> str:
    return (
        f"| {label} | {entry['threshold']:.2f} | {entry['dice']:.3f} | {entry['iou']:.3f} | "
        f"{entry['lesion_recall']:.3f} ({entry['lesions_found']}/{entry['lesions']}) | "
        f"{entry['false_positives_per_patch']:.2f} |"
    )


def _model_card_markdown(card: dict[str, Any]) -> str:
    metrics = card["metrics"]
    rows = "\n".join(
        _scores_row(f"{part} patients, {point}", metrics[part][key])
        for part in ("test", "validation")
        for point, key in (("operating point", "operating_point"), ("0.5", "at_0.5"))
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
        f"- Lesion threshold (`mask_threshold`): {card['threshold']} = highest threshold with "
        f"validation lesion recall >= {card['target_recall']}\n"
        f"- Split: {card['split_method']}; patients {card['split']}\n"
        f"- Configuration {card['config']}; best joint epoch {card['best_epoch']}; "
        f"pretraining epochs {card['settings']['pretrain_epochs']}\n"
        f"- Data SHA-256: {card['data_sha256']}\n"
        f"- Code at export: `{card['code_version']['source_sha256']}`, git "
        f"`{card['code_version']['git_commit']}`; at training "
        f"`{card['training_code_version']['source_sha256']}`\n"
        f"- Packages: {card['packages']}; training time {card['train_seconds']} s\n\n"
        "## Segmentation (native 48 x 48 masks; lesion = 8-connected component)\n\n"
        "| Set | Threshold | Dice | IoU | Lesion recall | False-positive components / patch |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + rows + "\n\n"
        "## Classification\n\n"
        f"- PneumoniaMNIST official validation split (never tuned on; the official test split "
        f"is not bundled): AUROC {metrics['pneumonia']['official_val_auroc']:.3f} "
        f"(n = {metrics['pneumonia']['official_val_n']})\n"
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
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
) -> ImagingExportResult:
    """Writes ``<repo_dir>/imaging/`` for a trained checkpoint.

    Args:
        checkpoint: Checkpoint written by :func:`models.imaging_train.train_imaging`.
        repo_dir: Triton model repository root.
        version: Model version folder (positive).
        max_batch_size: Triton's dynamic-batching limit.
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.

    Raises:
        ModelError: An unreadable checkpoint, a bad argument, or a parity failure.
    """
    if version < 1 or max_batch_size < 1:
        raise ModelError("version and max_batch_size must be positive")
    net, meta = load_imaging_checkpoint(checkpoint)
    config = ImagingConfig(**meta["config"])
    blob, gap = _scripted_bytes(net, config)
    model_dir = repo_dir / IMAGING_MODEL_NAME
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    model_path = version_dir / "model.pt"
    model_path.write_bytes(blob)
    shutil.copyfile(_TRITON_MODEL_SOURCE, version_dir / "model.py")
    config_path = model_dir / "config.pbtxt"
    config_path.write_text(
        render_config(
            config,
            mask_threshold=float(meta["threshold"]),
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
        )
    )
    inputs, outputs = imaging_tensor_specs(config)
    card: dict[str, Any] = {
        **meta,
        "name": IMAGING_MODEL_NAME,
        "version": version,
        "inputs": [{"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in inputs],
        "outputs": [{"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in outputs],
        "max_batch_size": max_batch_size,
        "export_parity_max_abs_diff": gap,
        "model_pt_sha256": hashlib.sha256(blob).hexdigest(),
        "training_code_version": meta["code_version"],
        "code_version": code_version(IMAGING_EXPORT_SOURCES),
    }
    card_path = model_dir / "model_card.json"
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (model_dir / "model_card.md").write_text(_model_card_markdown(card))
    return ImagingExportResult(
        config=config_path, model=model_path, model_card=card_path, max_abs_diff=gap
    )
