"""Export of the step deterioration model as the Triton model ``deterioration_step``.

Writes, under ``<repo>/deterioration_step/``:

* ``config.pbtxt``: the serving contract (:func:`tensor_specs`, :func:`render_config`),
  with the scheduling part every served model shares
  (:func:`models.export.render_serving`: dynamic batching with a short queue delay, a
  ``default_queue_policy`` that REJECTs on timeout, one torch thread), with two CPU
  instances like ``deterioration``.
* ``<version>/model.pt``: :class:`models.step_network.StepModule` in TorchScript.
* ``<version>/model.py``: a copy of :mod:`models.triton_model` (the shared wrapper).
* ``model_card.json`` / ``model_card.md``: data hash, split, seeds, settings, metrics,
  the state layout, the contract, parity gap and file hash.

Before writing, the reloaded TorchScript is compared with the eager ensemble
(:meth:`models.step_network.StepEnsemble.forward`) with and without images; a gap above
:data:`PARITY_TOLERANCE` raises :class:`vigil.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Final, Literal

import torch

from models.export import SCORING_INSTANCE_COUNT, TensorSpec, render_serving
from models.network import NetConfig
from models.step_network import StepEnsemble, StepModule
from models.step_train import STEP_TRAINING_SOURCES, load_step_checkpoint
from models.train import code_version
from streams.core.features import SERIES_CODES, STATIC_FEATURES
from streams.core.step_features import BINS_PER_REQUEST
from vigil.errors import ModelError

__all__ = [
    "MAX_BATCH_SIZE",
    "MODEL_NAME",
    "PARITY_TOLERANCE",
    "STEP_EXPORT_SOURCES",
    "StepExportResult",
    "example_step_inputs",
    "export_step",
    "render_config",
    "script_step",
    "tensor_specs",
]

MODEL_NAME: Final[str] = "deterioration_step"
PARITY_TOLERANCE: Final[float] = 1e-5
MAX_BATCH_SIZE: Final[int] = 1024
"""Rows per Triton execution (dynamic batching merges requests up to it)."""
STEP_EXPORT_SOURCES: Final[tuple[str, ...]] = (
    *STEP_TRAINING_SOURCES,
    "models/step_export.py",
    "models/triton_model.py",
)
_TRITON_MODEL_SOURCE: Final[Path] = Path(__file__).with_name("triton_model.py")


class StepExportResult:
    """Paths written by :func:`export_step` and the measured parity gap."""

    def __init__(self, config: Path, model: Path, model_card: Path, max_abs_diff: float) -> None:
        self.config = config
        self.model = model
        self.model_card = model_card
        self.max_abs_diff = max_abs_diff


def tensor_specs(
    config: NetConfig, state_width: int, length: int = BINS_PER_REQUEST
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of ``deterioration_step`` in forward order (dims without batch)."""
    p, s, k, e = config.n_series, config.n_statics, config.max_images, config.image_dim
    fp32 = "TYPE_FP32"
    inputs = (
        TensorSpec("state", fp32, (state_width,)),
        TensorSpec("bins_values", fp32, (length, p)),
        TensorSpec("bins_mask", fp32, (length, p)),
        TensorSpec("bins_delta_hours", fp32, (length, p)),
        TensorSpec("bins_valid", fp32, (length,)),
        TensorSpec("commit_bins", fp32, (1,)),
        TensorSpec("statics", fp32, (s,)),
        TensorSpec("static_mask", fp32, (s,)),
        TensorSpec("image_embeddings", fp32, (k, e)),
        TensorSpec("image_age_hours", fp32, (k,)),
        TensorSpec("image_mask", fp32, (k,)),
    )
    outputs = (
        TensorSpec("risk", fp32, (1,)),
        TensorSpec("state_out", fp32, (state_width,)),
        TensorSpec("fused", fp32, (config.fused,)),
    )
    return inputs, outputs


def render_config(
    config: NetConfig,
    state_width: int,
    *,
    max_batch_size: int = MAX_BATCH_SIZE,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
    instance_count: int = SCORING_INSTANCE_COUNT,
) -> str:
    """The ``config.pbtxt`` text of ``deterioration_step``: called for every score like
    ``deterioration``, so it gets the same :data:`~models.export.SCORING_INSTANCE_COUNT`
    instances (one instance with a queue-policy timeout stalls ~500 ms at times in
    Triton 2.51; BENCHMARKS.md, issue 16 part 1)."""
    inputs, outputs = tensor_specs(config, state_width)

    def block(kind: str, specs: tuple[TensorSpec, ...]) -> str:
        items = [
            f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n'
            f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]\n  }}"
            for spec in specs
        ]
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    return (
        f'name: "{MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        + block("input", inputs)
        + block("output", outputs)
        + render_serving(instance_kind=instance_kind, instance_count=instance_count)
    )


def script_step(net: StepEnsemble) -> torch.jit.ScriptModule:
    """TorchScript of :class:`StepModule` built from ``net`` (eval mode)."""
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        scripted: torch.jit.ScriptModule = torch.jit.script(StepModule(net).eval())
    return scripted


def example_step_inputs(
    net: StepEnsemble, *, batch: int = 6, images: bool = True, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Plausible random inputs in forward order: a state reached by real steps from
    zeros, 0-8 valid bins per row, commits from 0 to all, and (optionally) images."""
    gen = torch.Generator().manual_seed(seed)
    config, length, p = net.config, BINS_PER_REQUEST, net.config.n_series

    def bins() -> tuple[torch.Tensor, ...]:
        mask = (torch.rand(batch, length, p, generator=gen) < 0.3).float()
        values = (torch.rand(batch, length, p, generator=gen) * 100.0) * mask
        delta = torch.rand(batch, length, p, generator=gen) * 48.0
        return values, mask, delta

    statics = torch.rand(batch, config.n_statics, generator=gen) * 80.0
    static_mask = (torch.rand(batch, config.n_statics, generator=gen) < 0.8).float()
    no_images = (
        torch.zeros(batch, config.max_images, config.image_dim),
        torch.zeros(batch, config.max_images),
        torch.zeros(batch, config.max_images),
    )
    # A state from a full request of 8 bins, every one committed.
    with torch.no_grad():
        _, state, _ = net(
            torch.zeros(batch, net.layout.width),
            *bins(),
            torch.ones(batch, length),
            torch.full((batch, 1), float(length)),
            statics,
            static_mask,
            *no_images,
        )
    n_valid = torch.arange(batch) % (length + 1)
    valid = (torch.arange(length).unsqueeze(0) < n_valid.unsqueeze(1)).float()
    commit = torch.clamp(n_valid - 1, min=0).float().unsqueeze(1)
    embeddings = torch.randn(batch, config.max_images, config.image_dim, generator=gen)
    ages = torch.rand(batch, config.max_images, generator=gen) * 24.0
    image_mask = torch.zeros(batch, config.max_images)
    if images:
        image_mask[1:, : max(1, config.max_images // 2)] = 1.0
    return (state, *bins(), valid, commit, statics, static_mask, embeddings, ages, image_mask)


def _parity(net: StepEnsemble, reloaded: torch.jit.ScriptModule) -> float:
    worst = 0.0
    for images in (False, True):
        inputs = example_step_inputs(net, images=images)
        with torch.no_grad():
            expected = net(*inputs)
            served = reloaded(*inputs)
        for a, b in zip(expected, served, strict=True):
            worst = max(worst, float((a - b).abs().max().item()))
    return worst


def scripted_bytes(net: StepEnsemble) -> tuple[bytes, float]:
    """Serialised TorchScript and its parity gap with the eager ensemble.

    Raises:
        ModelError: The gap exceeds :data:`PARITY_TOLERANCE`.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(script_step(net), buffer)
        buffer.seek(0)
        reloaded = torch.jit.load(buffer)  # type: ignore[no-untyped-call]
    gap = _parity(net, reloaded)
    if gap > PARITY_TOLERANCE:
        raise ModelError(
            f"export parity failed for {MODEL_NAME}: max |eager - TorchScript| = {gap:.3g}"
        )
    return buffer.getvalue(), gap


def _fmt(entry: dict[str, Any]) -> str:
    low, high = entry["auroc_ci"]
    return (
        f"{entry['auroc']:.3f} [{low:.3f}, {high:.3f}] | {entry['auprc']:.3f} | {entry['ece']:.3f}"
    )


def _model_card_markdown(card: dict[str, Any]) -> str:
    metrics = card["metrics"]
    rows = []
    for part in ("validation", "test"):
        for hour in ("24h", "48h"):
            entry = metrics[part][hour]
            for name, label in (
                ("step", "deterioration_step"),
                ("window", "deterioration (window, shipped)"),
                ("logistic_regression", "logistic regression (window summaries)"),
            ):
                if name in entry:
                    rows.append(f"| {part} | {hour} | {label} | {_fmt(entry[name])} |")
    layout = card["state_layout"]
    served = card["served_model"]
    return (
        f"# Model card: {MODEL_NAME} v{card['version']}\n\n"
        "In-hospital mortality risk, advanced one hour bin at a time from a stored state "
        "(PhysioNet/CinC Challenge 2012, set A; ODC-By 1.0; Silva et al. 2012; "
        "Goldberger et al. 2000). Decision support only; see docs/deterioration.md "
        "(Step model).\n\n"
        f"- Members: {card['members']} (seeds {card['settings']['seed']} + i); "
        f"hidden {card['net_config']['hidden']}; state width {layout['width']} floats "
        f"({layout['width'] * 4} bytes): {', '.join(layout['order'])}\n"
        f"- Bins per request L = {served['bins_per_request']}; max_batch_size "
        f"{served['max_batch_size']}; `model.pt` SHA-256 `{served['model_pt_sha256']}`; "
        f"export parity {served['export_parity_max_abs_diff']:.2g}\n"
        f"- Data SHA-256: `{card['data_sha256']}`\n"
        f"- Split: {card['split_method']}\n"
        f"- Code at export: `{card['code_version']['source_sha256']}`, git "
        f"`{card['code_version']['git_commit']}`; at training: "
        f"`{card['training_code_version']['source_sha256']}`\n"
        f"- Packages: {card['packages']}\n"
        f"- Training time: {card['train_seconds']} s\n"
        "- Image branch: untrained (`image_out` weight zero): images do not change the "
        "risk.\n\n"
        "| Split | Hour | Score | AUROC [95 % CI] | AUPRC | ECE |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )


def export_step(
    checkpoint: Path,
    repo_dir: Path = Path("triton_repo"),
    *,
    version: int = 1,
    max_batch_size: int = MAX_BATCH_SIZE,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
) -> StepExportResult:
    """Writes ``<repo_dir>/deterioration_step`` for a trained step checkpoint.

    Raises:
        ModelError: An unreadable checkpoint, a bad argument, or a parity failure.
    """
    if version < 1 or max_batch_size < 1:
        raise ModelError("version and max_batch_size must be positive")
    net, meta = load_step_checkpoint(checkpoint)
    blob, gap = scripted_bytes(net)
    model_dir = repo_dir / MODEL_NAME
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    model_path = version_dir / "model.pt"
    model_path.write_bytes(blob)
    shutil.copyfile(_TRITON_MODEL_SOURCE, version_dir / "model.py")
    config_path = model_dir / "config.pbtxt"
    config_path.write_text(
        render_config(
            net.config,
            net.layout.width,
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
        )
    )
    inputs, outputs = tensor_specs(net.config, net.layout.width)
    card: dict[str, Any] = {
        **meta,
        "name": MODEL_NAME,
        "version": version,
        "task": "in-hospital death (Outcomes-a.txt), scored at any time from a stored "
        "state advanced one hour bin at a time",
        "series_codes": list(SERIES_CODES),
        "static_features": list(STATIC_FEATURES),
        "served_model": {
            "inputs": [{"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in inputs],
            "outputs": [
                {"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in outputs
            ],
            "bins_per_request": BINS_PER_REQUEST,
            "max_batch_size": max_batch_size,
            "export_parity_max_abs_diff": gap,
            "model_pt_sha256": hashlib.sha256(blob).hexdigest(),
        },
        "training_code_version": meta["code_version"],
        "code_version": code_version(STEP_EXPORT_SOURCES),
    }
    card_path = model_dir / "model_card.json"
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (model_dir / "model_card.md").write_text(_model_card_markdown(card))
    return StepExportResult(config_path, model_path, card_path, gap)


def main() -> None:
    """``python -m models.step_export [CHECKPOINT]``: export to ``triton_repo/``."""
    import sys

    checkpoint = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models/weights/deterioration_step.pt")
    )
    result = export_step(checkpoint)
    sys.stdout.write(f"wrote {result.config}, {result.model}; parity {result.max_abs_diff:.3g}\n")


if __name__ == "__main__":
    main()
