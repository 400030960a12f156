"""The reliability diagram in the docs is the one the model card's numbers give."""

from __future__ import annotations

import json
from pathlib import Path

from models.deterioration.reliability_plot import _from_card, reliability_svg

ROOT = Path(__file__).resolve().parents[2]


def test_docs_diagram_matches_the_model_card() -> None:
    card = json.loads((ROOT / "triton_repo" / "deterioration" / "model_card.json").read_text())
    assert (ROOT / "docs" / "reliability.svg").read_text() == _from_card(card), (
        "regenerate with: .venv/bin/python -m models.deterioration.reliability_plot"
    )


def test_points_sit_where_the_bins_say() -> None:
    svg = reliability_svg({"48h": [{"mean_predicted": 0.0, "observed_rate": 1.0, "count": 3}]}, "t")
    # p = 0 is the left edge (x = pad), q = 1 the top edge (y = pad).
    assert '<circle cx="48.0" cy="48.0"' in svg
    empty = reliability_svg(
        {"48h": [{"mean_predicted": 0.5, "observed_rate": 0.5, "count": 0}]}, "t"
    )
    assert "<circle" not in empty
