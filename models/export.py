"""Export of the deterioration model to the Triton model repository, as two models.

The stream scores every patient on the fast path and asks for explanations only when an
alert fires, so one trained network is served twice, from the same weights:

* ``deterioration``: ``risk [1]`` and ``fused [F]`` (one forward).
* ``deterioration_explain``: also ``contributions [P]`` by occlusion (``P + 1`` forwards,
  :meth:`models.network.DeteriorationNet.explain` scripted through
  :class:`models.network.Explainer`).

Both take the same inputs. ``export`` writes, under ``<repo>/<name>/`` for each:

* ``config.pbtxt``: the serving contract, rendered from :func:`tensor_specs` (names,
  dims without the batch axis, dtypes), dynamic batching with a queue policy and an
  instance group (``KIND_CPU`` here; ``KIND_GPU`` on a GPU server, see
  ``docs/deterioration.md``), and the wrapper's ``torch_num_threads``
  (:func:`render_serving`, shared by every served model).
* ``<version>/model.pt``: the TorchScript module (weights, normalisation, calibration).
* ``<version>/model.py``: the Python-backend wrapper, a copy of
  :mod:`models.triton_model`.

and one model card for the pair in ``<repo>/deterioration/`` (``model_card.json`` and
``model_card.md``: data hash, split, seeds, configuration, code hashes at training and at
export time, package versions, metrics, each served model's outputs and file hash).

Before writing, each reloaded TorchScript module is compared with the eager model with
and without images; a gap above :data:`PARITY_TOLERANCE` raises :class:`ModelError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch
from torch import nn

from models.network import DeteriorationEnsemble, Explainer, NetConfig, RiskModel
from models.train import TRAINING_SOURCES, code_version
from streams.core.features import DEFAULT_STEP, DEFAULT_WINDOW, SERIES_CODES, STATIC_FEATURES
from vigil.errors import ModelError

__all__ = [
    "EXPLAIN_MODEL_NAME",
    "EXPORT_SOURCES",
    "MODEL_NAME",
    "PARITY_TOLERANCE",
    "QUEUE_DELAY_MICROSECONDS",
    "QUEUE_TIMEOUT_MICROSECONDS",
    "SCORING_INSTANCE_COUNT",
    "TORCH_NUM_THREADS",
    "ExportResult",
    "TensorSpec",
    "example_inputs",
    "export",
    "load_checkpoint",
    "render_config",
    "render_serving",
    "script_model",
    "tensor_specs",
]

MODEL_NAME: Final[str] = "deterioration"
"""The fast model: ``risk`` and ``fused``."""
EXPLAIN_MODEL_NAME: Final[str] = "deterioration_explain"
"""The explaining model: ``risk``, ``fused`` and ``contributions``."""
PARITY_TOLERANCE: Final[float] = 1e-5
WINDOW_BINS: Final[int] = DEFAULT_WINDOW // DEFAULT_STEP
EXPORT_SOURCES: Final[tuple[str, ...]] = (
    *TRAINING_SOURCES,
    "models/export.py",
    "models/triton_model.py",
)
"""Files hashed into the model card's ``code_version`` at export time."""
QUEUE_DELAY_MICROSECONDS: Final[int] = 2000
"""Longest wait of Triton's dynamic batcher to fill a batch."""
QUEUE_TIMEOUT_MICROSECONDS: Final[int] = 10_000_000
"""Queue timeout of a request that carries none (``default_queue_policy``, REJECT): the
worker's default deadline (``VIGIL_TRITON_TIMEOUT_SECONDS``, 10 s). The worker passes its
own deadline with each request (``allow_timeout_override``), so a request whose client
has given up is rejected in the queue instead of computed."""
SCORING_INSTANCE_COUNT: Final[int] = 2
"""Instances of the models called for every scored event (``deterioration``, ``ood``).
Triton 2.51 does not prefetch the next batch of a model that has request timeouts, and
its batcher then sometimes misses the end of an execution and waits its 500 ms default
before starting the next one; a second instance (one more stub, about 0.7 GB) is free
when the first is finishing, and removed those stalls in the benchmark (BENCHMARKS.md,
issue 16). ``deterioration_explain`` and ``imaging``, called rarely, keep one."""
TORCH_NUM_THREADS: Final[int] = 1
"""Intra-op torch threads of each Python-backend stub (``parameters``
``torch_num_threads``, read by :mod:`models.triton_model`): one stub per model shares the
cores, and default threads oversubscribed them (BENCHMARKS.md, issue 16)."""
_WIDE_KEYS: Final[frozenset[str]] = frozenset({"wide_weight", "wide_bias", "wide_mean", "wide_std"})
_TRITON_MODEL_SOURCE: Final[Path] = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a served model (dims exclude the batch axis)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Paths written by :func:`export` and the measured parity gap.

    Attributes:
        configs: ``config.pbtxt`` per model name.
        models: ``<version>/model.pt`` per model name.
        model_card: The pair's ``model_card.json``.
        max_abs_diff: Largest eager-vs-reloaded gap over both models.
    """

    configs: dict[str, Path]
    models: dict[str, Path]
    model_card: Path
    max_abs_diff: float


def tensor_specs(
    config: NetConfig, *, explain: bool = False
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of ``deterioration`` (or, with ``explain``, of
    ``deterioration_explain``), in forward order; the inputs are the same."""
    t, p, s = WINDOW_BINS, config.n_series, config.n_statics
    k, e = config.max_images, config.image_dim
    fp32 = "TYPE_FP32"
    inputs = (
        TensorSpec("values", fp32, (t, p)),
        TensorSpec("mask", fp32, (t, p)),
        TensorSpec("delta_hours", fp32, (t, p)),
        TensorSpec("statics", fp32, (s,)),
        TensorSpec("static_mask", fp32, (s,)),
        TensorSpec("image_embeddings", fp32, (k, e)),
        TensorSpec("image_age_hours", fp32, (k,)),
        TensorSpec("image_mask", fp32, (k,)),
    )
    outputs: tuple[TensorSpec, ...] = (
        TensorSpec("risk", fp32, (1,)),
        TensorSpec("fused", fp32, (config.fused,)),
    )
    if explain:
        outputs += (TensorSpec("contributions", fp32, (p,)),)
    return inputs, outputs


def render_config(
    config: NetConfig,
    *,
    explain: bool = False,
    max_batch_size: int = 64,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
    instance_count: int | None = None,
) -> str:
    """The ``config.pbtxt`` text of ``deterioration`` (or ``deterioration_explain``);
    ``instance_count`` defaults to :data:`SCORING_INSTANCE_COUNT` (1 when ``explain``)."""
    if instance_count is None:
        instance_count = 1 if explain else SCORING_INSTANCE_COUNT
    inputs, outputs = tensor_specs(config, explain=explain)

    def block(kind: str, specs: tuple[TensorSpec, ...]) -> str:
        items = [
            f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n'
            f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]\n  }}"
            for spec in specs
        ]
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    return (
        f'name: "{EXPLAIN_MODEL_NAME if explain else MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        + block("input", inputs)
        + block("output", outputs)
        + render_serving(instance_kind=instance_kind, instance_count=instance_count)
    )


def render_serving(
    *,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
    instance_count: int = 1,
    torch_num_threads: int = TORCH_NUM_THREADS,
) -> str:
    """The scheduling part of every served model's ``config.pbtxt``: dynamic batching
    with a REJECT queue policy, the instance group and ``torch_num_threads``."""
    return (
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_MICROSECONDS}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {QUEUE_TIMEOUT_MICROSECONDS}\n"
        "    allow_timeout_override: true\n"
        "  }\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]\n"
        'parameters {\n  key: "torch_num_threads"\n'
        f'  value: {{ string_value: "{torch_num_threads}" }}\n}}\n'
    )


def load_checkpoint(path: Path) -> tuple[DeteriorationEnsemble, dict[str, Any]]:
    """Rebuilds the eager model from a training checkpoint; returns it and its metadata.

    Raises:
        ModelError: The file is missing or not a deterioration checkpoint.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta: dict[str, Any] = payload["meta"]
        net = DeteriorationEnsemble(NetConfig(**meta["net_config"]), int(meta["members"]))
        net.load_state_dict(payload["state_dict"])
    except (OSError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot load deterioration checkpoint {path}: {exc}") from exc
    net.eval()
    return net, meta


def script_model(net: RiskModel, *, explain: bool = False) -> torch.jit.ScriptModule:
    """TorchScript of ``net`` in eval mode: its fast ``forward``, or with ``explain``
    an :class:`~models.network.Explainer` whose ``forward`` is ``net.explain``."""
    net.eval()
    module: nn.Module = Explainer(net) if explain else net
    with warnings.catch_warnings():
        # torch 2.x flags torch.jit as deprecated; TorchScript is what Triton loads here.
        warnings.simplefilter("ignore", FutureWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted


def example_inputs(
    config: NetConfig, *, batch: int = 3, images: bool = True, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random but plausible inputs (raw units) for parity checks, forward order."""
    gen = torch.Generator().manual_seed(seed)
    t, p, s = WINDOW_BINS, config.n_series, config.n_statics
    k, e = config.max_images, config.image_dim
    mask = (torch.rand(batch, t, p, generator=gen) < 0.2).float()
    values = (torch.rand(batch, t, p, generator=gen) * 100.0) * mask
    delta = torch.rand(batch, t, p, generator=gen) * 48.0
    statics = torch.rand(batch, s, generator=gen) * 80.0
    static_mask = (torch.rand(batch, s, generator=gen) < 0.8).float()
    embeddings = torch.randn(batch, k, e, generator=gen)
    ages = torch.rand(batch, k, generator=gen) * 24.0
    image_mask = torch.zeros(batch, k)
    if images:
        image_mask[:, : max(1, k // 2)] = 1.0
        image_mask[0] = 0.0  # one patient without images in the same batch
    return values, mask, delta, statics, static_mask, embeddings, ages, image_mask


def _parity(
    eager: Callable[..., tuple[torch.Tensor, ...]],
    reloaded: torch.jit.ScriptModule,
    config: NetConfig,
) -> float:
    worst = 0.0
    for images in (False, True):
        inputs = example_inputs(config, images=images)
        with torch.no_grad():
            expected = eager(*inputs)
            served = reloaded(*inputs)
        for a, b in zip(expected, served, strict=True):
            worst = max(worst, float((a - b).abs().max().item()))
    return worst


def _scripted_bytes(net: RiskModel, config: NetConfig, *, explain: bool) -> tuple[bytes, float]:
    """Serialised TorchScript and its parity gap with the eager path."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        torch.jit.save(script_model(net, explain=explain), buffer)
        buffer.seek(0)
        reloaded = torch.jit.load(buffer)  # type: ignore[no-untyped-call]
    gap = _parity(net.explain if explain else net, reloaded, config)
    if gap > PARITY_TOLERANCE:
        name = EXPLAIN_MODEL_NAME if explain else MODEL_NAME
        raise ModelError(f"export parity failed for {name}: max |eager - TorchScript| = {gap:.3g}")
    return buffer.getvalue(), gap


def _model_card_markdown(card: dict[str, Any]) -> str:
    test = card["metrics"]["test"]
    rows = []
    for key, label in (
        ("model", "Vigil deterioration model"),
        ("logistic_regression", "Logistic regression (summary statistics)"),
        ("news2_worst", "NEWS2 (worst in window)"),
        ("saps_i", "SAPS-I"),
        ("sofa", "SOFA"),
    ):
        if key in test:
            m24, m48 = test[key]["24h"], test[key]["48h"]
            rows.append(
                f"| {label} | {m24['auroc']:.3f} | {m24['auprc']:.3f} | "
                f"{m48['auroc']:.3f} | {m48['auprc']:.3f} |"
            )
    served = "\n".join(
        f"- `{name}`: outputs "
        + ", ".join(f"`{o['name']} {list(o['dims'])}`" for o in entry["outputs"])
        + f"; max_batch_size {entry['max_batch_size']}; `model.pt` SHA-256 "
        f"`{entry['model_pt_sha256']}`"
        for name, entry in card["served_models"].items()
    )
    net = card["net_config"]
    return (
        f"# Model card: {MODEL_NAME} and {EXPLAIN_MODEL_NAME} v{card['version']}\n\n"
        "In-hospital mortality risk from the hourly feature window of an ICU stay "
        "(PhysioNet/CinC Challenge 2012, set A; ODC-By 1.0; Silva et al. 2012; "
        "Goldberger et al. 2000). Decision support only; see docs/deterioration.md.\n\n"
        "One card for both served models: they hold the same weights and take the same "
        "inputs; the explain model adds per-parameter contributions.\n\n"
        f"{served}\n\n"
        f"- Mean logit of {card['members']} networks (seeds {card['settings']['seed']} + i); "
        f"encoder `{net['encoder']}`, hidden {net['hidden']}, "
        f"summary branch {net['summary']}, wide branch {net.get('wide', False)}\n"
        f"- Data SHA-256: `{card['data_sha256']}`\n"
        f"- Split: {card['split_method']}\n"
        f"- Split seed {card['settings']['split_seed']}\n"
        f"- Code at export: `{card['code_version']['source_sha256']}` (SHA-256 of "
        f"{', '.join(card['code_version']['source_files'])}, concatenated), "
        f"git `{card['code_version']['git_commit']}`\n"
        f"- Code at training: `{card['training_code_version']['source_sha256']}`\n"
        f"- Packages: {card['packages']}\n"
        f"- Training time: {card['train_seconds']} s\n\n"
        "## Held-out test split (inside set A, never tuned on)\n\n"
        "| Score | AUROC 24 h | AUPRC 24 h | AUROC 48 h | AUPRC 48 h |\n"
        "| --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n" + _image_branch_markdown(card)
    )


def _image_branch_markdown(card: dict[str, Any]) -> str:
    """The card's section on the image branch (fixture-trained, or untrained)."""
    branch = card.get("image_branch")
    if branch is None:
        return (
            "\n## Image branch\n\nUntrained (`image_out` weight zero): images do not "
            "change the risk.\n"
        )
    check = branch["validation_check"]
    rows = "\n".join(
        f"| {hour} | {check[hour]['auroc_without_images']:.3f} | "
        f"{check[hour]['auroc_with_images']:.3f} | "
        f"{check[hour]['mean_risk_change_abnormal']:+.4f} | "
        f"{check[hour]['mean_risk_change_normal']:+.4f} |"
        for hour in ("24h", "48h")
    )
    return (
        "\n## Image branch: fixture-trained, no clinical evidence\n\n"
        "PhysioNet stays have no images. The image branch (`image_proj`, the attention, "
        "`image_out.weight`) of each member was fine-tuned, everything else frozen, on a "
        f"**synthetic test-fixture linkage** (p = {branch['abnormal_probability']}): "
        f"{branch['rule']}\n\n"
        f"- Embeddings from the imaging checkpoint with SHA-256 "
        f"`{branch['imaging_checkpoint_sha256']}`\n"
        f"- X-rays SHA-256 `{branch['xray_sha256']}`; training stays only, imaging "
        "training X-rays only\n"
        f"- Frozen state SHA-256 `{branch['frozen_state_sha256']}`: without images every "
        "output is bit-identical to the model before the fine-tune (calibration and the "
        "metrics above unchanged)\n\n"
        "Validation split, fixture linkage to PneumoniaMNIST validation X-rays (risk "
        "change = with study - without, calibrated risk):\n\n"
        "| Hour | AUROC without images | AUROC with fixture study | Mean risk change, "
        "pneumonia study | Mean risk change, normal study |\n"
        "| --- | --- | --- | --- | --- |\n" + rows + "\n"
    )


def export(
    checkpoint: Path,
    repo_dir: Path = Path("triton_repo"),
    *,
    version: int = 1,
    max_batch_size: int = 64,
    explain_max_batch_size: int = 64,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
) -> ExportResult:
    """Writes the Triton model directories of both models for a trained checkpoint.

    Args:
        checkpoint: Checkpoint written by :func:`models.train.train`.
        repo_dir: Triton model repository root.
        version: Model version folder (positive).
        max_batch_size: Triton's dynamic-batching limit of ``deterioration``.
        explain_max_batch_size: The same for ``deterioration_explain``.
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.

    Returns:
        The written paths and the largest eager-vs-reloaded gap.

    Raises:
        ModelError: An unreadable checkpoint, a bad argument, or a parity failure.
    """
    if version < 1 or max_batch_size < 1 or explain_max_batch_size < 1:
        raise ModelError("version and the max batch sizes must be positive")
    net, meta = load_checkpoint(checkpoint)
    config = NetConfig(**meta["net_config"])
    # Script and check both before writing anything.
    artifacts = {
        name: (explain, batch, *_scripted_bytes(net, config, explain=explain))
        for name, explain, batch in (
            (MODEL_NAME, False, max_batch_size),
            (EXPLAIN_MODEL_NAME, True, explain_max_batch_size),
        )
    }
    configs: dict[str, Path] = {}
    models: dict[str, Path] = {}
    served: dict[str, Any] = {}
    for name, (explain, batch, blob, gap) in artifacts.items():
        version_dir = repo_dir / name / str(version)
        version_dir.mkdir(parents=True, exist_ok=True)
        models[name] = version_dir / "model.pt"
        models[name].write_bytes(blob)
        shutil.copyfile(_TRITON_MODEL_SOURCE, version_dir / "model.py")
        configs[name] = repo_dir / name / "config.pbtxt"
        configs[name].write_text(
            render_config(
                config, explain=explain, max_batch_size=batch, instance_kind=instance_kind
            )
        )
        inputs, outputs = tensor_specs(config, explain=explain)
        served[name] = {
            "inputs": [{"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in inputs],
            "outputs": [
                {"name": s.name, "data_type": s.data_type, "dims": s.dims} for s in outputs
            ],
            "max_batch_size": batch,
            "export_parity_max_abs_diff": gap,
            "model_pt_sha256": hashlib.sha256(blob).hexdigest(),
        }
    card: dict[str, Any] = {
        **meta,
        "name": MODEL_NAME,
        "version": version,
        "task": "in-hospital death (Outcomes-a.txt), scored at any hour from data up to it",
        "series_codes": list(SERIES_CODES),
        "static_features": list(STATIC_FEATURES),
        "served_models": served,
        "training_code_version": meta["code_version"],
        "code_version": code_version(EXPORT_SOURCES),
    }
    card_path = repo_dir / MODEL_NAME / "model_card.json"
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (repo_dir / MODEL_NAME / "model_card.md").write_text(_model_card_markdown(card))
    return ExportResult(
        configs=configs,
        models=models,
        model_card=card_path,
        max_abs_diff=max(entry["export_parity_max_abs_diff"] for entry in served.values()),
    )
