import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from dfkd_core import cli, evaluate, load_checkpoint, load_eval_set
from dfkd_core.cli import main
from dfkd_core.distill import DistillConfig
from dfkd_core.dream import DreamConfig, DreamSet
from dfkd_core.pipeline import Recipe, get_preset
from dfkd_core.refit import RefitConfig
from dfkd_core.zoo import CIFAR10_CLASSES

TINY_FLAGS = [
    "--sparsity",
    "0.5",
    "--set",
    "dream.num_images=20",
    "--set",
    "dream.batch_size=20",
    "--set",
    "dream.steps=2",
    "--set",
    "dream.holdout=10",
    "--set",
    "distill.epochs=1",
    "--set",
    "distill.batch_size=10",
    "--curve-per-class",
    "2",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.mark.slow
def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "dfkd_core.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("dfkd ")


def test_teachers_lists_the_registry(capsys):
    assert main(["teachers"]) == 0
    out = capsys.readouterr().out
    assert "akamaster/resnet20" in out and "chenyaofo/cifar10_mobilenetv2_x1_4" in out
    assert main(["teachers", "akamaster/*", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [f"akamaster/resnet{d}" for d in (20, 32, 44, 56)]
    assert rows[0]["normalization"]["mean"][0] == 0.485


def test_evaluate_json(teacher_checkpoint, image_root, capsys):
    assert (
        main(["evaluate", "--teacher", str(teacher_checkpoint), "--data", str(image_root), "--json", "--device", "cpu"])
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    teacher = load_checkpoint(teacher_checkpoint)
    expected = evaluate(teacher.model, load_eval_set(str(image_root)), teacher.normalization)
    assert record["num_images"] == 40 and record["accuracy"] == pytest.approx(expected)
    assert record["params"] == sum(p.numel() for p in teacher.model.parameters()) and record["macs"] > 40e6


@pytest.mark.slow
def test_recover_writes_every_output(teacher_checkpoint, image_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "recover",
                "--teacher",
                str(teacher_checkpoint),
                "--data",
                str(image_root),
                "--out",
                str(out),
                "--baselines",
                "noise,real",
                "--set",
                "refit=on",
                *TINY_FLAGS,
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "dreams.png",
        "dreams.pt",
        "curves.png",
        "sparsity.png",
        "student.pt",
    }
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["recipe"]["dream"]["steps"] == 2
    assert report["settings"]["recipe"]["distill"]["epochs"] == 1
    assert report["baselines"]["real"] is not None
    assert report["settings"]["recipe"]["refit"]["num_images"] == 1024
    assert report["refit_acc"] is not None
    assert report["distill"]["lr_from"] == "probes" and report["distill"]["lr"] in {
        probe["lr"] for probe in report["distill"]["lr_probes"]
    }
    assert report["distill"]["holdout_dreams"] == 10 and report["distill"]["holdout_agreement"]["epochs"] == [0, 1]
    printed = capsys.readouterr().out
    assert "recovered" in printed and "probes" in printed and "held-out dreams" in printed
    from dfkd_core import load_checkpoint
    from dfkd_core.prune import measured_sparsity

    student = load_checkpoint(out / "student.pt")  # no --arch/--normalization needed
    assert student.arch == "resnet20" and measured_sparsity(student.model) == pytest.approx(0.5, abs=1e-3)
    assert not list(tmp_path.glob(".run.*")), "no scratch folder left behind"


@pytest.mark.slow
def test_recover_by_channels_writes_a_slim_student_that_evaluate_scores(
    teacher_checkpoint, image_root, tmp_path, capsys
):
    out = tmp_path / "slim"
    flags = ["--teacher", str(teacher_checkpoint), "--data", str(image_root)]
    assert main(["recover", *flags, "--out", str(out), "--granularity", "channel", *TINY_FLAGS]) == 0
    summary = capsys.readouterr().out
    assert "of the MACs removed (whole channels)" in summary and "CPU speed-up" in summary
    report = json.loads((out / "report.json").read_text())
    assert report["sparsity"]["granularity"] == "channel" and report["sparsity"]["of"] == "MACs"
    distill = report["settings"]["recipe"]["distill"]
    assert distill["gradual_start"] == 0.2 and 0 < distill["gradual_epochs"] <= distill["epochs"], "channels: gradually"
    assert report["size"]["recovered"]["params"] < report["size"]["teacher"]["params"]
    assert report["latency_ms"]["device"] == "cpu" and set(report["latency_ms"]["speedup"]) == {"1", "4"}
    assert main(["evaluate", "--teacher", str(out / "student.pt"), "--data", str(image_root), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["accuracy"] == report["recovered_acc"], "the saved student is the recovered one, shapes and all"
    assert (scored["params"], scored["macs"]) == (
        report["size"]["recovered"]["params"],
        report["size"]["recovered"]["macs"],
    )
    with pytest.raises(SystemExit):  # argparse names the allowed values
        main(["recover", *flags, "--out", str(out), "--granularity", "filters"])
    assert "invalid choice: 'filters'" in capsys.readouterr().err


def _recipe(capsys, *args):
    assert main(["recipe", *args]) == 0
    return capsys.readouterr().out


def _recipe_json(capsys, *args):
    return json.loads(_recipe(capsys, *args, "--json"))


def test_recover_help_fits_one_screen_and_points_to_dfkd_recipe(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["recover", "--help"])
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 60, text
    assert "--set SECTION.FIELD=VALUE" in text and "dfkd recipe" in text
    assert "--dream-" not in text and "--distill-" not in text and "--no-refit" not in text


def test_recipe_lists_every_field_with_its_value_and_help(capsys):
    text = _recipe(capsys)
    assert "dream.r_bn = 0.05" in text and "# weight of the BatchNorm-statistics loss" in text
    assert "distill.temperature = 4.0" in text and "dream.flip = on" in text
    assert "refit = off" in text and "refit.damping = 0.01" in text, "the refit fields --set refit=on would use"
    recipe = get_preset("default")
    for section in ("dream", "distill"):
        for f in dataclasses.fields(getattr(recipe, section)):
            assert f"\n{section}.{f.name} = " in text
    assert "refit = on" in _recipe(capsys, "--preset", "quick")


@pytest.mark.parametrize("preset", ["quick", "default", "best"])
@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_recipe_json_round_trips_to_the_preset(capsys, preset, granularity):
    shown = _recipe_json(capsys, "--preset", preset, "--granularity", granularity)
    recipe = get_preset(preset, granularity)
    assert shown == json.loads(json.dumps(dataclasses.asdict(recipe)))
    refit = RefitConfig(**shown["refit"]) if shown["refit"] is not None else None
    rebuilt = Recipe(DreamConfig(**shown["dream"]), DistillConfig(**shown["distill"]), refit)
    assert rebuilt == recipe


def test_set_changes_fields_parsed_to_their_type(capsys):
    shown = _recipe_json(
        capsys,
        *("--set", "dream.steps=100", "--set", "distill.lr=0.03", "--set", "dream.num-images=64"),
        *("--set", "distill.bn_mode=frozen", "--set", "dream.tv_l2=1e-4"),
    )
    assert shown["dream"]["steps"] == 100 and shown["dream"]["num_images"] == 64 and shown["dream"]["tv_l2"] == 1e-4
    assert shown["distill"]["lr"] == 0.03 and shown["distill"]["bn_mode"] == "frozen"
    assert _recipe_json(capsys, "--set", "distill.lr=auto")["distill"]["lr"] == "auto"
    last_wins = _recipe_json(capsys, "--set", "dream.steps=10", "--set", "dream.steps=20")
    assert last_wins["dream"]["steps"] == 20


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("on", True),
        ("off", False),
        ("True", True),
        ("false", False),
        ("yes", True),
        ("NO", False),
        ("1", True),
        ("0", False),
    ],
)
def test_set_reads_switches(capsys, text, value):
    shown = _recipe_json(capsys, "--set", f"dream.flip={text}", "--set", f"distill.cutmix={text}")
    assert shown["dream"]["flip"] is value and shown["distill"]["cutmix"] is value


def test_set_switches_the_refit_on_and_off(capsys):
    assert _recipe_json(capsys)["refit"] is None
    on = _recipe_json(capsys, "--set", "refit=on", "--set", "refit.damping=0.5")
    assert on["refit"] == {**dataclasses.asdict(RefitConfig()), "damping": 0.5}
    assert _recipe_json(capsys, "--preset", "quick", "--set", "refit=off")["refit"] is None
    assert _recipe_json(capsys, "--set", "refit=on", "--set", "refit=off")["refit"] is None, "last wins"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("dream.step=100", ["unknown field 'step' of dream", "did you mean 'steps'?", "num_images"]),
        ("dreams.steps=100", ["unknown section 'dreams'", "did you mean 'dream'?", "dream, refit, distill"]),
        ("refit.dampng=1", ["unknown field 'dampng' of refit", "did you mean 'damping'?"]),
        ("dream.steps", ["expected SECTION.FIELD=VALUE", "--set dream.steps=100"]),
        ("dream=3", ["expected SECTION.FIELD=VALUE"]),
        ("dream.steps=many", ["dream.steps: expected a whole number, got 'many'"]),
        ("dream.lr=fast", ["dream.lr: expected a number, got 'fast'"]),
        ("dream.flip=maybe", ["dream.flip: expected on or off"]),
        ("refit=perhaps", ["refit: expected on or off"]),
        ("dream.steps=0", ["dream steps must be a whole number >= 1"]),
        ("dream.steps=1000000000", ["dream steps must be at most 100000, got 1000000000"]),
        ("distill.epochs=1000000000", ["distill epochs must be at most 10000"]),
        ("distill.crop_padding=1000000000", ["distill crop_padding must be at most 16"]),
        ("distill.temperature=1e200", ["distill temperature must be at most 1000"]),
        ("distill.weight_decay=1e300", ["distill weight_decay must be at most 1"]),
        ("refit.damping=0.1", ["this recipe does not refit", "--set refit=on"]),
    ],
)
def test_set_errors_say_what_was_expected(capsys, item, expected):
    err = _bad(["recipe", "--set", item], capsys, *expected)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _bad(args, capsys, *expected):
    assert main(args) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    return err


def test_bad_inputs_exit_2_with_a_message(teacher_checkpoint, image_root, test_only_root, tmp_path, capsys):
    out = tmp_path / "never"
    base = ["recover", "--data", str(image_root), "--out", str(out), *TINY_FLAGS]
    _bad(
        ["recover", "--teacher", "akamaster/resnet21", "--data", str(image_root), "--out", str(out)],
        capsys,
        "unknown teacher",
        "akamaster/resnet20",
    )
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--sparsity", "1.0"],
        capsys,
        "sparsity must be a number in [0, 1)",
    )
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--sparsity", "-0.2"],
        capsys,
        "sparsity must be a number in [0, 1)",
    )
    _bad([*base, "--teacher", str(teacher_checkpoint), "--arch", "resnet32"], capsys, "conflicts")
    torch.save({"state_dict": torch.load(teacher_checkpoint, weights_only=True)["state_dict"]}, tmp_path / "r20.pt")
    _bad(
        [*base, "--teacher", str(tmp_path / "r20.pt"), "--arch", "resnet56", "--normalization", "cifar10"],
        capsys,
        "does not match",
        "missing: layer1.3",
    )
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    _bad(
        [*base, "--teacher", str(tmp_path / "corrupt.pt"), "--arch", "resnet20", "--normalization", "cifar10"],
        capsys,
        "cannot read checkpoint",
    )
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--normalization", "imagenette"], capsys, "unknown normalization"
    )
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    _bad(
        [
            "recover",
            "--teacher",
            str(teacher_checkpoint),
            "--data",
            str(tmp_path / "empty"),
            "--out",
            str(out),
            *TINY_FLAGS,
        ],
        capsys,
        "no images found",
    )
    late = [a if a != str(out) else str(tmp_path / "late") for a in base]  # fails after dreaming: keeps the dreams
    _bad(  # without held-out dreams nothing can be kept from a diverging run
        [*late, "--teacher", str(teacher_checkpoint), "--set", "distill.lr=1e30", "--set", "dream.holdout=0"],
        capsys,
        "distillation loss became",
        "--dreams",
    )
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--set", "dream.steps=0"],
        capsys,
        "dream steps must be a whole number >= 1",
    )
    _bad([*base, "--teacher", str(teacher_checkpoint), "--baselines", "gan"], capsys, "unknown baseline")
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--set", "refit=on", "--set", "refit.damping=0"],
        capsys,
        "damping must be a finite",
    )
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--set", "refit.damping=0.1"],
        capsys,
        "refit settings (damping) given, but this recipe does not refit",
        "--set refit=on",
    )
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--set", "refit=on", "--set", "distill.gradual_epochs=1"],
        capsys,
        "the refit fits a student pruned in one cut",
        "--set distill.gradual_epochs=0",
    )
    _bad(
        [*base, "--teacher", str(teacher_checkpoint), "--set", "distill.gradual_epochs=99"],
        capsys,
        "gradual_epochs must be in [0,",
    )
    if not torch.cuda.is_available():
        _bad([*base, "--teacher", str(teacher_checkpoint), "--device", "cuda"], capsys, "no CUDA device is available")
    assert not out.exists(), "a run that fails before dreaming leaves nothing behind"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_class_mismatch_on_evaluate(teacher_checkpoint, tmp_path, capsys):
    from .conftest import write_image_folder

    write_image_folder(tmp_path / "five", 1, classes=tuple("abcde"))
    _bad(
        ["evaluate", "--teacher", str(teacher_checkpoint), "--data", str(tmp_path / "five")],
        capsys,
        "5 classes",
        "predicts 10",
    )


def test_a_bad_out_is_refused_before_the_run(teacher_checkpoint, image_root, tmp_path, capsys, monkeypatch):
    import dfkd_core.cli as cli

    monkeypatch.setattr(cli, "recover", lambda *a, **k: pytest.fail("the run started despite a bad --out"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    base = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), *TINY_FLAGS]
    _bad([*base, "--out", str(blocker)], capsys, "exists and is not a folder")
    _bad([*base, "--out", str(blocker / "run")], capsys, "cannot be made", "is a file")
    _bad([*base, "--out", str(image_root / "test" / "runs")], capsys, "lies inside the evaluation data")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    _bad([*base, "--out", str(tmp_path / "gone")], capsys, "is a link to nothing")


def test_an_out_in_use_by_another_run_is_refused(teacher_checkpoint, image_root, tmp_path, capsys, monkeypatch):
    import os

    import dfkd_core.cli as cli
    from dfkd_core._files import LOCK_FILE, reserved

    monkeypatch.setattr(cli, "recover", lambda *a, **k: pytest.fail("the run started in a folder another run holds"))
    out = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(str(other.pid))  # another live run holds it
        base = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), *TINY_FLAGS]
        _bad([*base, "--out", str(out)], capsys, "is in use by another run", f"process {other.pid}")
    finally:
        other.kill()
        other.wait()
    with reserved(out) as held:  # its run is gone: the folder is taken over, and let go at the end
        assert (held / LOCK_FILE).read_text() == str(os.getpid())
    assert not (out / LOCK_FILE).exists()


def test_a_failed_write_keeps_the_numbers_and_exits_2(teacher_checkpoint, image_root, tmp_path, capsys, monkeypatch):
    import errno

    import dfkd_core.cli as cli

    def full_disk(result, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(cli, "write_outputs", full_disk)
    args = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), "--out", str(tmp_path / "run")]
    assert main([*args, "--baselines", "none", *TINY_FLAGS]) == 2
    captured = capsys.readouterr()
    assert "recovered" in captured.out, "the summary is printed before the files are written"
    assert "No space left on device" in captured.err and "Traceback" not in captured.err


def test_a_run_that_only_gets_worse_hands_back_its_start_and_says_so(teacher_checkpoint, image_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), "--out", str(out)]
    assert main([*args, "--baselines", "none", *TINY_FLAGS, "--set", "distill.lr=1e30"]) == 0
    assert "recovery did NOT beat the start" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["distill"]["kept_epoch"] == 0 and report["distill"]["beat_start"] is False
    assert report["recovered_acc"] == report["pruned_acc"], "the student handed back is the pruned one"


@pytest.mark.parametrize(
    ("failure", "code", "said"),
    [
        (FloatingPointError("distillation loss became nan at epoch 1"), 2, "became nan"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
    ids=["nan", "ctrl-c"],
)
def test_a_late_failure_keeps_the_dreams_and_says_how_to_resume(
    teacher_checkpoint, image_root, tmp_path, capsys, monkeypatch, failure, code, said
):
    import dfkd_core.pipeline as pipeline

    def fails(*args, **kwargs):
        raise failure
        yield

    out = tmp_path / "run"
    args = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "iter_distill", fails)
        assert main([*args, "--baselines", "none", *TINY_FLAGS]) == code
    err = capsys.readouterr().err
    assert f"add --dreams {out / 'dreams.pt'} to skip dreaming" in err and said in err
    assert [p.name for p in out.iterdir()] == ["dreams.pt"], "the dreams were saved as soon as they were made"

    assert main([*args, "--baselines", "none", "--dreams", str(out / "dreams.pt"), *TINY_FLAGS]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dreams"]["count"] == DreamSet.load(out / "dreams.pt").images.shape[0]


def test_dreams_of_the_wrong_shape_or_classes_are_refused(teacher_checkpoint, image_root, tmp_path, capsys):
    base = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), *TINY_FLAGS]
    classes = tuple(f"c{i}" for i in range(10))
    wrong = {
        "gray.pt": (DreamSet(torch.rand(4, 1, 32, 32), torch.arange(4), classes), "have shape (4, 1, 32, 32)"),
        "large.pt": (DreamSet(torch.rand(4, 3, 64, 64), torch.arange(4), classes), "dreams are (N, 3, 32, 32)"),
        "labels.pt": (DreamSet(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 12]), classes), "one label per image"),
        "others.pt": (DreamSet(torch.rand(4, 3, 32, 32), torch.arange(4), classes), "were made for classes"),
        "stranger.pt": (
            DreamSet(torch.rand(4, 3, 32, 32), torch.arange(4), CIFAR10_CLASSES, settings={"teacher_sha256": "0" * 64}),
            "were made by another teacher (sha256 000000000000...",
        ),
    }
    for name, (dreams, message) in wrong.items():
        dreams.save(tmp_path / name)
        _bad([*base, "--dreams", str(tmp_path / name), "--out", str(tmp_path / "out")], capsys, message)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_data_folder_and_out_of_memory_exit_2(
    teacher_checkpoint, image_root, tmp_path, capsys, monkeypatch
):
    base = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), *TINY_FLAGS]

    def refused(path="."):
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as patch:  # tests may run as root, for whom chmod 000 hides nothing
        patch.setattr("os.scandir", refused)
        _bad([*base, "--out", str(tmp_path / "a")], capsys, "Permission denied")

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "recover", exhausted)
    _bad([*base, "--out", str(tmp_path / "b")], capsys, "out of memory", "--set dream.batch_size=")


def test_labels_are_matched_by_class_name(teacher, teacher_checkpoint, image_root, tmp_path, capsys):
    """A checkpoint that names its classes in training order is scored by name, not by folder position;
    other names are refused with both lists; a checkpoint without names takes the sorted folders."""
    from dfkd_core import Teacher, save_checkpoint

    from .conftest import write_image_folder

    order = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])  # the same network, its outputs listed in another order
    shuffled = copy.deepcopy(teacher.model)
    with torch.no_grad():
        shuffled.fc.weight.copy_(teacher.model.fc.weight[order])
        shuffled.fc.bias.copy_(teacher.model.fc.bias[order])
    classes = tuple(teacher.classes[i] for i in order.tolist())
    named = save_checkpoint(
        tmp_path / "named.pt", shuffled, Teacher(shuffled, "resnet20", teacher.normalization, classes, "x")
    )
    evaluate_args = ["evaluate", "--data", str(image_root), "--json", "--teacher"]

    assert main([*evaluate_args, str(teacher_checkpoint)]) == 0
    expected = json.loads(capsys.readouterr().out)["accuracy"]
    assert main([*evaluate_args, str(named)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["accuracy"] == expected and "labels remapped by name" in err

    write_image_folder(tmp_path / "other" / "test", 1, classes=tuple(f"kind_{i}" for i in range(10)))
    _bad(
        ["evaluate", "--teacher", str(named), "--data", str(tmp_path / "other")],
        capsys,
        "folders (kind_0",
        "teacher (cat",
    )

    torch.save(teacher.model.state_dict(), tmp_path / "plain.pt")  # no names recorded: sorted folders, with a note
    plain = ["--arch", "resnet20", "--normalization", "cifar10"]
    assert main(["evaluate", "--teacher", str(tmp_path / "plain.pt"), *plain, "--data", str(tmp_path / "other")]) == 0
    assert "records no class names" in capsys.readouterr().err
