"""What the worker keeps of a patient's latest study of one modality, for registering the
next study to it (``models/imaging/registration.py``; pure data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

__all__ = ["PriorStudy"]


@dataclass(frozen=True, slots=True)
class PriorStudy:
    """What the worker keeps of a patient's latest study of one modality.

    Attributes:
        study_id: The study.
        event_time: When it was taken (UTC).
        image: ``[S,S]`` the imaging model's input (after any denoising).
        mask: ``[S,S]`` bool lesion mask at the model's threshold.
    """

    study_id: str
    event_time: datetime
    image: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
