"""The step model's own out-of-distribution verdict, served in the same Triton call.

The two-channel Mahalanobis method of :mod:`models.ood.detector` and :mod:`models.ood.inputs`
(``docs/ood.md``) moved onto :class:`models.deterioration.step_network.StepModule`, so a score
costs one O(1) model call instead of a step call plus a whole-window ensemble re-run. Shapes: ``B``
rows, ``P`` series parameters, ``S`` statics, ``M`` members, ``F`` fused width, ``K`` step
buckets, ``C`` classes, ``D`` feature width.

* **Representation channel**: every member's fused vector after the last valid bin,
  concatenated (``[B, M·F]``, as the window detector concatenates its members); class
  Gaussians (class = in-hospital death) with a tied covariance.
* **Input channel** (:func:`step_input_features`, ``D = 7P + 2S``): from the running
  statistics after the last valid bin (the ones the risk was computed from, O(1) from the
  state): per parameter last, mean, min, max (standardised scale, 0 before the first
  observation), observed-any and ``log1p(count)``; then the **hours since each parameter
  was last seen** at the scoring time (:mod:`streams.core.last_seen`, an input of the
  call: the state has no clock, and without it monitor dropout went unseen); then the raw
  statics and their mask. The window detector's longest identical run is not in the
  state, so it is not here. One Gaussian per bucket of **steps observed**
  (:func:`steps_observed`: the largest per-parameter count of bins with an observation,
  the state's stand-in for the window detector's hours observed), bucket edges
  :data:`models.ood.inputs.HOUR_BUCKET_EDGES`, one threshold per bucket.
* Combined: ``distance = max(rep / rep_threshold, input / bucket_threshold)``, flagged
  when above 1, exactly as ``ood`` serves it.

:class:`StepOODModule` returns ``risk``, ``state_out``, ``fused`` (bit-identical to
:class:`~models.deterioration.step_network.StepModule`), then :data:`OOD_OUTPUT_NAMES`.
:func:`reference_scores` is the float64 numpy reference of the two channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from models.common.torchscript import normal_float32
from models.deterioration.step_network import StepEnsemble, StepModule
from models.ood.detector import OUTPUT_NAMES

__all__ = [
    "OOD_OUTPUT_NAMES",
    "StepOODModule",
    "reference_scores",
    "step_input_features",
    "steps_observed",
]

OOD_OUTPUT_NAMES: Final[tuple[str, ...]] = OUTPUT_NAMES
"""The OOD outputs, named and ordered as the ``ood`` model's (the worker parses both the
same way): distance, ood, representation_distance, input_distance, input_threshold,
representation_ood, input_ood."""

FloatArray = npt.NDArray[np.float64]

MIN_BUCKET_ROWS: Final = 16
"""Fewest rows per input-channel product (:class:`StepOODModule` pads a bucket's rows with
copies of its first). With one MKL thread, a row of ``x @ W.T`` (``W`` 275×275) came out
in different last bits for 1-11 rows than for 12 or more, and identical for every count from
12 to 128 and every position (10,530 checks), so a row's input distance depended on how
many rows of its block shared its bucket (up to 3.8e-6 on demo stays) and replays
differed. Padding to 16 makes it independent of the other rows
(``tests/models/test_step_ood.py``)."""


def step_input_features(
    stats: Tensor, hours_since_seen: Tensor, statics: Tensor, static_mask: Tensor
) -> Tensor:
    """``[B, 7P+2S]`` input-channel features from running statistics and the clock.

    Args:
        stats: ``[B,5,P]`` count, sum, min, max, last (standardised values).
        hours_since_seen: ``[B,P]`` hours since each parameter was last seen (capped).
        statics: ``[B,S]`` raw statics.
        static_mask: ``[B,S]`` static mask.
    """
    count, total, vmin, vmax, last = stats.unbind(1)
    mean = total / torch.clamp(count, min=1.0)
    seen = (count > 0.5).to(stats.dtype)
    return torch.cat(
        [last, mean, vmin, vmax, seen, torch.log1p(count), hours_since_seen, statics, static_mask],
        1,
    )


def steps_observed(stats: Tensor) -> Tensor:
    """``[B]`` the largest count of bins with an observation of any one parameter
    (``stats [B,5,P]``): at most the number of steps, usually equal (heart rate)."""
    return stats[:, 0, :].max(dim=1).values


class StepOODModule(nn.Module):
    """The served ``deterioration_step``: the step and its two-channel OOD verdict.

    ``forward`` takes :class:`~models.deterioration.step_network.StepModule`'s eleven inputs,
    then ``hours_since_seen [B,P]`` (:mod:`streams.core.last_seen`; read by the OOD head only),
    and returns ``risk [B,1]``, ``state_out [B,D]``, ``fused [B,F]`` (computed by the same code, so
    bit-identical), then ``[B,1]`` each: ``distance`` (float32), ``ood`` (bool),
    ``representation_distance``, ``input_distance``, ``input_threshold`` (of the row's
    step bucket), ``representation_ood``, ``input_ood`` (bool).

    Args:
        ensemble: The trained step ensemble.
        arrays: The fit (:func:`models.ood.step_train.fit_arrays`): ``rep_whitening
            [MF,MF]``, ``rep_means [C,MF]``, ``rep_threshold [1]``, ``input_centre [D]``,
            ``input_scale [D]``, ``input_edges [K]``, ``input_whitening [K,D,D]``,
            ``input_means [K,1,D]``, ``input_thresholds [K]``.
    """

    if TYPE_CHECKING:  # buffers; TorchScript must not see these annotations
        rep_whitening: Tensor
        rep_white_means: Tensor
        rep_threshold: Tensor
        input_centre: Tensor
        input_scale: Tensor
        input_edges: Tensor
        input_whitening_t: Tensor
        input_white_means: Tensor
        input_thresholds: Tensor

    def __init__(self, ensemble: StepEnsemble, arrays: Mapping[str, npt.ArrayLike]) -> None:
        super().__init__()
        self.step_module = StepModule(ensemble)
        self.min_bucket_rows = MIN_BUCKET_ROWS
        rep_w = np.asarray(arrays["rep_whitening"], dtype=np.float64)
        in_w = np.asarray(arrays["input_whitening"], dtype=np.float64)
        rep_white_means = np.asarray(arrays["rep_means"], dtype=np.float64) @ rep_w.T
        in_white_means = np.einsum(
            "kcd,ked->kce", np.asarray(arrays["input_means"], dtype=np.float64), in_w
        )

        def buffer(name: str, value: npt.ArrayLike) -> None:
            self.register_buffer(name, normal_float32(value))

        buffer("rep_whitening", rep_w)
        buffer("rep_white_means", rep_white_means)
        buffer("rep_threshold", np.asarray(arrays["rep_threshold"]).reshape(1))
        buffer("input_centre", arrays["input_centre"])
        buffer("input_scale", arrays["input_scale"])
        buffer("input_edges", arrays["input_edges"])
        # Stored transposed: a row's whitened features are ``x @ input_whitening_t[k]``.
        buffer("input_whitening_t", np.ascontiguousarray(np.transpose(in_w, (0, 2, 1))))
        buffer("input_white_means", in_white_means)
        buffer("input_thresholds", arrays["input_thresholds"])

    def forward(
        self,
        state: Tensor,
        bins_values: Tensor,
        bins_mask: Tensor,
        bins_delta_hours: Tensor,
        bins_valid: Tensor,
        commit_bins: Tensor,
        statics: Tensor,
        static_mask: Tensor,
        image_embeddings: Tensor,
        image_age_hours: Tensor,
        image_mask: Tensor,
        hours_since_seen: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The step's three outputs, then the OOD outputs (see the class)."""
        risk, state_out, fused_all, stats = self.step_module.step(
            state,
            bins_values,
            bins_mask,
            bins_delta_hours,
            bins_valid,
            commit_bins,
            statics,
            static_mask,
            image_embeddings,
            image_age_hours,
            image_mask,
        )
        batch = fused_all.shape[1]
        rep_x = fused_all.transpose(0, 1).reshape(batch, -1)  # [B,M·F], member-major
        white = rep_x @ self.rep_whitening.t()
        diff = white.unsqueeze(1) - self.rep_white_means.unsqueeze(0)  # [B,C,MF]
        rep = torch.sqrt((diff * diff).sum(-1).min(dim=1).values).unsqueeze(1)
        features = step_input_features(stats, hours_since_seen, statics, static_mask)
        x = (features - self.input_centre) / self.input_scale
        bucket = torch.clamp(
            torch.bucketize(steps_observed(stats), self.input_edges, right=False),
            max=self.input_edges.shape[0] - 1,
        )
        # Rows grouped by bucket with one sort; each bucket is one product over a slice of
        # the sorted rows. A bucket with fewer than MIN_BUCKET_ROWS rows takes the rows
        # after it (or the zero rows appended) into its product and drops their results:
        # below that many rows, MKL's sgemm gave a row different last bits depending on
        # how many rows shared its bucket, so replays of the same stays differed.
        order = torch.sort(bucket, stable=True).indices
        counts: list[int] = torch.bincount(bucket, minlength=self.input_edges.shape[0]).tolist()
        width = x.shape[1]
        spare = torch.zeros(self.min_bucket_rows, width, dtype=x.dtype, device=x.device)
        x_sorted = torch.cat([x[order], spare])
        white = torch.empty(batch, width, dtype=x.dtype, device=x.device)
        start = 0
        for k, count in enumerate(counts):
            if count > 0:
                rows = max(count, self.min_bucket_rows)
                product = torch.mm(x_sorted[start : start + rows], self.input_whitening_t[k])
                white[start : start + count] = product[:count]
                start += count
        d = white.unsqueeze(1) - self.input_white_means[bucket[order]]  # [B,C,D], sorted
        sq = torch.empty(batch, dtype=x.dtype, device=x.device)
        sq[order] = (d * d).sum(-1).min(dim=1).values
        inp = torch.sqrt(sq).unsqueeze(1)
        inp_threshold = self.input_thresholds[bucket].unsqueeze(1)
        rep_ood, inp_ood = rep > self.rep_threshold, inp > inp_threshold
        distance = torch.maximum(rep / self.rep_threshold, inp / inp_threshold)
        return (
            risk,
            state_out,
            fused_all[0],
            distance,
            rep_ood | inp_ood,
            rep,
            inp,
            inp_threshold,
            rep_ood,
            inp_ood,
        )


def reference_scores(
    arrays: Mapping[str, npt.ArrayLike],
    representation: npt.ArrayLike,
    inputs: npt.ArrayLike,
    steps: npt.ArrayLike,
) -> dict[str, FloatArray]:
    """Both channels in float64 numpy (the reference of :class:`StepOODModule`).

    Args:
        arrays: The fit, as :class:`StepOODModule` takes it.
        representation: ``[N, M·F]`` concatenated fused vectors.
        inputs: ``[N, 7P+2S]`` :func:`step_input_features`.
        steps: ``[N]`` :func:`steps_observed`.

    Returns:
        ``representation_distance``, ``input_distance``, ``input_threshold`` and the
        normalised scores ``representation``, ``input`` and ``combined`` (flagged above 1),
        each ``[N]``.
    """
    rep_w = np.asarray(arrays["rep_whitening"], dtype=np.float64)
    rep_means = np.asarray(arrays["rep_means"], dtype=np.float64)
    white = np.asarray(representation, dtype=np.float64) @ rep_w.T
    centres = rep_means @ rep_w.T
    rep = np.sqrt(((white[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=1))
    rep_threshold = float(np.asarray(arrays["rep_threshold"]).reshape(-1)[0])
    centre = np.asarray(arrays["input_centre"], dtype=np.float64)
    scale = np.asarray(arrays["input_scale"], dtype=np.float64)
    x = (np.asarray(inputs, dtype=np.float64) - centre) / scale
    edges = np.asarray(arrays["input_edges"], dtype=np.float64)
    bucket = np.minimum(
        np.searchsorted(edges, np.asarray(steps, dtype=np.float64), side="left"), edges.size - 1
    )
    whitening = np.asarray(arrays["input_whitening"], dtype=np.float64)
    means = np.asarray(arrays["input_means"], dtype=np.float64)
    inp = np.zeros(x.shape[0])
    for k in range(edges.size):
        rows = bucket == k
        if rows.any():
            w = x[rows] @ whitening[k].T
            c = means[k] @ whitening[k].T
            inp[rows] = np.sqrt(((w[:, None, :] - c[None]) ** 2).sum(-1).min(axis=1))
    threshold = np.asarray(arrays["input_thresholds"], dtype=np.float64)[bucket]
    rep_score, inp_score = rep / rep_threshold, inp / threshold
    return {
        "representation_distance": rep,
        "input_distance": inp,
        "input_threshold": threshold,
        "representation": rep_score,
        "input": inp_score,
        "combined": np.maximum(rep_score, inp_score),
    }
