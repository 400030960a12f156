"""The deterioration network: GRU-D encoder, static encoder, imaging fusion slot, head.

Shapes use ``B`` batch, ``T`` hourly bins, ``P`` series parameters, ``S`` static
entries, ``K`` image slots, ``E`` image-embedding width, ``H`` recurrent width and ``F``
fused width.

* Series encoder (``encoder="grud"``, Che et al. 2018): raw values are log-transformed
  where skewed and standardised with training statistics held as buffers; missing inputs
  decay from the last observed value toward the training mean with a learned
  per-parameter rate ``gamma_x = exp(-relu(w_x * delta + b_x))``, and the hidden state
  decays with ``gamma_h = exp(-relu(W_h delta + b_h))`` before each GRU step on
  ``[x_hat, mask]``. The per-parameter rates let slow labs and fast vitals age
  differently (multi-rate). ``encoder="gru"`` is the comparison baseline: a plain GRU on
  ``[forward-filled x, mask, delta]``.
* Fusion: ``z = tanh(W [h_T, static_embedding])``; images enter by single-head
  cross-modal attention with ``z`` as the query and ``[K]`` projected image tokens
  (embedding plus age) as keys and values; masked slots get no weight, and for a patient
  with no image the attended vector is exactly zero. ``fused = z + W_o attention`` with
  ``W_o`` zero-initialised (late fusion, residual), so an untrained branch leaves the
  risk unchanged; :mod:`models.deterioration.image_branch` fine-tunes the branch alone (``b_o``
  frozen) on a synthetic fixture linkage of images to stays.
* Wide branch (``wide=True``): a linear term on :func:`window_statistics` (last, mean,
  min, max, observed-any, ``log1p(count)`` per parameter, statics and their mask, each
  standardised with buffers) added to the logit. It is trained jointly with the network,
  or set from a separately fitted logistic regression (stacking).
* Head: ``logit = w·fused + b [+ wide]``; ``risk = sigmoid(a·logit + c)`` with Platt
  parameters ``a > 0`` and ``c`` fitted on validation data and stored as buffers.
* Serving: :meth:`DeteriorationNet.forward` is the fast path (``risk``, ``fused``);
  :meth:`DeteriorationNet.explain` adds ``contributions`` by occlusion in one batched
  pass: for each parameter, the change in the calibrated log-odds when that parameter's
  whole window is hidden (``logit_cal(all) - logit_cal(without p)``), so positive values
  raised the risk. It costs ``P + 1`` forwards; :class:`Explainer` exports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor, nn

from streams.core.features import DELTA_CAP_HOURS, SERIES_CODES, STATIC_FEATURES

__all__ = [
    "LOG_SCALED_CODES",
    "DeteriorationEnsemble",
    "DeteriorationNet",
    "Explainer",
    "NetConfig",
    "NetInputs",
    "RiskModel",
    "window_statistics",
]

LOG_SCALED_CODES: tuple[str, ...] = (
    "Urine",
    "BUN",
    "Creatinine",
    "Glucose",
    "Bilirubin",
    "Lactate",
    "WBC",
    "Platelets",
    "ALP",
    "ALT",
    "AST",
    "TroponinI",
    "TroponinT",
    "PaO2",
)
"""Right-skewed parameters standardised as ``log1p(value)``."""

_DELTA_SCALE_HOURS = 12.0  # time gaps enter the decay layers in units of 12 h


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Network hyper-parameters.

    Attributes:
        encoder: ``"grud"`` (learned decay) or ``"gru"`` (inputs concatenated).
        n_series: ``P``.
        n_statics: ``S``.
        hidden: ``H``, recurrent state width.
        static_hidden: Width of the static embedding.
        fused: ``F``, width of the fused vector.
        image_dim: ``E``, width of an image embedding.
        max_images: ``K``, image slots per request.
        dropout: Dropout on the encoder outputs and the fused vector during training.
        summary: Add the window-summary branch (wide part).
        summary_hidden: Width of the summary embedding.
        wide: Add the linear branch on :func:`window_statistics` to the logit.
    """

    encoder: Literal["grud", "gru"] = "gru"
    n_series: int = len(SERIES_CODES)
    n_statics: int = len(STATIC_FEATURES)
    hidden: int = 64
    static_hidden: int = 32
    fused: int = 64
    image_dim: int = 64
    max_images: int = 4
    dropout: float = 0.3
    summary: bool = True
    summary_hidden: int = 32
    wide: bool = False

    def to_dict(self) -> dict[str, object]:
        """The configuration as plain JSON-ready values."""
        return asdict(self)


def window_statistics(
    values: Tensor, mask: Tensor, statics: Tensor, static_mask: Tensor, log_scaled: Tensor
) -> Tensor:
    """Per-parameter summaries of a window (the logistic baseline's features).

    Args:
        values: ``[B,T,P]`` raw values.
        mask: ``[B,T,P]`` observation mask.
        statics: ``[B,S]`` raw statics.
        static_mask: ``[B,S]`` static mask.
        log_scaled: ``[P]`` 1 where a parameter is summarised as ``log1p``.

    Returns:
        ``[B,6P+2S]``: last, mean, min, max (0 where never observed), observed-any and
        ``log1p(count)`` per parameter, then statics and their mask; the same numbers as
        :func:`models.deterioration.baselines.summary_statistics` (in float32).
    """
    v = torch.where(log_scaled > 0.5, torch.log1p(torch.clamp(values, min=0.0)), values)
    observed = mask > 0.5
    count = observed.to(values.dtype).sum(1)
    seen = count > 0.5
    zero = torch.zeros_like(count)
    mean = torch.where(seen, (v * observed).sum(1) / torch.clamp(count, min=1.0), zero)
    vmin = torch.where(observed, v, torch.full_like(v, float("inf"))).min(1).values
    vmax = torch.where(observed, v, torch.full_like(v, float("-inf"))).max(1).values
    steps = values.shape[1]
    last_index = steps - 1 - torch.argmax(torch.flip(observed.to(values.dtype), [1]), dim=1)
    last = torch.gather(v, 1, last_index.unsqueeze(1)).squeeze(1)
    return torch.cat(
        [
            torch.where(seen, last, zero),
            mean,
            torch.where(seen, vmin, zero),
            torch.where(seen, vmax, zero),
            seen.to(values.dtype),
            torch.log1p(count),
            statics,
            static_mask,
        ],
        dim=1,
    )


class _GRUDEncoder(nn.Module):
    """GRU-D: ``[B,T,P]`` standardised values, mask, gaps -> ``[B,H]`` last state."""

    def __init__(self, n_series: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gamma_x_w = nn.Parameter(torch.full((n_series,), 0.5))
        self.gamma_x_b = nn.Parameter(torch.zeros(n_series))
        self.gamma_h = nn.Linear(n_series, hidden)
        self.cell = nn.GRUCell(2 * n_series, hidden)

    def forward(self, x: Tensor, m: Tensor, delta: Tensor) -> Tensor:
        batch, steps, n_series = x.shape
        h = torch.zeros(batch, self.hidden, dtype=x.dtype, device=x.device)
        x_last = torch.zeros(batch, n_series, dtype=x.dtype, device=x.device)
        gamma_x = torch.exp(-torch.relu(self.gamma_x_w * delta + self.gamma_x_b))
        gamma_h = torch.exp(-torch.relu(self.gamma_h(delta)))
        for t in range(steps):
            m_t = m[:, t]
            x_last = m_t * x[:, t] + (1.0 - m_t) * x_last
            x_hat = m_t * x[:, t] + (1.0 - m_t) * gamma_x[:, t] * x_last
            h = self.cell(torch.cat([x_hat, m_t], dim=1), gamma_h[:, t] * h)
        return h


class _GRUEncoder(nn.Module):
    """Plain GRU on ``[forward-filled x, mask, delta]`` -> ``[B,H]`` last state."""

    def __init__(self, n_series: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = nn.GRUCell(3 * n_series, hidden)

    def forward(self, x: Tensor, m: Tensor, delta: Tensor) -> Tensor:
        batch, steps, n_series = x.shape
        h = torch.zeros(batch, self.hidden, dtype=x.dtype, device=x.device)
        x_last = torch.zeros(batch, n_series, dtype=x.dtype, device=x.device)
        for t in range(steps):
            m_t = m[:, t]
            x_last = m_t * x[:, t] + (1.0 - m_t) * x_last
            h = self.cell(torch.cat([x_last, m_t, delta[:, t]], dim=1), h)
        return h


class NetInputs(NamedTuple):
    """One batch of the window model's inputs, raw units, in the served order (the
    ``input`` list of ``config.pbtxt``).

    Attributes:
        values: ``[B,T,P]`` raw values.
        mask: ``[B,T,P]`` observation mask.
        delta_hours: ``[B,T,P]`` hours since the last observation.
        statics: ``[B,S]`` raw statics.
        static_mask: ``[B,S]`` static mask.
        image_embeddings: ``[B,K,E]`` image embeddings.
        image_age_hours: ``[B,K]`` hours from each image to the scoring time.
        image_mask: ``[B,K]`` 1 for a present image.
    """

    values: Tensor
    mask: Tensor
    delta_hours: Tensor
    statics: Tensor
    static_mask: Tensor
    image_embeddings: Tensor
    image_age_hours: Tensor
    image_mask: Tensor


class RiskModel(nn.Module):
    """The served paths, shared by one network and an ensemble of them.

    Subclasses define :meth:`encode` and hold the Platt buffers ``calibration_scale``
    and ``calibration_bias`` and the gap cap ``delta_cap`` (hours).
    """

    if TYPE_CHECKING:  # buffers; TorchScript must not see these annotations
        calibration_scale: Tensor
        calibration_bias: Tensor
        delta_cap: float

    def encode(self, inputs: NetInputs) -> tuple[Tensor, Tensor, Tensor]:
        """``fused [B,F]``, uncalibrated ``logit [B]``, image ``attention [B,K]``."""
        raise NotImplementedError

    def calibrated_logit(self, logit: Tensor) -> Tensor:
        """Platt-scaled log-odds ``a·logit + c``, same shape as ``logit``."""
        return self.calibration_scale * logit + self.calibration_bias

    def forward(
        self,
        values: Tensor,
        mask: Tensor,
        delta_hours: Tensor,
        statics: Tensor,
        static_mask: Tensor,
        image_embeddings: Tensor,
        image_age_hours: Tensor,
        image_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Scores a batch: the fast serving path. Takes the fields of :class:`NetInputs`
        one by one, as Triton passes them.

        Returns:
            ``risk [B,1]`` calibrated probability and ``fused [B,F]``.
        """
        fused, logit, _ = self.encode(
            NetInputs(
                values,
                mask,
                delta_hours,
                statics,
                static_mask,
                image_embeddings,
                image_age_hours,
                image_mask,
            )
        )
        return torch.sigmoid(self.calibrated_logit(logit)).unsqueeze(1), fused

    def explain(self, inputs: NetInputs) -> tuple[Tensor, Tensor, Tensor]:
        """Scores a batch with per-parameter contributions (``P + 1`` forwards' cost).

        Returns:
            ``risk [B,1]``, ``fused [B,F]`` (as :meth:`forward`), and
            ``contributions [B,P]``: calibrated log-odds of the full input minus those
            with parameter ``p`` hidden (mask 0, value 0, gap at the cap) everywhere.
        """
        values = inputs.values
        batch, steps, n_series = values.shape
        reps = n_series + 1
        # Row block 0 is the full input; block p+1 hides parameter p.
        keep = torch.ones(reps, n_series, dtype=values.dtype, device=values.device)
        keep[1:] = 1.0 - torch.eye(n_series, dtype=values.dtype, device=values.device)
        keep = keep.view(reps, 1, 1, n_series)
        v = (values.unsqueeze(0) * keep).reshape(reps * batch, steps, n_series)
        m = (inputs.mask.unsqueeze(0) * keep).reshape(reps * batch, steps, n_series)
        d = (inputs.delta_hours.unsqueeze(0) * keep + self.delta_cap * (1.0 - keep)).reshape(
            reps * batch, steps, n_series
        )
        fused, logit, _ = self.encode(
            NetInputs(
                v,
                m,
                d,
                inputs.statics.repeat(reps, 1),
                inputs.static_mask.repeat(reps, 1),
                inputs.image_embeddings.repeat(reps, 1, 1),
                inputs.image_age_hours.repeat(reps, 1),
                inputs.image_mask.repeat(reps, 1),
            )
        )
        cal = self.calibrated_logit(logit).view(reps, batch)
        risk = torch.sigmoid(cal[0]).unsqueeze(1)
        contributions = (cal[0].unsqueeze(0) - cal[1:]).transpose(0, 1)
        return risk, fused.view(reps, batch, -1)[0], contributions


class DeteriorationNet(RiskModel):
    """In-hospital mortality risk from a feature window, with an imaging slot.

    Normalisation statistics and calibration are buffers, so inputs stay raw
    (canonical units, as :func:`streams.core.features.build_features` returns them).
    """

    if TYPE_CHECKING:  # buffers; TorchScript must not see these annotations
        value_mean: Tensor
        value_std: Tensor
        log_scaled: Tensor
        static_mean: Tensor
        static_std: Tensor
        calibration_scale: Tensor
        calibration_bias: Tensor
        wide_mean: Tensor
        wide_std: Tensor

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        p, s, f = config.n_series, config.n_statics, config.fused
        self.n_series = p
        self.delta_cap = float(DELTA_CAP_HOURS)
        self.delta_scale = _DELTA_SCALE_HOURS
        self.register_buffer("value_mean", torch.zeros(p))
        self.register_buffer("value_std", torch.ones(p))
        self.register_buffer("log_scaled", torch.zeros(p))
        self.register_buffer("static_mean", torch.zeros(s))
        self.register_buffer("static_std", torch.ones(s))
        self.register_buffer("calibration_scale", torch.ones(1))
        self.register_buffer("calibration_bias", torch.zeros(1))
        self.encoder: nn.Module = (
            _GRUDEncoder(p, config.hidden)
            if config.encoder == "grud"
            else _GRUEncoder(p, config.hidden)
        )
        self.static_net = nn.Sequential(nn.Linear(2 * s, config.static_hidden), nn.ReLU())
        self.use_summary = config.summary
        self.summary_net = nn.Sequential(nn.Linear(5 * p, config.summary_hidden), nn.ReLU())
        summary_width = config.summary_hidden if config.summary else 0
        self.combine = nn.Linear(config.hidden + config.static_hidden + summary_width, f)
        self.image_proj = nn.Linear(config.image_dim + 1, f)
        self.query = nn.Linear(f, f)
        self.key = nn.Linear(f, f)
        self.value = nn.Linear(f, f)
        self.image_out = nn.Linear(f, f)
        nn.init.zeros_(self.image_out.weight)
        nn.init.zeros_(self.image_out.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(f, 1)
        self.attn_scale = float(f) ** -0.5
        self.use_wide = config.wide
        wide_width = 6 * p + 2 * s
        self.register_buffer("wide_mean", torch.zeros(wide_width))
        self.register_buffer("wide_std", torch.ones(wide_width))
        # Zero-initialised without drawing random numbers, so adding the branch leaves
        # the seeded initialisation and dropout draws of the rest unchanged.
        self.wide_weight = nn.Parameter(torch.zeros(wide_width))
        self.wide_bias = nn.Parameter(torch.zeros(1))

    def _standardise(self, values: Tensor, mask: Tensor) -> Tensor:
        logged = torch.log1p(torch.clamp(values, min=0.0))
        raw = torch.where(self.log_scaled > 0.5, logged, values)
        return (raw - self.value_mean) / self.value_std * mask

    def _summary(self, x: Tensor, mask: Tensor) -> Tensor:
        """``[B,5P]`` per-parameter last, mean, min, max of standardised values and
        ``log1p(count)`` over the window (0 where never observed)."""
        count = mask.sum(1)
        seen = count > 0.5
        zero = torch.zeros_like(count)
        mean = (x * mask).sum(1) / torch.clamp(count, min=1.0)
        observed = mask > 0.5
        vmax = torch.where(observed, x, torch.full_like(x, -1e4)).max(1).values
        vmin = torch.where(observed, x, torch.full_like(x, 1e4)).min(1).values
        steps = x.shape[1]
        last_index = steps - 1 - torch.argmax(torch.flip(mask, [1]), dim=1)
        last = torch.gather(x, 1, last_index.unsqueeze(1)).squeeze(1)
        return torch.cat(
            [
                torch.where(seen, last, zero),
                mean,
                torch.where(seen, vmin, zero),
                torch.where(seen, vmax, zero),
                torch.log1p(count),
            ],
            dim=1,
        )

    def image_branch(
        self, z: Tensor, image_embeddings: Tensor, image_age_hours: Tensor, image_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The cross-modal attention term added to ``z``, and its weights.

        Args:
            z: ``[B,F]`` the image-free fused vector (the query).
            image_embeddings: ``[B,K,E]`` image embeddings.
            image_age_hours: ``[B,K]`` hours from each image to the scoring time.
            image_mask: ``[B,K]`` 1 for a present image.

        Returns:
            ``W_o attended + b_o [B,F]`` and ``attention [B,K]``. A row without images has
            zero weights and ``attended = 0``, so its term is exactly ``b_o`` whatever
            ``W_o`` and the attention weights are (``b_o`` is trained with the rest of
            the network, as a constant offset).
        """
        age = torch.clamp(image_age_hours, min=0.0, max=self.delta_cap) / self.delta_cap
        tokens = self.image_proj(torch.cat([image_embeddings, age.unsqueeze(-1)], dim=-1))
        q = self.query(z).unsqueeze(1)  # [B,1,F]
        scores = (q * self.key(tokens)).sum(-1) * self.attn_scale  # [B,K]
        present = image_mask > 0.5
        scores = torch.where(present, scores, torch.full_like(scores, -1e9))
        weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        weights = weights * present.to(weights.dtype)
        weights = weights / torch.clamp(weights.sum(dim=1, keepdim=True), min=1e-12)
        attended = (weights.unsqueeze(-1) * self.value(tokens)).sum(1)  # [B,F]
        return self.image_out(attended), weights

    def encode(self, inputs: NetInputs) -> tuple[Tensor, Tensor, Tensor]:
        """Fused vector, uncalibrated logit and image attention weights.

        Args:
            inputs: One batch (shapes in :class:`NetInputs`).

        Returns:
            ``fused [B,F]``, ``logit [B]`` and ``attention [B,K]`` (zeros without images).
        """
        values, mask, statics, static_mask = (
            inputs.values,
            inputs.mask,
            inputs.statics,
            inputs.static_mask,
        )
        x = self._standardise(values, mask)
        delta = torch.clamp(inputs.delta_hours, min=0.0, max=self.delta_cap) / self.delta_scale
        h = self.encoder(x, mask, delta)
        st = (statics - self.static_mean) / self.static_std * static_mask
        s = self.static_net(torch.cat([st, static_mask], dim=1))
        parts = [self.dropout(h), s]
        if self.use_summary:
            parts.append(self.dropout(self.summary_net(self._summary(x, mask))))
        z = torch.tanh(self.combine(torch.cat(parts, dim=1)))
        image_term, weights = self.image_branch(
            z, inputs.image_embeddings, inputs.image_age_hours, inputs.image_mask
        )
        fused = z + image_term
        logit = self.head(self.dropout(fused)).squeeze(1)
        if self.use_wide:
            stats = window_statistics(values, mask, statics, static_mask, self.log_scaled)
            standardised = (stats - self.wide_mean) / self.wide_std
            logit = logit + standardised @ self.wide_weight + self.wide_bias
        return fused, logit, weights


class DeteriorationEnsemble(RiskModel):
    """Networks trained with different seeds; the logit is the mean of their logits.

    ``fused`` and the image attention are those of the first member (a mean of fused
    vectors from independently trained networks would not be a representation).
    Calibration applies to the mean logit; the members' own calibration is unused.

    Args:
        config: Configuration shared by the members.
        members: Number of networks (at least 1).
    """

    if TYPE_CHECKING:  # buffers; TorchScript must not see these annotations
        calibration_scale: Tensor
        calibration_bias: Tensor

    def __init__(self, config: NetConfig, members: int) -> None:
        super().__init__()
        if members < 1:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(DeteriorationNet(config) for _ in range(members))
        self.n_series = config.n_series
        self.delta_cap = float(DELTA_CAP_HOURS)
        self.register_buffer("calibration_scale", torch.ones(1))
        self.register_buffer("calibration_bias", torch.zeros(1))

    def encode(self, inputs: NetInputs) -> tuple[Tensor, Tensor, Tensor]:
        """First member's ``fused [B,F]`` and ``attention [B,K]``, mean ``logit [B]``."""
        # TorchScript needs the ModuleList iterated directly; mypy sees plain Modules.
        outputs = [member.encode(inputs) for member in self.members]  # type: ignore[operator]
        logit = torch.stack([logit for _, logit, _ in outputs]).mean(0)
        return outputs[0][0], logit, outputs[0][2]


class Explainer(nn.Module):
    """Exports :meth:`DeteriorationNet.explain` as ``forward`` (same weights, same inputs).

    Args:
        net: The trained network or ensemble (shared, not copied).
    """

    def __init__(self, net: RiskModel) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        values: Tensor,
        mask: Tensor,
        delta_hours: Tensor,
        statics: Tensor,
        static_mask: Tensor,
        image_embeddings: Tensor,
        image_age_hours: Tensor,
        image_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``risk [B,1]``, ``fused [B,F]``, ``contributions [B,P]`` (the fields of
        :class:`NetInputs` one by one, as Triton passes them)."""
        return self.net.explain(
            NetInputs(
                values,
                mask,
                delta_hours,
                statics,
                static_mask,
                image_embeddings,
                image_age_hours,
                image_mask,
            )
        )
