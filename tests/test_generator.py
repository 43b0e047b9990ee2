import dataclasses

import pytest
import torch

from dfkd_core import DistillConfig, prune_model
from dfkd_core.distill import iter_distill
from dfkd_core.events import ImagesReady, Metric, MetricLogged, Progress, Stage, StageFinished, StageStarted, drain
from dfkd_core.generator import (
    DreamGenerator,
    DreamStream,
    GeneratorConfig,
    ReplayStream,
    iter_warmup,
    same_class_similarity,
)

SMALL = GeneratorConfig(  # no student to disagree with in most tests: adi 0
    latent_dim=16, width=8, batch_size=20, warmup_steps=4, distill_steps=2, batches_per_epoch=2, adi=0.0
)


def test_the_generator_makes_class_conditional_images_in_the_pixel_range():
    network = DreamGenerator(num_classes=10, latent_dim=16, width=8)
    with torch.no_grad():
        images = network(torch.randn(6, 16), torch.arange(6))
    assert images.shape == (6, 3, 32, 32)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    same_noise = torch.randn(1, 16).repeat(2, 1)
    pair = network.eval()(same_noise, torch.tensor([0, 1]))
    assert not torch.equal(pair[0], pair[1]), "the class changes the image"


def test_warmup_events_and_the_first_batch_of_the_bank(teacher):
    stream = DreamStream(teacher, SMALL, seed=0)
    events = []
    dreams = drain(iter_warmup(stream), events.append)
    stream.close()
    assert isinstance(events[0], StageStarted) and events[0].stage is Stage.DREAM and events[0].total == 4
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 4]  # the first step, then every 5th and the last
    assert [e.step for e in events if isinstance(e, ImagesReady)] == [1, 4]
    assert isinstance(events[-2], MetricLogged) and events[-2].metric is Metric.DREAM_TOP1
    assert isinstance(events[-1], StageFinished) and events[-1].summary["dreams"] is dreams
    assert dreams.images.shape == (20, 3, 32, 32) and len(stream.bank) == 20
    assert torch.bincount(dreams.labels, minlength=10).tolist() == [2] * 10, "class-balanced"
    assert dreams.settings["synthesis"] == "generator" and dreams.steps == 4


def test_the_initial_bank_holds_the_warmups_last_batches(teacher):
    def warm(initial_bank):
        stream = DreamStream(teacher, dataclasses.replace(SMALL, initial_bank=initial_bank), seed=0)
        try:
            return drain(iter_warmup(stream)), stream
        finally:
            stream.close()

    one, _ = warm(1)
    three, stream = warm(3)
    assert len(stream.bank) == stream.made == 3 * 20 and three.images.shape == (60, 3, 32, 32)
    assert torch.equal(three.images[-20:], one.images), (
        "the same seed: the last batch is the same, older ones come first"
    )
    assert 0 <= stream.agreed <= 60


def test_a_seed_decides_the_dreams(teacher):
    def warm(seed):
        stream = DreamStream(teacher, SMALL, seed=seed)
        try:
            return drain(iter_warmup(stream)).images
        finally:
            stream.close()

    assert torch.equal(warm(3), warm(3))
    assert not torch.equal(warm(3), warm(4))


def test_the_generator_learns_the_teachers_batchnorm_statistics(teacher):
    stream = DreamStream(teacher, GeneratorConfig(latent_dim=16, width=8, batch_size=32, lr=0.01, adi=0.0), seed=0)
    try:
        first = stream.step()[2]["bn"]
        for _ in range(25):
            last = stream.step()[2]["bn"]
    finally:
        stream.close()
    assert last < 0.7 * first


def test_the_teacher_is_frozen_while_the_stream_is_open_and_given_back_after(teacher):
    stream = DreamStream(teacher, SMALL)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    before = [p.clone() for p in teacher.model.parameters()]
    stream.step()
    stream.close()
    assert all(p.requires_grad for p in teacher.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.model.parameters())), "only the generator learns"


def test_online_distillation_draws_fresh_batches_on_schedule(teacher):
    student = prune_model(teacher.model, 0.5)
    stream = DreamStream(teacher, SMALL, seed=0)
    drain(iter_warmup(stream))
    events = []
    drain(
        iter_distill(student, teacher.model, stream, teacher.normalization, DistillConfig(epochs=2, batch_size=8)),
        events.append,
    )
    stream.close()
    started = next(e for e in events if isinstance(e, StageStarted))
    assert started.total == 2 * 2 * 2  # epochs x batches_per_epoch x distill_steps
    fresh = [e for e in events if isinstance(e, ImagesReady)]
    assert [e.step for e in fresh] == [1, 3, 5, 7] and all(e.stage is Stage.DISTILL for e in fresh)
    assert len(stream.bank) == 20 * (1 + 4), "the warm-up batch and four fresh ones"
    assert stream.dreams().images.shape == (100, 3, 32, 32)


def test_the_memory_bank_keeps_the_newest_images():
    config = GeneratorConfig(batch_size=4, bank_size=8)
    stream = ReplayStream(None, config, torch.rand(12, 3, 32, 32), torch.arange(12))
    for _ in range(3):
        stream.remember(*stream.step()[:2])
    assert stream.bank_labels.tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert stream.sample(5, torch.Generator().manual_seed(0)).shape == (5, 3, 32, 32)
    stream.remember(*stream.step()[:2])
    assert stream.bank_labels.tolist() == [8, 9, 10, 11, 0, 1, 2, 3], "a replay wraps around"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bank_size": 10}, "bank_size"),
        ({"warmup_steps": 0}, "warmup_steps"),
        ({"lr": float("nan")}, "lr"),
        ({"jitter": -1}, "jitter"),
        ({"diversity": -0.5}, "diversity"),
        ({"meta_rate": 0.0}, "meta_rate"),
        ({"meta_rate": 1.5}, "meta_rate"),
        ({"initial_bank": 0}, "initial_bank"),
        ({"initial_bank": 41}, "initial_bank"),
        ({"initial_bank": 2, "bank_size": 256}, "bank_size"),
        ({"meta_rate": True}, "meta_rate"),
    ],
)
def test_bad_generator_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**changes)


def test_same_class_similarity_counts_only_pairs_of_one_class():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert float(same_class_similarity(torch.stack([a, 3 * a, b]), torch.tensor([0, 0, 1]))) == pytest.approx(1.0)
    assert float(same_class_similarity(torch.stack([a, b, a]), torch.tensor([0, 0, 1]))) == pytest.approx(0.0)
    assert float(same_class_similarity(torch.stack([a, a]), torch.tensor([0, 1]))) == 0.0, "no pair shares a class"


def test_the_diversity_term_is_measured_and_its_hook_removed(teacher):
    config = GeneratorConfig(latent_dim=16, width=8, batch_size=20, adi=0.0, diversity=1.0)
    stream = DreamStream(teacher, config, seed=0)
    classifier = [m for m in stream.prior.network.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert len(classifier._forward_pre_hooks) == 1
    try:
        metrics = stream.step()[2]
        with torch.no_grad():  # distillation's teacher passes are not the generator's
            teacher.model(torch.rand(2, 3, 32, 32))
        assert -1.0 <= metrics["similarity"] <= 1.0 and len(stream._features) == 0
        plain = DreamStream(teacher, SMALL, seed=0)
        assert "similarity" not in plain.step()[2]
        plain.close()
    finally:
        stream.close()
    assert not classifier._forward_pre_hooks, "closing the stream removes its hook"


def test_a_meta_start_keeps_only_a_share_of_each_batchs_steps(teacher):
    """Reptile: after a fresh batch the start sits ``meta_rate`` of the way from where it was to where the steps ended."""

    def after_one_batch(rate):
        stream = DreamStream(teacher, GeneratorConfig(latent_dim=16, width=8, batch_size=20, adi=0.0, meta_rate=rate))
        try:
            before = [p.detach().clone() for p in stream.network.parameters()]
            pixels = stream.fresh_batch()[0]
            return before, [p.detach().clone() for p in stream.network.parameters()], pixels
        finally:
            stream.close()

    start, full, pixels_full = after_one_batch(1.0)
    same_start, half, pixels_half = after_one_batch(0.25)
    assert all(torch.equal(a, b) for a, b in zip(start, same_start))
    assert torch.equal(pixels_full, pixels_half), "the batch itself comes from the full steps"
    assert any(not torch.equal(a, b) for a, b in zip(start, full))
    for p0, p1, p_meta in zip(start, full, half):
        torch.testing.assert_close(p_meta, p0 + 0.25 * (p1 - p0))


def test_the_disagreement_term_needs_the_student(teacher):
    with pytest.raises(ValueError, match="student"):
        DreamStream(teacher, GeneratorConfig(adi=1.0))


def test_an_empty_bank_is_refused(teacher):
    stream = DreamStream(teacher, SMALL)
    try:
        with pytest.raises(ValueError, match="warm the generator up"):
            drain(iter_distill(prune_model(teacher.model, 0.5), teacher.model, stream, teacher.normalization))
    finally:
        stream.close()
