"""Low-dose CT simulation on real patches (pure numpy + scikit-image; **simulated data**).

The MSD lung patches are 2 mm pixels already windowed to ``[0, 1]``. One acquisition at
dose fraction ``d`` is simulated the physical way, every constant below:

1. **Attenuation.** ``HU = WINDOW_LOW_HU + v * (WINDOW_HIGH_HU - WINDOW_LOW_HU)`` (the
   patches' grey levels step by exactly 1/1100, so the window is 1100 HU wide; the lung
   peak at 0.10-0.15 and the soft-tissue peak at 0.95-1.0 place it at [-1000, 100] HU:
   an inference from the data, not a documented fact), then
   ``mu = MU_WATER_PER_MM * (1 + HU / 1000)`` (linear attenuation of water at an effective
   energy of about 60 keV).
2. **Projection.** Each pixel split into :data:`SUBPIXELS` x :data:`SUBPIXELS` equal
   sub-pixels; parallel-beam line integrals ``p = radon(mu) * PIXEL_MM / SUBPIXELS`` over
   :data:`N_ANGLES` angles in [0, 180) (``skimage.transform.radon``, ``circle=False``), plus
   :data:`BODY_WATER_MM` of water on every ray: the patch is a 96 mm crop of a thorax, and
   the rest of the body attenuates each ray too.
3. **Counts.** ``N ~ Poisson(I0_FULL_DOSE * d * exp(-p))`` photons per detector bin, seeded
   (``numpy.random.default_rng(seed)``); bins with no photon are counted as
   :data:`MIN_COUNTS` (the usual clamp before the log).
4. **Log and reconstruction.** ``p_hat = -log(N / (I0 * d))``, minus the body path, then
   filtered back-projection (``skimage.transform.iradon``, ramp filter, linear
   interpolation) back to ``mu`` on the sub-pixel grid, averaged to 2 mm pixels, to HU,
   to the window, clipped to ``[0, 1]``.

Full dose (``d = 1``) is itself a simulation with its own noise; the real patch is the
reference (what the full-dose scan looked like).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from skimage.transform import iradon, radon

from vigil.errors import ConfigError

__all__ = [
    "BODY_WATER_MM",
    "DOSES",
    "I0_FULL_DOSE",
    "MU_WATER_PER_MM",
    "N_ANGLES",
    "PIXEL_MM",
    "SimulationConstants",
    "attenuation_from_window",
    "simulate_dose",
    "simulate_image",
    "window_from_attenuation",
]

WINDOW_LOW_HU: Final[float] = -1000.0
WINDOW_HIGH_HU: Final[float] = 100.0
MU_WATER_PER_MM: Final[float] = 0.0206
"""Linear attenuation of water at an effective energy near 60 keV (0.206 /cm)."""
PIXEL_MM: Final[float] = 2.0
"""Pixel spacing of the MSD patches (resampled to 2 mm)."""
BODY_WATER_MM: Final[float] = 200.0
"""Water-equivalent path outside the patch added to every ray (a ~300 mm thorax)."""
I0_FULL_DOSE: Final[float] = 1.0e5
"""Incident photons per detector bin and angle at full dose."""
N_ANGLES: Final[int] = 240
SUBPIXELS: Final[int] = 2
"""Each pixel is projected as ``SUBPIXELS x SUBPIXELS`` equal sub-pixels (1 mm detector
bins) and the reconstruction is averaged back to 2 mm pixels: at one sample per pixel the
noiseless round trip alone lost 21 dB PSNR to interpolation blur, at 2 x 2 it keeps 26 dB."""
MIN_COUNTS: Final[float] = 1.0
DOSES: Final[tuple[float, ...]] = (1.0, 0.25, 0.1, 0.05)
"""The dose fractions reported (full dose and three lower ones)."""


@dataclass(frozen=True, slots=True)
class SimulationConstants:
    """Every constant of the simulator (recorded in model cards and outputs)."""

    window_low_hu: float = WINDOW_LOW_HU
    window_high_hu: float = WINDOW_HIGH_HU
    mu_water_per_mm: float = MU_WATER_PER_MM
    pixel_mm: float = PIXEL_MM
    body_water_mm: float = BODY_WATER_MM
    i0_full_dose: float = I0_FULL_DOSE
    n_angles: int = N_ANGLES
    subpixels: int = SUBPIXELS
    min_counts: float = MIN_COUNTS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


def attenuation_from_window(image: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """``mu`` per mm of a windowed ``[H,W]`` image in ``[0, 1]``."""
    hu = WINDOW_LOW_HU + np.asarray(image, dtype=np.float64) * (WINDOW_HIGH_HU - WINDOW_LOW_HU)
    return MU_WATER_PER_MM * (1.0 + hu / 1000.0)


def window_from_attenuation(mu: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Inverse of :func:`attenuation_from_window`, clipped to ``[0, 1]``."""
    hu = (np.asarray(mu, dtype=np.float64) / MU_WATER_PER_MM - 1.0) * 1000.0
    return np.clip((hu - WINDOW_LOW_HU) / (WINDOW_HIGH_HU - WINDOW_LOW_HU), 0.0, 1.0).astype(
        np.float32
    )


def _angles() -> npt.NDArray[np.float64]:
    return np.linspace(0.0, 180.0, N_ANGLES, endpoint=False)


def simulate_image(
    image: npt.NDArray[np.floating[Any]], dose: float, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """One simulated acquisition of an ``[H,W]`` windowed image at dose fraction ``dose``.

    Returns:
        ``[H,W]`` float32 in ``[0, 1]``.
    """
    side = image.shape[0]
    mu = np.kron(attenuation_from_window(image), np.ones((SUBPIXELS, SUBPIXELS)))
    step_mm = PIXEL_MM / SUBPIXELS
    theta = _angles()
    body = MU_WATER_PER_MM * BODY_WATER_MM
    line = radon(mu, theta=theta, circle=False) * step_mm + body  # type: ignore[no-untyped-call]
    incident = I0_FULL_DOSE * dose
    counts = np.maximum(rng.poisson(incident * np.exp(-line)).astype(np.float64), MIN_COUNTS)
    measured = -np.log(counts / incident) - body
    recon = iradon(  # type: ignore[no-untyped-call]
        measured / step_mm,
        theta=theta,
        circle=False,
        output_size=side * SUBPIXELS,
        filter_name="ramp",
        interpolation="linear",
    )
    pooled = recon.reshape(side, SUBPIXELS, side, SUBPIXELS).mean(axis=(1, 3))
    return window_from_attenuation(pooled)


def simulate_dose(
    images: npt.NDArray[np.floating[Any]], dose: float, seed: int
) -> npt.NDArray[np.float32]:
    """Simulated acquisitions of ``[N,1,H,W]`` images in ``[0, 1]`` at ``dose``.

    Args:
        images: ``[N,1,H,W]`` windowed patches (square, finite, in ``[0, 1]``).
        dose: Fraction of the full dose, in ``(0, 1]``.
        seed: Seed of the Poisson draws (image ``i`` uses the ``i``-th spawned stream, so
            a patch's noise does not depend on how many patches come before it in a batch
            of the same file).

    Returns:
        ``[N,1,H,W]`` float32 in ``[0, 1]``.

    Raises:
        ConfigError: A dose outside ``(0, 1]`` or images of the wrong shape or range.
    """
    if not 0.0 < dose <= 1.0:
        raise ConfigError(f"dose must be a fraction in (0, 1], got {dose}")
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[1] != 1 or array.shape[2] != array.shape[3]:
        raise ConfigError(f"images must be [N, 1, H, H], got {array.shape}")
    if array.shape[2] < 8:
        raise ConfigError(f"images must be at least 8 x 8, got {array.shape[2:]}")
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ConfigError("images must be finite and in [0, 1]")
    streams = np.random.SeedSequence(seed).spawn(array.shape[0])
    out = np.empty(array.shape, dtype=np.float32)
    for i, stream in enumerate(streams):
        out[i, 0] = simulate_image(array[i, 0], dose, np.random.default_rng(stream))
    return out
