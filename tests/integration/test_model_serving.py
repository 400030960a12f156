"""Export parity through the real Triton: the served models answer like the eager model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from models.deterioration.export import example_inputs, load_checkpoint
from models.deterioration.network import NetConfig
from vigil.stack.settings import StackSettings

CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "weights" / "deterioration.pt"
INPUTS = (
    "values",
    "mask",
    "delta_hours",
    "statics",
    "static_mask",
    "image_embeddings",
    "image_age_hours",
    "image_mask",
)


@pytest.mark.parametrize("images", [False, True])
@pytest.mark.parametrize(
    ("model", "outputs"),
    [
        ("deterioration", ("risk", "fused")),
        ("deterioration_explain", ("risk", "fused", "contributions")),
    ],
)
def test_triton_answers_like_the_eager_model(
    stack: StackSettings, model: str, outputs: tuple[str, ...], images: bool
) -> None:
    net, meta = load_checkpoint(CHECKPOINT)
    net.eval()
    tensors = example_inputs(NetConfig(**meta["net_config"]), batch=4, images=images, seed=11)
    with torch.no_grad():
        eager = net.explain(tensors)
    expected = dict(zip(("risk", "fused", "contributions"), eager, strict=False))

    client = grpcclient.InferenceServerClient(stack.triton_grpc_url)
    try:
        request = []
        for name, tensor in zip(INPUTS, tensors, strict=True):
            array = tensor.numpy().astype(np.float32)
            item = grpcclient.InferInput(name, list(array.shape), "FP32")
            item.set_data_from_numpy(array)
            request.append(item)
        result = client.infer(
            model, request, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs]
        )
    finally:
        client.close()
    for name in outputs:
        served = result.as_numpy(name)
        assert served is not None
        np.testing.assert_allclose(served, expected[name].numpy(), rtol=0, atol=1e-5)
