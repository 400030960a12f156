"""CPU time of one registration (``register_pair``) at the worker's 64 x 64, per setting.

Run from the repository root::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m bench.registration_cpu

Pairs: real MSD patches of the test patients with a lesion (the first ``--pairs``),
upsampled bilinearly from 48 x 48 to 64 x 64, each registered to a copy warped by a known
SYNTHETIC deformation (``models.registration.evaluate.make_synthetic``). One thread; the
settings are measured in the same run, so compare them as ratios on a shared machine.
Writes ``bench/results/registration_cpu.json`` (with the machine, commit and load).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from bench.common import load_average, machine, write_result
from models.ct_denoise.data import load_patches, patient_split
from models.imaging.data import patient_ids
from models.imaging.registration import register_pair
from models.registration.evaluate import make_synthetic

_FIRST = {"smoothness": 0.01, "learning_rate": 0.1}  # before 6 December, evening
SETTINGS: dict[str, dict[str, Any]] = {
    "old: 1 level, 100 steps": {"iterations": 100, "levels": 1, **_FIRST},
    "3 levels, 200 steps": {"iterations": 200, "levels": 3, **_FIRST},
    "3 levels, 100 steps": {"iterations": 100, "levels": 3, **_FIRST},
    "chosen: 3 levels, 200 steps, smoothness 0.003, step 0.2": {
        "iterations": 200,
        "levels": 3,
        "smoothness": 0.003,
        "learning_rate": 0.2,
        "pyramid": False,
    },
    "the same with the image pyramid": {
        "iterations": 200,
        "levels": 3,
        "smoothness": 0.003,
        "learning_rate": 0.2,
        "pyramid": True,
    },
}


def measure(patches: Path, pairs: int, side: int = 64) -> dict[str, dict[str, float]]:
    """Median and mean CPU seconds (and median wall seconds) per registration, per setting."""
    torch.set_num_threads(1)
    images, masks = load_patches(patches)
    test = np.isin(patient_ids(images.shape[0]), patient_split()["test"])
    keep = np.flatnonzero(test & (masks.reshape(images.shape[0], -1).sum(axis=1) > 0))[:pairs]
    size = (side, side)
    big = F.interpolate(torch.from_numpy(images[keep]), size=size, mode="bilinear")
    big_masks = F.interpolate(torch.from_numpy(masks[keep].astype(np.float32)), size=size)
    rng = np.random.default_rng(5)
    synthetic = [
        make_synthetic(image[0].numpy(), mask[0].numpy() >= 0.5, rng)
        for image, mask in zip(big, big_masks, strict=True)
    ]
    register_pair(synthetic[0].new, synthetic[0].prior, iterations=5)  # warm-up
    results = {}
    for name, setting in SETTINGS.items():
        cpu, wall = [], []
        for pair in synthetic:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            register_pair(pair.new, pair.prior, **setting)
            cpu.append(time.process_time() - cpu_start)
            wall.append(time.perf_counter() - wall_start)
        results[name] = {
            "cpu_seconds_median": float(np.median(cpu)),
            "cpu_seconds_mean": float(np.mean(cpu)),
            "wall_seconds_median": float(np.median(wall)),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--patches",
        type=Path,
        default=Path("../shared/data/imaging/msd_lung_ct/msd_lung_ct_patches.npz"),
    )
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    load_before = load_average()
    settings = measure(args.patches, args.pairs)
    write_result(
        "registration_cpu",
        {
            "benchmark": "registration_cpu",
            "machine": machine(),
            "load_before": load_before,
            "load_after": load_average(),
            "pairs": args.pairs,
            "label": "SYNTHETIC deformations of real patches",
            "settings": settings,
        },
    )


if __name__ == "__main__":
    main()
