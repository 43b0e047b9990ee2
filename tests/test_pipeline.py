import builtins
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dfkd_core.pipeline as pipeline_module
from dfkd_core import (
    DistillConfig,
    Finished,
    ImagesReady,
    InversionConfig,
    MetricLogged,
    Notice,
    Progress,
    Recipe,
    ReconstructionConfig,
    RecoveryConfig,  # fmt: skip
    StageFinished,
    StageStarted,
    recover,
    run_recovery,
)
from dfkd_core.pipeline import PRESETS, get_preset, resolve_device
from dfkd_core.zoo import CIFAR10, Teacher

TINY = Recipe(
    InversionConfig(num_images=20, batch_size=20, steps=2, preview_every=1),
    DistillConfig(epochs=2, batch_size=10),
    ReconstructionConfig(batch_size=10),
)


def tiny_config(teacher_checkpoint, data, **kwargs) -> RecoveryConfig:
    return RecoveryConfig(teacher=str(teacher_checkpoint), data=str(data), sparsity=0.5, recipe=TINY,
                          curve_per_class=2, device="cpu", **kwargs)  # fmt: skip


def test_event_sequence_of_a_two_step_run(teacher_checkpoint, image_root):
    events = list(recover(tiny_config(teacher_checkpoint, image_root)))
    shape = [(type(e).__name__, e.stage) for e in events if isinstance(e, (StageStarted, StageFinished))]
    assert shape == [
        ("StageStarted", "load"), ("StageFinished", "load"),
        ("StageStarted", "prune"), ("StageFinished", "prune"),
        ("StageStarted", "synthesize"), ("StageFinished", "synthesize"),
        ("StageStarted", "reconstruct"), ("StageFinished", "reconstruct"),
        ("StageStarted", "distill"), ("StageFinished", "distill"),
        ("StageStarted", "baseline_noise_reconstruct"), ("StageFinished", "baseline_noise_reconstruct"),
        ("StageStarted", "baseline_noise"), ("StageFinished", "baseline_noise"),
        ("StageStarted", "evaluate"), ("StageFinished", "evaluate"),
    ]  # fmt: skip
    assert [e.step for e in events if isinstance(e, Progress) and e.stage == "synthesize"] == [1, 2]
    assert [e.step for e in events if isinstance(e, ImagesReady)] == [1, 2]
    metrics = [(e.stage, e.name, e.step) for e in events if isinstance(e, MetricLogged)]
    assert metrics == [
        ("prune", "teacher_curve_accuracy", 0), ("prune", "pruned_curve_accuracy", 0),
        ("synthesize", "teacher_top1_on_dreams", 0), ("reconstruct", "accuracy", 0),
        ("distill", "accuracy", 0), ("distill", "accuracy", 1), ("distill", "accuracy", 2),
        ("baseline_noise", "noise_curve_accuracy", 0), ("baseline_noise", "noise_accuracy", 0),
        ("evaluate", "teacher_accuracy", 0), ("evaluate", "pruned_accuracy", 0),
        ("evaluate", "reconstructed_accuracy", 0), ("evaluate", "recovered_accuracy", 0),
    ]  # fmt: skip
    first_images = next(i for i, e in enumerate(events) if isinstance(e, ImagesReady))
    first_full_eval = next(i for i, e in enumerate(events) if isinstance(e, MetricLogged) and e.stage == "evaluate")
    assert first_images < first_full_eval, "dreams are shown before the slow full-split evaluation"
    assert isinstance(events[-1], Finished)


def test_result_and_report(teacher_checkpoint, image_root):
    result = run_recovery(tiny_config(teacher_checkpoint, image_root, baselines=("noise", "real")))
    report = result.report()
    for key in ("teacher_acc", "pruned_acc", "recovered_acc", "sparsity", "baselines", "dreams", "timings_s",
                "eval", "device", "versions", "settings"):  # fmt: skip
        assert key in report
    assert report["sparsity"]["target"] == 0.5 and report["sparsity"]["measured"] == pytest.approx(0.5, abs=1e-3)
    assert report["eval"] == {"dataset": str(image_root / "test"), "num_images": 40, "full_split": True}
    assert report["dreams"]["count"] == 20 and report["dreams"]["steps"] == 2
    assert isinstance(report["baselines"]["noise_kd"], float) and isinstance(report["baselines"]["real_data"], float)
    assert set(report["timings_s"]) >= {"synthesis", "distillation", "total"}
    assert report["settings"]["recipe"]["inversion"]["num_images"] == 20
    assert report["curve"]["epochs"] == [0, 1, 2] and report["curve"]["images"] == 20
    assert isinstance(report["reconstructed_acc"], float) and "reconstruction" in report["timings_s"]
    assert result.curve[0][1] == result.curve_references["reconstructed"]  # distillation starts from the refit
    assert len(report["layers"]) == 22


def test_real_baseline_without_train_split_is_null(teacher_checkpoint, test_only_root):
    events = list(recover(tiny_config(teacher_checkpoint, test_only_root, baselines=("real",))))
    assert any(isinstance(e, Notice) and "no train/ split" in e.message for e in events)
    assert events[-1].result.baselines == {"noise": None, "real": None}


def _forbid_training_reads(monkeypatch, train_dir: Path):
    """Make every file-system access below ``train_dir`` raise, whichever API is used."""
    forbidden = os.path.realpath(train_dir)

    def guard(path):
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(forbidden):
            raise AssertionError(f"the recovery path touched training data: {os.fsdecode(path)}")

    def wrap(function):
        def guarded(path, *args, **kwargs):
            guard(path)
            return function(path, *args, **kwargs)

        return guarded

    monkeypatch.setattr(builtins, "open", wrap(builtins.open))
    for name in ("scandir", "listdir", "stat", "walk"):
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", wrap(PIL.Image.open))
    import torchvision.datasets

    original_cifar = torchvision.datasets.CIFAR10.__init__

    def cifar_guard(self, root, train=True, *args, **kwargs):
        if train:
            raise AssertionError("the recovery path opened the CIFAR-10 training set")
        original_cifar(self, root, train, *args, **kwargs)

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", cifar_guard)


EVERY_COMPONENT = Recipe(  # each optional part on: ADI, reconstruction, mixing, features, pruning ramp, both BN modes
    InversionConfig(num_images=20, batch_size=20, steps=2, preview_every=1, adi=1.0, tv_l1=1e-4, l2=1e-5),
    DistillConfig(epochs=2, batch_size=10, mix="cutmix", feature_weight=1.0, prune_ramp=0.5),
    ReconstructionConfig(num_images=16, batch_size=8),
)


@pytest.mark.parametrize("recipe", [TINY, EVERY_COMPONENT, replace(EVERY_COMPONENT, distill=replace(
    EVERY_COMPONENT.distill, mix="mixup", bn_mode="frozen"))], ids=["tiny", "every-component", "mixup-frozen"])  # fmt: skip
def test_recovery_never_reads_training_images(teacher_checkpoint, image_root, monkeypatch, recipe):
    """The data-free guarantee: load, prune, synthesize, reconstruct, distill and the noise baseline run with
    every read below train/ turned into an error, for every component the recipe can switch on."""
    _forbid_training_reads(monkeypatch, image_root / "train")
    config = replace(tiny_config(teacher_checkpoint, image_root, baselines=("noise",)), recipe=recipe)
    result = run_recovery(config)
    assert result.baselines["noise"] is not None


def test_the_tripwire_does_fire_for_the_oracle(teacher_checkpoint, image_root, monkeypatch):
    """Proof that the guard above can fail: the real-data oracle reads train/ and is caught."""
    _forbid_training_reads(monkeypatch, image_root / "train")
    with pytest.raises(AssertionError, match="touched training data"):
        run_recovery(tiny_config(teacher_checkpoint, image_root, baselines=("real",)))


def test_class_count_mismatch(teacher_checkpoint, tmp_path):
    from .conftest import write_image_folder

    write_image_folder(tmp_path / "three" / "test", 2, classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="has 3 classes but the teacher predicts 10"):
        run_recovery(tiny_config(teacher_checkpoint, tmp_path / "three"))


def test_teacher_without_batchnorm(monkeypatch, image_root):
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)
    )
    monkeypatch.setattr(
        pipeline_module, "load_teacher", lambda *a, **k: Teacher(plain, "plain", CIFAR10, tuple("abcdefghij"), "plain")
    )
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        run_recovery(RecoveryConfig(teacher="plain", data=str(image_root), recipe=TINY, device="cpu"))


@pytest.mark.parametrize("sparsity", [-0.5, 1.0, 2])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        RecoveryConfig(teacher="akamaster/resnet20", sparsity=sparsity)


def test_bad_baseline_and_scope():
    with pytest.raises(ValueError, match="unknown baseline"):
        RecoveryConfig(teacher="x", baselines=("gan",))
    with pytest.raises(ValueError, match="scope"):
        RecoveryConfig(teacher="x", scope="channels")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_bad_device_name():
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


def test_a_recipe_without_reconstruction_skips_the_stage(teacher_checkpoint, image_root):
    config = replace(
        tiny_config(teacher_checkpoint, image_root, baselines=()), recipe=replace(TINY, reconstruction=None)
    )
    events = list(recover(config))
    assert not any(isinstance(e, StageStarted) and "reconstruct" in e.stage for e in events)
    result = events[-1].result
    assert result.reconstructed_acc is None and result.curve[0][1] == result.curve_references["pruned"]


def test_presets():
    assert set(PRESETS) >= {"quick", "default", "best", "preview", "paper"}
    assert get_preset("default") == Recipe()
    assert PRESETS["paper"].distill.feature_weight == 0.0 and PRESETS["paper"].distill.bn_mode == "frozen"
    assert PRESETS["paper"].distill.mix == "none"

    def cost(recipe):  # image-steps of synthesis plus image-passes of distillation
        inv, kd = recipe.inversion, recipe.distill
        return inv.num_images * inv.steps + inv.num_images * kd.epochs

    assert cost(PRESETS["preview"]) < cost(PRESETS["quick"]) < cost(PRESETS["default"]) < cost(PRESETS["best"])
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        get_preset("fast")


def test_dreams_can_be_reused(teacher_checkpoint, image_root):
    first = run_recovery(tiny_config(teacher_checkpoint, image_root, baselines=()))
    events = list(recover(tiny_config(teacher_checkpoint, image_root, baselines=()), first.dreams))
    assert not any(isinstance(e, ImagesReady) for e in events)
    result = events[-1].result
    assert result.dreams is first.dreams and result.timings["synthesis"] == first.dreams.seconds


def test_with_overrides_switches_the_refit_on_and_off():
    from dfkd_core.pipeline import with_overrides

    assert PRESETS["default"].reconstruction is None and PRESETS["quick"].reconstruction is not None
    on = with_overrides(PRESETS["default"], reconstruct=True, reconstruction={"damping": 0.1})
    assert on.reconstruction == ReconstructionConfig(damping=0.1) and on.distill == PRESETS["default"].distill
    assert with_overrides(PRESETS["quick"], reconstruct=False).reconstruction is None
    assert with_overrides(PRESETS["quick"], {"steps": 5}).reconstruction == PRESETS["quick"].reconstruction
    with pytest.raises(ValueError, match="does not reconstruct"):
        with_overrides(PRESETS["default"], reconstruction={"damping": 0.1})
