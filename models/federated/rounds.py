"""The server's side of the rounds: Flower's ``DefaultWorkflow`` with the SecAgg+ fit
workflow (or Flower's plain fit workflow) and a FedAvg or FedProx strategy, run over a
``Grid``; a round that does not aggregate raises instead of silently keeping the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Context, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg, FedProx
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from vigil.errors import FederationError

__all__ = ["RoundsResult", "run_rounds"]

_PARAMS_RECORD = "parameters"  # flwr.server.workflow.constant.MAIN_PARAMS_RECORD


@dataclass(frozen=True)
class RoundsResult:
    """Final global parameters and, per round, the sites aggregated and their metrics."""

    parameters: list[npt.NDArray[np.float32]]
    rounds: list[dict[str, Any]]


def _recording(base: type[FedAvg]) -> Any:
    class Recording(base):  # type: ignore[misc, valid-type]
        """The strategy, remembering which round it aggregated and with how many sites."""

        aggregated: dict[int, int]

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            self.aggregated[server_round] = len(results)
            if failures:
                raise FederationError(
                    f"round {server_round}: {len(failures)} site(s) failed: {failures[:1]}"
                )
            return super().aggregate_fit(server_round, results, failures)

    return Recording


def run_rounds(
    grid: Grid,
    initial: Sequence[npt.NDArray[np.float32]],
    *,
    sites: int,
    rounds: int,
    secure: bool,
    strategy: str = "fedavg",
    proximal_mu: float = 0.0,
    num_shares: int | None = None,
    reconstruction_threshold: int | None = None,
    clipping_range: float = 8.0,
    max_weight: float = 10000.0,
    timeout_seconds: float | None = 600.0,
) -> RoundsResult:
    """Runs ``rounds`` fit rounds with every one of ``sites`` sites selected.

    Args:
        grid: Where the sites are (they must register before the first round).
        initial: Starting parameters.
        sites: Sites expected (all are selected every round).
        rounds: Fit rounds.
        secure: SecAgg+ (Flower's ``SecAggPlusWorkflow``) or Flower's plain fit workflow.
        strategy: ``fedavg`` or ``fedprox`` (``proximal_mu`` goes to the sites).
        num_shares: SecAgg+ shares per site key (default: all sites).
        reconstruction_threshold: SecAgg+ shares needed to unmask (default: sites - 1,
            so one site may drop out).
        clipping_range: SecAgg+ clips parameters to ``±clipping_range`` before
            quantisation.
        max_weight: Largest example count a site may report (SecAgg+).
        timeout_seconds: How long a stage waits for replies.

    Raises:
        FederationError: A round did not aggregate (too few sites, a site error).
    """
    if strategy not in ("fedavg", "fedprox"):
        raise FederationError(f"unknown strategy {strategy!r} (fedavg, fedprox)")
    common: dict[str, Any] = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": sites,
        "min_evaluate_clients": 0,
        "min_available_clients": sites,
        "initial_parameters": ndarrays_to_parameters(list(initial)),
    }
    if strategy == "fedprox":
        chosen = _recording(FedProx)(proximal_mu=proximal_mu, **common)
    else:
        chosen = _recording(FedAvg)(**common)
    aggregated: dict[int, int] = {}
    chosen.aggregated = aggregated
    threshold = reconstruction_threshold if reconstruction_threshold is not None else sites - 1
    fit = (
        SecAggPlusWorkflow(
            num_shares=num_shares if num_shares is not None else sites,
            reconstruction_threshold=threshold,
            clipping_range=clipping_range,
            max_weight=max_weight,
            timeout=timeout_seconds,
        )
        if secure
        else default_fit_workflow
    )
    history: list[dict[str, Any]] = []

    def checked_fit(grid: Grid, context: Context) -> None:
        done = len(aggregated)
        fit(grid, context)
        round_no = done + 1
        if round_no not in aggregated:
            raise FederationError(
                f"round {round_no}: the {'secure ' if secure else ''}aggregation did not "
                f"complete (too few of {sites} sites answered"
                + (f"; SecAgg+ needs {threshold}" if secure else "")
                + ")"
            )
        history.append({"round": round_no, "sites_aggregated": aggregated[round_no]})

    def no_evaluation(grid: Grid, context: Context) -> None:
        return None

    # Flower's Message constructor reads the process's task identity (start_grid sets it
    # the same way for its legacy Python API).
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=rounds, round_timeout=timeout_seconds),
        strategy=chosen,
    )
    DefaultWorkflow(fit_workflow=checked_fit, evaluate_workflow=no_evaluation)(grid, context)
    params = parameters_to_ndarrays(_to_parameters(context.state.array_records[_PARAMS_RECORD]))
    return RoundsResult([np.asarray(p, dtype=np.float32) for p in params], history)


def _to_parameters(record: Any) -> Any:
    return arrayrecord_to_parameters(record, keep_input=True)
