"""SVG plots of the validity report (matplotlib object API, Agg canvas, no pyplot)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from streams.core.risk_metrics import reliability_table

__all__ = [
    "plot_calibration",
    "plot_forest",
    "plot_frontier",
    "plot_loso",
    "plot_noise",
    "plot_replay",
]

_COLOURS = {"federated": "#1565c0", "central": "#2e7d32", "local": "#ef6c00"}


def _figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, panels, i + 1) for i in range(panels)]


def plot_forest(groups: Mapping[str, Mapping[str, Any]], metric: str, path: Path) -> None:
    """One row per group, one marker per regime with its bootstrap interval."""
    names = list(next(iter(groups.values())))
    figure, (ax,) = _figure(7, 0.45 * len(names) + 1.2)
    for offset, (regime, rows) in zip((-0.22, 0, 0.22), groups.items(), strict=False):
        for y, name in enumerate(names):
            entry = rows.get(name, {}).get(metric)
            if not entry:
                continue
            ci = entry["interval"] or [entry["estimate"]] * 2
            ax.plot(ci, [y + offset] * 2, color=_COLOURS.get(regime, "k"), linewidth=1.5)
            ax.plot(
                entry["estimate"],
                y + offset,
                "o",
                color=_COLOURS.get(regime, "k"),
                label=regime if y == 0 else None,
                markersize=4,
            )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlabel=f"test {metric.upper()} at 48 h (95% bootstrap interval)")
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    figure.savefig(path, format="svg")


def plot_calibration(
    labels: npt.NDArray[np.float64], risks: Mapping[str, npt.NDArray[np.float64]], path: Path
) -> None:
    """Reliability curves (10 equal-width bins) of each regime on the pooled test stays."""
    figure, (ax,) = _figure(4.8, 4.2)
    for regime, r in risks.items():
        table = [b for b in reliability_table(labels, r, n_bins=10) if b.count]
        ax.plot(
            [b.mean_predicted for b in table],
            [b.observed_rate for b in table],
            "o-",
            color=_COLOURS.get(regime, "k"),
            label=regime,
            markersize=3,
        )
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="predicted risk", ylabel="observed mortality", title="Calibration, pooled test")
    ax.legend(fontsize="small")
    figure.savefig(path, format="svg")


def plot_loso(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Grouped bars: leave-one-site-out AUROC per left-out site and regime."""
    figure, (ax,) = _figure(7, 3.6)
    keys = (
        ("central", "central"),
        ("federated", "federated"),
        ("local_only_mean_of_other_sites", "local"),
    )
    x = np.arange(len(rows))
    for i, (key, regime) in enumerate(keys):
        values = [np.nan if r.get(key) is None else r[key] for r in rows]
        ax.bar(x + (i - 1) * 0.27, values, 0.27, label=regime, color=_COLOURS[regime])
    ax.set_xticks(x, [r["site"] for r in rows])
    ax.set(ylabel="AUROC on the left-out site's test stays", ylim=(0.5, 1.0))
    ax.legend(fontsize="small")
    figure.savefig(path, format="svg")


def plot_frontier(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Site predictability (probe one-vs-rest AUROC) against mortality AUROC per strength."""
    figure, (ax,) = _figure(5, 4)
    xs = [r["site_probe_auroc_mean"] for r in rows]
    ys = [r["pooled_test_auroc"] for r in rows]
    ax.plot(xs, ys, "o-", color="#6a1b9a")
    for r, x, y in zip(rows, xs, ys, strict=True):
        ax.annotate(
            f"λ={r['strength']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    ax.axvline(0.6, color="grey", linestyle=":")
    ax.set(
        xlabel="site one-vs-rest AUROC of a probe on the representation",
        ylabel="pooled test mortality AUROC (48 h)",
        title="Site invariance frontier",
    )
    figure.savefig(path, format="svg")


def plot_noise(rows: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Median and 95th percentile absolute risk change per parameter under its noise."""
    names = sorted(rows, key=lambda c: rows[c]["p95_abs_change"], reverse=True)
    figure, (ax,) = _figure(7, 0.22 * len(names) + 1.2)
    y = np.arange(len(names))
    ax.barh(y, [rows[c]["p95_abs_change"] for c in names], color="#90caf9", label="95th percentile")
    ax.barh(y, [rows[c]["median_abs_change"] for c in names], color="#1565c0", label="median")
    ax.set_yticks(y, [f"{c} (±{rows[c]['noise_sd']:g})" for c in names], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="|risk change| at 48 h")
    ax.legend(fontsize="small")
    figure.savefig(path, format="svg")


def plot_replay(trajectories: Sequence[Sequence[float]], path: Path) -> None:
    """Risk trajectories of the replayed stays (both runs coincide)."""
    figure, (ax,) = _figure(6, 3)
    for t in trajectories:
        ax.plot(range(1, len(t) + 1), t)
    ax.set(xlabel="hours after admission", ylabel="risk", title="Replayed twice: identical")
    figure.savefig(path, format="svg")
