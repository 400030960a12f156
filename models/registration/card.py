"""The registration's model card (``vigil imaging registration-card``).

Registration is optimised per pair inside the worker (no weights, nothing on Triton), so
its card records what makes a result reproducible instead of a checkpoint: the settings in
effect (``register_pair``'s defaults), the code that ran them (SHA-256 of the sources),
the data the figures came from, the held-out figures themselves, and a **reproduction
check**: one SYNTHETIC pair of the repository's CT sample registered with the card's
settings, which ``tests/models/test_registration_card.py`` registers again and compares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from models.common.provenance import REPO_ROOT, code_version, package_versions
from models.imaging.data import data_hash
from models.imaging.registration import register_pair
from models.registration.evaluate import make_synthetic, register_settings

__all__ = [
    "CARD_DIR",
    "REGISTRATION_SOURCES",
    "registration_card",
    "reproduction_check",
    "write_registration_card",
]

CARD_DIR: Final[Path] = REPO_ROOT / "models" / "registration"
REGISTRATION_SOURCES: Final[tuple[str, ...]] = (
    "models/imaging/registration.py",
    "models/registration/evaluate.py",
    "models/registration/card.py",
)
CT_SAMPLE: Final[Path] = REPO_ROOT / "data" / "msd-lung-ct-sample" / "msd_lung_ct_sample.npz"
"""The repository's real CT sample (9 MSD patches; data/msd-lung-ct-sample)."""
CHECK_SEED: Final[int] = 19
"""Seed of the reproduction check's known deformation."""


def reproduction_check(settings: dict[str, Any]) -> dict[str, float]:
    """Registers the repository CT sample's largest lesion patch to a SYNTHETIC warp of
    itself (seed :data:`CHECK_SEED`) with ``settings``; the figures a card records."""
    torch.set_num_threads(1)
    with np.load(CT_SAMPLE) as data:
        images, masks = data["images"][:, 0], data["masks"][:, 0] > 0
    index = int(np.argmax(masks.reshape(masks.shape[0], -1).sum(axis=1)))
    pair = make_synthetic(
        images[index].astype(np.float32), masks[index], np.random.default_rng(CHECK_SEED)
    )
    result = register_pair(pair.new, pair.prior, **settings)
    error = np.linalg.norm(result.displacement - pair.displacement, axis=0)
    prior_area = float(pair.prior_mask.sum())
    return {
        "sample_index": float(index),
        "epe_px": float(error.mean()),
        "true_change_fractional_px": pair.new_mask_area_px - prior_area,
        "estimated_change_fractional_px": result.warped_mask_area(pair.prior_mask) - prior_area,
        "min_jacobian": result.min_jacobian,
        "attempts": float(result.attempts),
    }


def registration_card(report: dict[str, Any], patches: Path) -> dict[str, Any]:
    """The card of the settings in effect, from a test-split ``eval-registration`` report.

    Raises:
        ValueError: The report is not of the test split or was made with other settings
            than ``register_pair``'s defaults (a card describes what the worker runs).
    """
    settings = register_settings({})
    if report.get("split") != "test":
        raise ValueError(f"the card needs a test-split report, got {report.get('split')!r}")
    if report.get("register") != settings:
        raise ValueError(
            f"the report's settings {report.get('register')} are not the defaults {settings}"
        )
    return {
        "name": "svf_registration",
        "kind": "optimised per pair (no learned weights); runs in the worker",
        "method": (
            "stationary velocity field on bicubic control points, integrated by scaling and "
            "squaring; MSE + smoothness, Adam, coarse to fine; Jacobian check on every "
            "pixel, stiffer re-run when any folds"
        ),
        "settings": settings,
        "selection": (
            "levels and steps chosen on the validation patients (first sweep); smoothness "
            "and step size on the training + validation patients (second sweep); rules "
            "written before each sweep: bench/results/registration_settings.json"
        ),
        "evaluation": {
            "label": report["synthetic_label"],
            "patients": report["patients"],
            "seed": report["seed"],
            "synthetic_summary": report["synthetic_summary"],
            "real_summary": report["real_summary"],
        },
        "data_sha256": data_hash(patches),
        "reproduction_check": reproduction_check(settings),
        "code_version": code_version(REGISTRATION_SOURCES),
        "packages": package_versions(),
        "intended_use": (
            "research; decision support, not a diagnosis. Compares a CT study with the "
            "patient's prior of the same modality; see docs/imaging-dose-registration.md"
        ),
    }


def _markdown(card: dict[str, Any]) -> str:
    syn, real = card["evaluation"]["synthetic_summary"], card["evaluation"]["real_summary"]
    check = card["reproduction_check"]
    return (
        "# Model card: svf_registration\n\n"
        f"- Kind: {card['kind']}\n"
        f"- Method: {card['method']}\n"
        f"- Intended use: {card['intended_use']}\n"
        f"- Settings (`register_pair` defaults): `{json.dumps(card['settings'])}`\n"
        f"- Selection: {card['selection']}\n"
        f"- Data SHA-256 (MSD Task06 lung patches, CC BY-SA 4.0): {card['data_sha256']}\n"
        f"- Code `{card['code_version']['source_sha256']}`, git "
        f"`{card['code_version']['git_commit']}`\n\n"
        f"## Held-out test patients {card['evaluation']['patients']} "
        "(known deformations are SYNTHETIC)\n\n"
        "| Figure | Value |\n| --- | --- |\n"
        f"| End-point error, mean | {syn['epe_mm_mean']:.2f} mm |\n"
        f"| Folding pixels, {syn['pairs']} synthetic + {real['pairs']} real pairs | "
        f"{syn['folding_pixels_total'] + real['folding_pixels_total']:.0f} |\n"
        f"| Lesion-area change within 10 % of the known change | "
        f"{syn['change_within_10pct_pairs']} / {syn['change_pairs']} pairs |\n"
        f"| Median relative error of the change | {syn['change_relative_error_median']:.1%} |\n"
        f"| Real pairs: NCC before → after | {real['ncc_before_mean']:.3f} → "
        f"{real['ncc_after_mean']:.3f} |\n"
        f"| Real pairs: lesion Dice before → after | {real['lesion_dice_before_mean']:.3f} → "
        f"{real['lesion_dice_after_mean']:.3f} |\n\n"
        "## Reproduction check (repository CT sample, SYNTHETIC deformation, seed "
        f"{CHECK_SEED})\n\n"
        f"EPE {check['epe_px']:.4f} px; change {check['estimated_change_fractional_px']:.3f} px "
        f"recovered of {check['true_change_fractional_px']:.3f} px known.\n"
    )


def write_registration_card(
    report: dict[str, Any], patches: Path, out_dir: Path = CARD_DIR
) -> list[Path]:
    """Writes ``model_card.json`` and ``model_card.md`` into ``out_dir``."""
    card = registration_card(report, patches)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "model_card.json", out_dir / "model_card.md"]
    paths[0].write_text(json.dumps(card, indent=1) + "\n")
    paths[1].write_text(_markdown(card))
    return paths
