"""Stationary velocity fields (SVF), scaling and squaring, and per-pair optimisation (torch).

Shapes: ``B`` batch, ``H x W`` image; fields are ``[B,2,H,W]`` in pixels, channel 0 the
row (y) component and channel 1 the column (x) component.

* The transform is ``phi = exp(v)``: ``u_0 = v / 2^N`` then ``N`` times
  ``u <- u + u o (id + u)`` (scaling and squaring; Arsigny et al., MICCAI 2006). With a
  smooth ``v`` and small ``u_0``, ``phi`` is a diffeomorphism: its Jacobian determinant is
  checked, not assumed (:func:`jacobian_determinant`).
* A field ``u`` warps an image by ``warped(x) = image(x + u(x))`` (bilinear, border
  values outside), so registering ``moving`` to ``fixed`` finds ``u`` with
  ``moving(x + u(x)) ~ fixed(x)`` and the moving study's masks are carried into the fixed
  study's frame by the same warp.
* :func:`register_pair` checks the result and re-runs with a stiffer field if any pixel
  folds. It optimises ``v`` per pair: it lives on a grid of control points (upsampled
  bicubically, so it is smooth by construction), coarse to fine (by default 3 levels,
  points 16, 8 and :data:`CONTROL_STRIDE` = 4 pixels apart, chosen on the validation
  patients: docs/imaging-dose-registration.md section 5), the loss is
  ``MSE(warped, fixed) + lambda * |grad v|^2``, Adam.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import Tensor

from streams.core.events import RegistrationNote
from streams.core.prior_study import PriorStudy

__all__ = [
    "CONTROL_STRIDE",
    "SQUARING_STEPS",
    "PriorStudy",
    "Registration",
    "Schedule",
    "compare_with_prior",
    "folding_fraction",
    "integrate_velocity",
    "jacobian_determinant",
    "ncc",
    "register_pair",
    "warp",
]

SQUARING_STEPS: Final[int] = 7
MAX_RETRIES: Final[int] = 3
CONTROL_STRIDE: Final[int] = 4

Schedule = Literal["constant", "cosine"]


def _base_grid(height: int, width: int, like: Tensor) -> Tensor:
    ys = torch.arange(height, dtype=like.dtype, device=like.device)
    xs = torch.arange(width, dtype=like.dtype, device=like.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gy, gx])[None]


def warp(image: Tensor, displacement: Tensor, mode: str = "bilinear") -> Tensor:
    """``image(x + u(x))`` of ``image [B,C,H,W]`` under ``displacement [B,2,H,W]`` (pixels)."""
    height, width = image.shape[-2:]
    coords = _base_grid(height, width, displacement) + displacement
    gy = 2.0 * coords[:, 0] / max(height - 1, 1) - 1.0
    gx = 2.0 * coords[:, 1] / max(width - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


def integrate_velocity(velocity: Tensor, steps: int = SQUARING_STEPS) -> Tensor:
    """Displacement ``[B,2,H,W]`` of ``exp(v)`` by scaling and squaring ``steps`` times."""
    displacement = velocity / (2.0**steps)
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement)
    return displacement


def jacobian_determinant(displacement: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``det(I + grad u)`` per pixel of ``[2,H,W]`` (central differences), ``[H,W]``."""
    u = np.asarray(displacement, dtype=np.float64)
    duy_dy, duy_dx = np.gradient(u[0])
    dux_dy, dux_dx = np.gradient(u[1])
    det: npt.NDArray[np.float64] = (1.0 + duy_dy) * (1.0 + dux_dx) - duy_dx * dux_dy
    return det


def folding_fraction(displacement: npt.ArrayLike) -> float:
    """Fraction of pixels whose Jacobian determinant is not positive (0 for a diffeomorphism)."""
    return float(np.mean(jacobian_determinant(displacement) <= 0.0))


def ncc(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Normalised cross-correlation of two images (1 = identical up to gain and offset)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Registration:
    """Result of registering ``moving`` to ``fixed``.

    Attributes:
        displacement: ``[2,H,W]`` pixels, ``moving(x + u(x)) ~ fixed(x)``.
        velocity: ``[2,H,W]`` the stationary velocity field.
        warped: ``[H,W]`` the moving image in the fixed frame.
        ncc_before: NCC of fixed and moving.
        ncc_after: NCC of fixed and warped.
        min_jacobian: Smallest Jacobian determinant.
        folding_fraction: Pixels with a non-positive determinant.
        iterations: Optimiser steps.
        attempts: Optimisation runs (more than 1 when an earlier one folded).
    """

    displacement: npt.NDArray[np.float32]
    velocity: npt.NDArray[np.float32]
    warped: npt.NDArray[np.float32]
    ncc_before: float
    ncc_after: float
    min_jacobian: float
    folding_fraction: float
    iterations: int
    attempts: int

    def warp_mask(self, mask: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """A ``[H,W]`` mask of the moving study carried into the fixed frame (bilinear, >= 0.5)."""
        return np.asarray(self._warped_mask(mask) >= 0.5)

    def warped_mask_area(self, mask: npt.ArrayLike) -> float:
        """Area, in pixels, of a ``[H,W]`` mask of the moving study carried into the fixed
        frame: the sum of its bilinear warp, not thresholded.

        A boundary pixel counts for the part of it the warped lesion covers, so a change of
        a few pixels is measured without the rounding of a re-binarised mask (which gave
        1-3 pixels of error on growths of 4-9 pixels; docs/imaging-dose-registration.md).
        """
        return float(self._warped_mask(mask).sum(dtype=np.float64))

    def _warped_mask(self, mask: npt.ArrayLike) -> npt.NDArray[np.float32]:
        tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
        with torch.no_grad():
            moved = warp(tensor, torch.from_numpy(self.displacement)[None])
        return np.asarray(moved[0, 0].numpy(), dtype=np.float32)


class _Adam:
    """Adam (Kingma and Ba 2015; torch's update written out) on one tensor.

    ``torch.optim`` costs 9-15 s of CPU on the first step of a process (it imports its
    compiler machinery), which a worker would pay on its first study and every test once.
    """

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999)):
        self.param, self.lr, self.betas, self.t = param, lr, betas, 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)

    def step(self, grad: Tensor) -> None:
        beta1, beta2 = self.betas
        self.t += 1
        with torch.no_grad():
            self.m.lerp_(grad, 1.0 - beta1)
            self.v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            step_size = self.lr / (1.0 - beta1**self.t)
            denom = (self.v.sqrt() / (1.0 - beta2**self.t) ** 0.5).add_(1e-8)
            self.param.addcdiv_(self.m, denom, value=-step_size)


def _upsample(control: Tensor, height: int, width: int) -> Tensor:
    return F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)


def register_pair(
    fixed: npt.ArrayLike,
    moving: npt.ArrayLike,
    *,
    iterations: int = 200,
    smoothness: float = 0.003,
    learning_rate: float = 0.2,
    steps: int = SQUARING_STEPS,
    retries: int = MAX_RETRIES,
    control_stride: int = CONTROL_STRIDE,
    schedule: Schedule = "constant",
    levels: int = 3,
    pyramid: bool = False,
) -> Registration:
    """Registers ``moving [H,W]`` to ``fixed [H,W]`` (both in ``[0, 1]``) by an SVF.

    The discrete scaling and squaring of a large velocity can still fold a few pixels;
    when the Jacobian check finds any, the optimisation is run again with 4 times the
    smoothness, at most ``retries`` times (``Registration.attempts`` says how many runs).

    Args:
        fixed: The new study.
        moving: The prior study.
        iterations: Adam steps.
        smoothness: Weight of the squared velocity gradient (first attempt).
        learning_rate: Adam step size (pixels of velocity per step, roughly).
        steps: Scaling-and-squaring steps.
        retries: Extra attempts when the transform folds.
        control_stride: Pixels between the velocity's control points (>= 1).
        schedule: ``"constant"`` step size, or ``"cosine"`` decay from ``learning_rate``
            to 0 over each level's steps (the last steps refine instead of jittering).
        levels: Coarse-to-fine levels; level ``k`` of ``L`` has control points
            ``control_stride * 2^(L-1-k)`` apart and ``iterations / L`` of the steps.
        pyramid: Run level ``k`` on the two images averaged down by ``2^(L-1-k)`` (the
            control points stay where they are on the full image), so the coarse levels
            cost a fraction of the full-size steps; the last level runs at full size.

    Raises:
        ValueError: Images of different or non-2-D shapes, or smaller than 8 x 8; a
            stride or ``levels`` below 1, or an unknown schedule.
    """
    if control_stride < 1:
        raise ValueError(f"control_stride must be >= 1: {control_stride}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1: {levels}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule: {schedule!r}")
    options = _Options(
        iterations, smoothness, learning_rate, steps, control_stride, schedule, levels, pyramid
    )
    result = _register_once(fixed, moving, options)
    attempts = 1
    while result.folding_fraction > 0.0 and attempts <= retries:
        options = dataclasses.replace(options, smoothness=options.smoothness * 4.0)
        result = _register_once(fixed, moving, options)
        attempts += 1
    return dataclasses.replace(result, attempts=attempts)


@dataclass(frozen=True, slots=True)
class _Options:
    iterations: int
    smoothness: float
    learning_rate: float
    steps: int
    control_stride: int
    schedule: Schedule
    levels: int
    pyramid: bool = False


def _register_once(fixed: npt.ArrayLike, moving: npt.ArrayLike, options: _Options) -> Registration:
    f = np.asarray(fixed, dtype=np.float32)
    m = np.asarray(moving, dtype=np.float32)
    if f.shape != m.shape or f.ndim != 2 or min(f.shape) < 8:
        raise ValueError(f"fixed and moving must be the same [H,W] >= 8: {f.shape}, {m.shape}")
    height, width = f.shape
    fixed_t = torch.from_numpy(f)[None, None]
    moving_t = torch.from_numpy(m)[None, None]
    steps, iterations, levels = options.steps, options.iterations, options.levels
    velocity = torch.zeros(1, 2, height, width)
    for level in range(levels):
        # Coarse to fine: each level starts from the previous level's field, sampled at
        # its own (twice finer) control points, and gets an equal share of the steps.
        factor = 2 ** (levels - 1 - level)
        stride = options.control_stride * factor
        grid_shape = (-(-height // stride) + 1, -(-width // stride) + 1)
        size = (height, width)
        if options.pyramid and factor > 1:
            size = (max(-(-height // factor), 4), max(-(-width // factor), 4))
        # full-image pixels per pixel of this level's images, per axis (corners aligned),
        # to carry velocities between the two
        scale = torch.tensor([(height - 1) / (size[0] - 1), (width - 1) / (size[1] - 1)]).view(
            1, 2, 1, 1
        )
        fixed_l, moving_l = fixed_t, moving_t
        if size != (height, width):
            fixed_l = F.interpolate(fixed_t, size=size, mode="area")
            moving_l = F.interpolate(moving_t, size=size, mode="area")
        start = F.interpolate(velocity, size=grid_shape, mode="bilinear", align_corners=True)
        control = (start / scale).detach().clone().requires_grad_(True)
        level_steps = iterations // levels + (1 if level < iterations % levels else 0)
        adam = _Adam(control, options.learning_rate)
        for step in range(level_steps):
            if options.schedule == "cosine":
                adam.lr = (
                    options.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / level_steps))
                )
            field = _upsample(control, size[0], size[1])
            displacement = integrate_velocity(field, steps)
            similarity = ((warp(moving_l, displacement) - fixed_l) ** 2).mean()
            dy = field[:, :, 1:, :] - field[:, :, :-1, :]
            dx = field[:, :, :, 1:] - field[:, :, :, :-1]
            loss = similarity + options.smoothness * ((dy**2).mean() + (dx**2).mean())
            (gradient,) = torch.autograd.grad(loss, control)
            adam.step(gradient)
        velocity = (_upsample(control, height, width) * scale).detach()
    with torch.no_grad():
        velocity = _upsample(control, height, width)
        displacement = integrate_velocity(velocity, steps)
        warped = warp(moving_t, displacement)[0, 0].numpy()
    u = displacement[0].numpy().astype(np.float32)
    det = jacobian_determinant(u)
    return Registration(
        displacement=u,
        velocity=velocity[0].numpy().astype(np.float32),
        warped=warped.astype(np.float32),
        ncc_before=ncc(f, m),
        ncc_after=ncc(f, warped),
        min_jacobian=float(det.min()),
        folding_fraction=float(np.mean(det <= 0.0)),
        iterations=iterations,
        attempts=1,
    )


def compare_with_prior(
    prior: PriorStudy,
    image: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    *,
    iterations: int,
) -> RegistrationNote:
    """Registers ``prior`` to the new ``image [S,S]`` and compares the lesions.

    The prior's mask is carried into the new frame by the recovered diffeomorphism. The
    change since the prior is the warped prior's lesion area (fractional:
    :meth:`Registration.warped_mask_area`) minus the prior's (the growth the deformation
    implies, what ``models/registration/evaluate.py`` scores against known deformations);
    beside it, the new segmented area minus the prior's (fractions of the image).

    Raises:
        ValueError: The prior and the new image differ in shape.
    """
    result = register_pair(image, prior.image, iterations=iterations)
    pixels = float(image.size)
    new_area = float(np.asarray(mask).sum()) / pixels
    warped_area = result.warped_mask_area(prior.mask) / pixels
    prior_area = float(prior.mask.sum()) / pixels
    return RegistrationNote(
        prior_study_id=prior.study_id,
        prior_event_time=prior.event_time,
        prior_lesion_area_fraction=prior_area,
        warped_prior_lesion_area_fraction=warped_area,
        lesion_area_change_fraction=warped_area - prior_area,
        segmented_area_change_fraction=new_area - prior_area,
        ncc_before=float(np.clip(result.ncc_before, -1.0, 1.0)),
        ncc_after=float(np.clip(result.ncc_after, -1.0, 1.0)),
        folding_fraction=result.folding_fraction,
        min_jacobian=result.min_jacobian,
    )
