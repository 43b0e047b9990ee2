"""Tests on the real assets in ../shared: published layouts, real weights, real JPEG CIFAR-10.

CI sets DFKD_REQUIRE_ASSETS=1 so that a missing asset fails instead of skipping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfkd_core import (
    DistillConfig,
    DreamConfig,
    Recipe,
    RecoveryConfig,
    create_model,
    evaluate,
    load_checkpoint,
    load_eval_set,
    load_teacher,
    run_recovery,
)
from dfkd_core.cli import main
from dfkd_core.zoo import get_pretrained

from .conftest import shared_asset
from .test_pipeline import _forbid_training_reads

pytestmark = [pytest.mark.assets, pytest.mark.slow]

CHENYAOFO = [
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "mobilenetv2_x0_5",
    "mobilenetv2_x0_75",
    "mobilenetv2_x1_0",
    "mobilenetv2_x1_4",
]


@pytest.fixture(scope="module")
def jpeg_root() -> str:
    return str(shared_asset("data/cifar10-jpeg"))


@pytest.fixture(scope="module")
def jpeg_test(jpeg_root):
    return load_eval_set(jpeg_root)


@pytest.mark.parametrize("arch", CHENYAOFO)
def test_chenyaofo_layouts_match_the_published_state_dicts(arch):
    published = json.loads(shared_asset("zoo/chenyaofo_cifar10_state_dicts.json").read_text())[f"cifar10_{arch}"]
    ours = {k: list(v.shape) for k, v in create_model(arch).state_dict().items()}
    assert ours == published["state_dict"]
    assert list(ours) == list(published["state_dict"]), "same key order as the published files"
    record = get_pretrained(f"chenyaofo/cifar10_{arch}")
    assert record.url == published["url"] and record.num_params == published["num_params"]


def test_akamaster_resnet20_through_the_hub_cache(tmp_path, monkeypatch, jpeg_test):
    """The registry path end to end: torch.hub cache -> legacy checkpoint -> 81.0 on JPEG test."""
    source = shared_asset("weights/cifar10-resnet-akamaster/resnet20-12fca82f.th")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / Path(get_pretrained("akamaster/resnet20").url).name).symlink_to(source)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    teacher = load_teacher("akamaster/resnet20", progress=False)
    assert evaluate(teacher.model, jpeg_test, teacher.normalization) == pytest.approx(81.0, abs=0.2)


@pytest.mark.parametrize(
    ("file", "recorded"), [("resnet20-12fca82f-jpeg.pt", 87.98), ("mobilenetv2_x0_5-jpeg.pt", 85.63)]
)
def test_jpeg_teachers_reproduce_their_recorded_accuracy(file, recorded, jpeg_test):
    teacher = load_checkpoint(shared_asset(f"weights/cifar10-jpeg-teachers/{file}"))
    assert evaluate(teacher.model, jpeg_test, teacher.normalization) == pytest.approx(recorded, abs=0.05)


def test_cli_evaluate_json(jpeg_root, capsys):
    checkpoint = shared_asset("weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt")
    assert main(["evaluate", "--teacher", str(checkpoint), "--data", jpeg_root, "--json", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["accuracy"] == pytest.approx(87.98, abs=0.05) and record["num_images"] == 10000


def test_a_short_real_recovery_gains_accuracy_without_training_data(jpeg_root, monkeypatch):
    _forbid_training_reads(monkeypatch, Path(jpeg_root) / "train")
    config = RecoveryConfig(
        teacher=str(shared_asset("weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt")),
        data=jpeg_root,
        sparsity=0.75,
        recipe=Recipe(DreamConfig(num_images=128, batch_size=128, steps=40), DistillConfig(epochs=8)),
        baselines=("noise",),
        eval_per_class=100,
        curve_per_class=20,
        device="cpu",
    )
    result = run_recovery(config)
    assert result.teacher_acc > 85 and result.pruned_acc < result.teacher_acc - 10
    assert result.recovered_acc > result.pruned_acc + 10
    assert result.baselines["noise"] < result.recovered_acc - 10
    assert result.dreams.teacher_top1 > 90
