"""Export of the OOD detector to ``triton_repo/ood/`` (``vigil export ood``).

The served model takes the deterioration model's eight inputs (the worker can send the
same request to both) and returns, each ``[1]``: ``distance`` (TYPE_FP32, the combined
score: the larger of the two channels' distances divided by their thresholds, so its
threshold is 1), ``ood`` (TYPE_BOOL, either channel above its threshold),
``representation_distance``, ``input_distance``, ``input_threshold`` (TYPE_FP32, of the
window's hour bucket), ``representation_ood`` and ``input_ood`` (TYPE_BOOL, which channel
fired). Written files:

* ``ood/config.pbtxt``: the contract (:func:`render_config`), with the thresholds
  recorded as ``parameters``: ``threshold`` (``1.0``, of ``distance``),
  ``threshold_percentile``, ``representation_threshold``, ``input_hour_bucket_edges`` and
  ``input_thresholds`` (comma-separated, one per bucket), and the queue policy and
  threads of :func:`models.export.render_serving`. The detector re-runs the whole
  ensemble for its features, so an ``ood`` request costs what a ``deterioration`` one
  does (BENCHMARKS.md, issue 16).
* ``ood/<version>/model.pt``: TorchScript :class:`models.ood.OODDetector` (ensemble
  weights, both channels' whitening matrices, class centres and thresholds).
* ``ood/<version>/model.py``: a copy of :mod:`models.triton_model` (the same wrapper as
  the deterioration models; it reads names and dtypes from the config).
* ``ood/model_card.json`` and ``model_card.md``.

Before writing, the reloaded TorchScript module is compared with the eager detector; a
gap above :data:`PARITY_TOLERANCE` raises :class:`~vigil.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch

from models.export import (
    SCORING_INSTANCE_COUNT,
    TensorSpec,
    example_inputs,
    load_checkpoint,
    render_serving,
    tensor_specs,
)
from models.network import NetConfig
from models.ood import OUTPUT_NAMES, GaussianFit, OODDetector
from models.ood_input import InputChannel
from models.ood_train import OOD_SOURCES
from models.train import code_version
from vigil.errors import ModelError

__all__ = [
    "OOD_MODEL_NAME",
    "PARITY_TOLERANCE",
    "OODExportResult",
    "build_detector",
    "export_ood",
    "ood_tensor_specs",
    "render_config",
]

OOD_MODEL_NAME: Final[str] = "ood"
PARITY_TOLERANCE: Final[float] = 1e-4
"""Largest |eager - TorchScript| gap accepted on any float output (distances are of
order 1-100)."""
COMBINED_THRESHOLD: Final[float] = 1.0
"""Threshold of the served ``distance`` (each channel's distance over its threshold)."""
_BOOL_OUTPUTS: Final[frozenset[str]] = frozenset({"ood", "representation_ood", "input_ood"})
_TRITON_MODEL_SOURCE: Final[Path] = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True, slots=True)
class OODExportResult:
    """Paths written by :func:`export_ood` and the measured parity gap."""

    config: Path
    model: Path
    model_card: Path
    max_abs_diff: float


def ood_tensor_specs(config: NetConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs (those of ``deterioration``) and outputs of ``ood``, in forward order."""
    inputs, _ = tensor_specs(config)
    outputs = tuple(
        TensorSpec(name, "TYPE_BOOL" if name in _BOOL_OUTPUTS else "TYPE_FP32", (1,))
        for name in OUTPUT_NAMES
    )
    return inputs, outputs


def render_config(
    config: NetConfig,
    *,
    representation_threshold: float,
    input_edges: Sequence[float],
    input_thresholds: Sequence[float],
    percentile: float,
    max_batch_size: int = 64,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
    instance_count: int = SCORING_INSTANCE_COUNT,
) -> str:
    """The ``config.pbtxt`` text of ``ood``."""
    inputs, outputs = ood_tensor_specs(config)

    def block(kind: str, specs: tuple[TensorSpec, ...]) -> str:
        items = [
            f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n'
            f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]\n  }}"
            for spec in specs
        ]
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    def parameter(key: str, value: str) -> str:
        return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'

    return (
        f'name: "{OOD_MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        + block("input", inputs)
        + block("output", outputs)
        + render_serving(instance_kind=instance_kind, instance_count=instance_count)
        + parameter("threshold", repr(COMBINED_THRESHOLD))
        + parameter("threshold_percentile", repr(percentile))
        + parameter("representation_threshold", repr(representation_threshold))
        + parameter("input_hour_bucket_edges", ",".join(repr(float(e)) for e in input_edges))
        + parameter("input_thresholds", ",".join(repr(float(t)) for t in input_thresholds))
    )


def build_detector(checkpoint: Path, ood_checkpoint: Path) -> tuple[OODDetector, dict[str, Any]]:
    """The eager detector from the deterioration and OOD checkpoints; returns it and the
    OOD checkpoint's metadata.

    Raises:
        ModelError: A missing or unreadable file, or an OOD checkpoint fitted on another
            deterioration checkpoint.
    """
    net, _ = load_checkpoint(checkpoint)
    try:
        payload = torch.load(ood_checkpoint, map_location="cpu", weights_only=True)
        meta: dict[str, Any] = payload["meta"]
        fit = GaussianFit(
            classes=tuple(meta["classes"]),
            means=payload["means"].numpy(),
            covariance=payload["covariance"].numpy(),
            whitening=payload["whitening"].numpy(),
            ridge=float(meta["ridge"]["representation"]),
            counts=tuple(meta["counts"]),
        )
        arrays = {
            key: payload[f"input_{key}"].numpy()
            for key in ("edges", "centre", "scale", "whitening", "means", "thresholds")
        }
        representation_threshold = float(meta["representation_threshold"])
    except (OSError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot load OOD checkpoint {ood_checkpoint}: {exc}") from exc
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    if digest != meta["deterioration_checkpoint_sha256"]:
        raise ModelError(f"{ood_checkpoint} was fitted on another checkpoint than {checkpoint}")
    log_scaled: torch.Tensor = net.members[0].log_scaled  # type: ignore[assignment]
    channel = InputChannel(arrays, log_scaled)
    detector = OODDetector(net, fit, representation_threshold, channel).eval()
    return detector, meta


def _scripted(detector: OODDetector, config: NetConfig) -> tuple[bytes, float]:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        torch.jit.save(torch.jit.script(detector), buffer)
        buffer.seek(0)
        reloaded = torch.jit.load(buffer)  # type: ignore[no-untyped-call]
    gap = 0.0
    for images in (False, True):
        inputs = example_inputs(config, images=images)
        with torch.no_grad():
            eager, served = detector(*inputs), reloaded(*inputs)
        for name, a, b in zip(OUTPUT_NAMES, eager, served, strict=True):
            if name in _BOOL_OUTPUTS:
                if not torch.equal(a, b):
                    raise ModelError(f"export parity failed for ood: {name} differs")
            else:
                gap = max(gap, float((a - b).abs().max()))
    if gap > PARITY_TOLERANCE:
        raise ModelError(f"export parity failed for ood: max |eager - TorchScript| = {gap:.3g}")
    return buffer.getvalue(), gap


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _auc(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _card_markdown(card: dict[str, Any]) -> str:
    metrics = card["metrics"]
    rows = []
    for key, entry in {**metrics["shifts"], **metrics["left_out_icu_type"]}.items():
        c, r, i = entry["combined"], entry["representation"], entry["input"]
        rows.append(
            f"| {key} | {c['n_shifted']} | {_auc(c['auroc'])} | {_pct(c['flagged_fraction'])} "
            f"| {_auc(r['auroc'])} | {_auc(i['auroc'])} |"
        )
    edges = card["input_hour_bucket_edges"]
    buckets = ", ".join(
        f"≤{e:g} h: {t:.2f}" for e, t in zip(edges, card["input_thresholds"], strict=True)
    )
    val, test = metrics["validation"]["combined"], metrics["test"]["combined"]
    return (
        f"# Model card: {OOD_MODEL_NAME} v{card['version']}\n\n"
        "Out-of-distribution flag for the deterioration model's inputs, two Mahalanobis "
        "channels: the ensemble's concatenated fused vectors (representation), and window "
        "statistics per bucket of hours observed (input). A window is flagged when either "
        "channel exceeds its threshold. Decision support only; see docs/ood.md.\n\n"
        "- Inputs: those of `deterioration`; outputs `distance` (max of each channel's "
        "distance over its threshold; flagged above 1), `ood`, `representation_distance`, "
        "`input_distance`, `input_threshold`, `representation_ood`, `input_ood`\n"
        f"- Representation threshold: {card['representation_threshold']:.4f} "
        f"({card['percentile']}th percentile of validation distances at hours "
        f"{card['fit_hours']})\n"
        f"- Input thresholds ({card['percentile']}th percentile of each bucket's validation "
        f"distances, hours 1-48): {buckets}\n"
        f"- Fitted on the training split; split: {card['split_method']}\n"
        f"- In-distribution windows flagged (hours 1-48): validation "
        f"{_pct(val['flagged_fraction'])}, test {_pct(test['flagged_fraction'])}\n"
        f"- Deterioration checkpoint SHA-256: `{card['deterioration_checkpoint_sha256']}`\n"
        f"- `model.pt` SHA-256: `{card['model_pt_sha256']}`; parity "
        f"{card['export_parity_max_abs_diff']:.2e}\n"
        f"- Code at export: `{card['code_version']['source_sha256']}`\n\n"
        f"## OOD AUROC, held-out test split, hour {card['eval_hour']}\n\n"
        "In-distribution test windows against the shifted windows the shift changed.\n\n"
        "| Shift | Shifted windows | AUROC, served | Flagged | AUROC, representation only "
        "| AUROC, input only |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )


def export_ood(
    checkpoint: Path,
    ood_checkpoint: Path,
    repo_dir: Path = Path("triton_repo"),
    *,
    version: int = 1,
    max_batch_size: int = 64,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
) -> OODExportResult:
    """Writes ``<repo_dir>/ood/`` for a deterioration checkpoint and its OOD fit.

    Raises:
        ModelError: Unreadable checkpoints, a bad argument, or a parity failure.
    """
    if version < 1 or max_batch_size < 1:
        raise ModelError("version and max batch size must be positive")
    detector, meta = build_detector(checkpoint, ood_checkpoint)
    _, det_meta = load_checkpoint(checkpoint)
    config = NetConfig(**det_meta["net_config"])
    blob, gap = _scripted(detector, config)
    model_dir = repo_dir / OOD_MODEL_NAME
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.pt").write_bytes(blob)
    shutil.copyfile(_TRITON_MODEL_SOURCE, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(
        render_config(
            config,
            representation_threshold=float(meta["representation_threshold"]),
            input_edges=meta["input_hour_bucket_edges"],
            input_thresholds=meta["input_thresholds"],
            percentile=float(meta["percentile"]),
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
        )
    )
    inputs, outputs = ood_tensor_specs(config)
    card: dict[str, Any] = {
        **meta,
        "name": OOD_MODEL_NAME,
        "version": version,
        "inputs": [{"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in inputs],
        "outputs": [{"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in outputs],
        "max_batch_size": max_batch_size,
        "export_parity_max_abs_diff": gap,
        "model_pt_sha256": hashlib.sha256(blob).hexdigest(),
        "fit_code_version": meta["code_version"],
        "code_version": code_version(OOD_SOURCES),
        "whitening_sha256": hashlib.sha256(
            np.ascontiguousarray(detector.whitening.numpy()).tobytes()
        ).hexdigest(),
    }
    card_path = model_dir / "model_card.json"
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (model_dir / "model_card.md").write_text(_card_markdown(card))
    return OODExportResult(model_dir / "config.pbtxt", version_dir / "model.pt", card_path, gap)
