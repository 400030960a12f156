"""In-process FedAvg / FedProx over :mod:`models.federated.training` (no transport).

Used where the federation is a comparison arm rather than the deployed run (the
leave-one-site-out federations): the same local training and the same example-weighted
average as the Flower run; the tests show SecAgg+'s aggregate equals this average within
its quantisation tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from models.deterioration.step_network import StepEnsemble
from models.federated.training import (
    Part,
    TrainConfig,
    get_parameters,
    set_parameters,
    train_epochs,
)

__all__ = ["fedavg", "federate_in_process"]

Params = list[npt.NDArray[np.float32]]


def fedavg(updates: Sequence[Params], weights: Sequence[float]) -> Params:
    """Example-weighted mean of each parameter array."""
    total = float(sum(weights))
    return [
        np.asarray(
            sum(w * u[i].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / total,
            dtype=np.float32,
        )
        for i in range(len(updates[0]))
    ]


def federate_in_process(
    net: StepEnsemble,
    sites: Sequence[Part],
    config: TrainConfig,
    *,
    rounds: int,
    local_epochs: int,
    seed: int,
) -> StepEnsemble:
    """``rounds`` rounds from ``net``'s parameters; leaves the global model in ``net``."""
    global_params = get_parameters(net)
    for round_no in range(1, rounds + 1):
        updates, weights = [], []
        for index, part in enumerate(sites):
            set_parameters(net, global_params)
            train_epochs(
                net,
                part,
                config,
                epochs=local_epochs,
                seed=seed + index + 1000 * round_no,
                anchor=global_params,
            )
            updates.append(get_parameters(net))
            weights.append(float(len(part)))
        global_params = fedavg(updates, weights)
    set_parameters(net, global_params)
    return net
