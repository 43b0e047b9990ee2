import re
from pathlib import Path

import pytest
import torch

from dfkd_core import Normalization, create_model, list_teachers, load_checkpoint, load_teacher, save_checkpoint
from dfkd_core.zoo import _REGISTRY, _register, get_pretrained


@pytest.mark.parametrize("teacher_id", list_teachers())
def test_every_record_is_complete_and_consistent(teacher_id):
    record = get_pretrained(teacher_id)
    assert record.id == teacher_id and "/" in teacher_id
    model = create_model(record.arch, num_classes=len(record.classes))
    assert sum(p.numel() for p in model.parameters()) == record.num_params
    assert re.search(r"-[0-9a-f]{8}\.(pt|th)$", record.url), "file name must carry the sha256 prefix"
    assert record.url.startswith("https://")
    assert 80 < record.reported_acc < 100
    assert record.license.startswith("BSD")
    assert record.family in ("ResNet", "VGG", "MobileNet")
    assert len(record.classes) == 10


def test_registry_counts_and_filters():
    assert len(list_teachers()) == 16
    assert list_teachers("akamaster/*") == [f"akamaster/resnet{d}" for d in (20, 32, 44, 56)]


def test_duplicate_registration_is_refused():
    with pytest.raises(RuntimeError, match="twice"):
        _register(_REGISTRY["akamaster/resnet20"])


def test_unknown_teacher_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown teacher .akamaster/resnet21.*Did you mean .*akamaster/resnet20"):
        load_teacher("akamaster/resnet21")


@pytest.mark.parametrize(
    ("spec", "mean0"),
    [
        ("imagenet", 0.485),
        ("cifar10", 0.4914),
        ("CIFAR10", 0.4914),
        ("0.5,0.5,0.5,0.25,0.25,0.25", 0.5),
        ({"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}, 0.1),
    ],
)
def test_normalization_parse(spec, mean0):
    assert Normalization.parse(spec).mean[0] == pytest.approx(mean0)


@pytest.mark.parametrize("spec", ["imagenette", "1,2,3", "a,b,c,d,e,f", "0,0,0,1,0,1"])
def test_normalization_parse_errors(spec):
    with pytest.raises(ValueError, match="normalization"):
        Normalization.parse(spec)


def test_normalize_roundtrip():
    norm = Normalization.parse("imagenet")
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-6)


def test_checkpoint_roundtrip_records_everything(teacher, tmp_path):
    path = save_checkpoint(tmp_path / "t.pt", teacher.model, teacher, note="x")
    loaded = load_checkpoint(path)
    assert loaded.arch == "resnet20" and loaded.normalization == teacher.normalization
    assert loaded.classes == teacher.classes
    for a, b in zip(loaded.model.state_dict().values(), teacher.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_dataparallel_prefix_and_missing_bn_counters(teacher, tmp_path):
    state = {f"module.{k}": v for k, v in teacher.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 90.0, "state_dict": state}, tmp_path / "legacy.th")
    loaded = load_checkpoint(tmp_path / "legacy.th", arch="resnet20", normalization="cifar10")
    assert torch.equal(loaded.model.fc.weight, teacher.model.fc.weight)


def test_mismatched_checkpoint_names_keys(teacher, tmp_path):
    torch.save({"state_dict": teacher.model.state_dict()}, tmp_path / "r20.pt")
    with pytest.raises(ValueError, match=r"does not match the architecture: missing: .*layer1\.3") as info:
        load_checkpoint(tmp_path / "r20.pt", arch="resnet32", normalization="cifar10")
    assert "more" in str(info.value)
    state = teacher.model.state_dict()
    state["fc.weight"] = torch.zeros(10, 32)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"wrong shape .*fc\.weight \(10, 32\) vs \(10, 64\)"):
        load_checkpoint(tmp_path / "shape.pt", arch="resnet20", normalization="cifar10")


def test_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "text.pt").write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "text.pt", arch="resnet20", normalization="cifar10")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt", arch="resnet20", normalization="cifar10")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(tmp_path / "meta.pt", arch="resnet20", normalization="cifar10")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_truncated_checkpoint(teacher_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(teacher_checkpoint.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(truncated)


def test_arch_and_normalization_required_when_unrecorded(teacher, tmp_path):
    torch.save(teacher.model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="does not record its architecture"):
        load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="does not record its input normalization"):
        load_checkpoint(tmp_path / "bare.pt", arch="resnet20")
    assert load_checkpoint(tmp_path / "bare.pt", arch="resnet20", normalization="imagenet").arch == "resnet20"


def test_conflicting_arch_flag(teacher_checkpoint):
    with pytest.raises(ValueError, match="conflicts"):
        load_checkpoint(teacher_checkpoint, arch="resnet32")


def test_num_classes_inferred_from_head(tmp_path):
    model = create_model("resnet20", num_classes=7)
    torch.save(model.state_dict(), tmp_path / "seven.pt")
    assert load_checkpoint(tmp_path / "seven.pt", arch="resnet20", normalization="cifar10").num_classes == 7


def test_masked_model_cannot_be_saved(teacher, tmp_path):
    from dfkd_core import prune_model

    with pytest.raises(ValueError, match="make_permanent"):
        save_checkpoint(tmp_path / "masked.pt", prune_model(teacher.model, 0.5), teacher)


def _fill_hub_cache(tmp_path, monkeypatch, teacher_id, state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache / Path(get_pretrained(teacher_id).url).name)


def test_registry_weights_load_from_the_hub_cache_offline(tmp_path, monkeypatch):
    """akamaster's legacy format: {'best_prec1', 'state_dict'} with module. prefixes, no BN counters."""
    source = create_model("akamaster_resnet20")
    state = {f"module.{k}": v for k, v in source.state_dict().items() if "num_batches" not in k}
    _fill_hub_cache(tmp_path, monkeypatch, "akamaster/resnet20", {"best_prec1": 91.7, "state_dict": state})
    teacher = load_teacher("akamaster/resnet20", progress=False)
    assert teacher.arch == "akamaster_resnet20" and teacher.normalization == Normalization.parse("imagenet")
    assert torch.equal(teacher.model.linear.weight, source.linear.weight)
    assert not teacher.model.training


def test_registry_file_of_the_wrong_architecture(tmp_path, monkeypatch, teacher):
    _fill_hub_cache(tmp_path, monkeypatch, "akamaster/resnet20", teacher.model.state_dict())
    with pytest.raises(ValueError, match=r"does not match the architecture: missing: linear\.weight"):
        load_teacher("akamaster/resnet20", progress=False)


def test_arch_flag_conflicting_with_registry():
    with pytest.raises(ValueError, match="is a akamaster_resnet20"):
        load_teacher("akamaster/resnet20", arch="resnet20")


@pytest.mark.parametrize("spec", ["nan,0.5,0.5,0.2,0.2,0.2", "0.5,0.5,0.5,inf,0.2,0.2", "0.5,0.5,0.5,0.2,0,0.2"])
def test_normalization_must_be_finite_and_positive(spec):
    with pytest.raises(ValueError, match="3 finite means and 3 finite positive stds"):
        Normalization.parse(spec)


def test_the_dependency_floor_loads_checkpoints_safely():
    """``weights_only=True`` executes nothing only from torch 2.6 on (CVE-2025-32434 affects 2.5.1 and older):
    every place that installs torch must ask for at least that version."""
    root = Path(__file__).resolve().parents[1]
    floors = {
        "pyproject.toml": re.search(r'"torch>=(\d+)\.(\d+)', (root / "pyproject.toml").read_text()),
        "requirements.txt": re.search(r"^torch[=>]=(\d+)\.(\d+)", (root / "requirements.txt").read_text(), re.M),
    }
    for where, found in floors.items():
        assert found and (int(found[1]), int(found[2])) >= (2, 6), f"{where} admits a torch older than 2.6"


def test_damaged_checkpoints_are_refused_at_load_naming_what_is_wrong(teacher, tmp_path):
    """A zero-byte file, class names that are not names, NaN weights and a negative BatchNorm variance: each is
    refused with a message at load, not found later in dreaming and blamed on its settings."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(empty)
    numbers = save_checkpoint(tmp_path / "numbers.pt", teacher.model, teacher)
    record = torch.load(numbers, weights_only=True)
    torch.save({**record, "classes": list(range(10))}, numbers)
    with pytest.raises(ValueError, match="classes that are not all names"):
        load_checkpoint(numbers)
    for name, damage, message in (
        ("conv1.weight", float("nan"), "conv1.weight holds NaN or infinite values"),
        ("bn1.running_var", -1.0, "bn1.running_var holds a negative variance"),
    ):
        state = {k: v.clone() for k, v in teacher.model.state_dict().items()}
        state[name].view(-1)[0] = damage
        damaged = tmp_path / f"{name}.pt"
        torch.save({**record, "state_dict": state}, damaged)
        with pytest.raises(ValueError, match=re.escape(message)):
            load_checkpoint(damaged)
