"""The step (incremental) deterioration network: a GRU that advances one hour bin at a time.

Shapes use ``B`` batch, ``N`` steps of a stay, ``L`` bins per request, ``P`` series
parameters, ``S`` static entries, ``K`` image slots, ``E`` image-embedding width, ``H``
recurrent width, ``F`` fused width and ``M`` ensemble members.

A step is an hour bin with at least one observation (:mod:`streams.core.step_features`).
Per step, with ``x`` the standardised values (as
:class:`models.deterioration.network.DeteriorationNet`:
``log1p`` for skewed labs, training means and standard deviations, 0 where unobserved),
``m`` the mask and ``d`` the gap (hours, capped at 48, divided by 12):

* **Running statistics** ``[5, P]`` (:func:`running_stats`), shared by every member:
  count of bins with an observation, sum, min and max of ``x`` over those bins, and the
  last observed ``x`` (min, max and last are 0 until the first observation). They replace
  the window-summary branch: from admission, not over a 48-hour window.
* **GRU** per member: ``h' = GRUCell([last, m, d], h)`` (``last`` after this step's
  update, i.e. ``x`` forward-filled).
* **Head** per member, from the state after the last step: ``z = tanh(W [h, static
  embedding, summary embedding])`` with the summary ``[last, mean, min, max,
  log1p(count)]``; image tokens by cross-attention with ``z`` as the query, ``fused = z +
  W_o attended + b_o`` (exactly ``z + b_o`` without images); ``logit = w·fused + b``.
* Ensemble: mean of the members' logits, Platt scaling ``risk = sigmoid(a·logit + c)``;
  ``fused`` is the first member's.

The **state** of one patient is ``[5P + M·H]`` floats (:class:`StateLayout`): the five
statistics rows, then each member's ``h``. It is all zeros before the first step.

Two paths compute the same numbers: :meth:`StepEnsemble.score_hours` (training,
evaluation: a whole stay's steps at once, states gathered at any scoring hour) and
:class:`StepModule` (serving, TorchScript: members' weights stacked so one matrix product
serves all of them, ``L`` bins after a stored state, the state after ``commit_bins`` of
them returned). ``tests/models/test_step_parity.py`` checks they agree within 1e-5 at
every hour of real stays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

import torch
from torch import Tensor, nn

from models.deterioration.network import NetConfig
from streams.core.features import DELTA_CAP_HOURS

__all__ = [
    "N_STATS",
    "StateLayout",
    "StepEnsemble",
    "StepInputs",
    "StepModule",
    "StepNet",
    "gru_inputs",
    "running_stats",
    "summary_features",
]

N_STATS: Final[int] = 5
"""Rows of the running statistics: count, sum, min, max, last."""


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Where things sit in the state vector ``[D]``.

    Attributes:
        n_series: ``P``.
        hidden: ``H``.
        members: ``M``.
    """

    n_series: int
    hidden: int
    members: int

    @property
    def stats_width(self) -> int:
        """``5P``: count, sum, min, max, last (rows of ``P``)."""
        return N_STATS * self.n_series

    @property
    def width(self) -> int:
        """``D = 5P + M·H``."""
        return self.stats_width + self.members * self.hidden

    def to_dict(self) -> dict[str, object]:
        """JSON-ready description (for the model card)."""
        return asdict(self) | {
            "width": self.width,
            "order": ["count[P]", "sum[P]", "min[P]", "max[P]", "last[P]"]
            + [f"h_member{i}[H]" for i in range(self.members)],
        }


def standardise(
    values: Tensor, mask: Tensor, value_mean: Tensor, value_std: Tensor, log_scaled: Tensor
) -> Tensor:
    """Standardised values (``log1p`` where ``log_scaled``), 0 where ``mask`` is 0."""
    logged = torch.log1p(torch.clamp(values, min=0.0))
    raw = torch.where(log_scaled > 0.5, logged, values)
    return (raw - value_mean) / value_std * mask


def running_stats(prev: Tensor, x: Tensor, mask: Tensor, steps: int = -1) -> Tensor:
    """Running statistics after each of the first ``steps`` steps, from ``prev``.

    Args:
        prev: ``[B,5,P]`` statistics before the first step.
        x: ``[B,N,P]`` standardised values (0 where unobserved).
        mask: ``[B,N,P]`` 1 where observed (0 for padding steps).
        steps: Steps to run (``-1``: all ``N``); later steps must be padding.

    Returns:
        ``[B,steps+1,5,P]``: index 0 is ``prev``, index ``n`` the statistics after ``n``
        steps. Each step updates the previous one in float32, so any split of a stay's
        steps into requests gives bit-identical statistics.
    """
    count, total, vmin, vmax, last = prev.unbind(1)
    observed = mask > 0.5
    out = [prev]
    n = x.shape[1] if steps < 0 else steps
    for t in range(n):
        obs, x_t = observed[:, t], x[:, t]
        seen_before = count > 0.5
        count = count + mask[:, t]
        total = total + x_t
        vmax = torch.where(obs, torch.where(seen_before, torch.maximum(vmax, x_t), x_t), vmax)
        vmin = torch.where(obs, torch.where(seen_before, torch.minimum(vmin, x_t), x_t), vmin)
        last = torch.where(obs, x_t, last)
        out.append(torch.stack([count, total, vmin, vmax, last], 1))
    return torch.stack(out, 1)


def gru_inputs(last: Tensor, mask: Tensor, delta_hours: Tensor, delta_cap: float) -> Tensor:
    """``[..., 3P]`` GRU input ``[last, mask, clamp(delta, 0, cap) / 12]``."""
    d = torch.clamp(delta_hours, min=0.0, max=delta_cap) / 12.0  # gaps in units of 12 h
    return torch.cat([last, mask, d], -1)


def summary_features(stats: Tensor) -> Tensor:
    """``[..., 5P]`` summary ``[last, mean, min, max, log1p(count)]`` from ``[..., 5, P]``."""
    count, total, vmin, vmax, last = stats.unbind(-2)
    mean = total / torch.clamp(count, min=1.0)
    return torch.cat([last, mean, vmin, vmax, torch.log1p(count)], -1)


@dataclass(frozen=True, slots=True, eq=False)
class StepInputs:
    """A batch of stays prepared for :meth:`StepEnsemble.score_hours` (``Q`` hours).

    Attributes:
        closed_x: ``[B,N,3P]`` GRU inputs of each stay's closed steps (padding: any).
        closed_valid: ``[B,N]`` 1 for a real step.
        n_closed: ``[B,Q]`` int64 closed steps before each scoring hour.
        open_x: ``[B,Q,3P]`` GRU input of the open bin at each scoring hour.
        open_valid: ``[B,Q]`` 1 where the open bin holds an observation (a step).
        stats: ``[B,Q,5,P]`` running statistics at each scoring hour (open bin included).
        statics: ``[B,S]``.
        static_mask: ``[B,S]``.
    """

    closed_x: Tensor
    closed_valid: Tensor
    n_closed: Tensor
    open_x: Tensor
    open_valid: Tensor
    stats: Tensor
    statics: Tensor
    static_mask: Tensor

    def rows(self, index: Tensor) -> StepInputs:
        """The stays ``index`` (a ``[b]`` int64 tensor)."""
        return StepInputs(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def hours(self, columns: Tensor) -> StepInputs:
        """Only the scoring-hour columns ``columns`` (a ``[q]`` int64 tensor)."""
        return StepInputs(
            self.closed_x,
            self.closed_valid,
            self.n_closed[:, columns],
            self.open_x[:, columns],
            self.open_valid[:, columns],
            self.stats[:, columns],
            self.statics,
            self.static_mask,
        )


class StepNet(nn.Module):
    """One member: GRU cell, static, summary and image branches, head.

    Normalisation is held by :class:`StepEnsemble` (shared by the members).
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        p, s, f = config.n_series, config.n_statics, config.fused
        self.hidden = config.hidden
        self.cell = nn.GRUCell(3 * p, config.hidden)
        self.static_net = nn.Sequential(nn.Linear(2 * s, config.static_hidden), nn.ReLU())
        self.summary_net = nn.Sequential(nn.Linear(5 * p, config.summary_hidden), nn.ReLU())
        self.combine = nn.Linear(config.hidden + config.static_hidden + config.summary_hidden, f)
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

    def sequence(self, x: Tensor, valid: Tensor) -> Tensor:
        """``[B,N+1,H]`` hidden states from zeros through ``N`` steps (``x [B,N,3P]``);
        an invalid step keeps the state."""
        batch, steps, _ = x.shape
        h = torch.zeros(batch, self.hidden, dtype=x.dtype)
        out = [h]
        for t in range(steps):
            h = torch.where(valid[:, t : t + 1] > 0.5, self.cell(x[:, t], h), h)
            out.append(h)
        return torch.stack(out, 1)

    def head_logit(
        self,
        h: Tensor,
        summary: Tensor,
        static_in: Tensor,
        images: tuple[Tensor, Tensor, Tensor] | None,
        delta_cap: float,
    ) -> tuple[Tensor, Tensor]:
        """``fused [R,F]`` and ``logit [R]`` from ``h [R,H]``, ``summary [R,5P]``,
        ``static_in [R,2S]`` and optional images ``([R,K,E], [R,K], [R,K])``."""
        parts = [
            self.dropout(h),
            self.static_net(static_in),
            self.dropout(self.summary_net(summary)),
        ]
        z = torch.tanh(self.combine(torch.cat(parts, 1)))
        if images is None:
            fused = z + self.image_out.bias
        else:
            embeddings, ages, image_mask = images
            age = torch.clamp(ages, min=0.0, max=delta_cap) / delta_cap
            tokens = self.image_proj(torch.cat([embeddings, age.unsqueeze(-1)], -1))
            q = self.query(z).unsqueeze(1)
            scores = (q * self.key(tokens)).sum(-1) * self.attn_scale
            present = image_mask > 0.5
            scores = torch.where(present, scores, torch.full_like(scores, -1e9))
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            weights = weights * present.to(weights.dtype)
            weights = weights / torch.clamp(weights.sum(dim=1, keepdim=True), min=1e-12)
            attended = (weights.unsqueeze(-1) * self.value(tokens)).sum(1)
            fused = z + self.image_out(attended)
        return fused, self.head(self.dropout(fused)).squeeze(1)


class StepEnsemble(nn.Module):
    """Members trained with different seeds, shared normalisation and calibration.

    Args:
        config: Member configuration (``encoder`` must be ``"gru"``, ``summary`` on).
        members: ``M`` (at least 1).
    """

    if TYPE_CHECKING:  # buffers
        value_mean: Tensor
        value_std: Tensor
        log_scaled: Tensor
        static_mean: Tensor
        static_std: Tensor
        calibration_scale: Tensor
        calibration_bias: Tensor

    def __init__(self, config: NetConfig, members: int) -> None:
        super().__init__()
        if members < 1:
            raise ValueError("an ensemble needs at least one member")
        if config.encoder != "gru" or not config.summary or config.wide:
            raise ValueError("the step model is a GRU with the summary branch, no wide branch")
        p, s = config.n_series, config.n_statics
        self.config = config
        self.layout = StateLayout(p, config.hidden, members)
        self.delta_cap = float(DELTA_CAP_HOURS)
        self.members = nn.ModuleList(StepNet(config) for _ in range(members))
        self.register_buffer("value_mean", torch.zeros(p))
        self.register_buffer("value_std", torch.ones(p))
        self.register_buffer("log_scaled", torch.zeros(p))
        self.register_buffer("static_mean", torch.zeros(s))
        self.register_buffer("static_std", torch.ones(s))
        self.register_buffer("calibration_scale", torch.ones(1))
        self.register_buffer("calibration_bias", torch.zeros(1))

    def standardise(self, values: Tensor, mask: Tensor) -> Tensor:
        """Standardised values with this model's buffers (0 where unobserved)."""
        return standardise(values, mask, self.value_mean, self.value_std, self.log_scaled)

    def static_input(self, statics: Tensor, static_mask: Tensor) -> Tensor:
        """``[..., 2S]`` ``[standardised statics × mask, mask]``."""
        st = (statics - self.static_mean) / self.static_std * static_mask
        return torch.cat([st, static_mask], -1)

    def member_logits(
        self, inputs: StepInputs, members: list[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-member ``logit [M',B,Q]`` and the first listed member's ``fused [B,Q,F]``
        at each scoring hour (no images): the full-sequence path."""
        chosen = list(range(len(self.members))) if members is None else members
        batch, hours = inputs.n_closed.shape
        summary = summary_features(inputs.stats).reshape(batch * hours, -1)
        static_in = self.static_input(inputs.statics, inputs.static_mask)
        static_in = static_in.unsqueeze(1).expand(batch, hours, -1).reshape(batch * hours, -1)
        open_valid = inputs.open_valid.reshape(batch * hours, 1) > 0.5
        open_x = inputs.open_x.reshape(batch * hours, -1)
        logits: list[Tensor] = []
        first_fused = torch.zeros(0)
        for i in chosen:
            member: StepNet = self.members[i]  # type: ignore[assignment]
            h_seq = member.sequence(inputs.closed_x, inputs.closed_valid)  # [B,N+1,H]
            index = inputs.n_closed.unsqueeze(-1).expand(batch, hours, h_seq.shape[-1])
            h = torch.gather(h_seq, 1, index).reshape(batch * hours, -1)
            h = torch.where(open_valid, member.cell(open_x, h), h)
            fused, logit = member.head_logit(h, summary, static_in, None, self.delta_cap)
            logits.append(logit.view(batch, hours))
            if not first_fused.numel():
                first_fused = fused.view(batch, hours, -1)
        return torch.stack(logits), first_fused

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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The served step computed member by member with the eager modules (the
        reference of :class:`StepModule`; same inputs and outputs)."""
        batch, length, p = bins_values.shape
        valid = bins_valid > 0.5
        mask = bins_mask * valid.to(bins_mask.dtype).unsqueeze(-1)
        x = self.standardise(bins_values, mask)
        stats_seq = running_stats(state[:, : 5 * p].view(batch, 5, p), x, mask)
        inp = gru_inputs(stats_seq[:, 1:, 4], mask, bins_delta_hours, self.delta_cap)
        commit = torch.clamp(commit_bins[:, 0], 0.0, float(length)).long()
        rows = torch.arange(batch)
        static_in = self.static_input(statics, static_mask)
        summary = summary_features(stats_seq[:, length])
        images = (image_embeddings, image_age_hours, image_mask)
        hidden = self.layout.hidden
        logits, h_commits, first_fused = [], [], torch.zeros(0)
        for i in range(len(self.members)):
            member: StepNet = self.members[i]  # type: ignore[assignment]
            h = state[:, 5 * p + i * hidden : 5 * p + (i + 1) * hidden]
            h_seq = [h]
            for t in range(length):
                h = torch.where(valid[:, t : t + 1], member.cell(inp[:, t], h), h)
                h_seq.append(h)
            h_commits.append(torch.stack(h_seq, 1)[rows, commit])
            fused, logit = member.head_logit(h, summary, static_in, images, self.delta_cap)
            logits.append(logit)
            if i == 0:
                first_fused = fused
        logit = torch.stack(logits).mean(0)
        risk = torch.sigmoid(self.calibration_scale * logit + self.calibration_bias)
        state_out = torch.cat([stats_seq[rows, commit].reshape(batch, 5 * p), *h_commits], 1)
        return risk.unsqueeze(1), state_out, first_fused

    def score_hours(self, inputs: StepInputs) -> tuple[Tensor, Tensor, Tensor]:
        """Full-sequence forward: ``risk [B,Q]``, uncalibrated ``logit [B,Q]`` and
        ``fused [B,Q,F]`` at each scoring hour of ``inputs`` (no images)."""
        logits, fused = self.member_logits(inputs)
        logit = logits.mean(0)
        risk = torch.sigmoid(self.calibration_scale * logit + self.calibration_bias)
        return risk, logit, fused


class StepModule(nn.Module):
    """The served step: ``L`` bins after a stored state, members stacked (TorchScript).

    ``forward(state [B,D], bins_values [B,L,P], bins_mask [B,L,P],
    bins_delta_hours [B,L,P], bins_valid [B,L], commit_bins [B,1], statics [B,S],
    static_mask [B,S], image_embeddings [B,K,E], image_age_hours [B,K],
    image_mask [B,K])`` returns ``risk [B,1]`` (calibrated, after every valid bin),
    ``state_out [B,D]`` (after the first ``commit_bins`` bins, clamped to ``[0, L]``;
    invalid bins leave the state unchanged) and ``fused [B,F]`` (first member).

    Args:
        ensemble: The trained ensemble (weights are copied and stacked).
    """

    if TYPE_CHECKING:  # buffers
        value_mean: Tensor
        value_std: Tensor
        log_scaled: Tensor
        static_mean: Tensor
        static_std: Tensor
        calibration_scale: Tensor
        calibration_bias: Tensor
        w_ih: Tensor
        b_ih: Tensor
        w_hh: Tensor
        b_hh: Tensor
        w_static: Tensor
        b_static: Tensor
        w_summary: Tensor
        b_summary: Tensor
        w_combine: Tensor
        b_combine: Tensor
        w_proj: Tensor
        b_proj: Tensor
        w_query: Tensor
        b_query: Tensor
        w_key: Tensor
        b_key: Tensor
        w_value: Tensor
        b_value: Tensor
        w_out: Tensor
        b_out: Tensor
        w_head: Tensor
        b_head: Tensor

    def __init__(self, ensemble: StepEnsemble) -> None:
        super().__init__()
        layout = ensemble.layout
        self.n_series = layout.n_series
        self.hidden = layout.hidden
        self.n_members = layout.members
        self.state_width = layout.width
        self.delta_cap = ensemble.delta_cap
        self.attn_scale = float(ensemble.config.fused) ** -0.5
        for name in (
            "value_mean",
            "value_std",
            "log_scaled",
            "static_mean",
            "static_std",
            "calibration_scale",
            "calibration_bias",
        ):
            self.register_buffer(name, getattr(ensemble, name).detach().clone())
        members: list[StepNet] = list(ensemble.members)  # type: ignore[arg-type]

        def stack(get: str) -> Tensor:
            def one(member: StepNet) -> Tensor:
                module: nn.Module = member
                for part in get.split("."):
                    module = getattr(module, part)
                return module  # type: ignore[return-value]

            return torch.stack([one(m).detach().clone() for m in members])

        # Input projection of all members in one product: [3P, M·3H].
        self.register_buffer("w_ih", torch.cat([m.cell.weight_ih.detach().t() for m in members], 1))
        self.register_buffer("b_ih", torch.cat([m.cell.bias_ih.detach() for m in members]))
        self.register_buffer("w_hh", stack("cell.weight_hh").transpose(1, 2).contiguous())
        self.register_buffer("b_hh", stack("cell.bias_hh").unsqueeze(1))
        for short, attr in (
            ("static", "static_net.0"),
            ("summary", "summary_net.0"),
            ("combine", "combine"),
            ("proj", "image_proj"),
            ("query", "query"),
            ("key", "key"),
            ("value", "value"),
            ("out", "image_out"),
            ("head", "head"),
        ):
            self.register_buffer(f"w_{short}", stack(f"{attr}.weight").transpose(1, 2).contiguous())
            self.register_buffer(f"b_{short}", stack(f"{attr}.bias").unsqueeze(1))

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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``risk [B,1]``, ``state_out [B,D]``, ``fused [B,F]`` (see the class)."""
        risk, state_out, fused, _ = self.step(
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
        return risk, state_out, fused[0]

    def step(
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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`forward` with what an OOD head reads: ``risk [B,1]``, ``state_out
        [B,D]``, every member's ``fused [M,B,F]`` and the running statistics after every
        valid bin ``[B,5,P]`` (those the risk was computed from)."""
        batch, length, p = bins_values.shape
        m_count, hidden = self.n_members, self.hidden
        valid = bins_valid > 0.5
        # Steps run: up to the last valid bin of any row (valid bins come first, so this
        # is usually 1 or 2 of L). Later bins are padding for every row and change nothing.
        positions = torch.arange(1, length + 1, device=state.device).unsqueeze(0)
        steps = int(torch.where(valid, positions, torch.zeros_like(positions)).max())
        # Only the bins run are read: the rest of the request's L bins are padding.
        mask = bins_mask[:, :steps] * valid[:, :steps].to(bins_mask.dtype).unsqueeze(-1)
        x = standardise(
            bins_values[:, :steps], mask, self.value_mean, self.value_std, self.log_scaled
        )
        stats_seq = running_stats(state[:, : 5 * p].view(batch, 5, p), x, mask, steps)
        inp = gru_inputs(stats_seq[:, 1:, 4], mask, bins_delta_hours[:, :steps], self.delta_cap)
        inp = inp.transpose(0, 1).contiguous()  # [steps,B,3P]
        h = state[:, 5 * p :].view(batch, m_count, hidden).transpose(0, 1)  # [M,B,H]
        hs = [h]
        for t in range(steps):
            gh = torch.baddbmm(self.b_hh, h, self.w_hh)  # [M,B,3H]
            # One [B,3P]x[3P,M·3H] product per step: the same rows per product whatever
            # the other rows' step counts, so a row's gates never depend on its block.
            gi = torch.addmm(self.b_ih, inp[t], self.w_ih)
            g = gi.view(batch, m_count, 3 * hidden).transpose(0, 1)
            rz = torch.sigmoid(g[:, :, : 2 * hidden] + gh[:, :, : 2 * hidden])
            r, z = rz[:, :, :hidden], rz[:, :, hidden:]
            n = torch.tanh(g[:, :, 2 * hidden :] + r * gh[:, :, 2 * hidden :])
            h = torch.where(valid[:, t].view(1, batch, 1), (h - n) * z + n, h)
            hs.append(h)
        commit = torch.clamp(commit_bins[:, 0], min=0.0, max=float(steps)).to(torch.long)
        rows = torch.arange(batch, device=state.device)
        h_commit = torch.stack(hs, 0)[commit, :, rows]  # [B,M,H]
        stats_commit = stats_seq[rows, commit]  # [B,5,P]
        state_out = torch.cat(
            [stats_commit.reshape(batch, 5 * p), h_commit.reshape(batch, m_count * hidden)], 1
        )
        fused, logit = self._head(
            h,
            stats_seq[:, steps],
            statics,
            static_mask,
            image_embeddings,
            image_age_hours,
            image_mask,
        )
        risk = torch.sigmoid(self.calibration_scale * logit + self.calibration_bias)
        return risk.unsqueeze(1), state_out, fused, stats_seq[:, steps]

    def _head(
        self,
        h: Tensor,
        stats: Tensor,
        statics: Tensor,
        static_mask: Tensor,
        image_embeddings: Tensor,
        image_age_hours: Tensor,
        image_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Every member's ``fused [M,B,F]`` and the mean ``logit [B]`` from ``h [M,B,H]``."""
        m_count, batch = h.shape[0], h.shape[1]
        st = (statics - self.static_mean) / self.static_std * static_mask
        static_in = torch.cat([st, static_mask], 1).unsqueeze(0).expand(m_count, batch, -1)
        s = torch.relu(torch.baddbmm(self.b_static, static_in, self.w_static))
        u = summary_features(stats).unsqueeze(0).expand(m_count, batch, -1)
        u = torch.relu(torch.baddbmm(self.b_summary, u, self.w_summary))
        z = torch.tanh(torch.baddbmm(self.b_combine, torch.cat([h, s, u], 2), self.w_combine))
        if bool((image_mask > 0.5).any()):
            age = torch.clamp(image_age_hours, min=0.0, max=self.delta_cap) / self.delta_cap
            tokens_in = torch.cat([image_embeddings, age.unsqueeze(-1)], -1).unsqueeze(0)
            tokens = torch.matmul(tokens_in, self.w_proj.unsqueeze(1)) + self.b_proj.unsqueeze(1)
            q = (torch.matmul(z, self.w_query) + self.b_query).unsqueeze(2)  # [M,B,1,F]
            keys = torch.matmul(tokens, self.w_key.unsqueeze(1)) + self.b_key.unsqueeze(1)
            scores = (q * keys).sum(-1) * self.attn_scale  # [M,B,K]
            present = (image_mask > 0.5).unsqueeze(0)
            scores = torch.where(present, scores, torch.full_like(scores, -1e9))
            weights = torch.exp(scores - scores.max(dim=2, keepdim=True).values)
            weights = weights * present.to(weights.dtype)
            weights = weights / torch.clamp(weights.sum(dim=2, keepdim=True), min=1e-12)
            values = torch.matmul(tokens, self.w_value.unsqueeze(1)) + self.b_value.unsqueeze(1)
            attended = (weights.unsqueeze(-1) * values).sum(2)  # [M,B,F]
            # A row without images has attended = 0, so its term is exactly b_out.
            fused = z + torch.matmul(attended, self.w_out) + self.b_out
        else:
            fused = z + self.b_out
        logit = torch.baddbmm(self.b_head, fused, self.w_head).squeeze(2).mean(0)
        return fused, logit
