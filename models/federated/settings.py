"""Settings of ``vigil federate`` (no torch import)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["FederateSettings"]


class FederateSettings(BaseSettings):
    """Settings of ``vigil federate`` (environment prefix ``VIGIL_FEDERATE_``).

    The four sites are **simulated** from PhysioNet 2012 set A (one site per ICU type,
    :mod:`models.federated.sites`).
    """

    model_config = SettingsConfigDict(env_prefix="VIGIL_FEDERATE_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        Path("../shared/data/physionet2012"),
        description="PhysioNet 2012 folder holding set-a/ and Outcomes-a.txt.",
    )
    out: Path = Field(
        Path("reports/federated"),
        description="Output folder (federation.json, model card, Triton repo).",
    )
    rounds: int = Field(
        50,
        ge=1,
        le=200,
        description="Federated rounds (50: the best of 10, 20, 30, 50 and 80 by pooled "
        "validation AUROC on the full data, docs/federated.md).",
    )
    local_epochs: int = Field(1, ge=1, le=20, description="Epochs each site trains per round.")
    strategy: Literal["fedavg", "fedprox"] = Field("fedavg", description="fedavg or fedprox.")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal weight (fedprox only).")
    secure_aggregation: bool = Field(
        True, description="Flower SecAgg+ (the server sees only the masked sum)."
    )
    reconstruction_threshold: int = Field(
        3, ge=2, description="SecAgg+ shares needed to unmask (sites - 1 lets one site drop out)."
    )
    max_weight: float = Field(2000.0, gt=0, description="SecAgg+: largest per-site stay count.")
    central_epochs: int = Field(
        20, ge=1, le=200, description="Most epochs of the central and local-only models."
    )
    patience: int = Field(4, ge=1, description="Early stopping patience (validation AUROC).")
    leave_one_site_out: bool = Field(True, description="Also train the leave-one-site-out models.")
    loso_normalisation: Literal["three-sites", "pooled"] = Field(
        "three-sites",
        description="Leave-one-site-out normalisation: from the three training sites (re-prepares "
        "the stays), or the pooled one of all four (faster; the left-out site's means and SDs "
        "leak, no labels).",
    )
    adversary_strengths: str = Field(
        "0,0.3,1,3",
        description="Gradient-reversal strengths of the site-invariance frontier "
        "(comma-separated; empty: skip).",
    )
    export: bool = Field(
        True, description="Export the global model (Triton repo and model card under OUT)."
    )
    seed: int = Field(7, ge=0, description="Seed of the networks and local training.")
    split_seed: int = Field(2012, ge=0, description="Seed of the train/validation/test split.")
    max_stays: int | None = Field(
        None, ge=40, description="Use only the first N stays (smoke runs)."
    )
    port: int = Field(0, ge=0, le=65535, description="Server port on 127.0.0.1 (0: any free port).")
    round_timeout_seconds: float = Field(
        600.0, gt=0, description="How long a round stage waits for sites."
    )
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads per process.")
    bootstrap_resamples: int = Field(
        1000, ge=0, description="Bootstrap resamples for the AUROC intervals."
    )

    def strengths(self) -> list[float]:
        """:attr:`adversary_strengths` parsed."""
        return [float(v) for v in self.adversary_strengths.split(",") if v.strip()]
