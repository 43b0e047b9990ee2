import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dfkd_core.pipeline as pipeline_module
from dfkd_core import (
    PRESETS,
    DistillConfig,
    DreamConfig,
    DreamSet,
    Metric,
    Network,
    Recipe,
    RecoveryConfig,
    RefitConfig,
    Stage,
    get_preset,
    load_eval_set,
    recover,
    resolve_device,
    run_recovery,
    with_overrides,
    write_outputs,
)
from dfkd_core.events import Finished, ImagesReady, MetricLogged, Notice, Progress, StageFinished, StageStarted
from dfkd_core.outputs import shareable
from dfkd_core.plots import result_figure
from dfkd_core.zoo import CIFAR10, Teacher, file_sha256

from .conftest import forbid_reads

TINY = Recipe(
    DreamConfig(num_images=20, batch_size=20, steps=2, preview_every=1, holdout=10),
    DistillConfig(epochs=2, batch_size=10),
    RefitConfig(batch_size=10),
)


def tiny_config(teacher_checkpoint, data, **kwargs) -> RecoveryConfig:
    return RecoveryConfig(
        teacher=str(teacher_checkpoint),
        data=str(data),
        sparsity=0.5,
        recipe=TINY,
        curve_per_class=2,
        device="cpu",
        **kwargs,
    )


@pytest.mark.slow
def test_event_sequence_of_a_two_step_run(teacher_checkpoint, image_root):
    events = list(recover(tiny_config(teacher_checkpoint, image_root)))
    stages = [e.stage for e in events if isinstance(e, StageStarted)]
    assert stages == [
        Stage.LOAD,
        Stage.PRUNE,
        Stage.DREAM,
        Stage.REFIT,
        Stage.DISTILL,
        Stage.BASELINE,
        Stage.BASELINE,
        Stage.EVALUATE,
    ]  # the noise baseline refits, then distills
    assert [e.stage for e in events if isinstance(e, StageFinished)] == stages
    baseline = [e.description for e in events if isinstance(e, StageStarted) and e.stage is Stage.BASELINE]
    assert all(d.startswith("noise baseline: ") for d in baseline)
    # two steps for the transfer set, two for the held-out dreams
    assert [e.step for e in events if isinstance(e, Progress) and e.stage is Stage.DREAM] == [1, 2, 3, 4]
    assert [e.step for e in events if isinstance(e, ImagesReady)] == [1, 2, 3, 4]
    metrics = [(e.stage, e.metric, e.network, e.step) for e in events if isinstance(e, MetricLogged)]
    curve, top1, accuracy, kl = Metric.CURVE_ACCURACY, Metric.DREAM_TOP1, Metric.ACCURACY, Metric.HOLDOUT_AGREEMENT
    assert metrics == [
        (Stage.PRUNE, curve, Network.TEACHER, 0),
        (Stage.PRUNE, curve, Network.PRUNED, 0),
        (Stage.DREAM, top1, Network.TEACHER, 0),
        (Stage.REFIT, curve, Network.REFIT, 0),
        (Stage.DISTILL, curve, Network.RECOVERED, 0),
        (Stage.DISTILL, kl, Network.RECOVERED, 0),  # the start, judged on the held-out dreams ...
        (Stage.DISTILL, curve, Network.RECOVERED, 1),
        (Stage.DISTILL, kl, Network.RECOVERED, 1),  # ... and every epoch after it
        (Stage.DISTILL, curve, Network.RECOVERED, 2),
        (Stage.DISTILL, kl, Network.RECOVERED, 2),
        (Stage.BASELINE, curve, Network.NOISE, 0),  # where the baseline starts: the refit on noise
        (Stage.BASELINE, kl, Network.NOISE, 0),  # judged on held-out noise: the same recipe on noise
        (Stage.BASELINE, curve, Network.NOISE, 1),
        (Stage.BASELINE, kl, Network.NOISE, 1),
        (Stage.BASELINE, curve, Network.NOISE, 2),
        (Stage.BASELINE, kl, Network.NOISE, 2),
        (Stage.BASELINE, accuracy, Network.NOISE, 0),
        (Stage.EVALUATE, accuracy, Network.TEACHER, 0),
        (Stage.EVALUATE, accuracy, Network.PRUNED, 0),
        (Stage.EVALUATE, accuracy, Network.REFIT, 0),
        (Stage.EVALUATE, accuracy, Network.RECOVERED, 0),
    ]
    first_images = next(i for i, e in enumerate(events) if isinstance(e, ImagesReady))
    first_full_eval = next(i for i, e in enumerate(events) if isinstance(e, MetricLogged) and e.stage is Stage.EVALUATE)
    assert first_images < first_full_eval, "dreams are shown before the slow full-split evaluation"
    assert isinstance(events[-1], Finished)


@pytest.mark.slow
def test_showcase_streams_every_step_first_and_leaves_the_recovery_unchanged(teacher_checkpoint, image_root):
    events = list(recover(tiny_config(teacher_checkpoint, image_root, showcase=1, baselines=())))
    stages = [e.stage for e in events if isinstance(e, StageStarted)]
    assert stages[:4] == [Stage.LOAD, Stage.PRUNE, Stage.SHOWCASE, Stage.DREAM]
    shown = [e for e in events if isinstance(e, ImagesReady) and e.stage is Stage.SHOWCASE]
    steps = pipeline_module.SHOWCASE_STEPS
    assert [e.step for e in shown] == list(range(1, steps + 1)), "a snapshot at every step of the recommended count"
    assert {e.total for e in shown} == {steps} and len(shown[-1].images) == 10, "one dream per class"
    result = events[-1].result
    assert result.showcase is not None and result.showcase.steps == steps and len(result.dreams) == 20
    assert "showcase" in result.report()["timings_s"]
    plain = run_recovery(tiny_config(teacher_checkpoint, image_root, baselines=()))
    assert result.recovered_acc == plain.recovered_acc and torch.equal(result.dreams.images, plain.dreams.images)
    with pytest.raises(ValueError, match="showcase must be a whole number"):
        tiny_config(teacher_checkpoint, image_root, showcase=-1)


@pytest.mark.slow
def test_result_and_report(teacher_checkpoint, image_root):
    result = run_recovery(tiny_config(teacher_checkpoint, image_root, baselines=("noise", "real")))
    report = result.report()
    keys = ("teacher_acc", "pruned_acc", "refit_acc", "recovered_acc", "sparsity", "baselines", "dreams", "timings_s")
    for key in (*keys, "eval", "device", "versions", "settings"):
        assert key in report
    assert report["sparsity"]["target"] == 0.5 and report["sparsity"]["measured"] == pytest.approx(0.5, abs=1e-3)
    fingerprint = load_eval_set(str(image_root)).fingerprint()
    assert report["eval"] == {
        "dataset": str(image_root / "test"),
        "num_images": 40,
        "full_split": True,
        "fingerprint": fingerprint,
    }
    assert report["provenance"]["teacher_sha256"] == file_sha256(teacher_checkpoint)
    assert report["provenance"]["threads"] == torch.get_num_threads()
    assert {"numpy", "cuda", "cudnn", "gpu"} <= set(report["versions"])
    commit = report["provenance"]["git_commit"]  # None only outside a git checkout
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit), commit
    assert report["dreams"]["made"] == "in this run" and report["dreams"]["settings"]["num_images"] == 20
    assert report["dreams"]["settings"]["seed"] == 0
    assert report["dreams"]["count"] == 20 and report["dreams"]["steps"] == 2
    assert isinstance(report["baselines"]["noise"], float) and isinstance(report["baselines"]["real"], float)
    stages = {"load", "prune", "dream", "refit", "distill", "noise", "real", "evaluate", "total"}
    stages |= {"holdout", "probes", "holdout_agreement"}  # the parts that judge the run, also measured apart
    assert set(report["timings_s"]) == stages
    public = json.dumps(shareable(report))  # what the app's visitors download
    assert str(teacher_checkpoint.parent) not in public and str(image_root) not in public, "no path of this machine"
    assert '"platform"' not in public and '"git_commit"' not in public and '"teacher.pt"' in public
    assert report["settings"]["recipe"]["dream"]["num_images"] == 20
    assert report["curve"]["epochs"] == [0, 1, 2] and report["curve"]["images"] == 20
    assert isinstance(report["refit_acc"], float)
    assert result.curve[0][1] == result.curve_references["refit"]  # distillation starts from the refit
    assert len(report["layers"]) == 22
    # Each baseline has its own curve per epoch, measured like the student's; it ends at its reference.
    for name in ("noise", "real"):
        curve = result.baseline_curves[name]
        assert [epoch for epoch, _ in curve] == [0, 1, 2]
        assert curve[-1][1] == result.curve_references[name]
        assert report["curve"]["baselines"][name] == [round(a, 2) for _, a in curve]
    figure = result_figure(result)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert any(label.startswith("same recipe on noise") for label in labels)
    noise_line = next(
        line for line in figure.axes[0].get_lines() if line.get_label().startswith("same recipe on noise")
    )
    assert list(noise_line.get_xdata()) == [0, 1, 2], "the noise baseline is drawn per epoch"


@pytest.mark.slow
def test_real_baseline_without_train_split_is_null(teacher_checkpoint, test_only_root):
    events = list(recover(tiny_config(teacher_checkpoint, test_only_root, baselines=("real",))))
    assert any(isinstance(e, Notice) and "no train/ split" in e.message for e in events)
    assert events[-1].result.baselines == {"noise": None, "real": None}


def _forbid_training_reads(monkeypatch, train_dir: Path):
    """Make every file open or listing below ``train_dir`` raise (an audit hook: no API gets past it), and
    the CIFAR-10 training set refuse to load."""
    forbid_reads(monkeypatch, train_dir)
    import torchvision.datasets

    original_cifar = torchvision.datasets.CIFAR10.__init__

    def cifar_guard(self, root, train=True, *args, **kwargs):
        if train:
            raise AssertionError("the recovery path opened the CIFAR-10 training set")
        original_cifar(self, root, train, *args, **kwargs)

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", cifar_guard)


@pytest.mark.parametrize(
    "read",
    [
        lambda f: open(f).close(),
        lambda f: f.read_bytes(),
        lambda f: os.close(os.open(f, os.O_RDONLY)),
        lambda f: open(f).close(),
        lambda f: os.listdir(f.parent),
        lambda f: list(os.scandir(f.parent)),
        lambda f: torch.load(f),
    ],
    ids=["open", "Path.read_bytes", "os.open", "io.open", "os.listdir", "os.scandir", "torch.load"],
)
def test_the_tripwire_catches_every_way_to_read_a_file(monkeypatch, image_root, read):
    target = next((image_root / "train" / "cat").iterdir())
    _forbid_training_reads(monkeypatch, image_root / "train")
    with pytest.raises(AssertionError, match="touched training data"):
        read(target)


EVERY_COMPONENT = Recipe(  # each optional part on: ADI, the refit, cutmix, features, both BN modes
    DreamConfig(num_images=20, batch_size=20, steps=2, preview_every=1, adi=1.0, tv_l1=1e-4, l2=1e-5),
    DistillConfig(epochs=2, batch_size=10, cutmix=True, feature_weight=1.0),
    RefitConfig(num_images=16, batch_size=8),
)
FROZEN = replace(EVERY_COMPONENT, distill=replace(EVERY_COMPONENT.distill, cutmix=False, bn_mode="frozen"))
GRADUAL = replace(  # pruned from 20% to the target during distillation, without the refit (which needs one cut)
    EVERY_COMPONENT, distill=replace(EVERY_COMPONENT.distill, gradual_epochs=1, gradual_start=0.2), refit=None
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [TINY, EVERY_COMPONENT, FROZEN, GRADUAL],
    ids=["tiny", "every-component", "frozen", "gradual"],
)
def test_recovery_never_reads_training_images(teacher_checkpoint, image_root, monkeypatch, recipe):
    """The data-free guarantee: load, prune, dream, refit, distill and the noise baseline run with
    every read below train/ turned into an error, for every component the recipe can switch on."""
    _forbid_training_reads(monkeypatch, image_root / "train")
    config = replace(tiny_config(teacher_checkpoint, image_root, baselines=("noise",)), recipe=recipe)
    result = run_recovery(config)
    assert result.baselines["noise"] is not None


@pytest.mark.slow
def test_channel_pruning_never_reads_training_images_either(teacher_checkpoint, image_root, monkeypatch):
    """The data-free guarantee on the channel path: a slimmer student, refit and distilled with every component."""
    _forbid_training_reads(monkeypatch, image_root / "train")
    config = tiny_config(teacher_checkpoint, image_root, baselines=("noise",), granularity="channel")
    result = run_recovery(replace(config, recipe=EVERY_COMPONENT))
    assert result.baselines["noise"] is not None and result.sizes["recovered"].macs < result.sizes["teacher"].macs


@pytest.mark.slow
def test_a_channel_run_reports_what_a_user_of_structured_pruning_looks_at(teacher_checkpoint, image_root):
    result = run_recovery(tiny_config(teacher_checkpoint, image_root, granularity="channel"))
    report = result.report()
    assert report["sparsity"] == {
        "target": 0.5,
        "measured": pytest.approx(0.5, abs=0.03),
        "scope": "global",
        "granularity": "channel",
        "of": "MACs",
    }
    assert result.pruning == f"{result.sparsity:.0%} of the MACs removed (whole channels)"
    size = report["size"]
    assert set(size) == {"teacher", "recovered"} and set(size["teacher"]) == {
        "params",
        "nonzero_params",
        "macs",
        "bytes",
    }
    assert size["recovered"]["macs"] == pytest.approx((1 - result.sparsity) * size["teacher"]["macs"], rel=1e-6)
    assert size["recovered"]["bytes"] < 0.7 * size["teacher"]["bytes"]
    latency = report["latency_ms"]
    assert set(latency) == {"device", "threads", "teacher", "recovered", "speedup"}
    assert latency["speedup"]["4"] == pytest.approx(latency["teacher"]["4"] / latency["recovered"]["4"], rel=0.01)
    assert result.refit_acc is not None, "the refit runs on a slim student too"
    assert all(0 <= layer["removed"] < layer["weights"] for layer in report["layers"])


@pytest.mark.slow
def test_the_tripwire_does_fire_for_the_real_image_baseline(teacher_checkpoint, image_root, monkeypatch):
    """Proof that the guard above can fail: the real-image baseline reads train/ and is caught."""
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
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        RecoveryConfig(teacher="akamaster/resnet20", sparsity=sparsity)


def test_bad_granularity():
    with pytest.raises(ValueError, match="granularity must be one of 'weight', 'channel', got 'filter'"):
        RecoveryConfig("akamaster/resnet20", granularity="filter")


def test_bad_baseline_and_scope():
    with pytest.raises(ValueError, match="unknown baseline"):
        RecoveryConfig(teacher="x", baselines=("gan",))
    with pytest.raises(ValueError, match="scope"):
        RecoveryConfig(teacher="x", scope="channels")


def test_a_shareable_report_keeps_names_hashes_and_registry_ids():
    report = {"teacher": "/srv/app/w/t.pt", "data": "../shared/data/x", "id": "akamaster/resnet20", "n": [1, "~/a/b"]}
    report["versions"] = {"torch": "2", "platform": "Linux-host-123"}
    assert shareable(report) == {"teacher": "t.pt", "data": "x", "id": "akamaster/resnet20", "n": [1, "b"]} | {
        "versions": {"torch": "2"}
    }


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("teacher", None, "teacher must be a registry id or a path"),
        ("data", "", "data must be a registry id or a path"),
        ("baselines", "noise", "baselines must be a tuple of names, got the text 'noise'"),
        ("curve_per_class", 2.5, "whole numbers >= 0"),
        ("eval_per_class", True, "whole numbers >= 0"),
    ],
)
def test_values_of_the_wrong_type_are_refused(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RecoveryConfig(**{"teacher": "x", field: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_bad_device_name():
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


@pytest.mark.slow
def test_a_recipe_without_refit_skips_the_stage(teacher_checkpoint, image_root):
    config = replace(tiny_config(teacher_checkpoint, image_root, baselines=()), recipe=replace(TINY, refit=None))
    events = list(recover(config))
    assert Stage.REFIT not in [e.stage for e in events if isinstance(e, StageStarted)]
    result = events[-1].result
    assert result.refit_acc is None and result.curve[0][1] == result.curve_references["pruned"]
    assert "refit" not in result.timings


@pytest.mark.slow
def test_gradual_pruning_reaches_the_target_during_distillation(teacher_checkpoint, image_root):
    config = replace(tiny_config(teacher_checkpoint, image_root), sparsity=0.8, recipe=GRADUAL)
    events = list(recover(config))
    result = events[-1].result
    described = [e.description for e in events if isinstance(e, StageStarted) and e.stage is Stage.DISTILL]
    assert described[0].endswith("pruned from 20% to 80% over 1 epochs")
    cut = next(e for e in events if isinstance(e, StageFinished) and e.stage is Stage.PRUNE).summary["sparsity"]
    assert result.sparsity == pytest.approx(0.8, abs=1e-3) and cut == pytest.approx(0.8, abs=1e-3)
    assert sum(layer.removed for layer in result.layers) == sum(
        int((m.weight == 0).sum())
        for m in result.student.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ), "the report describes the student's own sparsity"
    assert result.baselines["noise"] is not None


def test_gradual_pruning_is_refused_with_the_refit(teacher_checkpoint, image_root):
    with pytest.raises(ValueError, match="refit"):
        replace(tiny_config(teacher_checkpoint, image_root), recipe=replace(GRADUAL, refit=RefitConfig()))


@pytest.mark.slow
def test_gradual_channel_pruning_ends_with_the_macs_asked_for(teacher_checkpoint, image_root):
    config = tiny_config(teacher_checkpoint, image_root, granularity="channel", baselines=("noise",))
    events = list(recover(replace(config, recipe=GRADUAL)))
    result = events[-1].result
    described = [e.description for e in events if isinstance(e, StageStarted) and e.stage is Stage.DISTILL]
    assert described[0].endswith("pruned from 20% to 50% of MACs over 1 epochs")
    trained = [e for e in events if isinstance(e, Progress) and e.stage is Stage.DISTILL and "epoch" in e.metrics]
    sparsity = [e.metrics["sparsity"] for e in trained]  # not the learning-rate probes before training
    assert sparsity[0] == pytest.approx(0.2, abs=0.03) and sparsity[-1] == pytest.approx(0.5, abs=0.03)
    assert result.sparsity == pytest.approx(0.5, abs=0.03)
    assert result.sizes["recovered"].macs == pytest.approx(0.5 * result.sizes["teacher"].macs, rel=0.06)
    assert result.baselines["noise"] is not None


def test_presets():
    assert list(PRESETS) == ["quick", "default", "best"]
    assert get_preset("default") == Recipe()

    def cost(recipe):  # image-steps of dreaming plus image-passes of distillation
        return recipe.dream.num_images * (recipe.dream.steps + recipe.distill.epochs)

    assert cost(PRESETS["quick"]) < cost(PRESETS["default"]) < cost(PRESETS["best"])
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        get_preset("fast")
    for name, recipe in PRESETS.items():  # channels go gradually, from 20% of MACs, without the one-cut refit
        channel = get_preset(name, "channel")
        assert channel.refit is None and channel.distill.gradual_start == 0.2
        assert 0 < channel.distill.gradual_epochs < channel.distill.epochs == recipe.distill.epochs
        assert channel.dream == recipe.dream
    assert get_preset("default", "channel").distill.gradual_epochs == 25
    assert RecoveryConfig("t", granularity="channel").recipe == get_preset("default", "channel")
    assert RecoveryConfig("t").recipe == Recipe(), "weights: the default recipe, in one cut"
    with pytest.raises(ValueError, match="granularity must be one of"):
        get_preset("default", "filter")


@pytest.mark.slow
def test_dreams_can_be_reused(teacher_checkpoint, image_root):
    first = run_recovery(tiny_config(teacher_checkpoint, image_root, baselines=()))
    events = list(recover(tiny_config(teacher_checkpoint, image_root, baselines=()), first.dreams))
    assert not any(isinstance(e, ImagesReady) for e in events)
    result = events[-1].result
    assert result.dreams is first.dreams and result.timings["dream"] == first.dreams.seconds


@pytest.mark.slow
def test_reused_dreams_report_how_they_were_made(teacher_checkpoint, image_root, tmp_path):
    """report.json of a run on saved dreams names the file, its hash and the dreams' own settings, not
    the recipe's current dream settings."""
    first = run_recovery(tiny_config(teacher_checkpoint, image_root, baselines=()))
    saved = first.dreams.save(tmp_path / "dreams.pt")
    other = replace(TINY, dream=replace(TINY.dream, steps=7, num_images=40))
    config = replace(tiny_config(teacher_checkpoint, image_root, baselines=()), recipe=other)
    result = run_recovery(config, dreams=DreamSet.load(saved))
    report = result.report()
    assert report["dreams"]["made"] == "loaded"
    assert report["dreams"]["file"] == str(saved) and report["dreams"]["sha256"] == file_sha256(saved)
    assert report["dreams"]["settings"]["steps"] == 2 and report["dreams"]["settings"]["num_images"] == 20
    assert report["settings"]["recipe"]["dream"]["steps"] == 7, "the current flags stay under settings"
    write_outputs(result, tmp_path)  # resumed into the folder the dreams came from: dreams.pt is written again
    written = json.loads((tmp_path / "report.json").read_text())["dreams"]
    assert written["saved_sha256"] == file_sha256(tmp_path / "dreams.pt"), "the report names the file beside it"


def test_with_overrides_switches_the_refit_on_and_off():
    assert PRESETS["default"].refit is None and PRESETS["quick"].refit is not None
    on = with_overrides(PRESETS["default"], use_refit=True, refit={"damping": 0.1})
    assert on.refit == RefitConfig(damping=0.1) and on.distill == PRESETS["default"].distill
    assert with_overrides(PRESETS["quick"], use_refit=False).refit is None
    assert with_overrides(PRESETS["quick"], {"steps": 5}).refit == PRESETS["quick"].refit
    with pytest.raises(ValueError, match="does not refit"):
        with_overrides(PRESETS["default"], refit={"damping": 0.1})


def test_fewer_epochs_keep_the_share_of_them_pruned_gradually():
    best = PRESETS["best"].distill
    assert best.gradual_epochs and best.gradual_epochs < best.epochs, "best prunes gradually, then fine-tunes"
    shorter = with_overrides(PRESETS["best"], distill={"epochs": best.epochs // 2}).distill
    assert shorter.gradual_epochs == round(best.gradual_epochs / 2)
    assert with_overrides(PRESETS["best"], distill={"epochs": 6, "gradual_epochs": 0}).distill.gradual_epochs == 0
    assert with_overrides(PRESETS["default"], distill={"epochs": 6}).distill.gradual_epochs == 0


@pytest.mark.parametrize("seed", [-1, 2**63 - 1, 2**64, 1.5, True])
def test_bad_seed_is_refused_up_front(seed):
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to"):
        RecoveryConfig(teacher="akamaster/resnet20", seed=seed)


@pytest.mark.slow
def test_paths_are_accepted_for_teacher_and_data(teacher_checkpoint, image_root):
    config = replace(
        tiny_config(teacher_checkpoint, image_root, baselines=()), teacher=teacher_checkpoint, data=image_root
    )
    assert config.teacher == str(teacher_checkpoint) and config.data == str(image_root)
    assert run_recovery(config).report()["teacher"] == str(teacher_checkpoint)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs round up
        ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
        ({}, None),  # no cgroup at all
    ],
)
def test_usable_cpus_follow_the_container_quota(tmp_path, files, expected):
    from dfkd_core.device import usable_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cpus = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (min(cpus, expected) if expected else cpus)
