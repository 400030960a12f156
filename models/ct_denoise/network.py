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

Served (:class:`ServedDenoiser`) and evaluated as a **self-ensemble**: the mean of the
network over the :data:`SELF_ENSEMBLE_TURNS` quarter turns of the image, each output
turned back (chosen on the validation patients, docs/imaging-dose-registration.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Final

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import Tensor, nn

from models.ct_denoise.simulate import MU_WATER_PER_MM, PIXEL_MM

__all__ = [
    "NOISE_MAP_ANGLES",
    "SELF_ENSEMBLE_TURNS",
    "DenoiseConfig",
    "DenoiseNet",
    "SelfEnsemble",
    "ServedDenoiser",
    "poisson_noise_std",
]

SELF_ENSEMBLE_TURNS: Final[int] = 4
"""Quarter turns averaged when serving and evaluating (1 = the network alone)."""
NOISE_MAP_ANGLES: Final[int] = 32
"""Projection angles of :func:`poisson_noise_std`."""


@dataclass(frozen=True, slots=True)
class DenoiseConfig:
    """Hyper-parameters.

    Attributes:
        channels: Width of the hidden layers.
        layers: Convolutions in all (at least 3) when ``levels`` is 0.
        levels: U-Net poolings; 0 for the plain residual stack.
        noise_map: A third input channel, the noise standard deviation of each pixel that
            the Poisson model predicts from the image itself (:func:`poisson_noise_std`),
            times ``1 / sqrt(dose)``.
    """

    channels: int = 32
    layers: int = 7
    levels: int = 0
    noise_map: bool = False

    def __post_init__(self) -> None:
        if self.channels < 1 or self.layers < 3 or not 0 <= self.levels <= 4:
            raise ValueError("channels must be positive, layers at least 3, levels 0-4")

    def to_dict(self) -> dict[str, int | bool]:
        """JSON-ready values."""
        return asdict(self)


def _pair(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(),
    )


def poisson_noise_std(
    image: Tensor,
    angles: int = NOISE_MAP_ANGLES,
    mm_per_pixel: float = PIXEL_MM,
    mu_water_per_mm: float = MU_WATER_PER_MM,
) -> Tensor:
    """Relative noise standard deviation of each pixel of ``image [B,1,H,W]`` under the
    simulator's Poisson model, ``[B,1,H,W]``.

    A detector bin behind path ``p`` counts ``I0 d exp(-p)`` photons on average, so its
    log has variance ``exp(p) / (I0 d)``; filtered back-projection spreads each ray's
    noise mostly on the pixels it crosses, so a pixel's variance is close to the mean over
    angles of ``exp(p)`` of the rays through it. Computed here from the image (grey level
    to attenuation as :mod:`models.ct_denoise.simulate` does; the body's water path is a
    constant factor, left out), by rotating it with bilinear sampling: at each of
    ``angles`` angles over 180 degrees, sum the columns (the line integrals), take
    ``exp``, smear back along the columns and rotate back. The square root of the mean
    over angles is 1 where every ray crosses air only.
    """
    height, width = image.shape[2], image.shape[3]
    side = math.ceil(math.sqrt(float(height * height + width * width)))
    top, left = (side - height) // 2, (side - width) // 2
    square = F.pad(image, [left, side - width - left, top, side - height - top])
    batch = image.shape[0]
    # attenuation times pixel length; mu = mu_water (1 + HU / 1000) and HU = -1000 + 1100 v
    step = square * (mu_water_per_mm * 1.1 * mm_per_pixel)
    theta = torch.arange(angles, dtype=image.dtype, device=image.device) * (math.pi / angles)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(theta)
    forward = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    backward = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    size = [batch * angles, 1, side, side]
    grid = F.affine_grid(forward.repeat(batch, 1, 1), size, align_corners=False)
    turned = F.grid_sample(
        step.repeat_interleave(angles, 0), grid, mode="bilinear", align_corners=False
    )
    rays = torch.exp(turned.sum(dim=2, keepdim=True)).expand(size)
    back = F.affine_grid(backward.repeat(batch, 1, 1), size, align_corners=False)
    smeared = F.grid_sample(rays, back, mode="bilinear", align_corners=False, padding_mode="border")
    variance = smeared.view(batch, angles, side, side).mean(dim=1, keepdim=True)
    return torch.sqrt(variance[:, :, top : top + height, left : left + width])


class _UNetBody(nn.Module):
    """``[B,C,H,W] -> [B,1,H,W]`` residual, ``H`` and ``W`` divisible by ``2^levels``."""

    def __init__(self, channels: int, levels: int, inputs: int = 2) -> None:
        super().__init__()
        widths = [channels * 2**i for i in range(levels + 1)]
        self.downs = nn.ModuleList(
            _pair(c_in, c_out)
            for c_in, c_out in zip([inputs, *widths[:-2]], widths[:-1], strict=True)
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
        self.noise_map = config.noise_map
        inputs = 3 if config.noise_map else 2
        if config.levels > 0:
            self.body: nn.Module = _UNetBody(width, config.levels, inputs)
        else:
            dilated = {1, n - 2}
            convs: list[nn.Module] = [nn.Conv2d(inputs, width, 3, padding=1), nn.ReLU()]
            for i in range(1, n - 1):
                d = 2 if i in dilated else 1
                convs += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.ReLU()]
            convs.append(nn.Conv2d(width, 1, 3, padding=1))
            self.body = nn.Sequential(*convs)

    def forward(
        self, image: Tensor, dose_fraction: Tensor, noise_std: Tensor | None = None
    ) -> Tensor:
        """``[B,1,H,W]`` and ``[B,1]`` to the denoised ``[B,1,H,W]`` in ``[0, 1]``.

        ``noise_std``: :func:`poisson_noise_std` of ``image`` when already known (training
        computes it once per pair); computed here when ``None``. Unused without
        ``noise_map``.
        """
        height, width = image.shape[2], image.shape[3]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        padded = image
        if pad_h > 0 or pad_w > 0:
            padded = F.pad(image, [0, pad_w, 0, pad_h], mode="reflect")
        level = torch.rsqrt(dose_fraction.clamp(min=1e-3)).view(-1, 1, 1, 1)
        x = torch.cat([padded, level.expand_as(padded)], dim=1)
        if self.noise_map:
            if noise_std is None or pad_h > 0 or pad_w > 0:
                with torch.no_grad():
                    noise_std = poisson_noise_std(padded)
            x = torch.cat([x, noise_std * level], dim=1)
        residual: Tensor = self.body(x)
        residual = residual[:, :, :height, :width]
        return torch.clamp(image + residual, 0.0, 1.0)


class SelfEnsemble(nn.Module):
    """The mean of ``net`` over the first ``turns`` quarter turns of the image, and over
    each turn's mirror image too when ``flips``.

    Each transformed image is denoised and transformed back, so the output keeps the
    input's shape (a non-square image is denoised turned on its side too: the network is
    fully convolutional). Noise patterns the network would map to structure in one
    orientation average out; structure does not.

    Args:
        net: The trained network.
        turns: 1 (the network alone) to 4.
        flips: Also average each turn's horizontally flipped image (twice the members).
    """

    def __init__(
        self, net: DenoiseNet, turns: int = SELF_ENSEMBLE_TURNS, flips: bool = False
    ) -> None:
        super().__init__()
        if not 1 <= turns <= 4:
            raise ValueError("turns must be 1-4")
        self.net = net
        self.turns = turns
        self.flips = flips

    def forward(self, image: Tensor, dose_fraction: Tensor) -> Tensor:
        """``[B,1,H,W]`` and ``[B,1]`` to the mean denoised ``[B,1,H,W]``."""
        std: Tensor | None = None
        if self.net.noise_map:
            with torch.no_grad():  # once: a turn of the image turns its map the same way
                std = poisson_noise_std(image)
        total = torch.zeros_like(image)
        members = 0
        for k in range(self.turns):
            total = total + self._member(image, dose_fraction, std, k, False)
            members += 1
            if self.flips:
                total = total + self._member(image, dose_fraction, std, k, True)
                members += 1
        return total / float(members)

    def _member(
        self, image: Tensor, dose_fraction: Tensor, std: Tensor | None, turns: int, flip: bool
    ) -> Tensor:
        """The network on ``image`` turned ``turns`` times (then flipped), turned back."""
        moved = torch.rot90(image, turns, [2, 3])
        moved_std = None if std is None else torch.rot90(std, turns, [2, 3])
        if flip:
            moved = torch.flip(moved, [3])
            moved_std = None if moved_std is None else torch.flip(moved_std, [3])
        out = self.net(moved, dose_fraction, moved_std)
        if flip:
            out = torch.flip(out, [3])
        return torch.rot90(out, -turns, [2, 3])


class ServedDenoiser(nn.Module):
    """The self-ensemble as Triton serves it: outputs as a tuple, in ``config.pbtxt``
    order."""

    def __init__(self, net: DenoiseNet, turns: int = SELF_ENSEMBLE_TURNS) -> None:
        super().__init__()
        self.ensemble = SelfEnsemble(net, turns)

    def forward(self, image: Tensor, dose_fraction: Tensor) -> tuple[Tensor]:
        """``denoised [B,1,H,W]``."""
        return (self.ensemble(image, dose_fraction),)
