"""Alert burden against sensitivity on the validation split; the operating point.

1. Hourly model risks (hours 1…48 after ICU admission) and OOD distances of every
   **validation** stay, from the trained ensemble (``models/weights/deterioration.pt``)
   and the OOD fit (``models/weights/ood.pt``); the split is recomputed with
   :func:`models.train.split_record_ids` and must equal the checkpoint's. Cached as
   ``.npz`` (a forward pass of 38,400 windows takes a few minutes on one core).
2. Replay of the pure alert policy (:func:`streams.core.alerting.evaluate`) over each
   stay's hourly risks, for a grid of arm thresholds, disarm margins and persistence.
3. Burden = alert episodes opened (``open``; escalations and deferrals not counted) per
   patient-hour scored; sensitivity = fraction of the stays that died in hospital with at
   least one alert opened within their 48 h. The chosen point is the most sensitive one
   with burden <= ``--max-burden``; a tie goes to the lower burden.

Run::

    python -m models.alert_operating_point --out docs/alerting_curve.svg
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["CurvePoint", "hourly_risks", "main", "replay"]

HOURS: Final = tuple(range(1, 49))
_CHUNK: Final = 256
_T0: Final = datetime(2012, 1, 1, tzinfo=UTC)
ARM_GRID: Final = tuple(round(0.10 + 0.025 * i, 3) for i in range(17))  # 0.10 ... 0.50
MARGIN_GRID: Final = (0.025, 0.05, 0.10)
PERSISTENCE_GRID: Final = (1, 2, 3)


def hourly_risks(
    data_dir: Path,
    checkpoint: Path,
    ood_checkpoint: Path,
    threads: int = 1,
    split_name: str = "validation",
) -> dict[str, npt.NDArray[Any]]:
    """Risks and OOD distances at hours 1…48 of one split's stays (``validation``; the
    ``test`` split only to check the chosen point once).

    Returns:
        ``record_ids [N]``, ``death [N]``, ``risk [N,48]``, ``distance [N,48]``,
        ``threshold []`` (the OOD threshold).
    """
    import torch  # heavy; only this phase needs it

    from models.export import load_checkpoint
    from models.physionet2012 import load_stays
    from models.train import make_windows, split_record_ids
    from vigil.errors import ModelError

    torch.set_num_threads(threads)
    net, meta = load_checkpoint(checkpoint)
    stays, outcomes = load_stays(data_dir)
    if meta["settings"].get("max_stays") is not None:
        stays = stays[: int(meta["settings"]["max_stays"])]
    labels = {s.record_id: outcomes[s.record_id].in_hospital_death for s in stays}
    split = split_record_ids(labels, seed=int(meta["settings"]["split_seed"]))
    if {k: list(v) for k, v in split.items()} != meta["split"]:
        raise ModelError("the recomputed split differs from the checkpoint's; wrong data?")
    by_id = {s.record_id: s for s in stays}
    valid = [by_id[r] for r in split[split_name]]
    ood = torch.load(ood_checkpoint, map_location="cpu", weights_only=True)
    whitening = ood["whitening"].double()
    centres = ood["means"].double() @ whitening.T
    max_images, image_dim = (
        int(meta["net_config"]["max_images"]),
        int(meta["net_config"]["image_dim"]),
    )
    arrays = [s.arrays() for s in valid]
    risk = np.zeros((len(valid), len(HOURS)))
    distance = np.zeros((len(valid), len(HOURS)))
    with torch.no_grad():
        for j, hour in enumerate(HOURS):
            for start in range(0, len(arrays), _CHUNK):
                chunk = arrays[start : start + _CHUNK]
                inputs = make_windows(chunk, [hour] * len(chunk)).tensors(max_images, image_dim)
                fused, logits = [], []
                for member in net.members:
                    f, logit, _ = member.encode(*inputs)  # type: ignore[operator]
                    fused.append(f)
                    logits.append(logit)
                mean_logit = torch.stack(logits).mean(0)
                p = torch.sigmoid(net.calibrated_logit(mean_logit)).reshape(-1)
                white = torch.cat(fused, dim=1).double() @ whitening.T
                d = torch.cdist(white, centres).min(dim=1).values
                risk[start : start + len(chunk), j] = p.numpy()
                distance[start : start + len(chunk), j] = d.numpy()
    return {
        "record_ids": np.array([s.record_id for s in valid]),
        "death": np.array([labels[s.record_id] for s in valid]),
        "risk": risk,
        "distance": distance,
        "threshold": np.array(float(ood["meta"]["threshold"])),
    }


@dataclass(frozen=True)
class CurvePoint:
    """One policy on the validation stays.

    Attributes:
        arm_risk: Arm threshold.
        margin: ``arm_risk - disarm_risk``.
        persistence: Consecutive hourly scores at or above arm before opening.
        alerts_per_patient_hour: Episodes opened per patient-hour scored.
        death_sensitivity: Fraction of stays that died with an alert within 48 h.
        survivor_alerted: Fraction of survivors' stays with an alert.
        deferred_per_patient_hour: ``deferred_for_review`` alerts per patient-hour.
        median_first_alert_hour: Median hour of the first alert among alerted deaths.
    """

    arm_risk: float
    margin: float
    persistence: int
    alerts_per_patient_hour: float
    death_sensitivity: float
    survivor_alerted: float
    deferred_per_patient_hour: float
    median_first_alert_hour: float


def policy_for(arm: float, margin: float, persistence: int) -> Any:
    """The policy replayed for one grid point (refractory and disarm persistence fixed)."""
    from streams.core.alerting import AlertPolicy

    return AlertPolicy(
        arm_risk=arm,
        disarm_risk=round(arm - margin, 4),
        arm_scores=persistence,
        arm_duration=timedelta(hours=persistence - 1),
        disarm_scores=2,
        disarm_duration=timedelta(hours=1),
        refractory=timedelta(hours=6),
        realert_margin=0.15,
    )


def replay(
    data: dict[str, npt.NDArray[Any]], arm: float, margin: float, persistence: int
) -> CurvePoint:
    """Replay one policy over every stay's hourly risks and OOD verdicts."""
    from streams.core.alerting import OodVerdict, evaluate

    policy = policy_for(arm, margin, persistence)
    risk, distance = data["risk"], data["distance"]
    threshold = float(data["threshold"])
    death = data["death"].astype(bool)
    opened = np.zeros(len(risk), dtype=np.int64)
    deferred = np.zeros(len(risk), dtype=np.int64)
    first = np.full(len(risk), np.nan)
    for i in range(len(risk)):
        state: dict[str, Any] = {}
        ids: set[str] = set()
        for j, hour in enumerate(HOURS):
            d = float(distance[i, j])
            state, decisions = evaluate(
                state,
                patient_id=str(data["record_ids"][i]),
                at=_T0 + timedelta(hours=hour),
                risk=float(risk[i, j]),
                news2=None,
                policy=policy,
                ood=OodVerdict(d, threshold, d > threshold),
            )
            for decision in decisions:
                if decision.state == "open" and decision.alert_id not in ids:
                    ids.add(decision.alert_id)
                    opened[i] += 1
                    if np.isnan(first[i]):
                        first[i] = hour
                elif decision.state == "deferred_for_review":
                    deferred[i] += 1
    hours = len(risk) * len(HOURS)
    alerted = opened > 0
    return CurvePoint(
        arm_risk=arm,
        margin=margin,
        persistence=persistence,
        alerts_per_patient_hour=round(float(opened.sum()) / hours, 5),
        death_sensitivity=round(float(alerted[death].mean()), 4),
        survivor_alerted=round(float(alerted[~death].mean()), 4),
        deferred_per_patient_hour=round(float(deferred.sum()) / hours, 5),
        median_first_alert_hour=float(np.nanmedian(first[death & alerted]))
        if (death & alerted).any()
        else float("nan"),
    )


def choose(points: Sequence[CurvePoint], max_burden: float, min_sensitivity: float) -> CurvePoint:
    """The most sensitive point within the burden goal (ties: lower burden, then higher
    arm, then more persistence); if none is within it, the least burdensome point."""
    within = [p for p in points if p.alerts_per_patient_hour <= max_burden]
    if not within:
        return min(points, key=lambda p: p.alerts_per_patient_hour)
    best = max(
        within,
        key=lambda p: (
            p.death_sensitivity >= min_sensitivity,
            # Among points meeting both goals prefer the fewest alerts; otherwise the
            # most sensitive.
            -p.alerts_per_patient_hour
            if p.death_sensitivity >= min_sensitivity
            else p.death_sensitivity,
            p.arm_risk,
            p.persistence,
        ),
    )
    return best


def plot(points: Sequence[CurvePoint], chosen: CurvePoint, out: Path, max_burden: float) -> None:
    """Burden (x) against death sensitivity (y), one line per margin and persistence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    groups = sorted({(p.margin, p.persistence) for p in points})
    for margin, persistence in groups:
        line = sorted(
            (p for p in points if (p.margin, p.persistence) == (margin, persistence)),
            key=lambda p: p.arm_risk,
        )
        ax.plot(
            [p.alerts_per_patient_hour for p in line],
            [p.death_sensitivity for p in line],
            marker=".",
            linewidth=1,
            label=f"persistence {persistence} h, disarm = arm - {margin:g}",
        )
    ax.axvline(max_burden, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(0.8, color="grey", linestyle=":", linewidth=0.8)
    ax.scatter(
        [chosen.alerts_per_patient_hour],
        [chosen.death_sensitivity],
        s=120,
        facecolors="none",
        edgecolors="black",
        zorder=5,
        label=f"chosen: arm {chosen.arm_risk:g}, persistence {chosen.persistence} h",
    )
    ax.set_xlabel("alerts opened per patient-hour (validation, hours 1-48)")
    ax.set_ylabel("stays that died with an alert within 48 h")
    ax.set_title("Alert burden vs sensitivity, validation split (800 stays)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=out.suffix.lstrip(".") or "svg", metadata={"Date": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: compute (or reuse) the risks, replay the grid, write curve and JSON."""
    parser = argparse.ArgumentParser(prog="python -m models.alert_operating_point")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/physionet2012"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/weights/deterioration.pt"))
    parser.add_argument("--ood-checkpoint", type=Path, default=Path("models/weights/ood.pt"))
    parser.add_argument(
        "--cache", type=Path, default=Path("reports/alert_op/validation_hourly.npz")
    )
    parser.add_argument("--out", type=Path, default=Path("docs/alerting_curve.svg"))
    parser.add_argument("--json", type=Path, default=Path("reports/alert_op/curve.json"))
    parser.add_argument("--max-burden", type=float, default=0.05)
    parser.add_argument("--min-sensitivity", type=float, default=0.80)
    args = parser.parse_args(argv)
    if args.cache.exists():
        with np.load(args.cache) as cached:
            data = {k: cached[k] for k in cached.files}
    else:
        data = hourly_risks(args.data_dir, args.checkpoint, args.ood_checkpoint)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, **data)
    points = [
        replay(data, arm, margin, persistence)
        for arm in ARM_GRID
        for margin in MARGIN_GRID
        for persistence in PERSISTENCE_GRID
        if arm - margin > 0
    ]
    chosen = choose(points, args.max_burden, args.min_sensitivity)
    plot(points, chosen, args.out, args.max_burden)
    summary = {
        "stays": len(data["risk"]),
        "deaths": int(data["death"].sum()),
        "patient_hours": int(data["risk"].size),
        "ood_threshold": float(data["threshold"]),
        "chosen": chosen.__dict__,
        "meets_goal": chosen.alerts_per_patient_hour <= args.max_burden
        and chosen.death_sensitivity >= args.min_sensitivity,
        "points": [p.__dict__ for p in points],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "points"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
