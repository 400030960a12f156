"""The serving contract of every model: tensor specs and the ``config.pbtxt`` text.

``config.pbtxt`` is the interface between the exporter, Triton and the worker: names,
dims (without the batch axis) and dtypes of inputs and outputs in forward order, dynamic
batching with a queue policy, the instance group, and ``parameters`` that the
Python-backend wrapper (:mod:`models.common.triton_model`) reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "QUEUE_DELAY_MICROSECONDS",
    "QUEUE_TIMEOUT_MICROSECONDS",
    "SCORING_INSTANCE_COUNT",
    "TORCH_NUM_THREADS",
    "InstanceKind",
    "TensorSpec",
    "render_config",
    "render_serving",
]

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]
"""Where Triton runs a model's instances."""

QUEUE_DELAY_MICROSECONDS: Final[int] = 2000
"""Longest wait of Triton's dynamic batcher to fill a batch."""
QUEUE_TIMEOUT_MICROSECONDS: Final[int] = 10_000_000
"""Queue timeout of a request that carries none (``default_queue_policy``, REJECT): the
worker's default deadline (``VIGIL_TRITON_TIMEOUT_SECONDS``, 10 s). The worker passes its
own deadline with each request (``allow_timeout_override``), so a request whose client
has given up is rejected in the queue instead of computed."""
SCORING_INSTANCE_COUNT: Final[int] = 2
"""Instances of the models called for every scored event (``deterioration``, ``ood``,
``deterioration_step``). Triton 2.51 does not prefetch the next batch of a model that has
request timeouts, and its batcher then sometimes misses the end of an execution and waits
its 500 ms default before starting the next one; a second instance (one more stub, about
0.7 GB) is free when the first is finishing, and removed those stalls in the benchmark
(BENCHMARKS.md, issue 16). ``deterioration_explain`` and ``imaging``, called rarely, keep
one."""
TORCH_NUM_THREADS: Final[int] = 1
"""Intra-op torch threads of each Python-backend stub (``parameters``
``torch_num_threads``, read by :mod:`models.common.triton_model`): one stub per model
shares the cores, and default threads oversubscribed them (BENCHMARKS.md, issue 16)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a served model (dims exclude the batch axis)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """The spec as a model card records it."""
        return {"name": self.name, "data_type": self.data_type, "dims": self.dims}


def _block(kind: str, specs: Sequence[TensorSpec]) -> str:
    items = [
        f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n'
        f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]\n  }}"
        for spec in specs
    ]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _parameter(key: str, value: str) -> str:
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'


def render_serving(
    *,
    instance_kind: InstanceKind = "KIND_CPU",
    instance_count: int = 1,
    torch_num_threads: int = TORCH_NUM_THREADS,
) -> str:
    """The scheduling part of every served model's ``config.pbtxt``: dynamic batching
    with a REJECT queue policy, the instance group and ``torch_num_threads``."""
    return (
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_MICROSECONDS}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {QUEUE_TIMEOUT_MICROSECONDS}\n"
        "    allow_timeout_override: true\n"
        "  }\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]\n"
        + _parameter("torch_num_threads", str(torch_num_threads))
    )


def render_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    instance_kind: InstanceKind = "KIND_CPU",
    instance_count: int = 1,
    parameters: Sequence[tuple[str, str]] = (),
) -> str:
    """The ``config.pbtxt`` text of a Python-backend model.

    Args:
        name: The model's name in the repository.
        inputs: Inputs in forward order.
        outputs: Outputs in forward order.
        max_batch_size: Triton's dynamic-batching limit.
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.
        instance_count: Instances of the model.
        parameters: ``(key, value)`` pairs the wrapper reads, after ``torch_num_threads``.
    """
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        + _block("input", inputs)
        + _block("output", outputs)
        + render_serving(instance_kind=instance_kind, instance_count=instance_count)
        + "".join(_parameter(key, value) for key, value in parameters)
    )
