"""Imaging branch, pure parts and network: preprocessing, components, metrics, artifacts,
the splits, the network's outputs and its CAM (equal to Grad-CAM)."""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from models.deterioration.network import NetConfig
from models.imaging.data import patient_ids, split_patients
from models.imaging.metrics import (
    choose_threshold,
    fit_platt,
    lesion_counts,
    segmentation_scores,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from models.imaging.network import ImagingConfig, ImagingNet, grad_cam
from streams.core.imaging_ops import (
    IMAGE_SIZE,
    heatmap_npz,
    heatmap_png,
    label_components,
    lesion_mask,
    preprocess_image,
    resize,
    summarise_segmentation,
)

REPO = Path(__file__).resolve().parents[2]


def test_upsampling_is_torch_bilinear_with_half_pixel_centres():
    image = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(image)[None, None], size=(64, 64), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(resize(image, 64, 64), expected, atol=1e-5)


def test_resize_keeps_constants_and_identity():
    image = np.random.default_rng(1).random((48, 48))
    np.testing.assert_allclose(resize(image, 48, 48), image, atol=1e-6)
    np.testing.assert_allclose(resize(np.full((512, 300), 0.25), 64, 64), 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        resize(np.zeros((2, 3, 4)), 8, 8)


def test_downsampling_averages_instead_of_aliasing():
    stripes = np.tile([0.0, 1.0], (64, 128)).astype(np.float32)  # [64,256] one-pixel stripes
    small = resize(stripes, 16, 64)
    assert np.abs(small - 0.5).max() < 0.05


def test_preprocess_image_scales_and_resizes():
    xray = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    out = preprocess_image(xray)
    assert out.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert out.dtype == np.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    ct = np.random.default_rng(2).random((1, 48, 48)).astype(np.float32)
    assert preprocess_image(ct).shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert preprocess_image(np.zeros((30, 30))).max() == 0.0  # zero stays a value
    with pytest.raises(ValueError, match="image"):
        preprocess_image(np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match="non-finite"):
        preprocess_image(np.full((28, 28), np.nan))


def test_components_are_eight_connected():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one component
    mask[6, 5:8] = True
    labels, count = label_components(mask)
    assert count == 2
    assert labels[1, 1] == labels[2, 2] == 1
    assert set(np.unique(labels[6, 5:8])) == {2}
    assert label_components(np.zeros((4, 4)))[1] == 0


def test_summarise_segmentation_counts_lesions_and_area():
    probability = np.zeros((1, 64, 64), dtype=np.float32)
    probability[0, 5:10, 5:10] = 0.9  # 25 pixels
    probability[0, 40:42, 40:43] = 0.5  # 6 pixels, exactly at the threshold
    probability[0, 20, 20] = 0.49
    assert summarise_segmentation(probability, 0.5) == (2, 31)
    assert summarise_segmentation(probability[0], 0.95) == (0, 0)
    assert summarise_segmentation(probability, 0.4) == (3, 32)


def test_lesion_mask_keeps_components_with_a_confident_peak():
    probability = np.zeros((16, 16), dtype=np.float32)
    probability[1:4, 1:4] = 0.6
    probability[2, 2] = 0.95  # a confident core: the whole component is kept
    probability[8:10, 8:10] = 0.85  # outlined at 0.5 but never confident: dropped
    probability[12, 12:15] = [0.5, 0.9, 0.5]  # peak exactly at the peak threshold: kept
    kept = lesion_mask(probability, 0.5, 0.9)
    assert kept.dtype == np.bool_
    assert kept.shape == (16, 16)
    assert kept[1:4, 1:4].all()
    assert kept[12, 12:15].all()
    assert not kept[8:10, 8:10].any()
    assert int(kept.sum()) == 9 + 3
    # A peak threshold at or below the outline keeps every component, [1,H,W] is accepted.
    assert (lesion_mask(probability[None], 0.5, 0.0) == (probability >= 0.5)).all()
    assert (lesion_mask(probability, 0.5, 0.5) == (probability >= 0.5)).all()
    assert summarise_segmentation(probability, 0.5, 0.9) == (2, 12)
    assert summarise_segmentation(probability, 0.5) == (3, 16)
    assert not lesion_mask(np.zeros((4, 4), np.float32), 0.5, 0.9).any()


def test_segmentation_scores_apply_the_peak_filter():
    reference = np.zeros((1, 16, 16), dtype=bool)
    reference[0, 1:4, 1:4] = True
    prob = np.zeros((1, 16, 16), dtype=np.float32)
    prob[0, 1:4, 1:4] = 0.97
    prob[0, 10:12, 10:12] = 0.7  # a false positive that never gets confident
    unfiltered = segmentation_scores(prob, reference, 0.5)
    filtered = segmentation_scores(prob, reference, 0.5, 0.9)
    assert unfiltered.false_positive_components == 1
    assert unfiltered.lesions_found == 1
    assert filtered.false_positive_components == 0
    assert filtered.lesions_found == 1
    assert filtered.peak_threshold == 0.9
    assert filtered.dice == 1.0


def test_segmentation_scores_and_lesion_recall():
    reference = np.zeros((2, 16, 16), dtype=bool)
    reference[0, 2:5, 2:5] = True  # found
    reference[0, 10:12, 10:12] = True  # missed
    reference[1, 6:9, 6:9] = True  # found by one pixel
    prob = np.zeros((2, 16, 16), dtype=np.float32)
    prob[0, 2:5, 2:5] = 0.9
    prob[1, 8, 8] = 0.8
    prob[1, 0, 15] = 0.7  # false positive
    scores = segmentation_scores(prob, reference, 0.5)
    assert (scores.lesions, scores.lesions_found) == (3, 2)
    assert scores.lesion_recall == pytest.approx(2 / 3)
    assert scores.false_positive_components == 1
    inter, pred, ref = 10, 11, 22
    assert scores.dice == pytest.approx(2 * inter / (pred + ref))
    assert scores.iou == pytest.approx(inter / (pred + ref - inter))
    assert lesion_counts(reference[0], reference[0]) == (2, 2, 0)
    perfect = segmentation_scores(reference.astype(np.float32), reference, 0.5)
    assert perfect.dice == perfect.iou == perfect.lesion_recall == 1.0


def test_choose_threshold_is_the_middle_of_the_feasible_range():
    reference = np.zeros((1, 8, 8), dtype=bool)
    reference[0, 1, 1] = reference[0, 5, 5] = True
    prob = np.zeros((1, 8, 8), dtype=np.float32)
    prob[0, 1, 1], prob[0, 5, 5] = 0.8, 0.3
    prob[0, 7, 0] = 0.1  # a false-positive component below 0.1 < t
    grid = [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 0.9]
    # Recall 1 up to 0.3; no false positive from 0.2 (0.1 >= 0.1 still predicts it):
    # the feasible range is [0.2, 0.3], its middle 0.25 -> the higher of the two.
    assert choose_threshold(prob, reference, 1.0, grid, max_false_positives_per_patch=0) == 0.3
    # Recall 0.5 up to 0.8: range [0.2, 0.8], middle 0.5.
    assert choose_threshold(prob, reference, 0.5, grid, max_false_positives_per_patch=0) == 0.5
    # A budget of one false positive per patch opens the range down to 0.05.
    assert choose_threshold(prob, reference, 0.5, grid, max_false_positives_per_patch=1) == 0.5
    assert choose_threshold(prob, reference, 1.0, grid, max_false_positives_per_patch=1) == 0.2
    # No threshold within the budget reaches the recall: the middle of those reaching it,
    # [0.05, 0.3] -> 0.2 (not its edge 0.3).
    prob[0, 3, 7] = 0.95  # a confident false positive at every threshold
    assert choose_threshold(prob, reference, 1.0, grid, max_false_positives_per_patch=0) == 0.2
    # The target is out of reach (one lesion never predicted): the best recall reached,
    # 0.5 up to 0.8, is the goal; with the false positive at 0.95 no candidate is within
    # the budget, so the middle of [0.05, 0.8] -> 0.5, not the bottom of the grid.
    prob[0, 5, 5] = 0.0
    assert choose_threshold(prob, reference, 1.0, grid, max_false_positives_per_patch=0) == 0.5
    # Nothing finds any lesion: the lowest candidate.
    assert choose_threshold(np.zeros_like(prob), reference, 0.9, [0.2, 0.5]) == 0.2


def test_lesion_recall_without_single_pixel_lesions():
    reference = np.zeros((1, 10, 10), dtype=bool)
    reference[0, 1, 1] = True  # one pixel, missed
    reference[0, 5:7, 5:7] = True  # four pixels, found
    prob = np.zeros((1, 10, 10), dtype=np.float32)
    prob[0, 5, 5] = 0.9
    scores = segmentation_scores(prob, reference, 0.5)
    assert (scores.lesions, scores.lesions_found) == (2, 1)
    assert (scores.large_lesions, scores.large_lesions_found) == (1, 1)
    assert scores.large_lesion_recall == 1.0
    assert lesion_counts(prob[0] > 0.5, reference[0], min_pixels=5) == (0, 0, 0)


def test_platt_scaling_recovers_a_known_calibration():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, 20000)
    labels = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))
    a, c = fit_platt(logits, labels, ridge=0.0)
    assert a == pytest.approx(0.5, abs=0.03)
    assert c == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([0.1, 0.2], [1, 1])


def test_threshold_for_sensitivity_and_its_figures():
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 1, 1, 0, 0, 0])
    assert threshold_for_sensitivity(prob, labels, 0.75) == 0.6
    assert threshold_for_sensitivity(prob, labels, 1.0) == 0.4
    assert sensitivity_specificity(prob, labels, 0.6) == (0.75, 0.75)
    assert sensitivity_specificity(prob, labels, 0.4) == (1.0, 0.75)


def test_heatmap_png_decodes_to_the_heatmap():
    cam = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(1, 12, 10)
    png = heatmap_png(cam)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (10, 12)
    idat = re.search(rb"IDAT(.*)", png, re.S)
    assert idat is not None
    raw = zlib.decompressobj().decompress(idat.group(1))
    rows = np.frombuffer(raw[: height * (width + 1)], dtype=np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    np.testing.assert_array_equal(rows[:, 1:], np.round(cam[0] * 255).astype(np.uint8))


def test_heatmap_npz_round_trips():
    cam = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    with np.load(io.BytesIO(heatmap_npz(cam, class_probability=0.7))) as archive:
        np.testing.assert_array_equal(archive["cam"], cam)
        assert float(archive["class_probability"]) == pytest.approx(0.7)


def test_patient_split_is_disjoint_seeded_and_complete():
    patients = patient_ids(130)
    assert patients[:10].tolist() == [0] * 10
    assert patients[-1] == 12
    split = split_patients(patients, seed=5, test=3, validation=2)
    assert split == split_patients(patients, seed=5, test=3, validation=2)
    assert (len(split["test"]), len(split["validation"]), len(split["train"])) == (3, 2, 8)
    everyone = [p for part in split.values() for p in part]
    assert sorted(everyone) == list(range(13))


def test_network_outputs_have_the_contract_shapes():
    torch.manual_seed(0)
    config = ImagingConfig(base_channels=2, depth=2, embedding_dim=8, image_size=16)
    net = ImagingNet(config).eval()
    with torch.no_grad():
        mask, prob, embedding, cam = net(torch.rand(3, 1, 16, 16))
    assert mask.shape == cam.shape == (3, 1, 16, 16)
    assert prob.shape == (3, 1)
    assert embedding.shape == (3, 8)
    for tensor in (mask, prob, cam):
        assert (tensor >= 0).all()
        assert (tensor <= 1).all()
    with pytest.raises(ValueError, match="divisible"):
        ImagingConfig(image_size=60, depth=3)


def test_embedding_width_is_what_the_deterioration_model_consumes():
    assert ImagingConfig().embedding_dim == NetConfig().image_dim
    shipped = (REPO / "triton_repo" / "deterioration" / "config.pbtxt").read_text()
    dims = re.search(
        r'name: "image_embeddings"\s+data_type: \w+\s+dims: \[ (\d+), (\d+) \]', shipped
    )
    assert dims is not None
    assert int(dims.group(2)) == ImagingConfig().embedding_dim


def test_cam_equals_grad_cam():
    torch.manual_seed(1)
    net = ImagingNet(ImagingConfig(base_channels=2, depth=2, embedding_dim=8, image_size=16))
    torch.nn.init.normal_(net.classifier.weight)
    net.eval()
    images = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        cam = net(images)[3]
    reference = grad_cam(net, images)
    assert torch.allclose(cam, reference, atol=1e-5)
    assert (cam.amax(dim=(2, 3)) > 0.99).any()


def test_ct_augmentation_warps_image_and_mask_together():
    from models.imaging.train import _augment_ct

    rng = np.random.default_rng(0)
    images = np.zeros((6, 1, 64, 64), dtype=np.float32)
    masks = np.zeros_like(images)
    images[:, :, 24:40, 24:40] = 0.8  # a bright square "tumour" and its mask
    masks[:, :, 24:40, 24:40] = 1.0
    out_x, out_m = _augment_ct(images, masks, rng)
    assert out_x.shape == images.shape
    assert out_m.shape == masks.shape
    assert set(np.unique(out_m)) <= {0.0, 1.0}
    assert out_x.min() >= 0.0
    assert out_x.max() <= 1.0
    # Scale 0.8-1.25 changes the area by at most 1.25² (plus edge rounding), never empties it.
    area = out_m.reshape(6, -1).sum(1)
    assert ((area > 256 / 1.25**2 * 0.8) & (area < 256 * 1.25**2 * 1.2)).all(), area
    # The mask follows the image: the warped square is bright where the mask is set.
    inside = out_x[out_m > 0.5].mean()
    outside = out_x[out_m < 0.5].mean()
    assert inside > outside + 0.4
    again = _augment_ct(images, masks, np.random.default_rng(0))
    assert np.array_equal(again[0], out_x)
    assert np.array_equal(again[1], out_m)


def test_lesion_threshold_candidates_stay_in_the_band():
    from models.imaging.settings import ImagingSettings
    from models.imaging.train import _threshold_grid

    grid = _threshold_grid(ImagingSettings())
    assert grid[0] == 0.3
    assert grid[-1] == 0.7
    assert len(grid) == 41
    assert _threshold_grid(ImagingSettings(min_threshold=0.01, max_threshold=0.95))[0] == 0.01
    with pytest.raises(ValueError, match="exceeds"):
        ImagingSettings(min_threshold=0.8, max_threshold=0.2)


def test_decoder_dropout_acts_in_training_only_and_keeps_the_weights():
    torch.manual_seed(2)
    small: dict[str, Any] = {"base_channels": 2, "depth": 2, "embedding_dim": 8, "image_size": 16}
    plain = ImagingNet(ImagingConfig(**small))
    dropped = ImagingNet(ImagingConfig(**small, decoder_dropout=0.5))
    dropped.load_state_dict(plain.state_dict())  # same keys: dropout has no parameters
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        for a, b in zip(plain.eval()(images), dropped.eval()(images), strict=True):
            assert torch.equal(a, b)
        skips, features = dropped.train().encode(images)
        assert not torch.equal(dropped.decode(skips, features), plain.decode(skips, features))
    with pytest.raises(ValueError, match="decoder_dropout"):
        ImagingConfig(decoder_dropout=1.0)


def test_flip_average_serves_the_mean_of_the_image_and_its_mirror():
    torch.manual_seed(3)
    small: dict[str, Any] = {"base_channels": 2, "depth": 2, "embedding_dim": 8, "image_size": 16}
    plain = ImagingNet(ImagingConfig(**small)).eval()
    averaged = ImagingNet(ImagingConfig(**small, flip_average=True)).eval()
    averaged.load_state_dict(plain.state_dict())  # same weights: only serving differs
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        single = plain(images)
        mirrored = plain(torch.flip(images, [3]))
        served = averaged(images)
    expected = 0.5 * (single[0] + torch.flip(mirrored[0], [3]))
    assert torch.allclose(served[0], expected, atol=1e-7)
    assert not torch.allclose(served[0], single[0])  # the mirror really counts
    # Class probability, embedding and CAM come from the image alone, bit for bit.
    for a, b in zip(served[1:], single[1:], strict=True):
        assert torch.equal(a, b)
    # The served mask of a left-right symmetric image is itself symmetric.
    symmetric = 0.5 * (images + torch.flip(images, [3]))
    with torch.no_grad():
        mask = averaged(symmetric)[0]
    assert torch.allclose(mask, torch.flip(mask, [3]), atol=1e-6)
    assert ImagingConfig(**small, flip_average=True).to_dict()["flip_average"] is True


def test_weight_average_moves_towards_the_trained_weights():
    from models.imaging.train import _update_average

    torch.manual_seed(3)
    config = ImagingConfig(base_channels=2, depth=2, embedding_dim=8, image_size=16)
    averaged, net = ImagingNet(config), ImagingNet(config)
    before = [p.detach().clone() for p in averaged.parameters()]
    _update_average(averaged, net, 0.75)
    for mean, start, value in zip(averaged.parameters(), before, net.parameters(), strict=True):
        assert torch.allclose(mean, 0.75 * start + 0.25 * value)


def test_validation_study_pools_folds_at_their_own_thresholds():
    from models.imaging.validation_study import ValidationFold, pool

    reference = np.zeros((2, 12, 12), dtype=bool)
    reference[0, 1:4, 1:4] = True
    probability = np.zeros((2, 12, 12), dtype=np.float32)
    probability[0, 1:4, 1:4] = 0.95  # the lesion, confident
    probability[1, 6:8, 6:8] = 0.6  # a false positive that never gets confident
    images = np.zeros((1, 12, 12), dtype=np.float32)
    folds = [
        ValidationFold(images, probability[:1], reference[:1], 0.5, 0.9),
        ValidationFold(images, probability[1:], reference[1:], 0.5, 0.9),
    ]
    every = pool(folds, 0.0)
    assert (every.found, every.lesions) == (1, 1)
    assert every.false_positives_per_patch == 0.5
    assert every.dice == pytest.approx(2 * 9 / (9 + 4 + 9))
    filtered = pool(folds, 0.9)
    assert filtered.false_positives_per_patch == 0.0
    assert filtered.dice == 1.0
    # A fold's own threshold counts: at 0.7 the false positive is gone without a filter.
    other = ValidationFold(images, probability[1:], reference[1:], 0.7, 0.9)
    assert pool([folds[0], other], 0.0).dice == 1.0
