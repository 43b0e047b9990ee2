"""The dreams shipped with the app: that its default run finds them, and that they are its teacher's."""

import json

import pytest

from demo.runner import RunPlan
from demo.settings import default_values, parse_settings
from demo.shipped import adopt_shipped, shipped_files
from dfkd_core import DreamSet
from dfkd_core.cache import DreamCache
from dfkd_core.zoo import Teacher, file_sha256

from .conftest import shared_asset

SHIPPED = shipped_files()


def test_dreams_are_shipped_for_the_apps_default_teacher_and_cpu_budget():
    assert [file.name for file in SHIPPED] == ["akamaster_resnet20-quick.pt"]


@pytest.mark.parametrize("file", SHIPPED, ids=lambda file: file.name)
def test_the_apps_default_run_finds_the_shipped_dreams_in_the_cache(file, teacher):
    provenance = json.loads(file.with_suffix(".json").read_text())
    assert provenance["dreams_sha256"] == file_sha256(file), "the file is the one its provenance describes"
    values = default_values(provenance["budget"], provenance["teacher"])
    config = RunPlan(parse_settings(values, {"teacher": [provenance["teacher"]]}), "cifar10").config()
    same_weights = Teacher(
        teacher.model, "resnet20", teacher.normalization, teacher.classes, "x", provenance["teacher_sha256"]
    )
    (entry,) = [
        e for e in adopt_shipped() if e.name == DreamCache().path(same_weights, config.recipe.dream, config.seed).name
    ]
    dreams, note = DreamCache().get(same_weights, config.recipe.dream, config.seed)
    assert note is None and dreams is not None and dreams.origin["file"] == str(entry)
    assert len(dreams) == config.recipe.dream.num_images and len(dreams.holdout) == config.recipe.dream.holdout


@pytest.mark.assets
@pytest.mark.slow
@pytest.mark.parametrize("file", SHIPPED, ids=lambda file: file.name)
def test_the_shipped_dreams_were_made_by_their_teachers_weights(file):
    provenance = json.loads(file.with_suffix(".json").read_text())
    assert provenance["teacher"] == "akamaster/resnet20"
    weights = shared_asset("weights/cifar10-resnet-akamaster/resnet20-12fca82f.th")  # the registry's file
    assert DreamSet.load(file).settings["teacher_sha256"] == file_sha256(weights) == provenance["teacher_sha256"]
