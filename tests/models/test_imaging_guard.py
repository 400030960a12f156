"""Guards of the shipped imaging model on real patches it never trained on (issue 17).

The shipped network once capped every lesion probability at ``sigmoid(bias) = 0.6534``
(a ReLU before the 1x1 head, with the positive-weight channels dead) and its threshold
sat 0.003 below that ceiling. These tests read the **served** TorchScript on every patch
of the held-out test patients 7, 11 and 12 (``data/msd-lung-ct-sample``, 30 patches) and
check that confident lesion pixels score near 1 and that the lesion recall is flat around
the operating point; and that the served module equals the checkpoint on these images.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.common.torchscript import PARITY_TOLERANCE
from models.imaging.export import load_imaging_checkpoint
from models.imaging.metrics import segmentation_scores
from streams.core.imaging_ops import preprocess_image, resize
from tests.imaging_files import xrays

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "triton_repo" / "imaging"
PATCHES = REPO / "data" / "msd-lung-ct-sample" / "msd_lung_ct_test_patients.npz"


def _parameter(name: str) -> float:
    text = (SHIPPED / "config.pbtxt").read_text()
    found = re.search(rf'key: "{name}"\s+value: \{{ string_value: "([\d.e-]+)" \}}', text)
    assert found is not None, name
    return float(found.group(1))


@pytest.fixture(scope="module")
def patches() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    with np.load(PATCHES) as data:
        return data["images"][:, 0], data["masks"][:, 0] > 0


@pytest.fixture(scope="module")
def served() -> torch.jit.ScriptModule:
    return torch.jit.load(str(SHIPPED / "1" / "model.pt"))  # type: ignore[no-untyped-call, no-any-return]


@pytest.fixture(scope="module")
def probability(
    served: torch.jit.ScriptModule, patches: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]
) -> npt.NDArray[np.float32]:
    """Served lesion probability at the native 48 x 48 of every patch."""
    images, masks = patches
    batch = torch.from_numpy(np.stack([preprocess_image(image) for image in images]))
    with torch.no_grad():
        mask = served(batch)[0][:, 0].numpy()
    return np.stack([resize(m, *masks.shape[1:]) for m in mask])


def test_the_sample_is_the_held_out_patients(
    patches: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]],
):
    with np.load(PATCHES) as data:
        index = data["source_index"]
    _, meta = load_imaging_checkpoint(REPO / "models" / "weights" / "imaging.pt")
    assert sorted(set((index // 10).tolist())) == meta["split"]["test"]
    assert patches[1].reshape(30, -1).any(1).sum() == 25


def _peaks(
    patches: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]],
    probability: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    has = patches[1].reshape(patches[1].shape[0], -1).any(1)
    peaks: npt.NDArray[np.float32] = probability[has].reshape(int(has.sum()), -1).max(1)
    return peaks


def test_no_ceiling_on_the_lesion_probability(
    patches: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]],
    probability: npt.NDArray[np.float32],
):
    """The defect of issue 17: every lesion peak was sigmoid(bias) = 0.6534 exactly."""
    peaks = _peaks(patches, probability)
    assert np.median(peaks) > 0.99, peaks.round(3)
    assert (peaks >= 0.9).mean() >= 0.7, peaks.round(3)
    assert np.ptp(peaks) > 0.1  # not one value shared by every patch
    # The served threshold is reachable: most lesion peaks are well above it.
    assert (peaks >= _parameter("mask_threshold") + 0.2).mean() >= 0.8


@pytest.mark.xfail(
    strict=True,
    reason="issue 17 target NOT met by the shipped model: 23 of 25 held-out lesion patches "
    "peak >= 0.9, two faint lesions peak at 0.195 and 0.717 (recall at 0.4 / 0.6 is "
    "0.96 / 0.92, threshold 0.5: those parts are met; docs/imaging.md, fifth round). "
    "Strict: remove this mark when a model meets it.",
)
def test_issue_17_target_confident_and_flat(
    patches: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]],
    probability: npt.NDArray[np.float32],
):
    _, masks = patches
    peaks = _peaks(patches, probability)
    recall = {t: segmentation_scores(probability, masks, t).lesion_recall for t in (0.4, 0.6)}
    threshold = _parameter("mask_threshold")
    assert (peaks >= 0.9).all(), peaks.round(3)
    assert abs(recall[0.4] - recall[0.6]) < 0.05, recall
    assert 0.3 <= threshold <= 0.7


def test_operating_point_figures_on_the_held_out_patients(
    patches: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]],
    probability: npt.NDArray[np.float32],
):
    """What the shipped model reaches at its served operating point (docs/imaging.md)."""
    threshold, peak = _parameter("mask_threshold"), _parameter("lesion_peak_threshold")
    at_point = segmentation_scores(probability, patches[1], threshold, peak)
    every_component = segmentation_scores(probability, patches[1], threshold)
    # Fifth round, fold 0: 22 of 25 lesions, 0.13 false-positive components per patch
    # (every component kept: 24 of 25 at 0.20); docs/imaging.md.
    assert at_point.large_lesion_recall >= 0.85
    assert at_point.false_positives_per_patch <= 0.15
    # The peak filter drops false positives; here it also drops the two faint lesions.
    assert at_point.false_positive_components < every_component.false_positive_components
    assert every_component.lesions_found - at_point.lesions_found <= 2


def test_served_module_equals_the_checkpoint_on_real_images(
    served: torch.jit.ScriptModule, patches: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]
):
    net, meta = load_imaging_checkpoint(REPO / "models" / "weights" / "imaging.pt")
    ct = [preprocess_image(image) for image in patches[0][:16]]
    xr = [preprocess_image(image) for image in xrays()[0][:16]]
    batch = torch.from_numpy(np.stack(ct + xr))
    with torch.no_grad():
        for a, b in zip(net(batch), served(batch), strict=True):
            assert float((a - b).abs().max()) <= PARITY_TOLERANCE
    assert _parameter("class_threshold") == pytest.approx(meta["class_threshold"])
    assert _parameter("mask_threshold") == pytest.approx(meta["threshold"])
    assert _parameter("lesion_peak_threshold") == pytest.approx(meta["lesion_peak_threshold"])


def test_calibrated_pneumonia_probability_orders_the_validation_xrays(
    served: torch.jit.ScriptModule,
):
    images, labels = xrays()
    batch = torch.from_numpy(np.stack([preprocess_image(image) for image in images]))
    with torch.no_grad():
        prob = served(batch)[1][:, 0].numpy()
    positive = labels > 0
    # Every pneumonia image against every normal one (16 x 16 pairs): AUROC on the sample.
    pairs = (prob[positive][:, None] > prob[~positive][None, :]).mean()
    assert pairs > 0.85
    threshold = _parameter("class_threshold")
    assert (prob[positive] >= threshold).mean() >= 0.8
