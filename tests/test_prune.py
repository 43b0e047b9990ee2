import pytest
import torch
from torch import nn

from dfkd_core import GradualPruning, create_model, make_permanent, prune_model, sparsity_report
from dfkd_core.prune import clone_model, count_nonzero_parameters, lamp_scores, measured_sparsity, prunable_layers


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.9])
def test_global_pruning_hits_the_target(sparsity):
    model = create_model("resnet20")
    pruned = prune_model(model, sparsity)
    assert measured_sparsity(pruned) == pytest.approx(sparsity, abs=1e-4)
    assert measured_sparsity(model) == 0.0, "the input model is left untouched"


def test_global_threshold_is_shared_and_uneven_across_layers():
    pruned = prune_model(create_model("resnet20"), 0.75)
    report = sparsity_report(pruned)
    kept = [m.weight[m.weight != 0].abs().min().item() for _, m in prunable_layers(pruned)]
    removed = [m.weight_orig[m.weight_mask == 0].abs().max().item() for _, m in prunable_layers(pruned)]
    assert max(removed) <= min(kept), "one magnitude threshold over all layers"
    assert max(r.sparsity for r in report) - min(r.sparsity for r in report) > 0.1


def test_layerwise_prunes_each_layer_equally():
    report = sparsity_report(prune_model(create_model("resnet20"), 0.5, scope="layerwise"))
    assert all(r.sparsity == pytest.approx(0.5, abs=0.01) for r in report)


def test_lamp_scores_are_scale_free_and_keep_every_layer():
    weight = torch.tensor([[0.1, -0.4], [0.2, 0.3]])
    # squares 0.01, 0.16, 0.04, 0.09 (sum 0.30): each over the sum of the squares at least as large
    expected = torch.tensor([[0.01 / 0.30, 1.0], [0.04 / 0.29, 0.09 / 0.25]])
    assert torch.allclose(lamp_scores(weight), expected)
    assert torch.allclose(lamp_scores(10 * weight), expected), "a rescaled layer scores the same"

    model = create_model("resnet20")
    pruned = prune_model(model, 0.9, scope="lamp")
    assert measured_sparsity(pruned) == pytest.approx(0.9, abs=1e-4)
    assert all(r.removed < r.total for r in sparsity_report(pruned)), "no layer is emptied"


def test_lamp_ignores_a_rescaling_that_moves_the_global_threshold():
    """A convolution and the BatchNorm after it compute the same function at any weight scale: LAMP prunes
    the rescaled network exactly like the original, while one global magnitude threshold does not."""
    model = create_model("resnet20").eval()
    twin = clone_model(model)
    with torch.no_grad():
        twin.layer2[1].conv2.weight.mul_(10)
    for scope, same in (("lamp", True), ("global", False)):
        masks = [
            [m.weight_mask for _, m in prunable_layers(prune_model(net, 0.7, scope=scope))] for net in (model, twin)
        ]
        assert all(torch.equal(a, b) for a, b in zip(*masks)) == same, scope


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5"])
def test_sparsity_outside_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune_model(create_model("resnet20"), bad)


def test_masks_stay_attached_until_made_permanent():
    pruned = prune_model(create_model("resnet20"), 0.6)
    assert all(hasattr(m, "weight_mask") for _, m in prunable_layers(pruned))
    zeros_before = (pruned.fc.weight == 0).sum()
    make_permanent(pruned)
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_layers(pruned))
    assert (pruned.fc.weight == 0).sum() == zeros_before
    assert measured_sparsity(pruned) == pytest.approx(0.6, abs=1e-4)


def test_report_and_nonzero_count():
    model = create_model("resnet20")
    pruned = prune_model(model, 0.5)
    report = sparsity_report(pruned)
    assert [r.name for r in report][:2] == ["conv1", "layer1.0.conv1"] and report[-1].kind == "Linear"
    permanent = make_permanent(clone_model(pruned))
    assert count_nonzero_parameters(pruned) == sum(int((p != 0).sum()) for p in permanent.parameters())
    assert count_nonzero_parameters(pruned) < count_nonzero_parameters(model) - 0.45 * sum(r.total for r in report)


def test_model_without_prunable_layers():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        prune_model(nn.Sequential(nn.ReLU()), 0.5)


def test_unknown_scope():
    with pytest.raises(ValueError, match="scope"):
        prune_model(create_model("resnet20"), 0.5, scope="channel")


def test_pruned_model_still_runs():
    with torch.no_grad():
        assert prune_model(create_model("resnet20"), 0.9)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_pruned_models_can_be_cloned_after_training_steps():
    pruned = prune_model(create_model("resnet20"), 0.5)
    pruned(torch.randn(2, 3, 32, 32)).sum().backward()  # leaves weight = orig * mask with a graph
    clone = clone_model(pruned)
    assert torch.equal(clone.fc.weight_mask, pruned.fc.weight_mask)


def test_gradual_pruning_follows_the_cubic_schedule_to_the_target():
    schedule = GradualPruning(target=0.9, start=0.5, epochs=4)
    targets = [schedule.sparsity_at(epoch) for epoch in range(1, 8)]
    assert targets[0] == 0.5 and targets[4:] == [0.9, 0.9, 0.9]
    steps = [b - a for a, b in zip(targets, targets[1:4])]
    assert steps == sorted(steps, reverse=True), "fast while many weights are redundant, slow near the target"
    model = prune_model(create_model("resnet20"), schedule.first)
    cut_before: dict[str, torch.Tensor] = {}
    for epoch in range(1, 7):
        assert schedule.step(model, epoch) == pytest.approx(schedule.sparsity_at(epoch), abs=1e-4)
        for name, m in prunable_layers(model):
            assert not m.weight_mask[cut_before.get(name, torch.ones_like(m.weight_mask)) == 0].any(), "cuts compose"
            cut_before[name] = m.weight_mask.clone()
    assert GradualPruning(0.3, 0.5, 4).sparsity_at(1) == 0.3, "never starts above the target"


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"epochs": True}, {"target": 1.0}, {"start": -0.1}, {"scope": "x"}])
def test_gradual_pruning_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        GradualPruning(**{"target": 0.9, "start": 0.5, "epochs": 4, **bad})
