"""PNG plots of an evaluation, drawn with matplotlib's object API and its Agg canvas.

No pyplot, so no global figure state and no backend switch at import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from streams.core.risk_metrics import auprc, auroc, reliability_table
from streams.evaluation.burden import OperatingPoint
from streams.evaluation.curves import pr_points, roc_points
from streams.evaluation.evaluate import View
from streams.evaluation.outcomes import StayOutcome
from streams.evaluation.stays import Track

__all__ = ["plot_burden", "plot_calibration", "plot_pr", "plot_roc", "plot_timeline"]

_DPI = 100


def _figure(panels: int, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(4.5 * max(panels, 1), height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, max(panels, 1), i + 1) for i in range(max(panels, 1))]
    return figure, axes


def _label(name: str, value: float, y: npt.NDArray[np.float64], kind: str) -> str:
    shown = "n/a" if np.isnan(value) else f"{value:.3f}"
    return f"{name} ({kind} {shown}, n={y.size})"


def plot_roc(views: Sequence[View], path: Path) -> None:
    """ROC curves of every predictor, one panel per view."""
    figure, axes = _figure(len(views))
    for ax, view in zip(axes, views, strict=False):
        for name, (y, s) in view.predictors.items():
            if y.size and 0 < y.sum() < y.size:
                fpr, tpr = roc_points(y, s)
                ax.plot(fpr, tpr, label=_label(name, auroc(y, s), y, "AUROC"))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"ROC, {view.name}", xlabel="1 - specificity", ylabel="sensitivity")
        ax.legend(loc="lower right", fontsize="small")
    figure.savefig(path)


def plot_pr(views: Sequence[View], path: Path) -> None:
    """Precision-recall curves of every predictor, one panel per view."""
    figure, axes = _figure(len(views))
    for ax, view in zip(axes, views, strict=False):
        prevalence = None
        for name, (y, s) in view.predictors.items():
            if y.size and y.sum() > 0:
                recall, precision = pr_points(y, s)
                ax.step(recall, precision, where="pre", label=_label(name, auprc(y, s), y, "AP"))
                prevalence = prevalence if prevalence is not None else float(y.mean())
        if prevalence is not None:
            ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"Precision-recall, {view.name}", xlabel="recall", ylabel="precision")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="upper right", fontsize="small")
    figure.savefig(path)


def plot_calibration(views: Sequence[View], path: Path, n_bins: int = 10) -> None:
    """Reliability diagram of the model risk, one panel per view (marker area ~ count)."""
    figure, axes = _figure(len(views))
    for ax, view in zip(axes, views, strict=False):
        y, p = view.risk
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        if y.size:
            table = [b for b in reliability_table(y, p, n_bins=n_bins) if b.count]
            sizes = np.asarray([b.count for b in table], dtype=float)
            ax.plot([b.mean_predicted for b in table], [b.observed_rate for b in table], "-")
            ax.scatter(
                [b.mean_predicted for b in table],
                [b.observed_rate for b in table],
                s=20 + 180 * sizes / sizes.max(),
                zorder=3,
            )
        ax.set(
            title=f"Calibration, {view.name} (n={y.size})",
            xlabel="mean predicted risk",
            ylabel="observed rate",
            xlim=(0, 1),
            ylim=(0, 1),
        )
    figure.savefig(path)


def plot_burden(
    sweeps: Mapping[str, Sequence[OperatingPoint]], limits: Sequence[float], path: Path
) -> None:
    """Sensitivity against alerts per patient-hour for each swept signal."""
    figure, (ax,) = _figure(1)
    for name, sweep in sweeps.items():
        if sweep:
            ax.step(
                [p.alerts_per_patient_hour for p in sweep],
                [p.sensitivity for p in sweep],
                where="post",
                label=name,
            )
    for limit in limits:
        ax.axvline(limit, color="grey", linestyle=":", linewidth=1)
    ax.set(
        title="Sensitivity at an alert burden (first crossing per stay)",
        xlabel="alerts per patient-hour",
        ylabel="sensitivity (alert at or before outcome)",
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right", fontsize="small")
    figure.savefig(path)


def plot_timeline(
    track: Track,
    outcome: StayOutcome,
    alert_hours: Sequence[float],
    threshold: float | None,
    path: Path,
) -> None:
    """Risk and NEWS2 over one stay, alert marks, and the outcome time."""
    figure, (ax,) = _figure(1, height=3.2)
    figure.set_figwidth(8.0)
    known = ~np.isnan(track.risk)
    ax.step(track.hours[known], track.risk[known], where="post", label="model risk")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1, label="threshold")
    for i, hour in enumerate(alert_hours):
        ax.axvline(hour, color="tab:red", linewidth=1.2, label="alert" if i == 0 else None)
    if outcome.outcome_hours is not None:
        ax.axvline(
            outcome.outcome_hours,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label="outcome time",
        )
    news2 = ax.twinx()
    has_news2 = ~np.isnan(track.news2)
    news2.step(
        track.hours[has_news2], track.news2[has_news2], where="post", color="tab:green", alpha=0.6
    )
    news2.set_ylabel("NEWS2 (green)")
    news2.set_ylim(0, 20)
    label = "positive" if outcome.label else "negative"
    ax.set(
        title=f"Stay {track.patient_id} ({label})",
        xlabel="hours after admission",
        ylabel="model risk",
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize="small")
    figure.savefig(path)
