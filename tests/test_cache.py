import re
import threading
from dataclasses import replace

import pytest
import torch

from dfkd_core import DreamSet, Notice, Stage, StageStarted, recover
from dfkd_core.cache import DreamCache
from dfkd_core.cli import main as cli_main
from dfkd_core.zoo import load_teacher

from .test_pipeline import TINY, tiny_config


def _run(config):
    """The result, the descriptions of the dream stage and of the last stage started, and the notes."""
    events = list(recover(config))
    dreaming = [e.description for e in events if isinstance(e, StageStarted) and e.stage is Stage.DREAM]
    dreaming += [e.description for e in events if isinstance(e, StageStarted) and e.stage is Stage.BASELINE][-1:]
    notes = [e.message for e in events if isinstance(e, Notice)]
    return events[-1].result, dreaming, notes


def _dreams(seed: int, count: int = 6) -> DreamSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator).float() / 255
    return DreamSet(images, torch.arange(count) % 2, ("a", "b"), 100.0, 2, 1.0)


def test_a_second_run_reuses_the_dreams_and_the_noise_baseline_and_gets_the_same_results(
    teacher_checkpoint, image_root
):
    config = tiny_config(teacher_checkpoint, image_root, baselines=("noise",))
    first, dreaming, _ = _run(config)
    assert "reused" not in dreaming[0]
    teacher = load_teacher(str(teacher_checkpoint))
    assert DreamCache().path(teacher, TINY.dream, 0).is_file()
    second, dreaming, _ = _run(config)
    assert "noise baseline: the stored result of an identical run, made" in dreaming[-1]
    assert re.fullmatch(
        rf"{TINY.dream.num_images} dreams of {teacher.arch}, made \d+ s ago, reused \(dream cache\)", dreaming[0]
    )
    assert torch.equal(second.dreams.images, first.dreams.images), "fresh dreams are the cached pixels"
    for name, value in first.student.state_dict().items():
        assert torch.equal(second.student.state_dict()[name], value), f"{name} differs between fresh and cached"
    assert second.recovered_acc == first.recovered_acc
    assert second.baselines["noise"] == first.baselines["noise"] and second.timings["noise"] == 0.0
    assert second.baseline_curves["noise"] == first.baseline_curves["noise"]
    assert first.report()["baselines"]["stored"] == [] and second.report()["baselines"]["stored"] == ["noise"]
    assert "stored result" not in _run(replace(config, seed=1))[1][-1], "another seed: run again"


def test_the_key_is_the_teacher_the_dream_recipe_and_the_seed(teacher):
    cache, teacher = DreamCache(), replace(teacher, sha256="ab" * 32)
    path = cache.path(teacher, TINY.dream, 0)
    assert path == DreamCache().path(replace(teacher, source="elsewhere.pt"), TINY.dream, 0), (
        "the weights, not the name"
    )
    assert path != cache.path(teacher, TINY.dream, 1)
    assert path != cache.path(teacher, replace(TINY.dream, steps=3), 0)
    assert path != cache.path(replace(teacher, sha256="cd" * 32), TINY.dream, 0)
    assert DreamCache.holds(teacher, TINY.dream)
    assert not DreamCache.holds(teacher, replace(TINY.dream, adi=1.0)), "shaped by the student: never cached"
    assert not DreamCache.holds(replace(teacher, sha256=None), TINY.dream), "a teacher built in memory"


def test_a_corrupt_entry_is_removed_and_dreamed_again(teacher):
    cache, teacher = DreamCache(), replace(teacher, sha256="ab" * 32)
    path = cache.path(teacher, TINY.dream, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    dreams, note = cache.get(teacher, TINY.dream, 0)
    assert dreams is None and "could not be read and was removed" in note and note.endswith("dreaming again")
    assert not path.exists()


def test_an_entry_made_with_other_settings_is_refused(teacher):
    cache = DreamCache()
    teacher = replace(teacher, sha256="ab" * 32)
    cache.put(teacher, TINY.dream, 0, _dreams(0))  # no settings recorded: not what the name promises
    dreams, note = cache.get(teacher, TINY.dream, 0)
    assert dreams is None and "other settings" in note
    assert not cache.path(teacher, TINY.dream, 0).exists()


def test_two_runs_filling_one_entry_at_once_leave_one_whole_file(teacher, tmp_path):
    cache = DreamCache(tmp_path / "dreams")
    teacher = replace(teacher, sha256="cd" * 32)
    sets = [replace(_dreams(seed, 512), settings=DreamCache.settings(teacher, TINY.dream, 0)) for seed in range(4)]
    threads = [threading.Thread(target=cache.put, args=(teacher, TINY.dream, 0, s)) for s in sets for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored, note = cache.get(teacher, TINY.dream, 0)
    assert note is None and any(torch.equal(stored.images, s.images) for s in sets)
    assert [p.name for p in cache.root.iterdir()] == [cache.path(teacher, TINY.dream, 0).name], "no partial file left"


@pytest.mark.slow
def test_the_cli_can_leave_the_cache_alone(teacher_checkpoint, image_root, tmp_path):
    args = ["recover", "--teacher", str(teacher_checkpoint), "--data", str(image_root), "--out", str(tmp_path / "o")]
    args += ["--preset", "quick", "--set", "dream.num_images=20", "--set", "dream.steps=1", "--set", "dream.holdout=10"]
    args += ["--set", "distill.epochs=1", "--baselines", "none", "--curve-per-class", "2", "--quiet", "--no-cache"]
    assert cli_main(args) == 0
    assert not DreamCache().root.exists()
