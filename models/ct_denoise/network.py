"""The CT denoiser: a small residual CNN conditioned on the dose.

Shapes: ``B`` batch, ``H x W`` any image size (fully convolutional, no pooling).

* Input: ``image [B,1,H,W]`` windowed to ``[0, 1]`` and ``dose_fraction [B,1]`` in
  ``(0, 1]``. The dose enters as a constant second channel ``1 / sqrt(dose)``: with
  Poisson counts the noise standard deviation of the reconstruction scales so, at a given
  anatomy.
* Body, ``levels = 0``: ``layers`` ``3x3`` convolutions of width ``channels`` with ReLU
  (the second and the one before last dilated by 2: receptive field 21 pixels).
* Body, ``levels = L > 0`` (a small U-Net): per level two ``3x3 conv -> ReLU`` of width
  ``channels * 2^i`` and 2x2 average pooling, a bottleneck, then bilinear upsampling,
  concatenation with the skip and two convolutions back up; the input is padded by
  reflection to a multiple of ``2^L`` and cropped back, so any size works.
* Output: ``clamp(image + residual, 0, 1)``, ``denoised [B,1,H,W]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import Tensor, nn

__all__ = ["DenoiseConfig", "DenoiseNet", "ServedDenoiser"]


@dataclass(frozen=True, slots=True)
class DenoiseConfig:
    """Hyper-parameters.

    Attributes:
        channels: Width of the hidden layers.
        layers: Convolutions in all (at least 3) when ``levels`` is 0.
        levels: U-Net poolings; 0 for the plain residual stack.
    """

    channels: int = 32
    layers: int = 7
    levels: int = 0

    def __post_init__(self) -> None:
        if self.channels < 1 or self.layers < 3 or not 0 <= self.levels <= 4:
            raise ValueError("channels must be positive, layers at least 3, levels 0-4")

    def to_dict(self) -> dict[str, int]:
        """JSON-ready values."""
        return asdict(self)


def _pair(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(),
    )


class _UNetBody(nn.Module):
    """``[B,2,H,W] -> [B,1,H,W]`` residual, ``H`` and ``W`` divisible by ``2^levels``."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        widths = [channels * 2**i for i in range(levels + 1)]
        self.downs = nn.ModuleList(
            _pair(c_in, c_out) for c_in, c_out in zip([2, *widths[:-2]], widths[:-1], strict=True)
        )
        self.bottom = _pair(widths[-2], widths[-1])
        self.ups = nn.ModuleList(
            _pair(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels))
        )
        self.out = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.bottom(x)
        n = len(skips)
        for i, up in enumerate(self.ups):
            skip = skips[n - 1 - i]
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        out: Tensor = self.out(x)
        return out


class DenoiseNet(nn.Module):
    """Residual dose-conditioned denoiser.

    Args:
        config: Hyper-parameters.
    """

    def __init__(self, config: DenoiseConfig) -> None:
        super().__init__()
        width, n = config.channels, config.layers
        self.multiple = 2**config.levels
        if config.levels > 0:
            self.body: nn.Module = _UNetBody(width, config.levels)
        else:
            dilated = {1, n - 2}
            convs: list[nn.Module] = [nn.Conv2d(2, width, 3, padding=1), nn.ReLU()]
            for i in range(1, n - 1):
                d = 2 if i in dilated else 1
                convs += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.ReLU()]
            convs.append(nn.Conv2d(width, 1, 3, padding=1))
            self.body = nn.Sequential(*convs)

    def forward(self, image: Tensor, dose_fraction: Tensor) -> Tensor:
        """``[B,1,H,W]`` and ``[B,1]`` to the denoised ``[B,1,H,W]`` in ``[0, 1]``."""
        height, width = image.shape[2], image.shape[3]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        padded = image
        if pad_h > 0 or pad_w > 0:
            padded = F.pad(image, [0, pad_w, 0, pad_h], mode="reflect")
        level = torch.rsqrt(dose_fraction.clamp(min=1e-3)).view(-1, 1, 1, 1)
        x = torch.cat([padded, level.expand_as(padded)], dim=1)
        residual: Tensor = self.body(x)
        residual = residual[:, :, :height, :width]
        return torch.clamp(image + residual, 0.0, 1.0)


class ServedDenoiser(nn.Module):
    """The network as Triton serves it: outputs as a tuple, in ``config.pbtxt`` order."""

    def __init__(self, net: DenoiseNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, dose_fraction: Tensor) -> tuple[Tensor]:
        """``denoised [B,1,H,W]``."""
        return (self.net(image, dose_fraction),)
