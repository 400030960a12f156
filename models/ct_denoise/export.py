"""Export of the CT denoiser to ``triton_repo/ct_denoise/`` (``vigil export ct-denoise``).

Contract (``config.pbtxt``; dims exclude the batch, ``max_batch_size`` 16):

* input ``image`` TYPE_FP32 ``[1, -1, -1]``: a CT image windowed to ``[0, 1]`` as the MSD
  patches are (2 mm pixels; 48 x 48 and 64 x 64 tested, any side 8-1024 accepted);
* input ``dose_fraction`` TYPE_FP32 ``[1]``: the acquisition's dose fraction, ``(0, 1]``;
* output ``denoised`` TYPE_FP32 ``[1, -1, -1]``, the shape of ``image``.

Written through :func:`models.common.export.export_family` (config, ``model.pt``, model
card), then ``model.py`` is replaced by the denoiser's own wrapper
(:mod:`models.ct_denoise.triton_model`, variable image sizes). TorchScript-vs-eager
parity is checked at 48, 64 and 50 pixels before anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

import torch

from models.common import triton_config
from models.common.checkpoints import checkpoint_errors, read_checkpoint
from models.common.export import COMMON_EXPORT_SOURCES, ExportResult, ServedModel, export_family
from models.common.provenance import code_version
from models.common.torchscript import max_abs_gap, script, scripted_bytes
from models.common.triton_config import InstanceKind, TensorSpec
from models.ct_denoise.network import (
    SELF_ENSEMBLE_TURNS,
    DenoiseConfig,
    DenoiseNet,
    ServedDenoiser,
)
from models.ct_denoise.run import CT_DENOISE_SOURCES
from vigil.errors import ModelError

__all__ = [
    "CT_DENOISE_MODEL_NAME",
    "CT_TRITON_MODEL_SOURCE",
    "ct_denoise_tensor_specs",
    "example_inputs",
    "export_ct_denoise",
    "load_denoiser",
    "render_config",
]

CT_DENOISE_MODEL_NAME: Final[str] = "ct_denoise"
CT_TRITON_MODEL_SOURCE: Final[Path] = Path(__file__).with_name("triton_model.py")
_EXPORT_SOURCES: Final[tuple[str, ...]] = (
    *CT_DENOISE_SOURCES,
    "models/ct_denoise/export.py",
    "models/ct_denoise/triton_model.py",
    *COMMON_EXPORT_SOURCES,
)


def ct_denoise_tensor_specs() -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of ``ct_denoise`` in forward order."""
    fp32 = "TYPE_FP32"
    return (
        TensorSpec("image", fp32, (1, -1, -1)),
        TensorSpec("dose_fraction", fp32, (1,)),
    ), (TensorSpec("denoised", fp32, (1, -1, -1)),)


def render_config(max_batch_size: int = 16, instance_kind: InstanceKind = "KIND_CPU") -> str:
    """The ``config.pbtxt`` text of ``ct_denoise``."""
    inputs, outputs = ct_denoise_tensor_specs()
    return triton_config.render_config(
        CT_DENOISE_MODEL_NAME,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
    )


def load_denoiser(path: Path) -> tuple[DenoiseNet, dict[str, Any]]:
    """The eval-mode network and metadata of a checkpoint.

    Raises:
        ModelError: Missing or not a denoiser checkpoint.
    """
    with checkpoint_errors(path, "ct_denoise checkpoint"):
        payload = read_checkpoint(path)
        meta: dict[str, Any] = payload["meta"]
        net = DenoiseNet(DenoiseConfig(**meta["config"]))
        net.load_state_dict(payload["state_dict"])
    net.eval()
    return net, meta


def example_inputs(side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three ``[3,1,side,side]`` images (noise, a disc, zeros) and doses ``[3,1]``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 1, side, side, generator=gen)
    grid = torch.arange(side, dtype=torch.float32) - side / 2
    images[1, 0] = 0.2 + 0.6 * ((grid[:, None] ** 2 + grid[None, :] ** 2) < (side / 5) ** 2)
    images[2] = 0.0
    return images, torch.tensor([[0.1], [0.25], [1.0]])


def _served(net: DenoiseNet, max_batch_size: int, instance_kind: InstanceKind) -> ServedModel:
    served = ServedDenoiser(net).eval()

    def parity(reloaded: torch.jit.ScriptModule) -> float:
        with torch.no_grad():
            return max(
                max_abs_gap(served(*example_inputs(side)), reloaded(*example_inputs(side)))
                for side in (48, 64, 50)
            )

    blob, gap = scripted_bytes(CT_DENOISE_MODEL_NAME, script(served), parity)
    inputs, outputs = ct_denoise_tensor_specs()
    return ServedModel(
        name=CT_DENOISE_MODEL_NAME,
        blob=blob,
        inputs=inputs,
        outputs=outputs,
        config=render_config(max_batch_size, instance_kind),
        max_batch_size=max_batch_size,
        parity_gap=gap,
    )


def _markdown(card: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {row['dose']:g} | {row['input_psnr_db']:.2f} | {row['denoised_psnr_db']:.2f} | "
        f"{row['denoised_ssim']:.3f} |"
        for row in card.get("test_metrics", [])
    )
    return (
        f"# Model card: {CT_DENOISE_MODEL_NAME} v{card['version']}\n\n"
        "Dose-conditioned CT denoiser trained on **simulated** low-dose acquisitions of the "
        "MSD Task06 lung CT patches (CC BY-SA 4.0; Antonelli et al. 2022). Research use, "
        "decision support only; see docs/imaging-dose-registration.md.\n\n"
        f"- Loss: `{card['loss']}`; configuration {card['config']}; best epoch "
        f"{card['best_epoch']} of {card['epochs']}; training {card['train_seconds']} s\n"
        f"- Served as the mean over {card['self_ensemble_turns']} quarter turns of the image "
        "(self-ensemble, chosen on the validation patients)\n"
        f"- Split: {card['split_method']}; patients {card['split']}\n"
        f"- Simulation constants: {card['simulation']}\n"
        f"- Data SHA-256: {card['data_sha256']}; `model.pt` SHA-256 `{card['model_pt_sha256']}`\n"
        f"- Code at export `{card['code_version']['source_sha256']}`, git "
        f"`{card['code_version']['git_commit']}`\n\n"
        "## Held-out test patients (PSNR/SSIM against the real patch)\n\n"
        "| Dose | Input PSNR (dB) | Denoised PSNR (dB) | Denoised SSIM |\n"
        "| --- | --- | --- | --- |\n" + rows + "\n"
    )


def export_ct_denoise(
    checkpoint: Path,
    repo_dir: Path = Path("triton_repo"),
    *,
    version: int = 1,
    max_batch_size: int = 16,
    instance_kind: InstanceKind = "KIND_CPU",
    test_metrics: list[dict[str, float]] | None = None,
) -> ExportResult:
    """Writes ``<repo_dir>/ct_denoise/`` for a trained checkpoint.

    Raises:
        ModelError: Unreadable checkpoint, bad argument or parity failure.
    """
    if version < 1 or max_batch_size < 1:
        raise ModelError("version and max_batch_size must be positive")
    net, meta = load_denoiser(checkpoint)
    served = _served(net, max_batch_size, instance_kind)
    card: dict[str, Any] = {
        **{k: v for k, v in meta.items() if k != "history"},
        "history": meta.get("history", []),
        "name": CT_DENOISE_MODEL_NAME,
        "version": version,
        **served.card_entry(),
        "training_code_version": meta["code_version"],
        "code_version": code_version(_EXPORT_SOURCES),
        "self_ensemble_turns": SELF_ENSEMBLE_TURNS,
        "test_metrics": test_metrics or [],
    }
    result = export_family(
        repo_dir,
        version,
        [served],
        card_dir=CT_DENOISE_MODEL_NAME,
        card=card,
        markdown=_markdown(card),
    )
    shutil.copyfile(CT_TRITON_MODEL_SOURCE, result.model.parent / "model.py")
    return result
