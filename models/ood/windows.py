"""Feature windows of recorded stays as the OOD detector's two channels see them.

Shared by fitting (:mod:`models.ood.train`) and the time-course evaluation
(:mod:`models.ood.timeline`): a window is built with
:func:`streams.core.features.features_at` at ``admission + end minutes``, exactly as the
stream builds it at a scoring time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

import numpy as np
import numpy.typing as npt
import torch

from models.deterioration.network import DeteriorationEnsemble, NetConfig, NetInputs
from models.ood.detector import GaussianFit, ensemble_features, min_distance
from models.ood.inputs import BucketFit, bucket_distance, hours_observed, input_features
from streams.core.features import features_at
from streams.datasets.physionet2012 import Stay

__all__ = ["ChannelScorer", "WindowFeatures", "window_features"]

_CHUNK: Final[int] = 512
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """Features of ``N`` windows, ordered end-time-major (all stays at the first end time,
    then all at the second, ...).

    Attributes:
        representation: ``[N, members·F]`` concatenated fused vectors, or None when not
            computed.
        inputs: ``[N, 8P+2S]`` :func:`models.ood.inputs.input_features`.
        hours: ``[N]`` :func:`models.ood.inputs.hours_observed`.
    """

    representation: FloatArray | None
    inputs: FloatArray
    hours: FloatArray

    def rows(self, select: npt.NDArray[np.bool_] | slice) -> WindowFeatures:
        """The windows ``select`` picks."""
        rep = None if self.representation is None else self.representation[select]
        return WindowFeatures(rep, self.inputs[select], self.hours[select])


def window_features(
    net: DeteriorationEnsemble,
    config: NetConfig,
    stays: Sequence[Stay],
    end_minutes: Sequence[int],
    *,
    representation: bool = True,
) -> WindowFeatures:
    """Features of every stay at every end time (minutes after admission).

    Args:
        net: The ensemble (its first member's ``log_scaled`` mask is used by the inputs).
        config: Its configuration (image slots are left empty).
        stays: The stays.
        end_minutes: Scoring times, minutes after admission.
        representation: Also run the ensemble (the expensive part).
    """
    log_scaled: torch.Tensor = net.members[0].log_scaled  # type: ignore[assignment]
    arrays = [s.arrays() for s in stays]
    reps: list[FloatArray] = []
    inputs: list[FloatArray] = []
    hours: list[FloatArray] = []
    net.eval()
    with torch.no_grad():
        for minute in end_minutes:
            for start in range(0, len(arrays), _CHUNK):
                chunk = arrays[start : start + _CHUNK]
                windows = [
                    features_at(a, a.admit_time + timedelta(minutes=int(minute))) for a in chunk
                ]
                values, mask, delta, statics, static_mask = (
                    torch.from_numpy(np.stack([getattr(w, name) for w in windows]))
                    for name in ("values", "mask", "delta_hours", "statics", "static_mask")
                )
                x = input_features(values, mask, delta, statics, static_mask, log_scaled)
                inputs.append(x.numpy().astype(np.float64))
                hours.append(hours_observed(mask).numpy().astype(np.float64))
                if representation:
                    n = len(chunk)
                    tensors = NetInputs(
                        values,
                        mask,
                        delta,
                        statics,
                        static_mask,
                        torch.zeros(n, config.max_images, config.image_dim),
                        torch.zeros(n, config.max_images),
                        torch.zeros(n, config.max_images),
                    )
                    reps.append(ensemble_features(net, tensors).numpy().astype(np.float64))
    return WindowFeatures(
        np.concatenate(reps) if representation else None,
        np.concatenate(inputs),
        np.concatenate(hours),
    )


@dataclass(frozen=True, slots=True)
class ChannelScorer:
    """The numpy reference of the served detector, for evaluation.

    Scores are each channel's distance divided by its threshold (the input channel's by
    the threshold of the window's hour bucket), so a window is flagged by a channel when
    its score is above 1; ``combined`` is the larger of the two, as served.

    Attributes:
        representation: Gaussians on the representation columns.
        representation_threshold: Its threshold.
        inputs: The input channel's buckets.
        representation_columns: Columns of ``WindowFeatures.representation`` it reads.
        input_columns: Columns of ``WindowFeatures.inputs`` it reads.
    """

    representation: GaussianFit
    representation_threshold: float
    inputs: BucketFit
    representation_columns: slice = field(default_factory=lambda: slice(None))
    input_columns: npt.NDArray[np.int64] | slice = field(default_factory=lambda: slice(None))

    def scores(self, windows: WindowFeatures) -> dict[str, FloatArray]:
        """``{"combined", "representation", "input"}``: ``[N]`` normalised scores."""
        if windows.representation is None:
            raise ValueError("the representation channel needs representation features")
        rep_x = windows.representation[:, self.representation_columns]
        rep = min_distance(self.representation, rep_x) / self.representation_threshold
        distance, threshold = bucket_distance(
            self.inputs, windows.inputs[:, self.input_columns], windows.hours
        )
        inp = distance / threshold
        return {"combined": np.maximum(rep, inp), "representation": rep, "input": inp}
