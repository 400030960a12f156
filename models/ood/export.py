"""Export of the OOD detector to ``triton_repo/ood/`` (``vigil export ood``).

The served model takes the deterioration model's eight inputs (the worker can send the
same request to both) and returns, each ``[1]``: ``distance`` (TYPE_FP32, the combined
score: the larger of the two channels' distances divided by their thresholds, so its
threshold is 1), ``ood`` (TYPE_BOOL, either channel above its threshold),
``representation_distance``, ``input_distance``, ``input_threshold`` (TYPE_FP32, of the
window's hour bucket), ``representation_ood`` and ``input_ood`` (TYPE_BOOL, which channel
fired). Written through the common export path
(:func:`models.common.export.export_family`):

* ``ood/config.pbtxt``: the contract (:func:`render_config`), with the thresholds
  recorded as ``parameters``: ``threshold`` (``1.0``, of ``distance``),
  ``threshold_percentile``, ``representation_threshold``, ``input_hour_bucket_edges`` and
  ``input_thresholds`` (comma-separated, one per bucket). The detector re-runs the whole
  ensemble for its features, so an ``ood`` request costs what a ``deterioration`` one
  does (BENCHMARKS.md, issue 16).
* ``ood/<version>/model.pt``: TorchScript :class:`models.ood.detector.OODDetector`
  (ensemble weights, both channels' whitening matrices, class centres and thresholds).
* ``ood/<version>/model.py``: the shared wrapper; ``ood/model_card.json`` and ``.md``.

Before writing, the reloaded TorchScript module is compared with the eager detector; a
gap above :data:`PARITY_TOLERANCE` raises :class:`~vigil.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
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
from models.common.torchscript import script, scripted_bytes
from models.common.triton_config import SCORING_INSTANCE_COUNT, InstanceKind, TensorSpec
from models.deterioration.export import example_inputs, load_checkpoint, tensor_specs
from models.deterioration.network import NetConfig
from models.ood.detector import OUTPUT_NAMES, GaussianFit, OODDetector
from models.ood.inputs import InputChannel
from models.ood.train import OOD_SOURCES
from vigil.errors import ModelError

__all__ = [
    "OOD_EXPORT_SOURCES",
    "OOD_MODEL_NAME",
    "PARITY_TOLERANCE",
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
OOD_EXPORT_SOURCES: Final[tuple[str, ...]] = (*OOD_SOURCES, *COMMON_EXPORT_SOURCES)
"""Files hashed into the model card's ``code_version`` at export time."""


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
    instance_kind: InstanceKind = "KIND_CPU",
    instance_count: int = SCORING_INSTANCE_COUNT,
) -> str:
    """The ``config.pbtxt`` text of ``ood``."""
    inputs, outputs = ood_tensor_specs(config)
    return triton_config.render_config(
        OOD_MODEL_NAME,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
        instance_count=instance_count,
        parameters=[
            ("threshold", repr(COMBINED_THRESHOLD)),
            ("threshold_percentile", repr(percentile)),
            ("representation_threshold", repr(representation_threshold)),
            ("input_hour_bucket_edges", ",".join(repr(float(e)) for e in input_edges)),
            ("input_thresholds", ",".join(repr(float(t)) for t in input_thresholds)),
        ],
    )


def build_detector(checkpoint: Path, ood_checkpoint: Path) -> tuple[OODDetector, dict[str, Any]]:
    """The eager detector from the deterioration and OOD checkpoints; returns it and the
    OOD checkpoint's metadata.

    Raises:
        ModelError: A missing or unreadable file, or an OOD checkpoint fitted on another
            deterioration checkpoint.
    """
    net, _ = load_checkpoint(checkpoint)
    with checkpoint_errors(ood_checkpoint, "OOD checkpoint"):
        payload = read_checkpoint(ood_checkpoint)
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
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    if digest != meta["deterioration_checkpoint_sha256"]:
        raise ModelError(f"{ood_checkpoint} was fitted on another checkpoint than {checkpoint}")
    log_scaled: torch.Tensor = net.members[0].log_scaled  # type: ignore[assignment]
    channel = InputChannel(arrays, log_scaled)
    detector = OODDetector(net, fit, representation_threshold, channel).eval()
    return detector, meta


def _parity(detector: OODDetector, reloaded: torch.jit.ScriptModule, config: NetConfig) -> float:
    """Largest float-output gap; a flag that differs raises :class:`ModelError`."""
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
    return gap


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
    instance_kind: InstanceKind = "KIND_CPU",
) -> ExportResult:
    """Writes ``<repo_dir>/ood/`` for a deterioration checkpoint and its OOD fit.

    Raises:
        ModelError: Unreadable checkpoints, a bad argument, or a parity failure.
    """
    check_positive(version, max_batch_size)
    detector, meta = build_detector(checkpoint, ood_checkpoint)
    _, det_meta = load_checkpoint(checkpoint)
    config = NetConfig(**det_meta["net_config"])
    blob, gap = scripted_bytes(
        OOD_MODEL_NAME,
        script(detector),
        lambda reloaded: _parity(detector, reloaded, config),
        tolerance=PARITY_TOLERANCE,
    )
    inputs, outputs = ood_tensor_specs(config)
    served = ServedModel(
        name=OOD_MODEL_NAME,
        blob=blob,
        inputs=inputs,
        outputs=outputs,
        config=render_config(
            config,
            representation_threshold=float(meta["representation_threshold"]),
            input_edges=meta["input_hour_bucket_edges"],
            input_thresholds=meta["input_thresholds"],
            percentile=float(meta["percentile"]),
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
        ),
        max_batch_size=max_batch_size,
        parity_gap=gap,
    )
    card: dict[str, Any] = {
        **meta,
        "name": OOD_MODEL_NAME,
        "version": version,
        **served.card_entry(),
        "fit_code_version": meta["code_version"],
        "code_version": code_version(OOD_EXPORT_SOURCES),
        "whitening_sha256": hashlib.sha256(
            np.ascontiguousarray(detector.whitening.numpy()).tobytes()
        ).hexdigest(),
    }
    return export_family(
        repo_dir,
        version,
        [served],
        card_dir=OOD_MODEL_NAME,
        card=card,
        markdown=_card_markdown(card),
    )
