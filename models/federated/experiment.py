"""``vigil federate``: the federation and every comparison arm, then ``federation.json``.

1. Set A is cut into four **simulated** sites (:mod:`models.federated.sites`); every arm
   uses the same normalisation (training stays of all sites: the pooled per-series
   moments a secure sum of per-site moments would give) and the same seeded start.
2. **Federated**: a Flower server (:mod:`models.federated.relay`, TLS with certificates
   made for the run, 127.0.0.1) and one process per site (:mod:`models.federated.site`),
   each reading only its own training stays; ``rounds`` rounds of FedAvg or FedProx
   behind SecAgg+ (or plain, when switched off).
3. **Central**: the same network on the pooled training stays, early stopping on pooled
   validation. **Local-only**: one network per site on its own stays, early stopping on
   its own validation stays.
4. **Leave-one-site-out**: central and federated (in-process, same local training) on
   three sites with normalisation from those three; local-only: the mean AUROC of the
   three other sites' local models. Scored on the left-out site's test stays.
5. **Site-invariance frontier**: central training with the gradient-reversal adversary
   at each strength; per-site test AUROC and a fresh probe's one-vs-rest site AUROC.
6. Platt calibration on validation, test metrics once at the end (48 h), export of the
   global model with the federation's provenance in its card.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.deterioration.step_network import StepEnsemble
from models.federated.invariance import site_probe_auroc
from models.federated.relay import RelayServer
from models.federated.rounds import run_rounds
from models.federated.settings import FederateSettings
from models.federated.simulate import federate_in_process
from models.federated.sites import Site, make_sites, site_data_hash
from models.federated.tls import make_run_certificates
from models.federated.training import (
    Part,
    TrainConfig,
    build_net,
    calibrate,
    fit,
    get_parameters,
    logits_at,
    make_adversary,
    make_part,
    set_parameters,
)
from models.validity.metrics import interval
from streams.core.risk_metrics import auroc
from streams.datasets.physionet2012 import Stay, load_stays
from vigil.errors import FederationError, ModelError

__all__ = ["run_federate"]

_log = logging.getLogger(__name__)
SIMULATED = (
    "SIMULATED SITES: the four sites are PhysioNet 2012 set A's four ICU types "
    "(coronary care, cardiac-surgery recovery, medical, surgical) of one data set, not "
    "four hospitals."
)


def _auc48(net: StepEnsemble, part: Part) -> float:
    logits, _ = logits_at(net, part, (48,))
    return round(auroc(part.labels, logits[:, 0]), 4)


def _auc_ci(net: StepEnsemble, part: Part, resamples: int) -> dict[str, Any]:
    logits, _ = logits_at(net, part, (48,))
    return {
        "estimate": round(auroc(part.labels, logits[:, 0]), 4),
        "interval": interval(
            part.labels.astype(np.float64), logits[:, 0], auroc, resamples=resamples
        ),
        "n": len(part),
        "events": int(part.labels.sum()),
    }


def _prepare_parts(
    by_id: dict[int, Stay],
    labels: dict[int, int],
    site_of: dict[int, int],
    ids: Mapping[str, Sequence[int]],
    net: StepEnsemble,
) -> dict[str, Part]:
    return {
        name: make_part(
            [by_id[r] for r in rids], [labels[r] for r in rids], [site_of[r] for r in rids], net
        )
        for name, rids in ids.items()
    }


def _fresh(base: StepEnsemble, seed: int) -> StepEnsemble:
    """``base``'s buffers with the member initialised from ``seed``."""
    net = copy.deepcopy(base)
    torch.manual_seed(seed)
    fresh = type(net.members[0])(net.config)
    net.members[0].load_state_dict(fresh.state_dict())
    return net


def _federate_over_grpc(
    settings: FederateSettings,
    sites: Sequence[Site],
    start: StepEnsemble,
    config: TrainConfig,
    run_dir: Path,
) -> tuple[list[npt.NDArray[np.float32]], dict[str, Any]]:
    """The deployed shape: server here, one OS process per site, TLS on loopback."""
    certs = make_run_certificates()
    certs.write(run_dir / "tls")
    server = RelayServer(
        f"127.0.0.1:{settings.port}",
        (certs.server_certificate, certs.server_key),
        [s.name for s in sites],
    )
    server.start()
    initial_state = run_dir / "initial_state.pt"
    torch.save(start.state_dict(), initial_state)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path[1:2]])}
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        for index, site in enumerate(sites):
            spec = {
                "site": site.name,
                "address": f"127.0.0.1:{server.port}",
                "ca_certificate": str(run_dir / "tls" / "ca.pem"),
                "data_dir": str(settings.data_dir),
                "record_ids": list(site.record_ids["train"]),
                "initial_state": str(initial_state),
                "train_config": asdict(config),
                "local_epochs": settings.local_epochs,
                "seed": settings.seed + index,
                "secure": settings.secure_aggregation,
                "threads": settings.threads,
            }
            spec_path = run_dir / f"site-{site.name}.json"
            spec_path.write_text(json.dumps(spec))
            with (run_dir / f"site-{site.name}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(  # noqa: S603 - argv is built by Vigil, not a shell
                        [sys.executable, "-m", "models.federated.site", str(spec_path)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        deadline = time.monotonic() + settings.round_timeout_seconds
        while len(server.sites) < len(sites):
            dead = [p.args for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(server.sites)} of {len(sites)} sites registered; "
                    f"see {run_dir}/site-*.log"
                )
            time.sleep(0.2)
        ready = time.monotonic()
        result = run_rounds(
            server.grid,
            get_parameters(start),
            sites=len(sites),
            rounds=settings.rounds,
            secure=settings.secure_aggregation,
            strategy=settings.strategy,
            proximal_mu=settings.proximal_mu if settings.strategy == "fedprox" else 0.0,
            reconstruction_threshold=min(settings.reconstruction_threshold, len(sites)),
            max_weight=settings.max_weight,
            timeout_seconds=settings.round_timeout_seconds,
        )
        finished = time.monotonic()
    finally:
        server.stop()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    timing = {
        "wall_seconds": round(finished - started, 1),
        "sites_ready_seconds": round(ready - started, 1),
        "rounds_seconds": round(finished - ready, 1),
        "server_messages_received": len(server.received),
        "rounds": result.rounds,
    }
    return result.parameters, timing


def run_federate(settings: FederateSettings) -> dict[str, Any]:
    """Runs every arm and writes ``OUT/federation.json``; returns its content.

    Raises:
        ModelError: Unreadable data. FederationError: a failed round or site.
    """
    from models.common.training_data import PHYSIONET_2012, require_data

    require_data(settings, "data_dir", PHYSIONET_2012)
    began = time.monotonic()
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    out = settings.out
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    stays, outcomes = load_stays(settings.data_dir)
    if settings.max_stays is not None:
        stays = stays[: settings.max_stays]
        outcomes = {s.record_id: outcomes[s.record_id] for s in stays}
    sites = make_sites(stays, outcomes, settings.split_seed)
    for site in sites:
        if min(len(site.record_ids[p]) for p in ("train", "validation", "test")) < 2:
            raise ModelError(f"site {site.name} has too few stays; use more stays")
    by_id = {s.record_id: s for s in stays}
    labels = {r: outcomes[r].in_hospital_death for r in by_id}
    site_of = {r: i for i, site in enumerate(sites) for r in site.all_ids()}
    pooled = {
        p: sorted(r for s in sites for r in s.record_ids[p])
        for p in ("train", "validation", "test")
    }
    config = TrainConfig()
    base = build_net(config, [by_id[r] for r in pooled["train"]])
    parts = _prepare_parts(by_id, labels, site_of, pooled, base)
    _log.info("prepared %d stays in %.0f s", len(by_id), time.monotonic() - began)

    def site_part(part: str, index: int) -> Part:
        return parts[part].subset(parts[part].site == index)

    res = settings.bootstrap_resamples
    fit_args: dict[str, Any] = {
        "max_epochs": settings.central_epochs,
        "patience": settings.patience,
    }

    # Federated (the deployed shape)
    start = _fresh(base, settings.seed)
    fed_params, timing = _federate_over_grpc(settings, sites, start, config, run_dir)
    federated = copy.deepcopy(start)
    set_parameters(federated, fed_params)
    _log.info("federation done in %.0f s", timing["wall_seconds"])

    # Central and local-only
    central = _fresh(base, settings.seed)
    central_fit = fit(
        central, parts["train"], parts["validation"], config, seed=settings.seed, **fit_args
    )
    local: list[StepEnsemble] = []
    local_fits = []
    for index in range(len(sites)):
        net = _fresh(base, settings.seed)
        local_fits.append(
            fit(
                net,
                site_part("train", index),
                site_part("validation", index),
                config,
                seed=settings.seed + index,
                **fit_args,
            )
        )
        local.append(net)
    _log.info("central and local-only done")

    # Leave one site out
    loso: list[dict[str, Any]] = []
    if settings.leave_one_site_out:
        for held, site in enumerate(sites):
            keep = [i for i in range(len(sites)) if i != held]
            train_ids = {
                p: [r for r in pooled[p] if site_of[r] in keep] for p in ("train", "validation")
            }
            if settings.loso_normalisation == "three-sites":
                net3 = build_net(config, [by_id[r] for r in train_ids["train"]])
                parts3 = _prepare_parts(
                    by_id,
                    labels,
                    site_of,
                    {**train_ids, "test": list(site.record_ids["test"])},
                    net3,
                )
            else:  # "pooled": reuse the prepared stays (the left-out site's means/SDs leak)
                net3 = base
                parts3 = {
                    p: parts[p].subset(np.isin(parts[p].site, keep))
                    for p in ("train", "validation")
                } | {"test": site_part("test", held)}
            c3 = _fresh(net3, settings.seed)
            fit(c3, parts3["train"], parts3["validation"], config, seed=settings.seed, **fit_args)
            f3 = federate_in_process(
                _fresh(net3, settings.seed),
                [parts3["train"].subset(parts3["train"].site == i) for i in keep],
                config,
                rounds=settings.rounds,
                local_epochs=settings.local_epochs,
                seed=settings.seed,
            )
            held_test = site_part("test", held)
            loso.append(
                {
                    "site": site.name,
                    "central": _auc48(c3, parts3["test"]),
                    "federated": _auc48(f3, parts3["test"]),
                    "local_only_mean_of_other_sites": round(
                        float(np.mean([_auc48(local[i], held_test) for i in keep])), 4
                    ),
                }
            )
            _log.info("leave-one-site-out %s done", site.name)

    # Calibration on validation, test once
    fed_cal = calibrate(federated, parts["validation"])
    central_cal = calibrate(central, parts["validation"])
    site_rows = []
    for index, site in enumerate(sites):
        test = site_part("test", index)
        calibrate(local[index], site_part("validation", index))
        site_rows.append(
            {
                "name": site.name,
                "icu_type": site.icu_type,
                "simulated": True,
                "n_train": len(site.record_ids["train"]),
                "n_validation": len(site.record_ids["validation"]),
                "n_test": len(site.record_ids["test"]),
                "test_mortality": round(float(test.labels.mean()), 4),
                "data_sha256": site_data_hash(settings.data_dir, site),
                "test_auroc_local": _auc48(local[index], test),
                "test_auroc_federated": _auc48(federated, test),
                "test_auroc_central": _auc48(central, test),
                "test_auroc_local_ci": _auc_ci(local[index], test, res)["interval"],
                "test_auroc_federated_ci": _auc_ci(federated, test, res)["interval"],
                "local_best_epoch": local_fits[index]["best_epoch"],
                "leave_one_site_out_auroc": next(
                    (
                        {k: v for k, v in row.items() if k != "site"}
                        for row in loso
                        if row["site"] == site.name
                    ),
                    None,
                ),
            }
        )

    frontier = (
        _frontier(settings, base, parts, len(sites), config, central, central_fit)
        if settings.strengths()
        else []
    )

    fed_ci = _auc_ci(federated, parts["test"], res)
    central_ci = _auc_ci(central, parts["test"], res)
    report: dict[str, Any] = {
        "simulated_sites": SIMULATED,
        "strategy": settings.strategy,
        "proximal_mu": settings.proximal_mu if settings.strategy == "fedprox" else None,
        "rounds": settings.rounds,
        "local_epochs": settings.local_epochs,
        "secure_aggregation": settings.secure_aggregation,
        "secagg": {
            "implementation": "flwr SecAggPlusWorkflow + secaggplus_mod",
            "num_shares": len(sites),
            "reconstruction_threshold": min(settings.reconstruction_threshold, len(sites)),
            "max_weight": settings.max_weight,
        }
        if settings.secure_aggregation
        else None,
        "transport": "gRPC over TLS on 127.0.0.1, certificates made for the run",
        "score_hour": 48,
        # Validation AUROC (48 h), what a choice between federation settings may read.
        "pooled_validation_auroc_federated": _auc48(federated, parts["validation"]),
        "pooled_validation_auroc_central": _auc48(central, parts["validation"]),
        "pooled_test_auroc_federated": fed_ci["estimate"],
        "pooled_test_auroc_federated_ci": fed_ci["interval"],
        "pooled_test_auroc_central": central_ci["estimate"],
        "pooled_test_auroc_central_ci": central_ci["interval"],
        "pooled_test": {"n": fed_ci["n"], "events": fed_ci["events"]},
        "central_best_epoch": central_fit["best_epoch"],
        "calibration": {"federated": fed_cal, "central": central_cal},
        "sites": site_rows,
        "leave_one_site_out": loso,
        "leave_one_site_out_normalisation": settings.loso_normalisation,
        "site_invariance_frontier": frontier,
        "federation_timing": timing,
        "seeds": {
            "network": settings.seed,
            "split": settings.split_seed,
            "sites": [settings.seed + i for i in range(len(sites))],
        },
        "settings": settings.model_dump(mode="json"),
        "wall_seconds_total": 0.0,
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.npz", parts["test"], by_id, federated, central, local)

    def write() -> dict[str, Any]:
        report["wall_seconds_total"] = round(time.monotonic() - began, 1)
        safe: dict[str, Any] = _json_safe(report)
        text = json.dumps(safe, indent=1, allow_nan=False) + "\n"
        (out / "federation.json").write_text(text)
        return safe

    # Written before the export too, so a failing export loses none of the comparison.
    write()
    if settings.export:
        report["export"] = _export(settings, federated, report, pooled, sites)
    return write()


def _json_safe(value: Any) -> Any:
    """NaN (a group with one outcome class) as None, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _risk48(net: StepEnsemble, part: Part) -> npt.NDArray[np.float64]:
    logits, _ = logits_at(net, part, (48,))
    scale, bias = float(net.calibration_scale), float(net.calibration_bias)
    return np.asarray(1 / (1 + np.exp(-(scale * logits[:, 0] + bias))), dtype=np.float64)


def _write_predictions(
    path: Path,
    test: Part,
    by_id: dict[int, Stay],
    federated: StepEnsemble,
    central: StepEnsemble,
    local: Sequence[StepEnsemble],
) -> None:
    """Calibrated 48 h risks of every test stay under each regime (its own site's local
    model for local-only), with the site, outcome, age and sex ``vigil validate`` reads."""
    local_risk = np.zeros(len(test))
    for index, net in enumerate(local):
        rows = test.site == index
        if rows.any():
            local_risk[rows] = _risk48(net, test.subset(rows))

    def descriptor(name: str) -> npt.NDArray[np.float64]:
        values = [by_id[r].descriptors.get(name) for r in test.record_ids]
        return np.array([np.nan if v is None else float(v) for v in values])

    np.savez(
        path,
        record_id=np.array(test.record_ids, dtype=np.int64),
        site=test.site,
        label=test.labels.astype(np.int64),
        age_years=descriptor("Age"),
        sex=descriptor("Gender"),
        risk_federated=_risk48(federated, test),
        risk_central=_risk48(central, test),
        risk_local=local_risk,
    )


def _frontier(
    settings: FederateSettings,
    base: StepEnsemble,
    parts: dict[str, Part],
    n_sites: int,
    config: TrainConfig,
    central: StepEnsemble,
    central_fit: dict[str, Any],
) -> list[dict[str, Any]]:
    """Strength 0 is the central model itself (same seed, data and settings)."""
    rows = []
    for strength in settings.strengths():
        if strength == 0:
            net, fitted = central, central_fit
        else:
            cfg = TrainConfig(**{**asdict(config), "adversary_strength": strength})
            net = _fresh(base, settings.seed)
            adversary = make_adversary(net.config.fused, n_sites, settings.seed)
            fitted = fit(
                net,
                parts["train"],
                parts["validation"],
                cfg,
                max_epochs=settings.central_epochs,
                patience=settings.patience,
                seed=settings.seed,
                adversary=adversary,
            )
        _, val_rep = logits_at(net, parts["validation"], (48,))
        _, test_rep = logits_at(net, parts["test"], (48,))
        probe = site_probe_auroc(
            val_rep[:, 0], parts["validation"].site, test_rep[:, 0], parts["test"].site, n_sites
        )
        test = parts["test"]
        rows.append(
            {
                "strength": strength,
                "best_epoch": fitted["best_epoch"],
                "validation_auroc": fitted["best_val_auroc"],
                "pooled_test_auroc": _auc48(net, test),
                "site_test_auroc": [
                    _auc48(net, test.subset(test.site == i)) for i in range(n_sites)
                ],
                "site_probe_auroc_mean": round(probe["mean"], 4),
                "site_probe_auroc_per_site": {k: round(v, 4) for k, v in probe["per_site"].items()},  # type: ignore[attr-defined]
            }
        )
        _log.info("frontier strength %s done", strength)
    return rows


def _export(
    settings: FederateSettings,
    federated: StepEnsemble,
    report: dict[str, Any],
    pooled: dict[str, list[int]],
    sites: Sequence[Site],
) -> dict[str, Any]:
    """Checkpoint in the step format, OOD fit of it, Triton repo and card under OUT."""
    from models.common.provenance import code_version, package_versions
    from models.deterioration.step_export import export_step
    from models.deterioration.step_train import STEP_TRAINING_SOURCES
    from models.ood.step_train import StepOODSettings, fit_step_ood
    from streams.datasets.physionet2012 import data_hash

    checkpoint = settings.out / "deterioration_step_federated.pt"
    federation = {
        "simulated_sites": SIMULATED,
        "sites": [
            {
                "name": r["name"],
                "icu_type": r["icu_type"],
                "n_train": r["n_train"],
                "data_sha256": r["data_sha256"],
            }
            for r in report["sites"]
        ],
        "rounds": settings.rounds,
        "local_epochs": settings.local_epochs,
        "strategy": settings.strategy,
        "secure_aggregation": settings.secure_aggregation,
        "seeds": report["seeds"],
        "transport": report["transport"],
    }
    meta = {
        "net_config": federated.config.to_dict(),
        "members": 1,
        "state_layout": federated.layout.to_dict(),
        "settings": settings.model_dump(mode="json"),
        "split": {p: list(ids) for p, ids in pooled.items()},
        "split_method": "models.deterioration.train.split_record_ids (seed "
        f"{settings.split_seed}), each part cut by ICUType into the simulated sites",
        "data_dir": str(settings.data_dir),
        "data_sha256": data_hash(settings.data_dir),
        "code_version": code_version(
            (
                *STEP_TRAINING_SOURCES,
                *(
                    f"models/federated/{m}.py"
                    for m in ("experiment", "relay", "rounds", "site", "sites", "training")
                ),
            )
        ),
        "packages": package_versions(with_pydantic=True),
        "metrics": {
            "pooled_test_auroc_48h": report["pooled_test_auroc_federated"],
            "pooled_test_auroc_48h_central": report["pooled_test_auroc_central"],
        },
        "federation": federation,
    }
    state = {k: v.clone() for k, v in federated.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, checkpoint)
    ood_fit = settings.out / "deterioration_step_federated_ood.pt"
    if settings.max_stays is None:
        fit_step_ood(
            StepOODSettings(
                data_dir=settings.data_dir,
                checkpoint=checkpoint,
                output=ood_fit,
                window_ood=None,
                bootstrap_resamples=0,
                timeline_stays=20,
                threads=settings.threads,
            )
        )
        result = export_step(checkpoint, settings.out / "triton_repo", ood_fit=ood_fit)
        return {
            "checkpoint": str(checkpoint),
            "configs": {name: str(path) for name, path in result.configs.items()},
            "models": {name: str(path) for name, path in result.models.items()},
            "model_card": str(result.model_card),
            "parity_max_abs_diff": result.max_abs_diff,
        }
    return {
        "checkpoint": str(checkpoint),
        "skipped": "Triton export needs the full data set (the OOD fit recomputes the split)",
    }
