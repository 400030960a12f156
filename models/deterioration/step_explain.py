"""Alert explanations for the step model: ``deterioration_step_explain``.

The step model scores from a stored state and never sees the patient's history again, so
an explanation must re-read it: this module runs the step network over the patient's
whole window from an empty state, once as it is and once with each parameter hidden
(occlusion, ``P + 1`` runs in one batch), and returns per-parameter contributions in
calibrated log-odds, the same outputs as the window model's ``deterioration_explain``.
It is served as its own Triton model, asked only when an alert opens, so it never slows
scoring.

Inputs are the window model's (``values``, ``mask``, ``delta_hours`` ``[B,T,P]``, the
statics and the image slots), built by the worker from the patient's state exactly as for
``deterioration_explain``. The window's rows are the hour bins aligned to admission, the
last one open up to the scoring time: the step model's own bins
(:mod:`streams.core.step_features`). A row with an observation is a step; an empty row
(or one emptied by hiding a parameter) is no step. So for a stay admitted within the
window (``T`` = 48 h) the unoccluded risk **is** the served step risk at that time (a test
checks it on real stays); for a longer stay it is the step model's risk over the last 48
hours only (what happened before is not in the window), which the explanation's reader
is told by the model card.

Contribution of parameter ``p``: calibrated logit of the full input minus that with ``p``
hidden everywhere (mask 0, value 0, gap at the cap), as the window model defines it.
"""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor, nn

from models.common import triton_config
from models.common.export import ServedModel
from models.common.torchscript import max_abs_gap, script, scripted_bytes
from models.common.triton_config import InstanceKind
from models.deterioration.export import example_inputs, tensor_specs
from models.deterioration.step_network import StepEnsemble, StepModule

__all__ = ["STEP_EXPLAIN_MODEL_NAME", "StepExplainModule", "served_step_explain"]

STEP_EXPLAIN_MODEL_NAME: Final[str] = "deterioration_step_explain"
"""The served explaining model of the step model."""
EXPLAIN_MAX_BATCH_SIZE: Final[int] = 64


class StepExplainModule(nn.Module):
    """``forward(values [B,T,P], mask [B,T,P], delta_hours [B,T,P], statics [B,S],
    static_mask [B,S], image_embeddings [B,K,E], image_age_hours [B,K], image_mask [B,K])``
    returns ``risk [B,1]``, ``fused [B,F]`` (first member) and ``contributions [B,P]``.

    Args:
        ensemble: The trained step ensemble (weights stacked as served).
    """

    def __init__(self, ensemble: StepEnsemble) -> None:
        super().__init__()
        self.step_module = StepModule(ensemble)
        self.state_width = ensemble.layout.width
        self.delta_cap = ensemble.delta_cap

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
        """Risk, fused and contributions (see the class)."""
        batch, steps, n_series = values.shape
        reps = n_series + 1
        # Row block 0 is the full input; block p+1 hides parameter p.
        keep = torch.ones(reps, n_series, dtype=values.dtype, device=values.device)
        keep[1:] = 1.0 - torch.eye(n_series, dtype=values.dtype, device=values.device)
        keep = keep.view(reps, 1, 1, n_series)
        v = (values.unsqueeze(0) * keep).reshape(reps * batch, steps, n_series)
        m = (mask.unsqueeze(0) * keep).reshape(reps * batch, steps, n_series)
        d = (delta_hours.unsqueeze(0) * keep + self.delta_cap * (1.0 - keep)).reshape(
            reps * batch, steps, n_series
        )
        valid = (m > 0.5).any(dim=2).to(values.dtype)
        rows = reps * batch
        risk, _, fused, _ = self.step_module.step(
            torch.zeros(rows, self.state_width, dtype=values.dtype, device=values.device),
            v,
            m,
            d,
            valid,
            torch.zeros(rows, 1, dtype=values.dtype, device=values.device),
            statics.repeat(reps, 1),
            static_mask.repeat(reps, 1),
            image_embeddings.repeat(reps, 1, 1),
            image_age_hours.repeat(reps, 1),
            image_mask.repeat(reps, 1),
        )
        logit = torch.logit(risk.to(torch.float64)).view(reps, batch)
        contributions = (logit[0].unsqueeze(0) - logit[1:]).transpose(0, 1).to(values.dtype)
        return (
            risk.view(reps, batch)[0].unsqueeze(1),
            fused[0].view(reps, batch, -1)[0],
            contributions,
        )


def served_step_explain(
    net: StepEnsemble,
    *,
    max_batch_size: int = EXPLAIN_MAX_BATCH_SIZE,
    instance_kind: InstanceKind = "KIND_CPU",
) -> ServedModel:
    """``deterioration_step_explain`` scripted, reloaded and checked against the eager
    module on random windows with and without images; the config has the window explain
    model's inputs and outputs and one instance (asked for alerts only).

    Raises:
        ModelError: A parity failure.
    """
    net.eval()
    eager = StepExplainModule(net).eval()

    def parity(reloaded: torch.jit.ScriptModule) -> float:
        worst = 0.0
        for images in (False, True):
            inputs = example_inputs(net.config, images=images)
            with torch.no_grad():
                worst = max(worst, max_abs_gap(eager(*inputs), reloaded(*inputs)))
        return worst

    blob, gap = scripted_bytes(STEP_EXPLAIN_MODEL_NAME, script(eager), parity)
    inputs, outputs = tensor_specs(net.config, explain=True)
    return ServedModel(
        name=STEP_EXPLAIN_MODEL_NAME,
        blob=blob,
        inputs=inputs,
        outputs=outputs,
        config=triton_config.render_config(
            STEP_EXPLAIN_MODEL_NAME,
            inputs,
            outputs,
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
            instance_count=1,
        ),
        max_batch_size=max_batch_size,
        parity_gap=gap,
    )
