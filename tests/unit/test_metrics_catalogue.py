"""docs/metrics.md lists every metric of the worker's registry, with its type and labels.

Also: no label is named like a patient identifier, and every dashboard panel the catalogue
names exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streams.metrics import REGISTRY, WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
CATALOGUE = REPO / "docs" / "metrics.md"
DASHBOARDS = {
    "Pipeline": "vigil-pipeline.json",
    "Serving": "vigil-model-serving.json",
    "Clinical": "vigil-clinical.json",
}
# Label names that would carry a person or a record rather than a bounded category.
IDENTIFIER_LABEL = re.compile(
    r"patient|person|subject|stay|encounter|admission|record|mrn|nhs|ssn|name|(^|_)ids?$",
    re.IGNORECASE,
)
_ROW = re.compile(
    r"^\| `(?P<name>[a-z_:]+)` \| (?P<type>\w+) \| (?P<labels>[^|]*) \|.*\| (?P<panels>[^|]*) \|$"
)


def _documented() -> dict[str, tuple[str, frozenset[str], list[str]]]:
    rows: dict[str, tuple[str, frozenset[str], list[str]]] = {}
    for line in CATALOGUE.read_text().splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        labels = frozenset(re.findall(r"`([a-z_]+)`", match["labels"]))
        panels = [p.strip() for p in match["panels"].split(";") if p.strip() not in {"", "—"}]
        assert match["name"] not in rows, f"{match['name']} listed twice"
        rows[match["name"]] = (match["type"], labels, panels)
    return rows


def _exported() -> dict[str, tuple[str, frozenset[str]]]:
    """Every family in the worker's registry as exposed: name, type and label names."""
    declared = {
        metric._name: frozenset(metric._labelnames)  # no public accessor for label names
        for metric in vars(WorkerMetrics(CollectorRegistry())).values()
        if isinstance(metric, MetricWrapperBase)
    }
    families: dict[str, tuple[str, frozenset[str]]] = {}
    for family in REGISTRY.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = declared.get(family.name)
        if labels is None:  # process/platform collectors: their samples carry the labels
            labels = frozenset(k for s in family.samples for k in s.labels)
        families[name] = (family.type, labels)
    return families


def test_every_registered_metric_is_documented_with_type_and_labels() -> None:
    documented = _documented()
    exported = _exported()
    assert set(exported) - set(documented) == set(), "add them to docs/metrics.md"
    assert set(documented) - set(exported) == set(), "docs/metrics.md lists unknown metrics"
    for name, (kind, labels) in exported.items():
        assert documented[name][:2] == (kind, labels), name


def test_metric_names_follow_prometheus_conventions() -> None:
    for name, (kind, _) in _exported().items():
        if not name.startswith("vigil_"):
            continue
        assert re.fullmatch(r"vigil_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb)(_|$)", name), name


@pytest.mark.parametrize("name", sorted(_exported()))
def test_no_label_names_a_patient(name: str) -> None:
    for label in _exported()[name][1]:
        assert not IDENTIFIER_LABEL.search(label), f"{name}{{{label}}}"


def test_panels_named_in_the_catalogue_exist() -> None:
    titles = {
        short: {
            p["title"]
            for p in json.loads((REPO / "deploy/grafana/dashboards" / f).read_text())["panels"]
        }
        for short, f in DASHBOARDS.items()
    }
    for name, (_, _, panels) in _documented().items():
        for panel in panels:
            board, _, title = panel.partition(": ")
            assert title in titles.get(board, set()), f"{name}: no panel {panel!r}"
