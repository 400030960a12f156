"""SVF registration (scaling and squaring) on real MSD patches; the pairs with known
deformations are SYNTHETIC (a real patch warped by a known smooth field)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.imaging.registration import (
    PriorStudy,
    Registration,
    compare_with_prior,
    folding_fraction,
    integrate_velocity,
    jacobian_determinant,
    register_pair,
)
from models.registration.evaluate import make_synthetic
from streams.adapters.prior_store import PriorStore
from tests.imaging_files import ct_patches

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _lesion_patch() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    images, masks = ct_patches()
    index = int(np.argmax(masks.reshape(masks.shape[0], -1).sum(axis=1)))
    return images[index].astype(np.float32), masks[index] > 0


def test_zero_velocity_is_the_identity() -> None:
    u = integrate_velocity(torch.zeros(1, 2, 16, 16))
    assert float(u.abs().max()) == 0.0
    np.testing.assert_allclose(jacobian_determinant(np.zeros((2, 16, 16))), 1.0)


def test_a_folding_field_is_detected() -> None:
    u = np.zeros((2, 16, 16))
    u[1] = -1.5 * np.arange(16)[None, :]  # x maps to -0.5 x: orientation reversed
    assert folding_fraction(u) == 1.0


def test_a_known_deformation_is_recovered_without_folding() -> None:
    torch.set_num_threads(1)
    prior, mask = _lesion_patch()
    pair = make_synthetic(prior, mask, np.random.default_rng(3))
    result = register_pair(pair.new, pair.prior, iterations=60, learning_rate=0.2)
    error = np.linalg.norm(result.displacement - pair.displacement, axis=0).mean()
    truth = np.linalg.norm(pair.displacement, axis=0).mean()
    assert error < 0.6 * truth
    assert result.folding_fraction == 0.0
    assert result.min_jacobian > 0.0
    assert result.ncc_after > result.ncc_before
    # The warped prior lesion lands on the new one better than the unwarped prior.
    warped = result.warp_mask(pair.prior_mask)
    overlap_before = (pair.prior_mask & pair.new_mask).sum() / pair.new_mask.sum()
    overlap_after = (warped & pair.new_mask).sum() / pair.new_mask.sum()
    assert overlap_after > overlap_before


def test_the_pyramid_recovers_a_known_deformation_on_smaller_images() -> None:
    """Coarse levels on images averaged down: the field comes back in full-size pixels
    (scaled between levels), about as well as at full size, without folding."""
    torch.set_num_threads(1)
    prior, mask = _lesion_patch()
    pair = make_synthetic(prior, mask, np.random.default_rng(3))
    full = register_pair(pair.new, pair.prior, iterations=90)
    small = register_pair(pair.new, pair.prior, iterations=90, pyramid=True)
    truth = np.linalg.norm(pair.displacement, axis=0).mean()
    error_full = np.linalg.norm(full.displacement - pair.displacement, axis=0).mean()
    error_small = np.linalg.norm(small.displacement - pair.displacement, axis=0).mean()
    assert error_small < 0.3 * truth
    assert error_small < error_full + 0.1  # pixels
    assert small.folding_fraction == 0.0
    assert small.displacement.shape == full.displacement.shape
    # a field left in coarse pixels would be about half or a quarter the true size
    ratio = np.linalg.norm(small.displacement, axis=0).mean() / truth
    assert 0.8 < ratio < 1.2


def test_compare_with_prior_reports_the_area_change() -> None:
    """Same image, a larger segmented lesion: the deformation implies no change (the
    images are identical), the segmentations differ by the added pixels."""
    prior_image, mask = _lesion_patch()
    prior = PriorStudy("s-1", T0, prior_image, mask)
    grown = mask.copy()
    ys, xs = np.nonzero(mask)
    grown[max(ys.min() - 2, 0) : ys.max() + 3, max(xs.min() - 2, 0) : xs.max() + 3] = True
    note = compare_with_prior(prior, prior_image, grown, iterations=20)
    assert note.prior_study_id == "s-1"
    assert note.prior_event_time == T0
    assert note.folding_fraction == 0.0
    assert note.ncc_before == pytest.approx(1.0)
    assert note.segmented_area_change_fraction == pytest.approx(
        (grown.sum() - mask.sum()) / mask.size
    )
    assert note.lesion_area_change_fraction == pytest.approx(0.0, abs=2.0 / mask.size)


def test_compare_with_prior_measures_the_change_through_the_deformation() -> None:
    """SYNTHETIC: the new study is the real prior patch under a known deformation that
    changes its lesion's area; the change since the prior is the one the recovered
    deformation implies, close to the known one."""
    torch.set_num_threads(1)
    prior_image, mask = _lesion_patch()
    pair = make_synthetic(prior_image, mask, np.random.default_rng(3))
    known = (pair.new_mask.sum() - pair.prior_mask.sum()) / mask.size
    assert abs(known) * mask.size > 20  # pixels: a change worth measuring
    note = compare_with_prior(
        PriorStudy("s-1", T0, pair.prior, pair.prior_mask), pair.new, pair.new_mask, iterations=200
    )
    assert note.segmented_area_change_fraction == pytest.approx(known)
    # The change is measured on fractional areas (the warp, not re-binarised), against the
    # known deformation's fractional area: within the 10 %.
    known_fractional = (pair.new_mask_area_px - pair.prior_mask.sum()) / mask.size
    assert note.lesion_area_change_fraction == pytest.approx(known_fractional, rel=0.10)
    assert note.folding_fraction == 0.0


def test_prior_store_keeps_the_newest_study(tmp_path: Path) -> None:
    image, mask = _lesion_patch()
    store = PriorStore(tmp_path)

    async def run() -> tuple[PriorStudy | None, PriorStudy | None]:
        assert await store.get("bed-1", "CT") is None
        await store.put("bed-1", "CT", PriorStudy("new", T0 + timedelta(days=1), image, mask))
        await store.put("bed-1", "CT", PriorStudy("old", T0, image, mask))
        return await store.get("bed-1", "CT"), await store.get("bed-1", "CR")

    kept, other = asyncio.run(run())
    assert kept is not None
    assert kept.study_id == "new"
    assert kept.event_time == T0 + timedelta(days=1)
    np.testing.assert_array_equal(kept.mask, mask)
    assert other is None
    assert all("bed-1" not in p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"control_stride": 0}, "control_stride"),
        ({"levels": 0}, "levels"),
        ({"schedule": "linear"}, "schedule"),
    ],
)
def test_bad_settings_are_refused(bad: dict[str, Any], message: str) -> None:
    image = np.zeros((16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        register_pair(image, image, iterations=1, **bad)


def test_coarse_to_fine_levels_recover_a_known_deformation() -> None:
    torch.set_num_threads(1)
    prior, mask = _lesion_patch()
    pair = make_synthetic(prior, mask, np.random.default_rng(3))
    result = register_pair(
        pair.new, pair.prior, iterations=60, control_stride=4, levels=2, schedule="cosine"
    )
    error = np.linalg.norm(result.displacement - pair.displacement, axis=0).mean()
    truth = np.linalg.norm(pair.displacement, axis=0).mean()
    assert error < 0.6 * truth
    assert result.folding_fraction == 0.0
    assert result.ncc_after > result.ncc_before


def test_warped_mask_area_counts_boundary_pixels_in_part() -> None:
    """A 4 x 4 lesion moved by a quarter or a half pixel keeps its 16 pixels of area in
    the fractional measure (boundary columns count in part); the re-binarised mask
    counts 20 after the half-pixel move (both boundary columns sit at exactly 0.5)."""
    mask = np.zeros((12, 12), dtype=bool)
    mask[4:8, 4:8] = True
    for shift, thresholded in ((0.25, 16), (0.5, 20)):
        displacement = np.zeros((2, 12, 12), dtype=np.float32)
        displacement[1] = shift  # x + u(x): sample a quarter / half pixel to the right
        result = Registration(
            displacement=displacement,
            velocity=displacement,
            warped=np.zeros((12, 12), dtype=np.float32),
            ncc_before=0.0,
            ncc_after=0.0,
            min_jacobian=1.0,
            folding_fraction=0.0,
            iterations=0,
            attempts=1,
        )
        assert result.warped_mask_area(mask) == pytest.approx(16.0, abs=1e-5)
        assert int(result.warp_mask(mask).sum()) == thresholded
