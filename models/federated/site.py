"""One simulated site's process: ``python -m models.federated.site SPEC.json``.

It reads **only its own site's training stays** (by RecordID, through the project's
loader and step features), builds the network from the run's starting state (the
normalisation every site shares), and answers the server's rounds: each ``fit`` loads
the global parameters, trains ``local_epochs`` epochs on the site's stays (FedProx term
when ``proximal_mu`` > 0) and returns the parameters and the number of stays. Behind
Flower's SecAgg+ client mod, the reply leaves the site masked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from models.deterioration.network import NetConfig
from models.deterioration.step_network import StepEnsemble
from models.federated.relay import SiteLink, serve_site
from models.federated.training import (
    Part,
    TrainConfig,
    get_parameters,
    make_part,
    set_parameters,
    train_epochs,
)
from streams.datasets.physionet2012 import load_stays

__all__ = ["SiteTrainer", "site_app"]


class SiteTrainer(NumPyClient):
    """Local training of one site (a Flower ``NumPyClient``)."""

    def __init__(
        self, net: StepEnsemble, part: Part, config: TrainConfig, local_epochs: int, seed: int
    ) -> None:
        self.net = net
        self.part = part
        self.config = config
        self.local_epochs = local_epochs
        self.seed = seed
        self.round = 0

    def fit(
        self, parameters: list[npt.NDArray[np.float32]], config: dict[str, Any]
    ) -> tuple[list[npt.NDArray[np.float32]], int, dict[str, Any]]:
        self.round += 1
        set_parameters(self.net, parameters)
        loss = train_epochs(
            self.net,
            self.part,
            self.config,
            epochs=self.local_epochs,
            seed=self.seed + 1000 * self.round,
            anchor=parameters,
        )
        return get_parameters(self.net), len(self.part), {"loss": loss}


def site_app(trainer: NumPyClient, secure: bool) -> ClientApp:
    """The site's ClientApp: the trainer, behind SecAgg+'s client mod when ``secure``."""

    def client_fn(context: Context) -> Client:
        return trainer.to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])


def main() -> None:
    """Reads the spec, prepares the site's stays, serves rounds until the server ends."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(int(spec["threads"]))
    torch.use_deterministic_algorithms(True)
    payload = torch.load(spec["initial_state"], weights_only=True)
    config = TrainConfig(**spec["train_config"])
    net = StepEnsemble(NetConfig(hidden=config.hidden, dropout=config.dropout), 1)
    net.load_state_dict(payload)
    stays, outcomes = load_stays(Path(spec["data_dir"]), record_ids=spec["record_ids"])
    labels = [outcomes[s.record_id].in_hospital_death for s in stays]
    part = make_part(stays, labels, [0] * len(stays), net)
    trainer = SiteTrainer(net, part, config, int(spec["local_epochs"]), int(spec["seed"]))
    link = SiteLink(spec["address"], Path(spec["ca_certificate"]).read_bytes(), spec["site"])
    serve_site(link, site_app(trainer, bool(spec["secure"])))


if __name__ == "__main__":
    main()
