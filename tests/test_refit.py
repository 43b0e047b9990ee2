import pytest
import torch
from torch import nn

from dfkd_core import RefitConfig, prune_model, refit
from dfkd_core.events import Progress
from dfkd_core.prune import prunable_layers
from dfkd_core.refit import masked_least_squares
from dfkd_core.zoo import CIFAR10


def test_masked_least_squares_matches_an_exact_solve_per_row():
    generator = torch.Generator().manual_seed(0)
    groups, rows, features = 2, 5, 30
    basis = torch.randn(groups, features, 200, generator=generator, dtype=torch.float64)
    gram = basis @ basis.transpose(1, 2) + 0.1 * torch.eye(features, dtype=torch.float64)
    target = torch.randn(groups, rows, features, generator=generator, dtype=torch.float64)
    mask = (torch.rand(groups, rows, features, generator=generator) < 0.3).double()
    solved = masked_least_squares(
        gram, target, mask, torch.randn(groups, rows, features, dtype=torch.float64), iterations=500, tolerance=1e-12
    )
    for g in range(groups):
        for r in range(rows):
            kept = mask[g, r].bool()
            exact = torch.linalg.solve(gram[g][kept][:, kept], target[g, r, kept])
            torch.testing.assert_close(solved[g, r, kept], exact, rtol=1e-8, atol=1e-8)
            assert (solved[g, r, ~kept] == 0).all()


def output_error(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((student.eval()(x) - teacher.eval()(x)).pow(2).mean())


@pytest.mark.slow
def test_refit_brings_a_pruned_resnet_closer_and_keeps_the_masks(teacher):
    images = torch.rand(64, 3, 32, 32)
    x = teacher.normalization.normalize(images)
    student = prune_model(teacher.model, 0.8)
    masks = {name: m.weight_mask.clone() for name, m in prunable_layers(student)}
    before = output_error(student, teacher.model, x)
    events = []
    result = refit(
        student, teacher.model, images, teacher.normalization, RefitConfig(batch_size=32), callback=events.append
    )
    assert result.seconds > 0 and result.accuracy is None
    assert output_error(student, teacher.model, x) < 0.5 * before
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps == list(range(1, len(masks) + 1))  # one step per pruned layer
    for name, m in prunable_layers(student):
        assert torch.equal(m.weight_mask, masks[name])
        assert (m.weight[m.weight_mask == 0] == 0).all()


def test_grouped_convolutions_and_biases_are_refit():
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding="same", groups=4, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()
    images = torch.rand(32, 3, 16, 16)
    student = prune_model(teacher, 0.6)
    biases = [m.bias.clone() for _, m in prunable_layers(student) if m.bias is not None]
    before = output_error(student, teacher, CIFAR10.normalize(images))
    refit(student, teacher, images, CIFAR10)
    assert output_error(student, teacher, CIFAR10.normalize(images)) < 0.5 * before
    after = [m.bias for _, m in prunable_layers(student) if m.bias is not None]
    assert any(not torch.equal(a, b) for a, b in zip(after, biases))


def test_student_must_be_a_pruned_copy_of_the_teacher(teacher):
    other = prune_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 0.5)
    with pytest.raises(ValueError, match="pruned copy of the teacher"):
        refit(other, teacher.model, torch.rand(4, 3, 32, 32), teacher.normalization)


def test_bad_inputs_give_clear_errors(teacher):
    student = prune_model(teacher.model, 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        refit(student, teacher.model, torch.rand(0, 3, 32, 32), teacher.normalization)
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        refit(student, teacher.model, torch.full((4, 3, 32, 32), float("nan")), teacher.normalization)
    with pytest.raises(ValueError, match="damping must be a finite number > 0"):
        RefitConfig(damping=0)
    with pytest.raises(ValueError, match="num_images must be a whole number >= 1"):
        RefitConfig(num_images=0)
    reflect = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="zero-padded convolutions only"):
        refit(prune_model(reflect, 0.5), reflect, torch.rand(2, 3, 8, 8), CIFAR10)
