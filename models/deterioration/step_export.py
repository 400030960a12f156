"""Export of the step deterioration model as the Triton model ``deterioration_step``.

Writes, through the common export path (:func:`models.common.export.export_family`),
under ``<repo>/deterioration_step/``:

* ``config.pbtxt``: the serving contract (:func:`tensor_specs`, :func:`render_config`),
  with the scheduling part every served model shares
  (:func:`models.common.triton_config.render_serving`: dynamic batching with a short
  queue delay, a ``default_queue_policy`` that REJECTs on timeout, one torch thread), with two CPU
  instances like ``deterioration``, the wrapper's block size ``block_rows``
  (:data:`BLOCK_ROWS`, bigger than the other models' 16), and the OOD verdict's
  thresholds as ``parameters`` (``threshold`` ``1.0`` of ``distance``, as the ``ood``
  model has it).
* ``<version>/model.pt``: :class:`models.ood.step.StepOODModule` in TorchScript: the step
  (:class:`models.deterioration.step_network.StepModule`, outputs ``risk``, ``state_out``,
  ``fused``) and its own two-channel OOD verdict (:data:`models.ood.step.OOD_OUTPUT_NAMES`, named
  and typed as the ``ood`` model's outputs), fitted by :mod:`models.ood.step_train`
  (``models/weights/deterioration_step_ood.pt``; export refuses a fit of another step
  checkpoint).
* ``<version>/model.py``: a copy of :mod:`models.common.triton_model` (the shared wrapper).
* ``model_card.json`` / ``model_card.md``: data hash, split, seeds, settings, metrics,
  the state layout, the contract, parity gap and file hash.

Before writing, the reloaded TorchScript is compared with the eager ensemble
(:meth:`models.deterioration.step_network.StepEnsemble.forward`) with and without images on
``risk``, ``state_out`` and ``fused``, and with the eager :class:`~models.ood.step.StepOODModule`
on the OOD outputs; a gap above :data:`~models.common.torchscript.PARITY_TOLERANCE`
(:data:`OOD_PARITY_TOLERANCE`, relative, for the distances) raises
:class:`vigil.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from models.common import triton_config
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
from models.deterioration.network import NetConfig
from models.deterioration.step_explain import served_step_explain
from models.deterioration.step_network import StepEnsemble
from models.deterioration.step_train import STEP_TRAINING_SOURCES, load_step_checkpoint
from models.ood.step import OOD_OUTPUT_NAMES, StepOODModule
from models.ood.step_train import STEP_OOD_SOURCES, load_fit
from streams.core.features import SERIES_CODES, STATIC_FEATURES
from streams.core.step_features import BINS_PER_REQUEST
from vigil.errors import ModelError

__all__ = [
    "BLOCK_ROWS",
    "COMBINED_THRESHOLD",
    "MAX_BATCH_SIZE",
    "MODEL_NAME",
    "OOD_FIT",
    "OOD_PARITY_TOLERANCE",
    "STEP_EXPORT_SOURCES",
    "example_step_inputs",
    "export_step",
    "render_config",
    "script_step",
    "tensor_specs",
]

MODEL_NAME: Final[str] = "deterioration_step"
OOD_PARITY_TOLERANCE: Final[float] = 1e-4
"""Largest relative |eager - TorchScript| gap of the OOD distances."""
COMBINED_THRESHOLD: Final[float] = 1.0
"""Threshold of the served ``distance`` (each channel's distance over its threshold)."""
OOD_FIT: Final[Path] = Path("models/weights/deterioration_step_ood.pt")
"""The OOD fit exported with the step model by default."""
_BOOL_OUTPUTS: Final[frozenset[str]] = frozenset({"ood", "representation_ood", "input_ood"})
MAX_BATCH_SIZE: Final[int] = 1024
"""Rows per Triton execution (dynamic batching merges requests up to it)."""
BLOCK_ROWS: Final[int] = 128
"""Rows per forward in the served wrapper (``block_rows`` of ``config.pbtxt``; the other
models keep :data:`models.common.triton_model.BLOCK_ROWS`, 16)."""
STEP_EXPORT_SOURCES: Final[tuple[str, ...]] = (
    *STEP_TRAINING_SOURCES,
    *(s for s in STEP_OOD_SOURCES if s not in STEP_TRAINING_SOURCES),
    "models/deterioration/step_export.py",
    "models/deterioration/step_explain.py",
    *COMMON_EXPORT_SOURCES,
)


def tensor_specs(
    config: NetConfig, state_width: int, length: int = BINS_PER_REQUEST
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of ``deterioration_step`` in forward order (dims without batch):
    the step's ``risk``, ``state_out``, ``fused``, then the OOD outputs of the ``ood``
    model (``[1]`` each; ``ood``, ``representation_ood``, ``input_ood`` TYPE_BOOL)."""
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
        TensorSpec("hours_since_seen", fp32, (p,)),
    )
    outputs = (
        TensorSpec("risk", fp32, (1,)),
        TensorSpec("state_out", fp32, (state_width,)),
        TensorSpec("fused", fp32, (config.fused,)),
        *(
            TensorSpec(name, "TYPE_BOOL" if name in _BOOL_OUTPUTS else fp32, (1,))
            for name in OOD_OUTPUT_NAMES
        ),
    )
    return inputs, outputs


def render_config(
    config: NetConfig,
    state_width: int,
    ood_fit: Mapping[str, npt.ArrayLike],
    percentile: float,
    *,
    max_batch_size: int = MAX_BATCH_SIZE,
    instance_kind: InstanceKind = "KIND_CPU",
    instance_count: int = SCORING_INSTANCE_COUNT,
    block_rows: int = BLOCK_ROWS,
) -> str:
    """The ``config.pbtxt`` text of ``deterioration_step``: called for every score like
    ``deterioration``, so it gets the same
    :data:`~models.common.triton_config.SCORING_INSTANCE_COUNT`
    instances (one instance with a queue-policy timeout stalls ~500 ms at times in
    Triton 2.51; BENCHMARKS.md, issue 16 part 1). ``ood_fit`` (the fit's arrays) and
    ``percentile`` give the ``parameters`` the ``ood`` model also has: ``threshold``
    (``1.0``, of ``distance``), ``threshold_percentile``, ``representation_threshold``,
    then ``input_step_bucket_edges`` and ``input_thresholds`` (comma-separated).
    ``block_rows`` is the served wrapper's rows per forward (:data:`BLOCK_ROWS`)."""
    if block_rows < 1:
        raise ModelError(f"block_rows must be positive, got {block_rows}")
    inputs, outputs = tensor_specs(config, state_width)

    def listed(name: str) -> str:
        return ",".join(repr(float(v)) for v in np.asarray(ood_fit[name]).reshape(-1))

    rep_threshold = float(np.asarray(ood_fit["rep_threshold"]).reshape(-1)[0])
    return triton_config.render_config(
        MODEL_NAME,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
        instance_count=instance_count,
        parameters=[
            ("block_rows", str(block_rows)),
            ("threshold", repr(COMBINED_THRESHOLD)),
            ("threshold_percentile", repr(float(percentile))),
            ("representation_threshold", repr(rep_threshold)),
            ("input_step_bucket_edges", listed("input_edges")),
            ("input_thresholds", listed("input_thresholds")),
        ],
    )


def script_step(net: StepEnsemble, ood_fit: Mapping[str, npt.ArrayLike]) -> torch.jit.ScriptModule:
    """TorchScript of :class:`StepOODModule` built from ``net`` and the OOD fit (eval)."""
    net.eval()
    return script(StepOODModule(net, ood_fit).eval())


def example_step_inputs(
    net: StepEnsemble, *, batch: int = 6, images: bool = True, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Plausible random inputs in the served module's order: a state reached by real steps
    from zeros, 0-8 valid bins per row, commits from 0 to all, (optionally) images, and
    the hours since each parameter was last seen (the OOD head's; the ensemble's
    ``forward`` takes all but that last one)."""
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
    since = torch.where(
        torch.rand(batch, p, generator=gen) < 0.1,
        torch.full((batch, p), 48.0),
        torch.rand(batch, p, generator=gen) * 30.0,
    )
    return (
        state,
        *bins(),
        valid,
        commit,
        statics,
        static_mask,
        embeddings,
        ages,
        image_mask,
        since,
    )


def _parity(
    net: StepEnsemble, ood_fit: Mapping[str, npt.ArrayLike], reloaded: torch.jit.ScriptModule
) -> tuple[float, float]:
    """Largest gap of the step outputs (absolute, against the eager ensemble) and of the
    OOD distances (relative, against the eager :class:`StepOODModule`); a flag that
    differs away from its threshold counts as an infinite gap."""
    eager_ood = StepOODModule(net, ood_fit).eval()
    worst, worst_ood = 0.0, 0.0
    for images in (False, True):
        inputs = example_step_inputs(net, images=images)
        with torch.no_grad():
            expected = net(*inputs[:-1])
            eager = eager_ood(*inputs)
            served = reloaded(*inputs)
        for a, b in zip(expected, served[:3], strict=True):
            worst = max(worst, float((a - b).abs().max().item()))
        distance, rep, inp, inp_threshold = eager[3], eager[5], eager[6], eager[7]
        for i in (3, 5, 6, 7):
            gap = (eager[i] - served[i]).abs() / torch.clamp(eager[i].abs(), min=1.0)
            worst_ood = max(worst_ood, float(gap.max().item()))
        margins = {
            4: (distance - 1.0).abs(),
            8: (rep / eager_ood.rep_threshold - 1.0).abs(),
            9: (inp / inp_threshold - 1.0).abs(),
        }
        for i, margin in margins.items():
            differ = (eager[i] != served[i]) & (margin > OOD_PARITY_TOLERANCE)
            if bool(differ.any()):
                worst_ood = float("inf")
    return worst, worst_ood


def _checked_bytes(
    net: StepEnsemble, ood_fit: Mapping[str, npt.ArrayLike]
) -> tuple[bytes, float, float]:
    """Serialised TorchScript and its parity gaps (step outputs, OOD distances).

    Raises:
        ModelError: A gap exceeds :data:`~models.common.torchscript.PARITY_TOLERANCE` or
            :data:`OOD_PARITY_TOLERANCE`.
    """
    ood_gaps: list[float] = []

    def parity(reloaded: torch.jit.ScriptModule) -> float:
        gap, ood_gap = _parity(net, ood_fit, reloaded)
        if ood_gap > OOD_PARITY_TOLERANCE:
            raise ModelError(
                f"export parity failed for {MODEL_NAME}: OOD relative gap {ood_gap:.3g}"
            )
        ood_gaps.append(ood_gap)
        return gap

    blob, gap = scripted_bytes(MODEL_NAME, script_step(net, ood_fit), parity)
    return blob, gap, ood_gaps[0]


def _fmt(entry: dict[str, Any]) -> str:
    low, high = entry["auroc_ci"]
    return (
        f"{entry['auroc']:.3f} [{low:.3f}, {high:.3f}] | {entry['auprc']:.3f} | {entry['ece']:.3f}"
    )


def _metrics_markdown(metrics: dict[str, Any]) -> str:
    """The card's metrics: the training run's table (validation and test, 24 h and 48 h),
    or, for a checkpoint trained elsewhere (a federation), its own figures as listed."""
    if not all(part in metrics for part in ("validation", "test")):
        lines = [f"- {name}: {json.dumps(value)}" for name, value in sorted(metrics.items())]
        return "Metrics of the run that trained it:\n\n" + "\n".join(lines) + "\n"
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
    return (
        "| Split | Hour | Score | AUROC [95 % CI] | AUPRC | ECE |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )


def _federation_markdown(card: dict[str, Any]) -> str:
    """Where a federated model came from (``vigil federate``; docs/federated.md)."""
    federation = card.get("federation")
    if not federation:
        return ""
    sites = "\n".join(
        f"  - {site['name']} (ICU type {site['icu_type']}): {site['n_train']} training stays, "
        f"data SHA-256 `{site['data_sha256']}`"
        for site in federation["sites"]
    )
    return (
        "\n## Federation\n\n"
        "Trained by `vigil federate` across **simulated** sites: the ICU types of one data "
        "set (PhysioNet 2012 set A), not separate hospitals (docs/federated.md).\n\n"
        f"- Strategy {federation['strategy']}, {federation['rounds']} rounds of "
        f"{federation['local_epochs']} local epoch(s); secure aggregation (SecAgg+): "
        f"{federation['secure_aggregation']}; seeds {federation['seeds']}\n"
        f"- Sites:\n{sites}\n"
    )


def _model_card_markdown(card: dict[str, Any]) -> str:
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
        + (f"- Training time: {card['train_seconds']} s\n" if "train_seconds" in card else "")
        + "- Image branch: untrained (`image_out` weight zero): images do not change the "
        "risk.\n\n"
        + _metrics_markdown(card["metrics"])
        + _federation_markdown(card)
        + _ood_markdown(card)
    )


def _ood_markdown(card: dict[str, Any]) -> str:
    ood = card["ood"]
    m = ood["metrics"]
    pct = ood["percentile"]
    shifts = []
    for key, entry in m["shifts"].items():
        c = entry["combined"]
        window = entry.get("window_detector", {}).get("auroc")
        shifts.append(
            f"| {key} | {entry['n_shifted']} | {c['auroc']:.3f} {c['auroc_ci']} | "
            f"{c['flagged_fraction']:.3f} | {'—' if window is None else f'{window:.3f}'} |"
        )
    test = m["test"]["combined"]
    val = m["validation"]["combined"]
    return (
        "\n## OOD verdict (same call)\n\n"
        "Two Mahalanobis channels (docs/ood.md, 'OOD on the step model'): every member's "
        "`fused` concatenated (class Gaussians, tied covariance) and the running "
        "statistics of the state per bucket of steps observed; `distance` = the larger "
        "of each channel's distance over its threshold, `ood` = `distance > 1`.\n\n"
        f"- Fit: `{ood['fit_file']}` SHA-256 `{ood['fit_sha256']}`, of step checkpoint "
        f"`{ood['step_checkpoint_sha256']}`; code `{ood['code_version']['source_sha256']}`, "
        f"git `{ood['code_version']['git_commit']}`; {ood['seconds']} s\n"
        f"- {ood['fitted_on']}; thresholds: the {pct:g}th percentile of validation "
        f"distances (representation {ood['representation_threshold']:.3f}; input per "
        f"step bucket {', '.join(f'{t:.2f}' for t in ood['input_thresholds'])} for edges "
        f"{', '.join(f'{e:g}' for e in ood['input_step_bucket_edges'])})\n"
        "- Export parity of the OOD distances (relative): "
        f"{ood['export_parity_max_rel_diff']:.2g}\n"
        f"- In-distribution flag rate: validation {val['flagged_fraction']:.4f}, test "
        f"{test['flagged_fraction']:.4f}"
        + (f" {test['flagged_fraction_ci']}" if test.get("flagged_fraction_ci") else "")
        + "\n\n"
        "Test split at 48 h; shifts are **synthetic** (models/ood/shifts.py); bracketed: "
        "95 % stay-bootstrap interval; last column: the shipped window detector `ood` on "
        "the same windows.\n\n"
        "| Shift | Shifted windows | AUROC | Flagged | Window detector AUROC |\n"
        "| --- | --- | --- | --- | --- |\n" + "\n".join(shifts) + "\n"
    )


def export_step(
    checkpoint: Path,
    repo_dir: Path = Path("triton_repo"),
    *,
    version: int = 1,
    max_batch_size: int = MAX_BATCH_SIZE,
    instance_kind: InstanceKind = "KIND_CPU",
    ood_fit: Path = OOD_FIT,
) -> ExportResult:
    """Writes ``<repo_dir>/deterioration_step`` for a trained step checkpoint and the OOD
    fit of that checkpoint (:func:`models.ood.step_train.fit_step_ood`).

    Raises:
        ModelError: An unreadable checkpoint, a bad argument, or a parity failure.
    """
    check_positive(version, max_batch_size)
    net, meta = load_step_checkpoint(checkpoint)
    ood_arrays, ood_meta = load_fit(ood_fit)
    checkpoint_sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    if ood_meta["step_checkpoint_sha256"] != checkpoint_sha:
        raise ModelError(
            f"the OOD fit {ood_fit} is of another step checkpoint; run "
            "python -m models.ood.step_train"
        )
    blob, gap, ood_gap = _checked_bytes(net, ood_arrays)
    inputs, outputs = tensor_specs(net.config, net.layout.width)
    served = ServedModel(
        name=MODEL_NAME,
        blob=blob,
        inputs=inputs,
        outputs=outputs,
        config=render_config(
            net.config,
            net.layout.width,
            ood_arrays,
            float(ood_meta["percentile"]),
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
        ),
        max_batch_size=max_batch_size,
        parity_gap=gap,
    )
    card: dict[str, Any] = {
        **meta,
        "name": MODEL_NAME,
        "version": version,
        "task": "in-hospital death (Outcomes-a.txt), scored at any time from a stored "
        "state advanced one hour bin at a time",
        "series_codes": list(SERIES_CODES),
        "static_features": list(STATIC_FEATURES),
        "served_model": {**served.card_entry(), "bins_per_request": BINS_PER_REQUEST},
        "training_code_version": meta["code_version"],
        "code_version": code_version(STEP_EXPORT_SOURCES),
        "ood": {
            **{k: v for k, v in ood_meta.items() if k not in ("split", "settings")},
            "fit_file": str(ood_fit),
            "fit_sha256": hashlib.sha256(ood_fit.read_bytes()).hexdigest(),
            "fit_settings": ood_meta["settings"],
            "representation_threshold": float(ood_arrays["rep_threshold"].reshape(-1)[0]),
            "input_step_bucket_edges": [float(e) for e in ood_arrays["input_edges"]],
            "input_thresholds": [float(t) for t in ood_arrays["input_thresholds"]],
            "export_parity_max_rel_diff": ood_gap,
            "split_equals_checkpoint": ood_meta["split"] == meta["split"],
        },
    }
    explain = served_step_explain(net, instance_kind=instance_kind)
    card["explain_model"] = {
        **explain.card_entry(),
        "method": "occlusion of each parameter over the window from an empty state "
        "(models/deterioration/step_explain.py); equals the served risk for stays admitted "
        "within the window, the last 48 h only for longer stays",
    }
    return export_family(
        repo_dir,
        version,
        [served, explain],
        card_dir=MODEL_NAME,
        card=card,
        markdown=_model_card_markdown(card),
        ood_max_rel_diff=ood_gap,
    )


def main() -> None:
    """``python -m models.deterioration.step_export [CHECKPOINT]``: export to ``triton_repo/``."""
    import sys

    checkpoint = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models/weights/deterioration_step.pt")
    )
    result = export_step(checkpoint)
    written = ", ".join(str(p) for p in (*result.configs.values(), *result.models.values()))
    sys.stdout.write(
        f"wrote {written}; parity {result.max_abs_diff:.3g}, OOD {result.ood_max_rel_diff:.3g}\n"
    )


if __name__ == "__main__":
    main()
