"""Channel pruning: slimmer networks of every family that still answer, load back, and can be recovered."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from dfkd_core import (
    DistillConfig,
    GradualPruning,
    Progress,
    channels,
    create_model,
    distill,
    load_checkpoint,
    prune_model,
    refit,
    save_checkpoint,
)
from dfkd_core.channels import KEPT, count_macs, kept_channels, prune_channels
from dfkd_core.distill import _shared_bn_names
from dfkd_core.evaluate import measure_latency, measure_size
from dfkd_core.prune import measured_sparsity, sparsity_report
from dfkd_core.zoo import CIFAR10, CIFAR10_CLASSES, Teacher

FAMILIES = ["akamaster_resnet20", "resnet20", "mobilenetv2_x0_5", "vgg11_bn"]


def with_statistics(arch: str, seed: int = 0) -> nn.Module:
    """A randomly initialized network whose BatchNorm layers hold distinct running statistics and scales."""
    torch.manual_seed(seed)
    model = create_model(arch).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("arch", FAMILIES)
def test_channel_pruning_removes_the_macs_asked_for_and_the_network_still_answers(arch):
    dense = with_statistics(arch)
    slim = prune_channels(dense, 0.5)
    x = torch.randn(2, 3, 32, 32)
    assert slim(x).shape == (2, 10), "the classes are never pruned"
    removed = 1 - count_macs(slim) / count_macs(dense)
    assert removed == pytest.approx(0.5, abs=0.03)
    assert sum(p.numel() for p in slim.parameters()) < 0.8 * sum(p.numel() for p in dense.parameters())
    untouched = with_statistics(arch).state_dict()
    assert all(torch.equal(v, untouched[k]) for k, v in dense.state_dict().items()), "the input model is left as it was"
    kept = kept_channels(slim)
    assert kept, "the layers that lost channels say which they kept"
    layers = dict(slim.named_modules())
    teacher_layers = dict(dense.named_modules())
    for name, indices in kept.items():
        assert len(indices) == layers[name].weight.shape[0] and bool((indices.diff() > 0).all())
        if isinstance(layers[name], nn.BatchNorm2d):  # the kept channels are the teacher's, statistics and all
            assert torch.equal(layers[name].running_mean, teacher_layers[name].running_mean[indices])


def test_option_a_resnets_lose_channels_only_inside_their_blocks():
    """akamaster's shortcuts zero-pad the identity to more channels, which a dependency graph cannot follow:
    the residual stream keeps its width, each block's inner width shrinks."""
    dense = with_statistics("akamaster_resnet20")
    slim = prune_channels(dense, 0.4)
    assert set(kept_channels(slim)) == {
        f"layer{s}.{b}.{part}" for s in (1, 2, 3) for b in range(3) for part in ("conv1", "bn1")
    }
    assert slim.conv1.out_channels == 16 and slim.linear.in_features == 64
    with pytest.raises(ValueError, match=r"can remove at most \d+% of this model's MACs"):
        prune_channels(dense, 0.97)


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_slim_student_saves_and_loads_back_with_weights_only(arch, tmp_path):
    dense = with_statistics(arch)
    teacher = Teacher(dense, arch, CIFAR10, CIFAR10_CLASSES, "memory")
    slim = prune_channels(dense, 0.5).eval()
    path = save_checkpoint(tmp_path / "student.pt", slim, teacher)
    loaded = load_checkpoint(path)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded.model(x), slim(x))
    assert count_macs(loaded.model) == count_macs(slim)
    record = torch.load(path, weights_only=True)
    assert record["channels"] and all(isinstance(n, int) for n in record["channels"].values())
    dense_record = torch.load(save_checkpoint(tmp_path / "dense.pt", dense, teacher), weights_only=True)
    assert dense_record["channels"] is None


def test_a_checkpoint_whose_widths_disagree_with_its_weights_is_refused(tmp_path):
    dense = with_statistics("resnet20")
    teacher = Teacher(dense, "resnet20", CIFAR10, CIFAR10_CLASSES, "memory")
    path = save_checkpoint(tmp_path / "student.pt", prune_channels(dense, 0.5), teacher)
    record = torch.load(path, weights_only=True)
    name = next(iter(record["channels"]))
    record["channels"][name] += 1
    torch.save(record, path)
    with pytest.raises(ValueError, match="recorded channel widths disagree with its weights"):
        load_checkpoint(path)
    record["channels"][name] = 10_000
    torch.save(record, path)
    with pytest.raises(ValueError, match="widths that do not fit its architecture"):
        load_checkpoint(path)


class HardCodedWidth(nn.Module):
    """A network whose forward pass assumes its convolution has exactly 8 channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.view(x.shape[0], 8, -1).mean(-1))


def test_a_model_whose_channels_cannot_be_followed_gets_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="cannot follow how the channels of HardCodedWidth connect") as err:
        prune_channels(HardCodedWidth().eval(), 0.5)
    assert "hard-coded channel count" in str(err.value) and "granularity 'weight'" in str(err.value)
    with pytest.raises(ValueError, match="found no channel of Sequential it can remove"):  # only a classifier
        prune_channels(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval(), 0.5)

    # Without its option-A handling, a dependency graph merges the padded shortcuts' channels: the pruned
    # network no longer runs, and that is reported as such, never returned.
    monkeypatch.setattr(channels, "_ignored_layers", lambda model: [channels._classifier(model)])
    with pytest.raises(ValueError, match="cannot follow how the channels of AkamasterResNet connect") as err:
        prune_channels(with_statistics("akamaster_resnet20"), 0.5)
    assert "shapes cannot be multiplied" in str(err.value)


def test_weight_masks_must_be_folded_in_before_channels_go():
    with pytest.raises(ValueError, match="make_permanent"):
        prune_channels(prune_model(create_model("resnet20"), 0.5), 0.5)


def test_prune_model_dispatches_on_granularity():
    dense = with_statistics("resnet20")
    slim = prune_model(dense, 0.5, granularity="channel")
    assert kept_channels(slim) and not any(hasattr(m, "weight_mask") for m in slim.modules())
    report = sparsity_report(slim, dense=dense)
    assert [r.total for r in report] == [r.total for r in sparsity_report(dense)], "counted against the dense layers"
    assert all(0 <= r.removed < r.total for r in report) and any(r.removed for r in report)
    assert 0.3 < measured_sparsity(slim, dense=dense) < 0.8, "weights gone with their channels count as removed"
    with pytest.raises(ValueError, match="granularity must be one of 'weight', 'channel'"):
        prune_model(dense, 0.5, granularity="filter")


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2_x0_5"])
def test_distillation_matches_each_kept_channel_with_its_teacher_channel(arch):
    teacher = with_statistics(arch)
    student = prune_channels(teacher, 0.5)
    pairs = _shared_bn_names(student, teacher)
    assert any(kept is not None for kept in pairs.values()) and set(pairs) == {
        n for n, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    images = torch.rand(16, 3, 32, 32)
    result = distill(student, teacher, images, CIFAR10, DistillConfig(lr=0.1, epochs=1, batch_size=8))
    assert torch.isfinite(torch.tensor(result.final_loss))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["akamaster_resnet20", "mobilenetv2_x0_5"])
def test_gradual_channel_pruning_shrinks_the_student_each_epoch_and_trains_what_is_left(arch):
    teacher = with_statistics(arch)
    dense = count_macs(teacher)
    schedule = GradualPruning(0.5, 0.2, epochs=2, granularity="channel", dense_macs=dense)
    student = prune_channels(teacher, schedule.first)
    stale = []  # tensors the optimizer held that the student no longer has, and dropout layers left on

    def check(optimizer, args, kwargs):
        alive = {id(p) for p in student.parameters()}
        stale.extend(p.shape for p in optimizer.param_groups[0]["params"] if id(p) not in alive)
        stale.extend(m for m in student.modules() if isinstance(m, nn.Dropout) and m.training)

    events = []
    config = DistillConfig(epochs=3, batch_size=16, lr=0.05, gradual_epochs=2)  # feature term on: channels re-paired
    handle = register_optimizer_step_pre_hook(check)
    try:
        distill(student, teacher, torch.rand(32, 3, 32, 32), CIFAR10, config, gradual=schedule, callback=events.append)
    finally:
        handle.remove()
    assert not stale, "the optimizer steps the student's new tensors, and its dropout stays off after each cut"
    shown = [e.metrics["sparsity"] for e in events if isinstance(e, Progress) and e.step % 2 == 1]
    assert shown == pytest.approx([0.2, 0.2 + 0.3 * 7 / 8, 0.5], abs=0.03), "MACs removed at each epoch's start"
    assert 1 - count_macs(student) / dense == pytest.approx(0.5, abs=0.03)
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert set(_shared_bn_names(student, teacher)) == {
        n for n, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)
    }, "every layer still knows its teacher channels"
    with pytest.raises(ValueError, match="dense_macs"):
        GradualPruning(0.5, 0.2, epochs=2, granularity="channel")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["akamaster_resnet20", "mobilenetv2_x0_5"])
def test_the_refit_pulls_a_slim_student_towards_its_teacher(arch):
    """Depthwise convolutions included: each refit layer answers like the teacher's channels it kept."""
    teacher = with_statistics(arch)
    student = prune_channels(teacher, 0.4)
    images = torch.rand(64, 3, 32, 32)
    x = CIFAR10.normalize(images)

    def gap() -> float:
        with torch.no_grad():
            return float(F.mse_loss(student(x), teacher(x)))

    before = gap()
    refit(student, teacher, images, CIFAR10)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert gap() < before


def test_size_and_latency_are_measured_side_by_side():
    dense = with_statistics("resnet20")
    slim = prune_channels(dense, 0.5)
    sizes = {name: measure_size(m) for name, m in (("teacher", dense), ("student", slim))}
    assert sizes["student"].macs < 0.6 * sizes["teacher"].macs
    assert sizes["student"].bytes < 0.7 * sizes["teacher"].bytes
    assert sizes["teacher"].params == sum(p.numel() for p in dense.parameters())
    masked = measure_size(prune_model(dense, 0.5))
    assert masked.macs == sizes["teacher"].macs and masked.nonzero_params < 0.6 * masked.params
    slim.train()
    before = {k: v.clone() for k, v in slim.state_dict().items()}
    latency = measure_latency({"teacher": dense, "student": slim}, batch_sizes=(1, 2), repeats=2)
    assert set(latency) == {"teacher", "student"} and all(set(v) == {1, 2} for v in latency.values())
    assert all(ms > 0 for v in latency.values() for ms in v.values())
    assert slim.training and all(torch.equal(v, before[k]) for k, v in slim.state_dict().items()), "timed on copies"


@pytest.mark.parametrize("scope", ["layerwise", "lamp"])
def test_every_scope_reaches_the_target(scope):
    dense = with_statistics("resnet20")
    slim = prune_channels(dense, 0.4, scope=scope)
    assert 1 - count_macs(slim) / count_macs(dense) == pytest.approx(0.4, abs=0.03)
    with pytest.raises(ValueError, match="pruning scope must be one of"):
        prune_channels(dense, 0.4, scope="random")


def test_kept_channels_pair_every_student_channel_with_its_teacher_channel():
    """In an option-A ResNet the residual stream keeps its width, so a block's first BatchNorm sees the teacher's
    very input: its outputs are exactly the teacher's outputs at the kept indices, also after pruning twice."""
    teacher = with_statistics("akamaster_resnet20")
    once = prune_channels(teacher, 0.3)
    twice = prune_channels(once, 0.3)
    x = torch.randn(4, 3, 32, 32)

    def block_input_bn(model: nn.Module) -> torch.Tensor:
        seen = []
        handle = model.layer1[0].bn1.register_forward_hook(lambda m, i, o: seen.append(o))
        with torch.no_grad():
            model(x)
        handle.remove()
        return seen[0]

    reference = block_input_bn(teacher)
    for student in (once, twice):
        kept = student.layer1[0].bn1.kept_channels
        assert torch.allclose(block_input_bn(student), reference[:, kept], atol=1e-6)
    assert len(twice.layer1[0].bn1.kept_channels) < len(once.layer1[0].bn1.kept_channels)


def test_a_slim_student_loaded_from_a_file_cannot_be_paired_silently(tmp_path):
    dense = with_statistics("resnet20")
    teacher = Teacher(dense, "resnet20", CIFAR10, CIFAR10_CLASSES, "memory")
    loaded = load_checkpoint(save_checkpoint(tmp_path / "student.pt", prune_channels(dense, 0.5), teacher)).model
    assert not kept_channels(loaded), "a file records widths, not which teacher channels were kept"
    images = torch.rand(8, 3, 32, 32)
    with pytest.raises(ValueError, match="lost channels but does not say which teacher channels it kept"):
        distill(loaded, dense, images, CIFAR10, DistillConfig(lr=0.1, epochs=1, batch_size=8))
    with pytest.raises(ValueError, match="do not say which teacher channels they kept"):
        refit(loaded, dense, images, CIFAR10)
    distill(
        loaded, dense, images, CIFAR10, DistillConfig(lr=0.1, epochs=1, batch_size=8, feature_weight=0.0)
    )  # logits only


@pytest.mark.slow
def test_the_refit_leaves_a_channel_that_never_fires_as_it_was():
    """A depthwise channel whose input is always zero has nothing to fit: its weights stay, finite."""
    teacher = with_statistics("mobilenetv2_x0_5")
    student = prune_channels(teacher, 0.3)
    modules = list(student.modules())
    at = next(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d) and m.groups > 1 and hasattr(m, KEPT))
    layer = modules[at]
    feeding = [m for m in modules[:at] if isinstance(m, nn.BatchNorm2d)][-1]  # then ReLU6, then this convolution
    with torch.no_grad():  # silence the first channel feeding the depthwise convolution: after ReLU6 it is zero
        feeding.weight[0], feeding.bias[0] = 0.0, -1.0
    start = layer.weight[0].clone()
    refit(student, teacher, torch.rand(16, 3, 32, 32), CIFAR10)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert torch.equal(layer.weight[0], start)
