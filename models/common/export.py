"""The one export path: every model family hands its served models and its card here.

A family builds :class:`ServedModel` objects (TorchScript bytes already checked against
the eager model by :func:`models.common.torchscript.scripted_bytes`, the tensor specs and
the rendered ``config.pbtxt``), then :func:`export_family` writes, under
``<repo>/<name>/`` for each:

* ``config.pbtxt``: the serving contract;
* ``<version>/model.pt``: the TorchScript module;
* ``<version>/model.py``: the Python-backend wrapper, a copy of
  :mod:`models.common.triton_model` (the single copy in the source tree);

then the family's ``model_card.json`` and ``model_card.md``. Nothing is written before
every served model of the family has passed its parity check.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from models.common.triton_config import TensorSpec
from vigil.errors import ModelError

__all__ = [
    "COMMON_EXPORT_SOURCES",
    "TRITON_MODEL_SOURCE",
    "ExportResult",
    "ServedModel",
    "check_positive",
    "export_family",
]

TRITON_MODEL_SOURCE: Final[Path] = Path(__file__).with_name("triton_model.py")
"""The Python-backend wrapper copied next to every ``model.pt``."""
COMMON_EXPORT_SOURCES: Final[tuple[str, ...]] = (
    "models/common/export.py",
    "models/common/torchscript.py",
    "models/common/triton_config.py",
    "models/common/triton_model.py",
)
"""The shared files behind every export; each family hashes them into its card's
``code_version`` after its own."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One model ready for the repository.

    Attributes:
        name: Its name in the repository (the folder and ``config.pbtxt``'s ``name``).
        blob: The serialised TorchScript module.
        inputs: Inputs in forward order.
        outputs: Outputs in forward order.
        config: The rendered ``config.pbtxt`` text.
        max_batch_size: Triton's dynamic-batching limit (also in ``config``).
        parity_gap: Largest ``|eager - TorchScript|`` measured on the reloaded bytes.
    """

    name: str
    blob: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config: str
    max_batch_size: int
    parity_gap: float

    def card_entry(self) -> dict[str, Any]:
        """What a model card records of the served model."""
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "max_batch_size": self.max_batch_size,
            "export_parity_max_abs_diff": self.parity_gap,
            "model_pt_sha256": hashlib.sha256(self.blob).hexdigest(),
        }


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Paths written by a family's export and the measured parity gap.

    Attributes:
        configs: ``config.pbtxt`` per served model name.
        models: ``<version>/model.pt`` per served model name.
        model_card: The family's ``model_card.json``.
        max_abs_diff: Largest eager-vs-reloaded gap over its served models.
        ood_max_rel_diff: Relative gap of the OOD distances built into a served model
            (``deterioration_step``); ``None`` for the other families.
    """

    configs: dict[str, Path]
    models: dict[str, Path]
    model_card: Path
    max_abs_diff: float
    ood_max_rel_diff: float | None = None

    @property
    def config(self) -> Path:
        """The ``config.pbtxt`` of a family that serves one model."""
        (path,) = self.configs.values()
        return path

    @property
    def model(self) -> Path:
        """The ``model.pt`` of a family that serves one model."""
        (path,) = self.models.values()
        return path


def check_positive(version: int, *max_batch_sizes: int) -> None:
    """Raises :class:`ModelError` unless the version and every batch limit are positive."""
    if version < 1 or any(size < 1 for size in max_batch_sizes):
        raise ModelError("version and max_batch_size must be positive")


def _write_models(
    repo_dir: Path, version: int, served: Sequence[ServedModel]
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Writes each served model's folder; returns the ``config.pbtxt`` and ``model.pt``
    paths by name."""
    configs: dict[str, Path] = {}
    models: dict[str, Path] = {}
    for model in served:
        version_dir = repo_dir / model.name / str(version)
        version_dir.mkdir(parents=True, exist_ok=True)
        models[model.name] = version_dir / "model.pt"
        models[model.name].write_bytes(model.blob)
        shutil.copyfile(TRITON_MODEL_SOURCE, version_dir / "model.py")
        configs[model.name] = repo_dir / model.name / "config.pbtxt"
        configs[model.name].write_text(model.config)
    return configs, models


def _write_card(model_dir: Path, card: Mapping[str, Any], markdown: str) -> Path:
    """Writes ``model_card.json`` (sorted keys) and ``model_card.md``; returns the JSON path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    card_path = model_dir / "model_card.json"
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (model_dir / "model_card.md").write_text(markdown)
    return card_path


def export_family(
    repo_dir: Path,
    version: int,
    served: Sequence[ServedModel],
    *,
    card_dir: str,
    card: Mapping[str, Any],
    markdown: str,
    ood_max_rel_diff: float | None = None,
) -> ExportResult:
    """Writes a family's served models and its card (the last step of every exporter).

    Args:
        repo_dir: Triton model repository root.
        version: Model version folder.
        served: The family's served models, parity already checked.
        card_dir: Folder (under ``repo_dir``) that holds the family's card.
        card: The card's content.
        markdown: The card as Markdown.
        ood_max_rel_diff: Passed through to :class:`ExportResult`.
    """
    configs, models = _write_models(repo_dir, version, served)
    card_path = _write_card(repo_dir / card_dir, card, markdown)
    return ExportResult(
        configs=configs,
        models=models,
        model_card=card_path,
        max_abs_diff=max(model.parity_gap for model in served),
        ood_max_rel_diff=ood_max_rel_diff,
    )
