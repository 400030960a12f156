"""Low-dose CT simulation (SIMULATED acquisitions of real MSD patches), the worker's
denoising decision, and ``vigil imaging simulate-dose``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.ct_denoise.data import poisson_weight
from models.ct_denoise.simulate import simulate_dose
from streams.core.imaging import denoising_decision
from tests.imaging_files import ct_patches
from vigil.cli import main
from vigil.errors import ConfigError


def _patches(n: int = 2) -> np.ndarray[Any, Any]:
    images, _ = ct_patches()
    return images[:n, None].astype(np.float32)


def _mse(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def test_simulation_keeps_shape_and_scaling_and_is_seeded() -> None:
    images = _patches()
    low = simulate_dose(images, 0.1, seed=3)
    assert low.shape == images.shape
    assert low.dtype == np.float32
    assert float(low.min()) >= 0.0
    assert float(low.max()) <= 1.0
    np.testing.assert_array_equal(low, simulate_dose(images, 0.1, seed=3))
    assert not np.array_equal(low, simulate_dose(images, 0.1, seed=4))
    # A patch's noise does not depend on the patches after it.
    np.testing.assert_array_equal(low[:1], simulate_dose(images[:1], 0.1, seed=3))


def test_less_dose_means_more_noise() -> None:
    images = _patches()
    errors = [_mse(simulate_dose(images, dose, seed=5), images) for dose in (1.0, 0.25, 0.05)]
    assert errors[0] < errors[1] < errors[2]
    # Poisson statistics: 20 times fewer photons, several times the error.
    assert errors[2] > 4 * errors[0]


@pytest.mark.parametrize("dose", [0.0, -0.1, 1.5, float("nan")])
def test_a_dose_outside_zero_one_is_refused(dose: float) -> None:
    with pytest.raises(ConfigError, match="dose must be a fraction"):
        simulate_dose(_patches(1), dose, seed=0)


def test_images_of_the_wrong_shape_or_range_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[N, 1, H, H\]"):
        simulate_dose(np.zeros((2, 48, 48), np.float32), 0.5, seed=0)
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        simulate_dose(np.full((1, 1, 16, 16), 2.0, np.float32), 0.5, seed=0)


def test_poisson_weight_is_lower_behind_dense_tissue() -> None:
    image = np.full((32, 32), 0.1, np.float32)  # lung
    image[:, 20:] = 0.95  # soft tissue on the right
    weight = poisson_weight(image)
    assert weight.mean() == pytest.approx(1.0, rel=1e-4)
    assert weight[:, 24:].mean() < weight[:, :8].mean()


def test_simulate_dose_command_round_trip(tmp_path: Path) -> None:
    images, masks = ct_patches()
    source = tmp_path / "in.npz"
    np.savez(source, images=images[:2, None], masks=masks[:2, None])
    out = tmp_path / "out.npz"
    argv = ["imaging", "simulate-dose", "--in", str(source), "--out", str(out)]
    assert main([*argv, "--dose", "0.25", "--seed", "7"]) == 0
    with np.load(out) as written:
        np.testing.assert_array_equal(
            written["images"], simulate_dose(images[:2, None], 0.25, seed=7)
        )
        assert bool(written["simulated"])
        np.testing.assert_array_equal(written["masks"], masks[:2, None])


def test_simulate_dose_command_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.npz"
    np.savez(source, images=_patches(1))
    out = str(tmp_path / "o.npz")
    assert main(["imaging", "simulate-dose", "--in", str(source), "--out", out, "--dose", "3"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    missing = str(tmp_path / "missing.npz")
    assert main(["imaging", "simulate-dose", "--in", missing, "--out", out, "--dose", "0.5"]) == 2
    assert "cannot read images" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("modality", "dose", "expected"),
    [
        ("CT", 0.1, (True, "low_dose")),
        ("CT", 0.5, (False, "full_dose")),
        ("CT", 1.0, (False, "full_dose")),
        ("CT", None, (False, "dose_not_declared")),
        ("CR", 0.1, (False, "not_ct")),
    ],
)
def test_denoising_decision(modality: str, dose: float | None, expected: tuple[bool, str]) -> None:
    assert denoising_decision(modality, dose, below=0.5, enabled=True) == expected


def test_no_denoiser_means_no_denoising() -> None:
    assert denoising_decision("CT", 0.1, below=0.5, enabled=False) == (False, "denoiser_off")


def test_eval_registration_command_refuses_an_unknown_split_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "r.json")
    argv = ["imaging", "eval-registration", "--out", out, "--split", "everything"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "test, validation or train" in err
    assert not Path(out).exists()
