"""The stays and hours the alert operating point is replayed on, for either model.

Shared by :mod:`models.deterioration.alert_operating_point` (the replay and the choice) and
:mod:`models.deterioration.alert_step_scores` (the step model's served scores), so that neither
imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

__all__ = ["HOURS", "split_stays"]

HOURS: Final = tuple(range(1, 49))
"""Hours after ICU admission at which every stay is scored (as the worker's 30-minute
cadence is stood in for by hourly scores; docs/alerting.md)."""


def split_stays(data_dir: Path, meta: dict[str, Any], split_name: str) -> tuple[list[Any], Any]:
    """The stays of one split (checked against the checkpoint's split) and their labels.

    Args:
        data_dir: PhysioNet 2012 folder.
        meta: A window or step checkpoint's metadata (``settings.split_seed``,
            ``settings.max_stays``, ``split``).
        split_name: ``train``, ``validation`` or ``test``.
    """
    from models.deterioration.train import split_record_ids
    from streams.datasets.physionet2012 import load_stays
    from vigil.errors import ModelError

    stays, outcomes = load_stays(data_dir)
    if meta["settings"].get("max_stays") is not None:
        stays = stays[: int(meta["settings"]["max_stays"])]
    labels = {s.record_id: outcomes[s.record_id].in_hospital_death for s in stays}
    split = split_record_ids(labels, seed=int(meta["settings"]["split_seed"]))
    if {k: list(v) for k, v in split.items()} != meta["split"]:
        raise ModelError("the recomputed split differs from the checkpoint's; wrong data?")
    by_id = {s.record_id: s for s in stays}
    return [by_id[r] for r in split[split_name]], labels
