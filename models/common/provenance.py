"""What made a model: the hash of the source files behind it, the git commit, package versions.

Every model card records :func:`code_version` at training and at export time, so a card
names the files that produced it (paths relative to the repository root).
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import pydantic
import torch

__all__ = ["MOVED_SOURCES", "REPO_ROOT", "code_version", "current_source", "package_versions"]

REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[2]
"""The repository root: source paths in a card are relative to it."""

MOVED_SOURCES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "models/alert_operating_point.py": "models/deterioration/alert_operating_point.py",
        "models/alert_split.py": "models/deterioration/alert_split.py",
        "models/alert_step_scores.py": "models/deterioration/alert_step_scores.py",
        "models/baselines.py": "models/deterioration/baselines.py",
        "models/export.py": "models/deterioration/export.py",
        "models/image_branch.py": "models/deterioration/image_branch.py",
        "models/image_branch_settings.py": "models/deterioration/image_branch_settings.py",
        "models/imaging_data.py": "models/imaging/data.py",
        "models/imaging_export.py": "models/imaging/export.py",
        "models/imaging_metrics.py": "models/imaging/metrics.py",
        "models/imaging_network.py": "models/imaging/network.py",
        "models/imaging_ops.py": "streams/core/imaging_ops.py",
        "models/imaging_settings.py": "models/imaging/settings.py",
        "models/imaging_train.py": "models/imaging/train.py",
        "models/metrics.py": "streams/core/risk_metrics.py",
        "models/network.py": "models/deterioration/network.py",
        "models/ood.py": "models/ood/detector.py",
        "models/ood_export.py": "models/ood/export.py",
        "models/ood_input.py": "models/ood/inputs.py",
        "models/ood_shifts.py": "models/ood/shifts.py",
        "models/ood_timeline.py": "models/ood/timeline.py",
        "models/ood_train.py": "models/ood/train.py",
        "models/ood_windows.py": "models/ood/windows.py",
        "models/physionet2012.py": "streams/datasets/physionet2012.py",
        "models/reliability_plot.py": "models/deterioration/reliability_plot.py",
        "models/step_eval.py": "models/deterioration/step_eval.py",
        "models/step_export.py": "models/deterioration/step_export.py",
        "models/step_network.py": "models/deterioration/step_network.py",
        "models/step_ood.py": "models/ood/step.py",
        "models/step_ood_train.py": "models/ood/step_train.py",
        "models/step_settings.py": "models/deterioration/step_settings.py",
        "models/step_train.py": "models/deterioration/step_train.py",
        "models/train.py": "models/deterioration/train.py",
        "models/triton_model.py": "models/common/triton_model.py",
    }
)
"""Where each source file that a shipped card names lives now (issue 14 split ``models/``
into packages). A card's paths are true at the git commit it records; this maps them to
today's tree without re-exporting the models."""


def current_source(path: str) -> str:
    """Today's path of a source file named in a model card (unchanged if it never moved)."""
    return MOVED_SOURCES.get(path, path)


def code_version(files: Sequence[str]) -> dict[str, Any]:
    """SHA-256 of ``files`` (bytes concatenated in order), the list, and the git commit.

    Args:
        files: Paths relative to the repository root.
    """
    digest = hashlib.sha256()
    for rel in files:
        digest.update((REPO_ROOT / rel).read_bytes())
    git = shutil.which("git")
    commit = "none"
    if git is not None:
        run = subprocess.run(  # noqa: S603 - fixed arguments, no user input
            [git, "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        commit = run.stdout.strip() if run.returncode == 0 else "none"
    return {"source_sha256": digest.hexdigest(), "source_files": list(files), "git_commit": commit}


def package_versions(*, with_pydantic: bool = False) -> dict[str, str]:
    """Versions of Python, torch and numpy (and pydantic when asked) for a model card."""
    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
    }
    if with_pydantic:
        versions["pydantic"] = pydantic.__version__
    return versions
