"""Shared fixtures: a tiny model trained on a few demo stays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.deterioration.train import TrainResult, TrainSettings

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"


def tiny_settings(checkpoint: Path) -> TrainSettings:
    return TrainSettings(
        data_dir=DEMO_DIR,
        checkpoint=checkpoint,
        hidden=8,
        epochs=2,
        patience=2,
        hours_per_stay=2,
        batch_size=32,
        max_stays=40,
        members=2,
        baselines=False,
    )


@pytest.fixture(autouse=True)
def _no_developer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VIGIL_TRAIN_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    """Restores torch's intra-op thread count: the served wrapper's ``initialize`` sets it
    for its (stub) process, and a test that calls it must not change later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    from models.deterioration.train import train

    return train(tiny_settings(tmp_path_factory.mktemp("tiny") / "tiny.pt"))
