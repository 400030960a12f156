"""A training set that is not where the settings say fails at once, with one line saying
which setting to change and where to download the data."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.common.training_data import PHYSIONET_2012, require_data
from models.deterioration.settings import TrainSettings
from models.deterioration.train import train
from models.imaging.settings import ImagingSettings
from models.imaging.train import train_imaging
from models.ood.settings import OODSettings
from models.ood.train import fit_ood
from vigil.errors import ModelError


def test_an_existing_folder_passes(tmp_path: Path):
    settings = TrainSettings(data_dir=tmp_path)
    assert require_data(settings, "data_dir", PHYSIONET_2012) == tmp_path


@pytest.mark.parametrize(
    ("run", "settings", "variable", "source"),
    [
        (train, TrainSettings(data_dir=Path("nowhere")), "VIGIL_TRAIN_DATA_DIR", "physionet.org"),
        (fit_ood, OODSettings(data_dir=Path("nowhere")), "VIGIL_OOD_DATA_DIR", "physionet.org"),
        (
            train_imaging,
            ImagingSettings(ct_path=Path("nowhere.npz")),
            "VIGIL_IMAGING_CT_PATH",
            "medicaldecathlon.com",
        ),
    ],
    ids=["deterioration", "ood", "imaging"],
)
def test_a_missing_training_set_names_the_setting_and_the_source(run, settings, variable, source):
    with pytest.raises(ModelError) as raised:
        run(settings)
    message = str(raised.value)
    assert "\n" not in message
    assert variable in message
    assert source in message
    assert "docs/training-data.md" in message
