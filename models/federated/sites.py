"""Simulated sites: set A of PhysioNet 2012 cut by ICU type into four "hospitals".

**The sites are simulated from one data set** (one hospital system's four ICU types),
not four hospitals. Each stay belongs to exactly one site (its ``ICUType``), and each
site's train / validation / test parts are that site's stays of the project's one split
(:func:`models.deterioration.train.split_record_ids`, seed 2012), so the pooled test
set is the shipped models' test set and the parts are disjoint across sites and parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from models.deterioration.train import split_record_ids
from streams.datasets.physionet2012 import Outcome, Stay, data_hash

__all__ = ["SITE_NAMES", "Site", "make_sites", "site_data_hash"]

SITE_NAMES: Final[Mapping[int, str]] = {
    1: "coronary-care",
    2: "cardiac-surgery-recovery",
    3: "medical",
    4: "surgical",
}
"""``ICUType`` → simulated site name (PhysioNet 2012's four ICU types)."""

PARTS: Final[tuple[str, ...]] = ("train", "validation", "test")


@dataclass(frozen=True)
class Site:
    """One simulated site: its name, ``ICUType`` and RecordIDs per part (sorted)."""

    name: str
    icu_type: int
    record_ids: Mapping[str, tuple[int, ...]]

    def all_ids(self) -> tuple[int, ...]:
        """Every stay of the site, sorted."""
        return tuple(sorted(r for part in PARTS for r in self.record_ids[part]))


def make_sites(
    stays: Sequence[Stay], outcomes: Mapping[int, Outcome], split_seed: int = 2012
) -> list[Site]:
    """The four simulated sites, in ``ICUType`` order.

    Stays without an ``ICUType`` (none in set A) belong to no site.
    """
    labels = {s.record_id: outcomes[s.record_id].in_hospital_death for s in stays}
    split = split_record_ids(labels, seed=split_seed)
    icu = {s.record_id: s.descriptors.get("ICUType") for s in stays}
    sites = []
    for icu_type, name in SITE_NAMES.items():
        parts = {
            part: tuple(
                r for r in split[part] if icu[r] is not None and int(icu[r] or 0) == icu_type
            )
            for part in PARTS
        }
        sites.append(Site(name, icu_type, parts))
    return sites


def site_data_hash(data_dir: Path, site: Site) -> str:
    """SHA-256 of the outcomes file and the site's stay files (names and bytes)."""
    return data_hash(data_dir, [data_dir / "set-a" / f"{r}.txt" for r in site.all_ids()])
