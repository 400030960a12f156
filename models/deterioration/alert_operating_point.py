"""Alert burden against sensitivity on the validation split; the operating point.

1. Hourly model risks (hours 1…48 after ICU admission) of every **validation** stay, from
   the trained ensemble (``models/weights/deterioration.pt``); the split is recomputed with
   :func:`models.deterioration.train.split_record_ids` and must equal the checkpoint's.
2. The OOD verdict on the same windows, as served: the detector of
   :func:`models.ood.export.build_detector` (the eager module that ``vigil export ood``
   scripts into ``triton_repo/ood``, built from the same ``models/weights/ood.pt``), so
   both channels (representation, and input statistics per hour bucket), the combined
   ``distance`` (each channel's distance over its threshold; threshold 1.0) and its
   ``ood`` flag. Risks and verdicts are cached per split as ``.npz`` with the SHA-256 of
   the files they came from; a part whose files changed is recomputed (a forward pass of
   38,400 windows takes about a minute on one core, twice: risk and OOD).
3. Replay of the pure alert policy (:func:`streams.core.alerting.evaluate`) over each
   stay's hourly risks and verdicts, for a grid of arm thresholds, disarm margins and
   persistence; everything else is :class:`~streams.core.alerting.AlertPolicy`'s default
   (resolution, refractory, OOD deferral persistence).
4. Burden = alert episodes opened (``open``; escalations and deferrals not counted) per
   patient-hour scored; sensitivity = fraction of the stays that died in hospital with at
   least one alert opened within their 48 h. The chosen point (:func:`choose`): among the
   points with burden <= ``--max-burden`` and sensitivity >= ``--min-sensitivity``, the
   fewest alerts; if none is that sensitive, the most sensitive within the burden. With
   ``--test`` the chosen point is replayed once on the **test** split (never used to
   choose).

``--model step`` does the same for the step model ``deterioration_step``: its served risk
and its own OOD verdict, from one call of the served module per hour
(:mod:`models.deterioration.alert_step_scores`), on the step checkpoint's split, cached in
``step_<split>_hourly.npz``.

Run::

    python -m models.deterioration.alert_operating_point --test
    python -m models.deterioration.alert_operating_point --model step --test
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from models.deterioration.alert_split import HOURS, split_stays

__all__ = [
    "MODELS",
    "CurvePoint",
    "choose",
    "hourly_ood",
    "hourly_risks",
    "load_or_compute",
    "main",
    "policy_for",
    "replay",
]

_CHUNK: Final = 256
_T0: Final = datetime(2012, 1, 1, tzinfo=UTC)
ARM_GRID: Final = tuple(round(0.10 + 0.025 * i, 3) for i in range(17))  # 0.10 ... 0.50
MARGIN_GRID: Final = (0.025, 0.05, 0.10)
PERSISTENCE_GRID: Final = (1, 2, 3)
RISK_KEYS: Final = ("record_ids", "death", "risk")
OOD_KEYS: Final = ("ood_distance", "ood_flag", "ood_representation", "ood_input", "threshold")
"""Cached OOD arrays: ``[N,48]`` combined distance, flag and each channel's flag, and the
threshold of the combined distance (``[]``)."""
STEP_KEYS: Final = ("full_sequence_max_abs_diff",)
"""Also cached for the step model: the largest |served - full-sequence| risk (``[]``)."""
MODELS: Final = {
    "window": (Path("models/weights/deterioration.pt"), Path("models/weights/ood.pt")),
    "step": (
        Path("models/weights/deterioration_step.pt"),
        Path("models/weights/deterioration_step_ood.pt"),
    ),
}
"""Default checkpoint and OOD checkpoint of each ``--model``."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (cache key)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hourly_inputs(stays: Sequence[Any], meta: dict[str, Any]) -> Any:
    """``(j, start, n, inputs)`` per hour ``HOURS[j]`` and chunk of stays: the eight
    network inputs of the windows at admission + hour (image slots empty)."""
    from models.deterioration.train import make_windows

    max_images = int(meta["net_config"]["max_images"])
    image_dim = int(meta["net_config"]["image_dim"])
    arrays = [s.arrays() for s in stays]
    for j, hour in enumerate(HOURS):
        for start in range(0, len(arrays), _CHUNK):
            chunk = arrays[start : start + _CHUNK]
            batch = make_windows(chunk, [hour] * len(chunk))
            yield j, start, len(chunk), batch.tensors(max_images, image_dim)


def hourly_risks(
    data_dir: Path, checkpoint: Path, threads: int = 1, split_name: str = "validation"
) -> dict[str, npt.NDArray[Any]]:
    """Calibrated ensemble risks at hours 1…48 of one split's stays.

    Returns:
        ``record_ids [N]``, ``death [N]``, ``risk [N,48]``.
    """
    import torch  # heavy; only this phase needs it

    from models.deterioration.export import load_checkpoint

    torch.set_num_threads(threads)
    net, meta = load_checkpoint(checkpoint)
    stays, labels = split_stays(data_dir, meta, split_name)
    risk = np.zeros((len(stays), len(HOURS)))
    with torch.no_grad():
        for j, start, n, inputs in _hourly_inputs(stays, meta):
            logits = []
            for member in net.members:
                _, logit, _ = member.encode(inputs)  # type: ignore[operator]
                logits.append(logit)
            mean_logit = torch.stack(logits).mean(0)
            p = torch.sigmoid(net.calibrated_logit(mean_logit)).reshape(-1)
            risk[start : start + n, j] = p.numpy()
    return {
        "record_ids": np.array([s.record_id for s in stays]),
        "death": np.array([labels[s.record_id] for s in stays]),
        "risk": risk,
    }


def hourly_ood(
    data_dir: Path,
    checkpoint: Path,
    ood_checkpoint: Path,
    threads: int = 1,
    split_name: str = "validation",
) -> dict[str, npt.NDArray[Any]]:
    """The served OOD verdict at hours 1…48 of one split's stays (stays in the order of
    :func:`hourly_risks`).

    The detector is :func:`models.ood.export.build_detector`'s, the module exported to
    ``triton_repo/ood`` (float32, as served); the flag is its ``ood`` output (either
    channel above its threshold), as the worker reads it.

    Returns:
        :data:`OOD_KEYS`.
    """
    import torch

    from models.deterioration.export import load_checkpoint
    from models.ood.export import build_detector

    torch.set_num_threads(threads)
    detector, ood_meta = build_detector(checkpoint, ood_checkpoint)
    _, meta = load_checkpoint(checkpoint)  # the split and input shapes
    stays, _ = split_stays(data_dir, meta, split_name)
    shape = (len(stays), len(HOURS))
    distance = np.zeros(shape)
    flags = {name: np.zeros(shape, dtype=bool) for name in ("ood", "rep", "inp")}
    with torch.no_grad():
        for j, start, n, inputs in _hourly_inputs(stays, meta):
            d, ood, _, _, _, rep_ood, inp_ood = detector(*inputs)
            distance[start : start + n, j] = d.reshape(-1).numpy()
            for name, flag in (("ood", ood), ("rep", rep_ood), ("inp", inp_ood)):
                flags[name][start : start + n, j] = flag.reshape(-1).numpy()
    return {
        "ood_distance": distance,
        "ood_flag": flags["ood"],
        "ood_representation": flags["rep"],
        "ood_input": flags["inp"],
        "threshold": np.array(float(ood_meta["threshold"])),
    }


def load_or_compute(
    cache: Path,
    data_dir: Path,
    checkpoint: Path,
    ood_checkpoint: Path,
    *,
    split_name: str,
    threads: int = 1,
    model: str = "window",
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, bool]]:
    """Risks and OOD verdicts of one split, reusing the parts of ``cache`` computed from
    the same files (by SHA-256; the OOD part also depends on the deterioration
    checkpoint), recomputing the rest and rewriting the cache.

    For ``model="step"`` both parts come from one pass
    (:func:`models.deterioration.alert_step_scores.hourly_step_scores`), so either part's files
    changing recomputes both.

    Returns:
        The arrays (:data:`RISK_KEYS` and :data:`OOD_KEYS`; for the step model also
        :data:`STEP_KEYS`), and which parts were reused (``{"risk": bool, "ood": bool}``).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    keys = {"risk": file_sha256(checkpoint)}
    keys["ood"] = f"{keys['risk']}+{file_sha256(ood_checkpoint)}"
    data: dict[str, npt.NDArray[Any]] = {}
    if cache.exists():
        with np.load(cache) as cached:
            data = {k: cached[k] for k in cached.files}
    reused = {
        "risk": str(data.get("risk_sha256", "")) == keys["risk"]
        and all(k in data for k in RISK_KEYS),
        "ood": str(data.get("ood_sha256", "")) == keys["ood"] and all(k in data for k in OOD_KEYS),
    }
    extra: tuple[str, ...] = ()
    if model == "step":
        extra = STEP_KEYS
        fresh = all(reused.values()) and all(k in data for k in extra)
        reused = {"risk": fresh, "ood": fresh}
        if not fresh:
            from models.deterioration.alert_step_scores import hourly_step_scores  # heavy: torch

            data = hourly_step_scores(data_dir, checkpoint, ood_checkpoint, threads, split_name)
            data["risk_sha256"] = np.array(keys["risk"])
            data["ood_sha256"] = np.array(keys["ood"])
    else:
        if not reused["risk"]:
            data = hourly_risks(data_dir, checkpoint, threads, split_name)
            data["risk_sha256"] = np.array(keys["risk"])
        if not (reused["risk"] and reused["ood"]):
            data.update(hourly_ood(data_dir, checkpoint, ood_checkpoint, threads, split_name))
            data["ood_sha256"] = np.array(keys["ood"])
    data = {k: data[k] for k in (*RISK_KEYS, *OOD_KEYS, *extra, "risk_sha256", "ood_sha256")}
    if not all(reused.values()):
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **data)
    return data, reused


@dataclass(frozen=True)
class CurvePoint:
    """One policy on one split's stays.

    Attributes:
        arm_risk: Arm threshold.
        margin: ``arm_risk - disarm_risk``.
        persistence: Consecutive hourly scores at or above arm before opening.
        alerts_per_patient_hour: Episodes opened per patient-hour scored.
        death_sensitivity: Fraction of stays that died with an alert within 48 h.
        survivor_alerted: Fraction of survivors' stays with an alert.
        deferred_per_patient_hour: ``deferred_for_review`` alerts per patient-hour.
        median_first_alert_hour: Median hour of the first alert among alerted deaths.
        deaths_alerted: Stays that died with an alert within 48 h.
        stays_deferred: Stays with at least one ``deferred_for_review`` alert.
    """

    arm_risk: float
    margin: float
    persistence: int
    alerts_per_patient_hour: float
    death_sensitivity: float
    survivor_alerted: float
    deferred_per_patient_hour: float
    median_first_alert_hour: float
    deaths_alerted: int = 0
    stays_deferred: int = 0


def policy_for(arm: float, margin: float, persistence: int, **overrides: Any) -> Any:
    """The policy replayed for one grid point: :class:`~streams.core.alerting.AlertPolicy`'s
    defaults (resolution, refractory, re-alert margin, OOD deferral persistence) with the
    grid's arm threshold, disarm margin and arming persistence (``persistence`` scores
    over ``persistence - 1`` hours), and any ``overrides``."""
    from streams.core.alerting import AlertPolicy

    return dataclasses.replace(
        AlertPolicy(),
        arm_risk=arm,
        disarm_risk=round(arm - margin, 4),
        arm_scores=persistence,
        arm_duration=timedelta(hours=persistence - 1),
        **overrides,
    )


def replay(
    data: dict[str, npt.NDArray[Any]],
    arm: float,
    margin: float,
    persistence: int,
    **overrides: Any,
) -> CurvePoint:
    """Replay one policy over every stay's hourly risks and served OOD verdicts."""
    from streams.core.alerting import OodVerdict, evaluate

    policy = policy_for(arm, margin, persistence, **overrides)
    risk, distance, flag = data["risk"], data["ood_distance"], data["ood_flag"]
    channels = np.stack([data["ood_representation"], data["ood_input"]], axis=-1)
    threshold = float(data["threshold"])
    death = data["death"].astype(bool)
    opened = np.zeros(len(risk), dtype=np.int64)
    deferred = np.zeros(len(risk), dtype=np.int64)
    first = np.full(len(risk), np.nan)
    for i in range(len(risk)):
        state: dict[str, Any] = {}
        ids: set[str] = set()
        for j, hour in enumerate(HOURS):
            fired = tuple(
                name
                for name, on in zip(("representation", "input"), channels[i, j], strict=True)
                if on
            )
            state, decisions = evaluate(
                state,
                patient_id=str(data["record_ids"][i]),
                at=_T0 + timedelta(hours=hour),
                risk=float(risk[i, j]),
                news2=None,
                policy=policy,
                ood=OodVerdict(float(distance[i, j]), threshold, bool(flag[i, j]), fired),
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
        deaths_alerted=int(alerted[death].sum()),
        stays_deferred=int((deferred > 0).sum()),
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


def plot(
    points: Sequence[CurvePoint],
    chosen: CurvePoint,
    out: Path,
    max_burden: float,
    title: str = "Alert burden vs sensitivity, validation split (800 stays)",
) -> None:
    """Burden (x) against death sensitivity (y), one line per margin and persistence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "vigil-alert-op"  # stable element ids: a rerun diffs clean
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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=out.suffix.lstrip(".") or "svg", metadata={"Date": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: compute (or reuse) risks and OOD verdicts, replay the grid on
    validation, choose, optionally check the chosen point on test; write curve and JSON."""
    parser = argparse.ArgumentParser(prog="python -m models.deterioration.alert_operating_point")
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="window",
        help="window: deterioration and the ood model; step: deterioration_step and its "
        "own verdict (changes the defaults of the paths below)",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/physionet2012"))
    parser.add_argument(
        "--checkpoint", type=Path, help="default: models/weights/deterioration[_step].pt"
    )
    parser.add_argument(
        "--ood-checkpoint",
        type=Path,
        help="default: models/weights/ood.pt, or deterioration_step_ood.pt for step",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("reports/alert_op"),
        help="[step_]<split>_hourly.npz per split, reused where its SHA-256 keys match",
    )
    parser.add_argument(
        "--out", type=Path, help="default: docs/alerting_curve.svg (step: _step.svg)"
    )
    parser.add_argument(
        "--json", type=Path, help="default: reports/alert_op/curve.json (step: step_curve.json)"
    )
    parser.add_argument("--max-burden", type=float, default=0.05)
    parser.add_argument("--min-sensitivity", type=float, default=0.80)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--test", action="store_true", help="also replay the chosen point on the test split"
    )
    args = parser.parse_args(argv)
    step = args.model == "step"
    prefix = "step_" if step else ""
    checkpoint = args.checkpoint or MODELS[args.model][0]
    ood_checkpoint = args.ood_checkpoint or MODELS[args.model][1]
    out = args.out or Path(f"docs/alerting_curve{'_step' if step else ''}.svg")
    json_path = args.json or args.cache_dir / f"{prefix}curve.json"

    def split_data(name: str) -> tuple[dict[str, npt.NDArray[Any]], dict[str, bool]]:
        return load_or_compute(
            args.cache_dir / f"{prefix}{name}_hourly.npz",
            args.data_dir,
            checkpoint,
            ood_checkpoint,
            split_name=name,
            threads=args.threads,
            model=args.model,
        )

    def described(data: dict[str, npt.NDArray[Any]], reused: dict[str, bool]) -> dict[str, Any]:
        flag = data["ood_flag"]
        return {
            "stays": len(data["risk"]),
            "deaths": int(data["death"].sum()),
            "patient_hours": int(data["risk"].size),
            "reused_from_cache": reused,
            "ood_threshold": float(data["threshold"]),
            "ood_flagged_fraction": {
                "combined": round(float(flag.mean()), 5),
                "representation": round(float(data["ood_representation"].mean()), 5),
                "input": round(float(data["ood_input"].mean()), 5),
                # flagged scores whose previous hourly score was flagged too
                "consecutive": round(float((flag[:, 1:] & flag[:, :-1]).mean()), 5),
            },
            "stays_ever_flagged": int(flag.any(axis=1).sum()),
            **{k: float(data[k]) for k in STEP_KEYS if k in data},
        }

    def served_default(d: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """The worker's current default policy (the window model's operating point)."""
        from streams.core.alerting import AlertPolicy

        policy = AlertPolicy()
        point = replay(
            d, policy.arm_risk, round(policy.arm_risk - policy.disarm_risk, 4), policy.arm_scores
        )
        return dataclasses.asdict(point)

    data, reused = split_data("validation")
    points = [
        replay(data, arm, margin, persistence)
        for arm in ARM_GRID
        for margin in MARGIN_GRID
        for persistence in PERSISTENCE_GRID
        if arm - margin > 0
    ]
    chosen = choose(points, args.max_burden, args.min_sensitivity)
    title = "Alert burden vs sensitivity, validation split (800 stays)"
    plot(points, chosen, out, args.max_burden, f"{title}, step model" if step else title)

    def single_flag(d: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """The chosen point with a deferral on a single flagged score (the old policy)."""
        p = replay(
            d,
            chosen.arm_risk,
            chosen.margin,
            chosen.persistence,
            defer_scores=1,
            defer_duration=timedelta(0),
        )
        return dataclasses.asdict(p)

    summary: dict[str, Any] = {
        **described(data, reused),
        "chosen": dataclasses.asdict(chosen),
        "meets_goal": chosen.alerts_per_patient_hour <= args.max_burden
        and chosen.death_sensitivity >= args.min_sensitivity,
        "chosen_single_flag_deferral": single_flag(data),
        "served_default": served_default(data),
    }
    if args.test:
        test, test_reused = split_data("test")
        point = replay(test, chosen.arm_risk, chosen.margin, chosen.persistence)
        summary["test"] = {
            **described(test, test_reused),
            "chosen": dataclasses.asdict(point),
            "chosen_single_flag_deferral": single_flag(test),
            "served_default": served_default(test),
        }
    summary["points"] = [dataclasses.asdict(p) for p in points]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "points"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
