"""The CT denoiser: a small residual CNN conditioned on the dose.

Shapes: ``B`` batch, ``H x W`` any image size (fully convolutional, no pooling).

* Input: ``image [B,1,H,W]`` windowed to ``[0, 1]`` and ``dose_fraction [B,1]`` in
  ``(0, 1]``. The dose enters as a constant second channel ``1 / sqrt(dose)``: with
  Poisson counts the noise standard deviation of the reconstruction scales so, at a given
  anatomy.
* Body: ``layers`` ``3x3`` convolutions of width ``channels`` with ReLU (the second and
  the one before last dilated by 2, to widen the receptive field to 21 pixels).
* Output: ``clamp(image + residual, 0, 1)``, ``denoised [B,1,H,W]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["DenoiseConfig", "DenoiseNet", "ServedDenoiser"]


@dataclass(frozen=True, slots=True)
class DenoiseConfig:
    """Hyper-parameters.

    Attributes:
        channels: Width of the hidden layers.
        layers: Convolutions in all (at least 3).
    """

    channels: int = 32
    layers: int = 7

    def __post_init__(self) -> None:
        if self.channels < 1 or self.layers < 3:
            raise ValueError("channels must be positive and layers at least 3")

    def to_dict(self) -> dict[str, int]:
        """JSON-ready values."""
        return asdict(self)


class DenoiseNet(nn.Module):
    """Residual dose-conditioned denoiser.

    Args:
        config: Hyper-parameters.
    """

    def __init__(self, config: DenoiseConfig) -> None:
        super().__init__()
        width, n = config.channels, config.layers
        dilated = {1, n - 2}
        convs: list[nn.Module] = [nn.Conv2d(2, width, 3, padding=1), nn.ReLU()]
        for i in range(1, n - 1):
            d = 2 if i in dilated else 1
            convs += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.ReLU()]
        convs.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*convs)

    def forward(self, image: Tensor, dose_fraction: Tensor) -> Tensor:
        """``[B,1,H,W]`` and ``[B,1]`` to the denoised ``[B,1,H,W]`` in ``[0, 1]``."""
        level = torch.rsqrt(dose_fraction.clamp(min=1e-3)).view(-1, 1, 1, 1)
        x = torch.cat([image, level.expand_as(image)], dim=1)
        residual: Tensor = self.body(x)
        return torch.clamp(image + residual, 0.0, 1.0)


class ServedDenoiser(nn.Module):
    """The network as Triton serves it: outputs as a tuple, in ``config.pbtxt`` order."""

    def __init__(self, net: DenoiseNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, dose_fraction: Tensor) -> tuple[Tensor]:
        """``denoised [B,1,H,W]``."""
        return (self.net(image, dose_fraction),)
