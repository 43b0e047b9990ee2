import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from dfkd_core import (
    DistillConfig,
    GradualPruning,
    MetricLogged,
    Normalization,
    Progress,
    create_model,
    distill,
    prune_model,
)
from dfkd_core.distill import augment, cutmix
from dfkd_core.prune import measured_sparsity, prunable_layers

FAST = DistillConfig(epochs=2, batch_size=16, lr=0.01)


def kl_to_teacher(student, teacher, images, normalization):
    with torch.no_grad():
        x = normalization.normalize(images)
        return float(
            F.kl_div(
                F.log_softmax(student.eval()(x), 1),
                F.log_softmax(teacher(x), 1),
                log_target=True,
                reduction="batchmean",
            )
        )


def test_pruned_weights_stay_exactly_zero(teacher):
    student = prune_model(teacher.model, 0.8)
    masks = {name: m.weight_mask.clone() for name, m in prunable_layers(student)}
    before = {name: m.weight_orig.clone() for name, m in prunable_layers(student)}
    distill(
        student,
        teacher.model,
        torch.rand(48, 3, 32, 32),
        teacher.normalization,
        DistillConfig(epochs=3, batch_size=16, lr=0.05, weight_decay=1e-3),
    )
    moved = False
    for name, m in prunable_layers(student):
        assert torch.equal(m.weight_mask, masks[name]), "masks never change"
        assert (m.weight[masks[name] == 0] == 0).all(), f"pruned weights of {name} revived"
        moved |= not torch.equal(m.weight_orig[masks[name] == 1], before[name][masks[name] == 1])
    assert moved, "the surviving weights were trained"


def test_gradual_pruning_cuts_more_at_each_epoch_and_never_revives_a_weight(teacher):
    schedule = GradualPruning(target=0.9, start=0.5, epochs=2)
    student = prune_model(teacher.model, schedule.first)
    cut: dict[str, torch.Tensor] = {}

    def remember_cuts(event):
        if isinstance(event, Progress) and event.step % 3 == 0:  # the last step of an epoch
            for name, m in prunable_layers(student):
                assert (m.weight[m.weight_mask == 0] == 0).all()
                assert not m.weight_mask[cut.get(name, torch.ones_like(m.weight_mask)) == 0].any()
                cut[name] = m.weight_mask.clone()

    events = []
    config = DistillConfig(epochs=3, batch_size=16, lr=0.05, gradual_epochs=2)
    distill(
        student,
        teacher.model,
        torch.rand(48, 3, 32, 32),
        teacher.normalization,
        config,
        gradual=schedule,
        callback=lambda e: (events.append(e), remember_cuts(e)),
    )
    shown = [e.metrics["sparsity"] for e in events if isinstance(e, Progress) and e.step % 3 == 1]
    assert shown == pytest.approx([0.5, 0.85, 0.9], abs=1e-3), "the sparsity of every epoch is shown"
    assert measured_sparsity(student) == pytest.approx(0.9, abs=1e-3)


def test_student_moves_towards_the_teacher(teacher):
    images = torch.rand(64, 3, 32, 32)
    student = prune_model(teacher.model, 0.7)
    before = kl_to_teacher(student, teacher.model, images, teacher.normalization)
    distill(
        student,
        teacher.model,
        images,
        teacher.normalization,
        DistillConfig(epochs=5, batch_size=16, lr=0.05, crop_padding=0, flip=False),
    )
    assert kl_to_teacher(student, teacher.model, images, teacher.normalization) < 0.7 * before


def test_feature_matching_and_train_mode_bn(teacher):
    """The feature term changes what the student learns; "train" recalibrates BatchNorm statistics,
    "frozen" keeps the teacher's; the hooks are gone afterwards."""
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def trained(**knobs):
        student = prune_model(teacher.model, 0.5)
        result = distill(
            student,
            teacher.model,
            images,
            teacher.normalization,
            DistillConfig(lr=0.1, epochs=1, batch_size=16, **knobs),
        )
        return student, result

    with_features, result = trained(feature_weight=1.0, bn_mode="train")
    logits_only, _ = trained(feature_weight=0.0, bn_mode="train")
    frozen, _ = trained(feature_weight=0.0, bn_mode="frozen")
    assert result.final_loss > 0
    assert not any(m._forward_hooks for m in teacher.model.modules())

    def weights(model):
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "bn" not in n])

    assert not torch.allclose(weights(with_features), weights(logits_only)), "the feature term changed nothing"

    def first(model):
        return next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    assert torch.equal(first(frozen).running_mean, first(teacher.model).running_mean)
    assert not torch.allclose(first(logits_only).running_mean, first(teacher.model).running_mean)


def test_feature_matching_needs_matching_layers(teacher):
    with pytest.raises(ValueError, match="same BatchNorm layers"):
        distill(
            create_model("resnet32"),
            teacher.model,
            torch.rand(8, 3, 32, 32),
            teacher.normalization,
            DistillConfig(lr=0.1, epochs=1, feature_weight=1.0),
        )


def test_bn_policies(teacher):
    """ "frozen" keeps the teacher's running statistics; "train" re-estimates them from the images."""
    frozen, recalibrated = prune_model(teacher.model, 0.5), prune_model(teacher.model, 0.5)
    images = torch.rand(32, 3, 32, 32)
    distill(frozen, teacher.model, images, teacher.normalization, replace(FAST, bn_mode="frozen"))
    distill(recalibrated, teacher.model, images, teacher.normalization, replace(FAST, bn_mode="train"))
    assert torch.equal(frozen.bn1.running_mean, teacher.model.bn1.running_mean)
    assert not torch.equal(recalibrated.bn1.running_mean, teacher.model.bn1.running_mean)


def test_dropout_is_off_during_distillation():
    """VGG's and MobileNetV2's dropout stays off during distillation; BatchNorm still recalibrates."""
    model = create_model("vgg11_bn").eval()
    teacher, student = model, prune_model(model, 0.5)
    seen = []
    for m in student.modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_pre_hook(lambda module, _: seen.append(module.training))
    normalization = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    distill(student, teacher, torch.rand(16, 3, 32, 32), normalization, replace(FAST, epochs=1))
    assert seen and set(seen) == {False}
    assert not torch.equal(student.features[1].running_mean, teacher.features[1].running_mean)


def test_learning_rate_starts_at_the_peak_and_decays(teacher):
    """The rate starts at its peak and follows a cosine towards zero over all steps."""
    rates = []
    hook = register_optimizer_step_pre_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    try:
        config = DistillConfig(epochs=3, batch_size=4, lr=0.1)
        distill(
            prune_model(teacher.model, 0.5), teacher.model, torch.rand(16, 3, 32, 32), teacher.normalization, config
        )
    finally:
        hook.remove()
    assert len(rates) == 12 and rates[-1] < 0.01, "3 epochs of 4 steps, cosine-annealed towards zero"
    assert rates[0] == pytest.approx(0.1), rates
    assert all(a > b for a, b in zip(rates, rates[1:])), rates


def test_evaluation_callback_per_epoch(teacher):
    student, events, calls = prune_model(teacher.model, 0.5), [], []
    result = distill(
        student,
        teacher.model,
        torch.rand(16, 3, 32, 32),
        teacher.normalization,
        DistillConfig(lr=0.1, epochs=3, batch_size=16, eval_every=2),
        evaluate_fn=lambda m: calls.append(m) or 50.0 + len(calls),
        callback=events.append,
    )
    assert result.history == [(2, 51.0), (3, 52.0)]
    assert [(e.step, e.value) for e in events if isinstance(e, MetricLogged)] == [(2, 51.0), (3, 52.0)]
    assert len(calls) == 2 and all(m is student for m in calls), "the student itself is measured, at epochs 2 and 3"


def test_nan_loss_is_reported(teacher):
    broken = copy.deepcopy(teacher.model)
    broken.fc.bias.data.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="distillation loss became nan"):
        distill(prune_model(teacher.model, 0.5), broken, torch.rand(8, 3, 32, 32), teacher.normalization, FAST)


def test_empty_transfer_set(teacher):
    with pytest.raises(ValueError, match="non-empty"):
        distill(prune_model(teacher.model, 0.5), teacher.model, torch.rand(0, 3, 32, 32), teacher.normalization, FAST)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("temperature", 0.0),
        ("bn_mode", "moving"),
        ("lr", float("nan")),
        ("crop_padding", -1),
        ("gradual_epochs", 31),
        ("gradual_epochs", -1),
        ("gradual_epochs", 2.5),
        ("gradual_start", 1.0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        DistillConfig(**{field: value})


def test_augment_crops_and_flips_each_image_independently():
    torch.manual_seed(0)
    base = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    out = augment(base, padding=4, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == base.shape
    distinct = {tuple(img.flatten()[:50].tolist()) for img in out}
    assert len(distinct) > 20
    exact = augment(base, padding=0, flip=False)
    assert torch.equal(exact, base)
    shifted = augment(torch.ones(4, 3, 8, 8), padding=2, flip=False, generator=torch.Generator().manual_seed(1))
    assert ((shifted == 0) | (shifted == 1)).all(), "zero padding, whole-pixel shifts"


def test_cutmix_pastes_boxes_within_the_batch():
    images = torch.stack([torch.full((3, 8, 8), float(i) / 7) for i in range(8)])
    assert cutmix(images[:1], torch.Generator()) is not None and torch.equal(cutmix(images[:1]), images[:1])
    cut = cutmix(images, torch.Generator().manual_seed(1))
    values = [set(img.unique().tolist()) for img in cut]
    assert all(v <= set(images[:, 0, 0, 0].tolist()) for v in values), "cutmix pastes pixels, it does not blend"
    assert any(len(v) == 2 for v in values), "some images hold a box of another"
