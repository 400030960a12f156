"""The public data sets the models train on, and the check that a configured one is there.

Each training command reads its data from paths in its settings; the defaults point at
the development team's ``../shared/data`` folder. For anyone else a missing path fails
before any work with one line naming the setting to change and where to download the
data (``docs/training-data.md`` has the layouts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic_settings import BaseSettings

from vigil.errors import ModelError

__all__ = ["MSD_LUNG_CT", "PHYSIONET_2012", "PNEUMONIAMNIST", "TrainingData", "require_data"]


@dataclass(frozen=True, slots=True)
class TrainingData:
    """A public data set: what it is and where to get it."""

    name: str
    source: str


PHYSIONET_2012: Final[TrainingData] = TrainingData(
    name="PhysioNet/CinC Challenge 2012 set A (set-a/ and Outcomes-a.txt)",
    source="https://physionet.org/content/challenge-2012/1.0.0/",
)
MSD_LUNG_CT: Final[TrainingData] = TrainingData(
    name="lung CT patches from the Medical Segmentation Decathlon Task06_Lung (npz)",
    source="http://medicaldecathlon.com/",
)
PNEUMONIAMNIST: Final[TrainingData] = TrainingData(
    name="PneumoniaMNIST from MedMNIST v2 (pneumoniamnist.npz)",
    source="https://medmnist.com/",
)


def require_data(settings: BaseSettings, field: str, data: TrainingData) -> Path:
    """The path in ``settings.<field>``, checked to exist.

    Raises:
        ModelError: The path does not exist; the message names the option, its
            environment variable and where to download ``data``.
    """
    path = Path(getattr(settings, field))
    if not path.exists():
        variable = f"{settings.model_config.get('env_prefix', '')}{field.upper()}"
        raise ModelError(
            f"{path} not found: point --{field.replace('_', '-')} (or {variable}) at the "
            f"{data.name}; download it from {data.source} (see docs/training-data.md)"
        )
    return path
