"""Export of the deterioration model to the Triton model repository, as two models.

The stream scores every patient on the fast path and asks for explanations only when an
alert fires, so one trained network is served twice, from the same weights:

* ``deterioration``: ``risk [1]`` and ``fused [F]`` (one forward).
* ``deterioration_explain``: also ``contributions [P]`` by occlusion (``P + 1`` forwards,
  :meth:`models.deterioration.network.DeteriorationNet.explain` scripted through
  :class:`models.deterioration.network.Explainer`).

Both take the same inputs. ``export`` writes both through the common export path
(:func:`models.common.export.export_family`: ``config.pbtxt`` rendered from
:func:`tensor_specs`, ``<version>/model.pt`` with weights, normalisation and
calibration, and the wrapper ``<version>/model.py``; ``KIND_CPU`` here, ``KIND_GPU`` on
a GPU server, see ``docs/deterioration.md``),
and one model card for the pair in ``<repo>/deterioration/`` (``model_card.json`` and
``model_card.md``: data hash, split, seeds, configuration, code hashes at training and at
export time, package versions, metrics, each served model's outputs and file hash).

Before writing, each reloaded TorchScript module is compared with the eager model with
and without images; a gap above
:data:`~models.common.torchscript.PARITY_TOLERANCE` raises :class:`ModelError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

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
from models.common.triton_config import SCORING_INSTANCE_COUNT, InstanceKind, TensorSpec
from models.deterioration.network import (
    DeteriorationEnsemble,
    Explainer,
    NetConfig,
    NetInputs,
    RiskModel,
)
from models.deterioration.train import TRAINING_SOURCES
from streams.core.features import DEFAULT_STEP, DEFAULT_WINDOW, SERIES_CODES, STATIC_FEATURES

__all__ = [
    "EXPLAIN_MODEL_NAME",
    "EXPORT_SOURCES",
    "MODEL_NAME",
    "example_inputs",
    "export",
    "load_checkpoint",
    "render_config",
    "script_model",
    "tensor_specs",
]

MODEL_NAME: Final[str] = "deterioration"
"""The fast model: ``risk`` and ``fused``."""
EXPLAIN_MODEL_NAME: Final[str] = "deterioration_explain"
"""The explaining model: ``risk``, ``fused`` and ``contributions``."""
WINDOW_BINS: Final[int] = DEFAULT_WINDOW // DEFAULT_STEP
EXPORT_SOURCES: Final[tuple[str, ...]] = (
    *TRAINING_SOURCES,
    "models/deterioration/export.py",
    *COMMON_EXPORT_SOURCES,
)
"""Files hashed into the model card's ``code_version`` at export time."""


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
    instance_kind: InstanceKind = "KIND_CPU",
    instance_count: int | None = None,
) -> str:
    """The ``config.pbtxt`` text of ``deterioration`` (or ``deterioration_explain``);
    ``instance_count`` defaults to :data:`~models.common.triton_config.SCORING_INSTANCE_COUNT`
    (1 when ``explain``)."""
    if instance_count is None:
        instance_count = 1 if explain else SCORING_INSTANCE_COUNT
    inputs, outputs = tensor_specs(config, explain=explain)
    return triton_config.render_config(
        EXPLAIN_MODEL_NAME if explain else MODEL_NAME,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
        instance_count=instance_count,
    )


def load_checkpoint(path: Path) -> tuple[DeteriorationEnsemble, dict[str, Any]]:
    """Rebuilds the eager model from a training checkpoint; returns it and its metadata.

    Raises:
        ModelError: The file is missing or not a deterioration checkpoint.
    """
    with checkpoint_errors(path, "deterioration checkpoint"):
        payload = read_checkpoint(path)
        meta: dict[str, Any] = payload["meta"]
        net = DeteriorationEnsemble(NetConfig(**meta["net_config"]), int(meta["members"]))
        net.load_state_dict(payload["state_dict"])
    net.eval()
    return net, meta


def script_model(net: RiskModel, *, explain: bool = False) -> torch.jit.ScriptModule:
    """TorchScript of ``net`` in eval mode: its fast ``forward``, or with ``explain``
    an :class:`~models.deterioration.network.Explainer` whose ``forward`` is
    ``net.explain``."""
    net.eval()
    module: nn.Module = Explainer(net) if explain else net
    return script(module)


def example_inputs(
    config: NetConfig, *, batch: int = 3, images: bool = True, seed: int = 0
) -> NetInputs:
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
    return NetInputs(values, mask, delta, statics, static_mask, embeddings, ages, image_mask)


def _parity(
    eager: Callable[..., tuple[torch.Tensor, ...]],
    reloaded: torch.jit.ScriptModule,
    config: NetConfig,
) -> float:
    worst = 0.0
    for images in (False, True):
        inputs = example_inputs(config, images=images)
        with torch.no_grad():
            worst = max(worst, max_abs_gap(eager(*inputs), reloaded(*inputs)))
    return worst


def _served(
    net: RiskModel,
    config: NetConfig,
    *,
    explain: bool,
    max_batch_size: int,
    instance_kind: InstanceKind,
) -> ServedModel:
    """One of the pair, scripted and checked against the eager path."""
    name = EXPLAIN_MODEL_NAME if explain else MODEL_NAME
    eager = Explainer(net) if explain else net
    blob, gap = scripted_bytes(
        name,
        script_model(net, explain=explain),
        lambda reloaded: _parity(eager, reloaded, config),
    )
    inputs, outputs = tensor_specs(config, explain=explain)
    return ServedModel(
        name=name,
        blob=blob,
        inputs=inputs,
        outputs=outputs,
        config=render_config(
            config, explain=explain, max_batch_size=max_batch_size, instance_kind=instance_kind
        ),
        max_batch_size=max_batch_size,
        parity_gap=gap,
    )


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
    instance_kind: InstanceKind = "KIND_CPU",
) -> ExportResult:
    """Writes the Triton model directories of both models for a trained checkpoint.

    Args:
        checkpoint: Checkpoint written by :func:`models.deterioration.train.train`.
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
    check_positive(version, max_batch_size, explain_max_batch_size)
    net, meta = load_checkpoint(checkpoint)
    config = NetConfig(**meta["net_config"])
    # Script and check both before writing anything.
    served = [
        _served(net, config, explain=explain, max_batch_size=batch, instance_kind=instance_kind)
        for explain, batch in ((False, max_batch_size), (True, explain_max_batch_size))
    ]
    card: dict[str, Any] = {
        **meta,
        "name": MODEL_NAME,
        "version": version,
        "task": "in-hospital death (Outcomes-a.txt), scored at any hour from data up to it",
        "series_codes": list(SERIES_CODES),
        "static_features": list(STATIC_FEATURES),
        "served_models": {model.name: model.card_entry() for model in served},
        "training_code_version": meta["code_version"],
        "code_version": code_version(EXPORT_SOURCES),
    }
    return export_family(
        repo_dir,
        version,
        served,
        card_dir=MODEL_NAME,
        card=card,
        markdown=_model_card_markdown(card),
    )
