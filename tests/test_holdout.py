"""The run's data-free check of itself: held-out dreams, the guard that keeps the best epoch by them, and the
learning rate chosen on them."""

import copy

import pytest
import torch
from torch import nn

from dfkd_core import DistillConfig, DreamConfig, DreamSet, Notice, distill, dream, prune_model
from dfkd_core.distill import LR_FIRST_PROBE, LR_MAX_PROBES, next_probe, pick_lr
from dfkd_core.holdout import VIEWS_PER_DREAM, HoldoutAgreement
from dfkd_core.zoo import CIFAR10, CIFAR10_CLASSES, Teacher

TRAIN = DistillConfig(epochs=3, batch_size=16, lr=0.05)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_dreams_come_with_held_out_ones_made_apart_and_saved_with_them(teacher, tmp_path):
    config = DreamConfig(num_images=20, batch_size=20, steps=2, holdout=10)
    dreams = dream(teacher, config, seed=3)
    assert len(dreams) == 20 and dreams.holdout is not None and dreams.holdout.shape == (10, 3, 32, 32)
    assert not any(torch.equal(h, d) for h in dreams.holdout for d in dreams.images), "held-out dreams are new ones"
    again = dream(teacher, config, seed=3)
    assert torch.equal(again.holdout, dreams.holdout) and torch.equal(again.images, dreams.images), "seeded"
    loaded = DreamSet.load(dreams.save(tmp_path / "dreams.pt"))
    assert torch.allclose(loaded.holdout, dreams.holdout, atol=1 / 255)
    assert dream(teacher, DreamConfig(num_images=20, batch_size=20, steps=2, holdout=0)).holdout is None
    with pytest.raises(ValueError, match="holdout must be a whole number"):
        DreamConfig(holdout=-1)


def test_held_out_dreams_never_enter_training(teacher):
    """Every input the student trains on comes from the transfer set; the held-out dreams (one sentinel value
    that no transfer image holds) only ever reach the student in eval mode, to be scored."""
    held = torch.full((8, 3, 32, 32), 0.777)
    sentinel = teacher.normalization.normalize(held)[0, :, 0, 0]
    student = prune_model(teacher.model, 0.5)
    seen = {"train": 0, "eval": 0}

    def watch(module, inputs):
        has_sentinel = bool((inputs[0][:, :, 5:-5, 5:-5] == sentinel[None, :, None, None]).all(1).any())
        if module.training:
            seen["train"] += 1
            assert not has_sentinel, "a held-out dream was trained on"
        elif has_sentinel:
            seen["eval"] += 1

    student.register_forward_pre_hook(watch)
    config = DistillConfig(epochs=2, batch_size=16)  # lr "auto": the probes train on copies, the same rule holds
    result = distill(student, teacher.model, images(32, 0), teacher.normalization, config, holdout=held)
    assert seen["train"] > 0 and seen["eval"] >= 3, "scored at the start, after each probe and after both epochs"
    assert [e for e, _ in result.holdout_agreement] == [0, 1, 2]


def test_the_guard_returns_the_start_when_training_only_makes_things_worse(teacher):
    student = prune_model(teacher.model, 0.3)
    start = copy.deepcopy(student.state_dict())
    notices = []
    result = distill(
        student,
        teacher.model,
        images(32, 0),
        teacher.normalization,
        DistillConfig(epochs=3, batch_size=16, lr=50.0),  # a step that throws the student far from its teacher
        holdout=images(16, 1),
        callback=lambda e: notices.append(e.message) if isinstance(e, Notice) else None,
    )
    assert result.kept_epoch == 0
    kept = result.student.state_dict()
    assert all(torch.equal(kept[name], value) for name, value in start.items()), "the start, exactly"
    assert any("did not beat the start" in message for message in notices)
    score = HoldoutAgreement(teacher.model, images(16, 1), teacher.normalization)
    start_agreement = result.holdout_agreement[0][1]
    assert score(result.student) == start_agreement
    assert all(later < start_agreement for _, later in result.holdout_agreement[1:]), "(it may stop early, diverged)"


def test_the_guard_keeps_the_best_epoch_and_a_good_run_its_last(teacher):
    student = prune_model(teacher.model, 0.7)
    result = distill(student, teacher.model, images(48, 0), teacher.normalization, TRAIN, holdout=images(16, 1))
    top = max(agreement for _, agreement in result.holdout_agreement)
    best = max(epoch for epoch, agreement in result.holdout_agreement if agreement == top)  # ties: the later one
    assert result.kept_epoch == best
    assert (result.student is student) == (best == TRAIN.epochs), "the trained student itself when its last is best"
    without = distill(prune_model(teacher.model, 0.7), teacher.model, images(48, 0), teacher.normalization, TRAIN)
    assert without.kept_epoch is None and not without.holdout_agreement, (
        "no held-out dreams: nothing judged, the last kept"
    )


def colored(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is their colour (a hue per class, a little noise): a task a tiny network masters."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_class)
    hue = torch.stack([(labels % 3) / 2, (labels // 3 % 3) / 2, (labels >= 5).float()], 1)[:, :, None, None]
    return (0.7 * hue + 0.3 * torch.rand(len(labels), 3, 32, 32, generator=generator)).clamp(0, 1), labels


@pytest.fixture(scope="module")
def colour_teacher() -> Teacher:
    return train_colour_teacher()


def train_colour_teacher() -> Teacher:
    """A three-convolution network with BatchNorm, trained to tell the colours apart (a few seconds)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((3, 16, 1), (16, 32, 2), (32, 32, 2)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    images, labels = colored(20, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):
        batch = torch.randperm(len(images))[:64]
        loss = nn.functional.cross_entropy(model(CIFAR10.normalize(images[batch])), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held, truth = colored(6, 5)
    assert (model.eval()(CIFAR10.normalize(held)).argmax(1) == truth).all(), "the teacher knows its colours"
    return Teacher(model, "colours", CIFAR10, CIFAR10_CLASSES, "trained here")


def _scaled(teacher: Teacher, factor: float) -> Teacher:
    """The same function with every BatchNorm-followed convolution's weights (and its BatchNorm's running
    statistics and epsilon) ``factor`` times larger: BatchNorm makes the network blind to the scale, not its
    gradient steps."""
    model = copy.deepcopy(teacher.model)
    modules = list(model.modules())
    with torch.no_grad():
        for conv, bn in zip(modules, modules[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                conv.weight.mul_(factor)
                bn.running_mean.mul_(factor)
                bn.running_var.mul_(factor**2)
                bn.eps *= factor**2
    return Teacher(model, teacher.arch, teacher.normalization, teacher.classes, f"x{factor}")


def test_auto_lr_takes_a_smaller_rate_for_small_weights_than_for_the_same_network_scaled_up(colour_teacher):
    """A convolution followed by BatchNorm moves by about lr / |w|^2 per step: the same network with small weights
    needs a smaller rate. No table of architectures can know that; the probes on held-out dreams do."""
    transfer, held = colored(12, 1)[0], colored(6, 5)[0]
    chosen = {}
    for factor in (0.1, 10.0):
        scaled = _scaled(colour_teacher, factor)
        x = scaled.normalization.normalize(held)
        assert torch.allclose(scaled.model(x), colour_teacher.model(x), atol=1e-4), "the same function"
        student = prune_model(scaled.model, 0.6, scope="layerwise")  # the same weights go at every scale
        config = DistillConfig(epochs=1, batch_size=16)
        result = distill(student, scaled.model, transfer, scaled.normalization, config, holdout=held)
        assert len(result.lr_probes) >= 2 and result.lr_probes[0][0] == LR_FIRST_PROBE
        assert result.lr == pick_lr(result.lr_probes, VIEWS_PER_DREAM * len(held))[0]
        chosen[factor] = result.lr
    assert chosen[0.1] < chosen[10.0]


def test_the_rate_is_the_smallest_within_one_standard_error_of_the_best():
    probes = [(0.1, 50.4), (0.0316, 42.6), (0.316, 50.8), (1.0, 16.8)]
    assert pick_lr(probes, 256) == (0.1, pytest.approx(100 * (0.508 * 0.492 / 256) ** 0.5)), "0.4 points: noise"
    assert pick_lr(probes, 1_000_000)[0] == 0.316, "with many views the lead is real"
    assert pick_lr([(0.1, 55.5), (0.0316, 43.0), (0.316, 47.3)], 256)[0] == 0.1
    assert pick_lr([(0.1, 100.0), (0.0316, 100.0)], 10)[0] == 0.0316, "a tie at the top goes to the smaller rate"


def _walk(agreement_at: dict[float, float]) -> list[float]:
    """The rates :func:`next_probe` tries when each rate scores ``agreement_at`` (rounded to 4 digits)."""
    tried: list[tuple[float, float]] = []
    while (lr := next_probe(tried)) is not None:
        tried.append((lr, agreement_at[round(lr, 4)]))
    return [round(lr, 4) for lr, _ in tried]


def test_the_probes_walk_towards_the_higher_agreement_and_stop_at_the_first_fall():
    assert _walk({0.1: 55.0, 0.0316: 43.0, 0.3162: 47.0}) == [0.1, 0.0316, 0.3162], "up from 0.1, one past the best"
    assert _walk({0.1: 63.0, 0.0316: 81.0, 0.01: 80.0}) == [0.1, 0.0316, 0.01], "down, one step past the best"
    assert _walk({0.1: 50.0, 0.0316: 50.0, 0.01: 49.0}) == [0.1, 0.0316, 0.01], "a tie goes down: the safer side"
    rising = {0.1: 10.0, 0.0316: 5.0, 0.3162: 20.0, 1.0: 30.0, 3.1623: 40.0}
    assert _walk(rising) == [0.1, 0.0316, 0.3162, 1.0, 3.1623], "at most LR_MAX_PROBES"
    assert len(_walk(rising)) == LR_MAX_PROBES


def test_auto_lr_needs_held_out_dreams(teacher):
    with pytest.raises(ValueError, match="held-out dreams"):
        distill(prune_model(teacher.model, 0.5), teacher.model, images(16, 0), teacher.normalization, DistillConfig())
