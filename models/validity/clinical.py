"""Clinical validity from ``vigil federate``'s test predictions: does the prediction hold
up across (simulated) sites and subgroups?

Reads ``predictions.npz`` (calibrated 48 h risks of every test stay under the federated,
central and local-only models; local-only = each stay's own site's model) and
``federation.json`` (leave-one-site-out AUROC). Groups: pooled, each site, age band,
sex. Metrics: :func:`models.validity.metrics.summarise`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from models.validity.metrics import summarise
from vigil.errors import ConfigError

__all__ = ["AGE_BANDS", "REGIMES", "clinical_validity", "load_predictions"]

REGIMES: Final[tuple[str, ...]] = ("federated", "central", "local")
AGE_BANDS: Final[tuple[tuple[str, float, float], ...]] = (
    ("age <50", 0, 50),
    ("age 50-64", 50, 65),
    ("age 65-79", 65, 80),
    ("age 80+", 80, 200),
)
SEXES: Final[Mapping[int, str]] = {0: "female", 1: "male"}  # PhysioNet 2012 Gender


def load_predictions(folder: Path) -> dict[str, npt.NDArray[Any]]:
    """``predictions.npz`` of a ``vigil federate`` output folder.

    Raises:
        ConfigError: No such file (run ``vigil federate --out FOLDER`` first).
    """
    path = folder / "predictions.npz"
    if not path.is_file():
        raise ConfigError(f"{path} not found; run vigil federate --out {folder} first")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _groups(
    pred: Mapping[str, npt.NDArray[Any]], site_names: list[str]
) -> dict[str, npt.NDArray[np.bool_]]:
    n = pred["label"].size
    groups: dict[str, npt.NDArray[np.bool_]] = {"pooled": np.ones(n, dtype=bool)}
    for index, name in enumerate(site_names):
        groups[f"site {name}"] = pred["site"] == index
    age = pred["age_years"]
    for name, lo, hi in AGE_BANDS:
        groups[name] = (age >= lo) & (age < hi)
    for code, name in SEXES.items():
        groups[f"sex {name}"] = pred["sex"] == code
    return groups


def clinical_validity(
    pred: Mapping[str, npt.NDArray[Any]],
    federation: Mapping[str, Any],
    *,
    resamples: int,
) -> dict[str, Any]:
    """Metrics per regime and group, and the leave-one-site-out table."""
    site_names = [s["name"] for s in federation["sites"]]
    groups = _groups(pred, site_names)
    labels = pred["label"].astype(np.float64)
    table: dict[str, dict[str, Any]] = {}
    for regime in REGIMES:
        risks = pred[f"risk_{regime}"].astype(np.float64)
        table[regime] = {
            group: summarise(labels[rows], risks[rows], resamples=resamples, seed=k)
            for k, (group, rows) in enumerate(groups.items())
            if rows.any()
        }
    return {
        "score_hour": 48,
        "regimes": {
            "federated": "global model of the federation (SecAgg+ when switched on)",
            "central": "one model on the pooled training stays of all sites",
            "local": "each test stay scored by its own site's local-only model",
        },
        "groups": table,
        "leave_one_site_out": federation.get("leave_one_site_out", []),
        "bootstrap_resamples": resamples,
    }
