import copy

import pytest
import torch
from torch import nn

from dfkd_core import DreamConfig, DreamSet, ImagesReady, Progress, create_model, dream
from dfkd_core.dream import _BNStatisticsLoss, _ChannelMoments, _jittered, _Ones, _smoothness_prior, total_variation
from dfkd_core.zoo import CIFAR10, Teacher

TINY = DreamConfig(num_images=20, holdout=0, batch_size=10, steps=6, preview_every=3)


def test_channel_moments_match_torch_and_have_exact_gradients():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    ones = _Ones()
    var, mean = _ChannelMoments.apply(x, ones)
    ref_var, ref_mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    assert torch.allclose(var, ref_var) and torch.allclose(mean, ref_mean)
    assert torch.autograd.gradcheck(lambda t: _ChannelMoments.apply(t, ones), (x,))


@pytest.mark.parametrize("arch", ["resnet20", "vgg11_bn", "mobilenetv2_x0_5", "akamaster_resnet20"])
def test_folded_teacher_has_the_same_loss_and_gradients(arch):
    torch.manual_seed(0)
    model = create_model(arch).double().eval()  # float64: a ReLU near zero must not flip on rounding
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics and affine parameters away from their defaults
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    results = []
    for fold in (False, True):
        prior = _BNStatisticsLoss(model, first_multiplier=10.0, fold=fold)
        assert prior.folded == fold
        view = x.clone().requires_grad_(True)
        logits = prior.network(view)
        bn = prior.pop()
        (grad,) = torch.autograd.grad(logits.logsumexp(1).sum() + bn, view)
        prior.remove()
        results.append((logits.detach(), bn.detach(), grad))
    (logits, bn, grad), (folded_logits, folded_bn, folded_grad) = results
    assert torch.allclose(logits, folded_logits, rtol=1e-8, atol=1e-8)
    assert torch.allclose(bn, folded_bn, rtol=1e-8)
    assert torch.allclose(grad, folded_grad, rtol=1e-6, atol=1e-10)


def test_folding_is_accurate_in_float32_for_tiny_scales_and_in_place_ops():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)

        def forward(self, x):
            out = self.bn(self.conv(x))
            out.relu_()  # in place, on what used to be the BatchNorm's fresh output
            return self.head(out.mean((2, 3)))

    torch.manual_seed(0)
    model = Block().eval()
    model.bn.weight.data[:4] = 1e-3  # tiny scales with a large shift: one-pass variance of z would cancel
    model.bn.weight.data[4] = 0.0  # a dead channel: too small to fold, it stays a multiply
    model.bn.bias.data.fill_(0.5)
    model.bn.running_var.fill_(0.3)
    x = torch.randn(64, 3, 32, 32)
    losses = []
    for fold in (False, True):
        prior = _BNStatisticsLoss(model, first_multiplier=1.0, fold=fold)
        assert prior.folded == fold
        logits = prior.network(x.clone().requires_grad_(True))
        losses.append(float(prior.pop().detach()))
        logits.sum().backward()  # no in-place error
        prior.remove()
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("shift", [(0, 0), (0, 2), (-1, 0), (2, -2)])
@pytest.mark.parametrize("flip", [False, True])
def test_jitter_keeps_channels_last_and_matches_roll(shift, flip):
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    view = _jittered(x, list(shift), flip)
    expected = torch.roll(x, shifts=shift, dims=(2, 3))
    expected = torch.flip(expected, dims=(3,)) if flip else expected
    assert torch.equal(view, expected)
    assert view.is_contiguous(memory_format=torch.channels_last)  # else the whole step runs channels-first


@pytest.mark.parametrize("tv_l1, tv_l2", [(0.0, 2.5e-5), (0.3, 0.0), (0.3, 2.5e-5)])
def test_smoothness_prior_is_the_weighted_total_variation(tv_l1, tv_l2):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    l1, l2 = total_variation(x)
    (expected,) = torch.autograd.grad(tv_l1 * l1 + tv_l2 * l2, x)
    prior = _smoothness_prior(x, tv_l1, tv_l2)
    (grad,) = torch.autograd.grad(prior, x)
    assert torch.allclose(prior, tv_l1 * l1 + tv_l2 * l2)
    assert torch.allclose(grad, expected)


def test_batchnorm_not_after_a_convolution_keeps_the_hooked_teacher():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(2, 3, 8, 8))
    prior = _BNStatisticsLoss(model.eval(), first_multiplier=1.0)
    assert not prior.folded and prior.network is model
    model(torch.randn(2, 3, 8, 8))
    assert float(prior.pop().detach()) > 0
    prior.remove()


def test_dreams_shape_range_and_balance(teacher):
    dreams = dream(teacher, TINY, seed=1)
    assert dreams.images.shape == (20, 3, 32, 32) and dreams.images.dtype == torch.float32
    assert 0.0 <= dreams.images.min() and dreams.images.max() <= 1.0
    assert dreams.labels.bincount(minlength=10).tolist() == [2] * 10
    with torch.no_grad():
        predicted = teacher.model(teacher.normalization.normalize(dreams.images)).argmax(1)
    assert dreams.teacher_top1 == pytest.approx(100.0 * float((predicted == dreams.labels).float().mean()), abs=5.01)


def test_seed_makes_it_deterministic(teacher):
    a, b = dream(teacher, TINY, seed=3), dream(teacher, TINY, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


@pytest.mark.slow
def test_bn_statistics_get_closer_to_the_teachers(teacher):
    def bn_distance(x):
        loss = _BNStatisticsLoss(teacher.model, first_multiplier=1.0)
        with torch.no_grad():
            loss.network(x)
        distance = float(loss.pop().detach())
        loss.remove()
        return distance

    noise = bn_distance(torch.randn(64, 3, 32, 32))
    dreams = dream(teacher, DreamConfig(num_images=64, batch_size=64, steps=30, r_bn=1.0))
    assert bn_distance(teacher.normalization.normalize(dreams.images)) < 0.7 * noise


def test_callback_sees_images_every_k_steps(teacher):
    events = []
    dream(teacher, TINY, callback=events.append)
    snapshots = [e for e in events if isinstance(e, ImagesReady)]
    assert [e.step for e in snapshots] == [1, 3, 6, 7, 9, 12]  # the first step of each batch shows its noise
    assert snapshots[0].images.shape == (10, 3, 32, 32) and snapshots[-1].images.shape == (20, 3, 32, 32)
    assert snapshots[3].images.shape == (20, 3, 32, 32), "earlier batches stay in the picture"
    assert all(e.images.device.type == "cpu" for e in snapshots)
    assert all("loss" in e.metrics for e in events if isinstance(e, Progress))


def test_teacher_is_left_as_it_was(teacher):
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    dream(teacher, TINY)
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    assert all(p.requires_grad for p in teacher.model.parameters())
    assert not any(m._forward_hooks for m in teacher.model.modules())


def test_model_without_batchnorm_is_refused():
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    no_bn = Teacher(plain, "plain", CIFAR10, tuple(str(i) for i in range(10)), "plain")
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        dream(no_bn, TINY)


def test_nan_loss_stops_with_advice(teacher):
    teacher.model.bn1.running_var.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="dream loss became nan.*lower the dream lr"):
        dream(teacher, TINY)


def test_adaptive_deepinversion_needs_and_uses_a_student(teacher):
    from dfkd_core import prune_model

    config = DreamConfig(num_images=10, batch_size=10, steps=3, adi=1.0)
    with pytest.raises(ValueError, match="needs the current student"):
        dream(teacher, config)
    assert len(dream(teacher, config, student=prune_model(teacher.model, 0.5))) == 10


@pytest.mark.parametrize(
    "field, value", [("steps", 0), ("num_images", -1), ("lr", -0.1), ("r_bn", float("inf")), ("jitter", -1)]
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        DreamConfig(**{field: value})


def test_dream_set_save_load_and_grid(teacher, tmp_path):
    dreams = dream(teacher, TINY)
    loaded = DreamSet.load(dreams.save(tmp_path / "d.pt"))
    assert torch.allclose(loaded.images, dreams.images, atol=1 / 255) and torch.equal(loaded.labels, dreams.labels)
    assert loaded.classes == dreams.classes
    grid = dreams.grid(per_class=4)
    assert grid.shape == (3, 10 * 33 + 1, 4 * 33 + 1)
    assert dreams.save_grid(tmp_path / "g.png").stat().st_size > 0
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a dream set"):
        DreamSet.load(tmp_path / "junk.pt")


def test_two_dreaming_runs_at_once_share_nothing(teacher):
    """The app may dream for two sessions at once (--concurrency 2): each run's state is its own, so
    concurrent runs give exactly what each gives alone."""
    import threading

    alone = [dream(copy.deepcopy(teacher), TINY, seed=s) for s in (1, 2)]
    together: dict[int, DreamSet] = {}
    threads = [
        threading.Thread(target=lambda s=s: together.__setitem__(s, dream(copy.deepcopy(teacher), TINY, seed=s)))
        for s in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, expected in zip((1, 2), alone):
        assert torch.allclose(together[seed].images, expected.images, atol=1e-5)
