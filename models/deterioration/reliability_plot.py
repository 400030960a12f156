"""Reliability diagram of the shipped model as a standalone SVG (no plotting library).

``python -m models.deterioration.reliability_plot`` reads the test-split reliability tables from
``triton_repo/deterioration/model_card.json`` and writes ``docs/reliability.svg``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["reliability_svg"]

_SIZE = 360
_PAD = 48
_COLOURS = {"24h": "#1f77b4", "48h": "#d62728"}


def _xy(p: float, q: float) -> tuple[float, float]:
    span = _SIZE - 2 * _PAD
    return _PAD + p * span, _SIZE - _PAD - q * span


def reliability_svg(tables: Mapping[str, Sequence[Mapping[str, Any]]], title: str) -> str:
    """Render reliability tables (bins with ``mean_predicted``, ``observed_rate``,
    ``count``) as an SVG diagram: observed rate against mean predicted risk per bin."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SIZE}" height="{_SIZE}" '
        f'viewBox="0 0 {_SIZE} {_SIZE}" font-family="sans-serif" font-size="11">',
        f'<rect width="{_SIZE}" height="{_SIZE}" fill="white"/>',
        f'<text x="{_SIZE / 2}" y="20" text-anchor="middle" font-size="13">{title}</text>',
    ]
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    parts.append(
        f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#444"/>'
    )
    parts.append(
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4 3"/>'
    )
    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        tx, _ = _xy(tick, 0)
        _, ty = _xy(0, tick)
        parts.append(f'<text x="{tx}" y="{y0 + 14}" text-anchor="middle">{tick:.1f}</text>')
        parts.append(f'<text x="{x0 - 6}" y="{ty + 4}" text-anchor="end">{tick:.1f}</text>')
    parts.append(
        f'<text x="{_SIZE / 2}" y="{_SIZE - 10}" text-anchor="middle">mean predicted risk</text>'
    )
    parts.append(
        f'<text x="12" y="{_SIZE / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_SIZE / 2})">observed death rate</text>'
    )
    for row, (label, bins) in enumerate(tables.items()):
        colour = _COLOURS.get(label, "#2ca02c")
        points = [_xy(b["mean_predicted"], b["observed_rate"]) for b in bins if b["count"]]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        parts.extend(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in points
        )
        parts.append(
            f'<text x="{x0 + 8}" y="{y1 + 16 + 14 * row}" fill="{colour}">scored at {label}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _from_card(card: Mapping[str, Any]) -> str:
    test = card["metrics"]["test"]
    tables = {"24h": test["reliability_24h"], "48h": test["reliability_48h"]}
    return reliability_svg(tables, "Reliability, held-out test split (800 stays)")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    card = json.loads((root / "triton_repo" / "deterioration" / "model_card.json").read_text())
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs" / "reliability.svg"
    out.write_text(_from_card(card))
