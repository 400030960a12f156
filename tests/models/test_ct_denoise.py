"""The CT denoiser: network shapes, seeded training, export parity, the shipped files
and the Triton wrapper's request checks (no server; see
``tests/integration/test_ct_denoise_serving.py`` for the real one)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.common.torchscript import script
from models.ct_denoise.data import poisson_weight, simulate_pairs
from models.ct_denoise.export import (
    ct_denoise_tensor_specs,
    example_inputs,
    export_ct_denoise,
    load_denoiser,
    render_config,
)
from models.ct_denoise.network import (
    SELF_ENSEMBLE_TURNS,
    DenoiseConfig,
    DenoiseNet,
    SelfEnsemble,
    ServedDenoiser,
    poisson_noise_std,
)
from models.ct_denoise.train import train_denoiser
from models.ct_denoise.triton_model import DenoiseRunner, RequestError
from tests.imaging_files import ct_patches

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "models" / "weights" / "ct_denoise.pt"
SHIPPED = REPO / "triton_repo" / "ct_denoise"


@pytest.mark.parametrize("side", [48, 64, 50])
def test_any_image_size_comes_back_in_its_shape(side: int) -> None:
    net = DenoiseNet(DenoiseConfig(channels=4, levels=2)).eval()
    image = torch.rand(2, 1, side, side)
    with torch.no_grad():
        out = net(image, torch.tensor([[0.1], [1.0]]))
    assert out.shape == image.shape
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0


def test_the_self_ensemble_averages_the_turned_network_and_commutes_with_turns() -> None:
    torch.manual_seed(0)
    net = DenoiseNet(DenoiseConfig(channels=4)).eval()
    image = torch.rand(2, 1, 40, 56)  # not square: turned images are 56 x 40
    dose = torch.tensor([[0.1], [0.5]])
    ensemble = SelfEnsemble(net, 4).eval()
    with torch.no_grad():
        out = ensemble(image, dose)
        by_hand = sum(
            torch.rot90(net(torch.rot90(image, k, [2, 3]), dose), -k, [2, 3]) for k in range(4)
        )
        turned_out = ensemble(torch.rot90(image, 1, [2, 3]), dose)
        alone = SelfEnsemble(net, 1)(image, dose)
    assert out.shape == image.shape
    torch.testing.assert_close(out, by_hand / 4)
    # averaging over all four turns makes the result equivariant: turn in, turn out
    torch.testing.assert_close(turned_out, torch.rot90(out, 1, [2, 3]))
    torch.testing.assert_close(alone, net(image, dose))
    assert not torch.allclose(alone, out)  # the turns change the answer
    with pytest.raises(ValueError, match="1-4"):
        SelfEnsemble(net, 5)


def test_the_flipped_self_ensemble_averages_all_eight_turns_and_mirrors() -> None:
    torch.manual_seed(0)
    net = DenoiseNet(DenoiseConfig(channels=4)).eval()
    image, dose = torch.rand(2, 1, 40, 56), torch.tensor([[0.1], [0.5]])
    with torch.no_grad():
        eight = SelfEnsemble(net, 4, flips=True)(image, dose)
        by_hand = sum(
            torch.rot90(
                torch.flip(net(torch.flip(torch.rot90(image, k, [2, 3]), [3]), dose), [3]),
                -k,
                [2, 3],
            )
            + torch.rot90(net(torch.rot90(image, k, [2, 3]), dose), -k, [2, 3])
            for k in range(4)
        )
        mirrored = SelfEnsemble(net, 4, flips=True)(torch.flip(image, [3]), dose)
        two = SelfEnsemble(net, 1, flips=True)(image, dose)
        pair = (net(image, dose) + torch.flip(net(torch.flip(image, [3]), dose), [3])) / 2
    torch.testing.assert_close(eight, by_hand / 8)
    # all eight turns and mirrors: the result mirrors with its input
    torch.testing.assert_close(mirrored, torch.flip(eight, [3]))
    torch.testing.assert_close(two, pair)


def test_the_shipped_model_serves_the_chosen_self_ensemble() -> None:
    net, _ = load_denoiser(CHECKPOINT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        shipped = torch.jit.load(str(SHIPPED / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    inputs = example_inputs(48)
    with torch.no_grad():
        (got,) = shipped(*inputs)
        single = net(*inputs)
        ensemble = SelfEnsemble(net, SELF_ENSEMBLE_TURNS)(*inputs)
    torch.testing.assert_close(got, ensemble, atol=1e-5, rtol=0.0)
    assert float((got - single).abs().max()) > 1e-3
    card = json.loads((SHIPPED / "model_card.json").read_text())
    assert card["self_ensemble_turns"] == SELF_ENSEMBLE_TURNS


def test_the_noise_map_follows_the_poisson_model() -> None:
    air = poisson_noise_std(torch.zeros(1, 1, 48, 48))
    torch.testing.assert_close(air, torch.ones_like(air))  # no attenuation: exp(0)
    disc = torch.zeros(1, 1, 48, 48)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disc[0, 0][(yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 15**2] = 1.0
    std = poisson_noise_std(disc)[0, 0]
    # rays through the centre cross the most tissue, so it is the noisiest pixel
    assert float(std[24, 24]) > float(std[24, 12]) > float(std[2, 2]) > 1.0
    # against the loss weight computed with scikit-image's Radon transform, on real patches
    images, _ = ct_patches()
    maps = poisson_noise_std(torch.from_numpy(images[:4, None].astype(np.float32)))
    for image, std_map in zip(images[:4], maps, strict=True):
        variance = 1.0 / poisson_weight(image)
        assert np.corrcoef(variance.ravel(), std_map[0].numpy().ravel() ** 2)[0, 1] > 0.99


def test_a_noise_map_network_scripts_and_takes_a_precomputed_map() -> None:
    torch.manual_seed(0)
    net = DenoiseNet(DenoiseConfig(channels=4, noise_map=True)).eval()
    image, dose = torch.rand(2, 1, 48, 48), torch.tensor([[0.1], [1.0]])
    with torch.no_grad():
        computed = net(image, dose)
        given = net(image, dose, poisson_noise_std(image))
        (scripted,) = script(ServedDenoiser(net).eval())(image, dose)
        (eager,) = ServedDenoiser(net).eval()(image, dose)
        other = net(image, dose, torch.ones_like(image))
        ensemble = SelfEnsemble(net, 4)(image, dose)  # one map, turned with the image
        by_hand = sum(
            torch.rot90(net(torch.rot90(image, k, [2, 3]), dose), -k, [2, 3]) for k in range(4)
        )
    torch.testing.assert_close(ensemble, by_hand / 4)
    torch.testing.assert_close(given, computed)
    torch.testing.assert_close(scripted, eager)
    assert not torch.allclose(other, computed)  # the map is an input that matters


def test_training_is_seeded_and_reproducible() -> None:
    images, _ = ct_patches()
    pairs = simulate_pairs(images[:3, None], (0.1,), realisations=1, base_seed=1)
    train, val = pairs.where(pairs.patch < 2), pairs.where(pairs.patch == 2)
    config = DenoiseConfig(channels=4, levels=1)
    runs = [
        train_denoiser(train, val, loss="poisson", config=config, epochs=1, batch_size=2)
        for _ in range(2)
    ]
    for (name, a), b in zip(
        runs[0].net.state_dict().items(), runs[1].net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert runs[0].history == runs[1].history
    mse = train_denoiser(train, val, loss="mse", config=config, epochs=1, batch_size=2)
    assert mse.history != runs[0].history  # the loss matters


def test_export_matches_the_eager_network_and_the_shipped_files(tmp_path: Path) -> None:
    result = export_ct_denoise(CHECKPOINT, tmp_path)
    assert result.max_abs_diff <= 1e-5
    written = tmp_path / "ct_denoise"
    assert (written / "config.pbtxt").read_text() == (SHIPPED / "config.pbtxt").read_text()
    assert (written / "config.pbtxt").read_text() == render_config()
    wrapper = (REPO / "models" / "ct_denoise" / "triton_model.py").read_text()
    assert (SHIPPED / "1" / "model.py").read_text() == wrapper
    assert (written / "1" / "model.py").read_text() == wrapper
    net, _ = load_denoiser(CHECKPOINT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        shipped = torch.jit.load(str(SHIPPED / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    served = ServedDenoiser(net).eval()
    with torch.no_grad():
        for side in (48, 64):
            inputs = example_inputs(side)
            (expected,), (got,) = served(*inputs), shipped(*inputs)
            assert float((expected - got).abs().max()) <= 1e-5


def test_contract_names_dtypes_and_dims() -> None:
    inputs, outputs = ct_denoise_tensor_specs()
    assert [(s.name, s.data_type, s.dims) for s in inputs] == [
        ("image", "TYPE_FP32", (1, -1, -1)),
        ("dose_fraction", "TYPE_FP32", (1,)),
    ]
    assert [(s.name, s.dims) for s in outputs] == [("denoised", (1, -1, -1))]


@pytest.mark.parametrize(
    ("image", "dose", "message"),
    [
        (np.zeros((1, 1, 48, 48), np.float64), np.ones((1, 1), np.float32), "FP32"),
        (np.zeros((1, 48, 48), np.float32), np.ones((1, 1), np.float32), r"\[B, 1, H, W\]"),
        (np.zeros((1, 1, 4, 48), np.float32), np.ones((1, 1), np.float32), "sides"),
        (np.zeros((2, 1, 48, 48), np.float32), np.ones((1, 1), np.float32), "dose_fraction"),
        (np.zeros((1, 1, 48, 48), np.float32), np.zeros((1, 1), np.float32), r"\(0, 1\]"),
        (np.full((1, 1, 48, 48), np.nan, np.float32), np.ones((1, 1), np.float32), "finite"),
    ],
)
def test_the_wrapper_refuses_bad_requests(
    image: np.ndarray[Any, Any], dose: np.ndarray[Any, Any], message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        DenoiseRunner.check({"image": image, "dose_fraction": dose})


def test_the_wrapper_runs_each_image_alone() -> None:
    net, _ = load_denoiser(CHECKPOINT)
    runner = DenoiseRunner(script(ServedDenoiser(net).eval()))
    images, _ = ct_patches()
    batch = images[:3, None].astype(np.float32)
    dose = np.array([[0.1], [0.25], [1.0]], np.float32)
    assert DenoiseRunner.check({"image": batch, "dose_fraction": dose}) == 3
    together = runner.run(batch, dose)
    alone = runner.run(batch[1:2], dose[1:2])
    np.testing.assert_array_equal(together[1:2], alone)


def test_more_noise_realisations_keep_the_cached_one_first(tmp_path: Path) -> None:
    """Realisation 0 of the training pairs is the cached single realisation (same seeds);
    the others are new draws of the same noise; the set is cached beside the single one."""
    from models.ct_denoise.run import load_or_simulate_pairs, training_pairs
    from models.ct_denoise.simulate import DOSES

    images, masks = ct_patches()
    patches = tmp_path / "patches.npz"
    np.savez(patches, images=images[:2, None], masks=masks[:2, None])
    cache = tmp_path / "pairs.npz"
    single = load_or_simulate_pairs(patches, cache)
    assert training_pairs(patches, cache, 1, single) is single
    many = training_pairs(patches, cache, 2, single)
    assert (tmp_path / "pairs_r2.npz").is_file()
    n = 2
    assert many.noisy.shape[0] == len(DOSES) * 2 * n
    for j in range(len(DOSES)):
        # Rows are ordered dose, realisation, patch.
        first = many.noisy[j * 2 * n : j * 2 * n + n]
        second = many.noisy[j * 2 * n + n : (j + 1) * 2 * n]
        np.testing.assert_array_equal(first, single.noisy[j * n : (j + 1) * n])
        assert not np.array_equal(first, second)
        np.testing.assert_array_equal(
            many.clean[j * 2 * n : (j + 1) * 2 * n, :, :, :][:n], images[:2, None]
        )
    again = training_pairs(patches, cache, 2, single)  # read back from its cache
    np.testing.assert_array_equal(again.noisy, many.noisy)
