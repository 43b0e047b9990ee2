"""The Gradio app, launched for real on a free local port and driven through its API with gradio_client.

Runs use tiny recipes. The recovery test uses the real ResNet-20 teacher on a 300-image slice
of the JPEG CIFAR-10 test split (a meaningful teacher is what makes "recovered above pruned"
a fair claim); the others use a generated teacher, so they run anywhere.
"""

from __future__ import annotations

import gc
import os
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from demo.app import AppOptions, create_app, knob_values
from dfkd_core import load_checkpoint
from dfkd_core.prune import measured_sparsity
from dfkd_core.zoo import CIFAR10_CLASSES

from .conftest import shared_asset, write_image_folder

# The outputs of /run as the client sees them, in order (the Run button is not part of the API).
STATUS, DREAMS, LOSSES, ACCURACY, LOG, SPARSITY, SUMMARY, FILES = range(8)
KNOBS = ("dream_count", "inversion_steps", "kd_epochs", "kd_temperature", "bn_weight", "tv_weight", "adi_weight")
TINY = {**dict(zip(KNOBS, knob_values("Quick"))), "dream_count": 40, "inversion_steps": 6, "kd_epochs": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(options: AppOptions) -> Iterator[Client]:
    """The app as ``python demo/app.py`` serves it (same queue), on a free port, for one test."""
    app = create_app(options)
    app.launch(server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(app.local_url, verbose=False)
    finally:
        app.close()


def tiny_options(teachers: tuple[Path, ...], data: Path | str, **kwargs: Any) -> AppOptions:
    return AppOptions(data=str(data), teachers=teachers, device="cpu", update_interval=0.0, **kwargs)


def run_args(teacher: Path | str, sparsity: float = 0.5, **knobs: Any) -> dict[str, Any]:
    return {"teacher_id": str(teacher), "share": sparsity, "budget_name": "Quick", **TINY, "run_seed": 0, **knobs}


def new_values(job: Any, index: int) -> list[Any]:
    """The values one output took over a streamed job, skipping steps that left it unchanged."""
    values = [out[index] for out in job.outputs()]
    return [v for v in values if v and not (isinstance(v, dict) and v.get("__type__") == "update")]


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.05)


def percent(cell: str) -> float:
    return float(cell.rstrip("%"))


def jpeg_slice(root: Path, per_class: int) -> Path:
    """An ImageFolder root whose test/ links the first ``per_class`` images of each class of the real split."""
    source = shared_asset("data/cifar10-jpeg/test")
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (root / "test" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            (root / "test" / folder.name / image.name).symlink_to(image)
    return root


@pytest.mark.assets
def test_quick_run_streams_dreams_and_accuracy_and_recovers(tmp_path):
    teacher = shared_asset("weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt").resolve()
    data = jpeg_slice(tmp_path / "slice", per_class=30)
    with served(tiny_options((teacher,), data)) as client:
        job = client.submit(**run_args(teacher, sparsity=0.8), api_name="/run")
        job.result(timeout=300)
        outputs = job.outputs()

    grids = new_values(job, DREAMS)
    assert len(grids) >= 3, "the dream grid is refreshed while the dreams form"
    assert [tile["caption"] for tile in grids[-1]] == list(CIFAR10_CLASSES)
    assert len(new_values(job, LOSSES)) >= 2, "the loss plot shows during synthesis (throttled) and at its end"
    assert len(new_values(job, ACCURACY)) >= 3, "the accuracy plot grows epoch by epoch"
    assert [row[0] for row in new_values(job, LOG)[-1]["data"]] == [0, 1, 2]
    assert len(new_values(job, SUMMARY)) == 2, "the summary is cleared at the start and filled at the end"
    first_grid = next(i for i, out in enumerate(outputs) if out[DREAMS] in grids)
    first_summary = next(i for i, out in enumerate(outputs) if out[SUMMARY] in new_values(job, SUMMARY)[1:])
    assert first_grid < first_summary, "dreams stream in long before the end"
    statuses = new_values(job, STATUS)
    assert any("Stage 3 of 8" in s and "left in this stage" in s for s in statuses)
    assert "Done" in statuses[-1] and "full test split (300 images)" in statuses[-1]
    assert len(new_values(job, SPARSITY)) == 1, "the per-layer chart appears once, after pruning"

    rows = {row[0]: row for row in new_values(job, SUMMARY)[-1]["data"]}
    teacher_acc, pruned = percent(rows["Teacher (dense)"][1]), percent(rows["Pruned, no recovery"][1])
    recovered = percent(rows["Recovered: KD on dreams"][1])
    assert recovered > pruned + 5, f"recovered {recovered}% is not above pruned {pruned}%"
    assert teacher_acc > pruned and percent(rows["Baseline: same recipe on noise"][1]) >= 0
    assert percent(rows["Refit on dreams, before KD"][1]) > pruned, "the Quick budget refits the pruned layers"
    nonzero = {name: int(row[2].replace(",", "")) for name, row in rows.items()}
    assert nonzero["Recovered: KD on dreams"] < 0.3 * nonzero["Teacher (dense)"]

    files = {Path(p).name: Path(p) for p in new_values(job, FILES)[-1]}
    assert set(files) == {"student.pt", "dreams.png", "dreams.pt", "report.json"}
    student = load_checkpoint(files["student.pt"])  # pruning made permanent: a plain checkpoint
    assert not any(name.endswith("_mask") for name in student.model.state_dict())
    assert measured_sparsity(student.model) == pytest.approx(0.8, abs=1e-3)


def _pruned_modules(ignore: weakref.WeakSet | None = None) -> list[torch.nn.Module]:
    """Live pruned layers (they carry a mask), leaving out those in ``ignore`` (alive before the test)."""
    gc.collect()
    found = [m for m in gc.get_objects() if isinstance(m, torch.nn.Conv2d) and hasattr(m, "weight_mask")]
    return [m for m in found if ignore is None or m not in ignore]


def test_stop_ends_the_run_frees_it_and_a_new_run_works(teacher_checkpoint, image_root):
    long = {"inversion_steps": 20_000}  # hours on a CPU: only Stop can end it
    before = weakref.WeakSet(_pruned_modules())
    with served(tiny_options((teacher_checkpoint,), image_root)) as client:
        job = client.submit(**run_args(teacher_checkpoint, **long), api_name="/run")
        wait_for(lambda: len(new_values(job, DREAMS)) >= 2, 60, "the first dream grids")
        assert _pruned_modules(before), "a running job holds its pruned student"

        other_tab = Client(client.src, verbose=False)  # a second browser session
        assert "Nothing is running" in other_tab.predict(api_name="/stop")
        seen = len(new_values(job, DREAMS))
        wait_for(lambda: len(new_values(job, DREAMS)) > seen, 30, "the run to go on after another tab's Stop")

        pressed = time.monotonic()
        assert "Stopped" in client.predict(api_name="/stop")
        job.result(timeout=10)
        assert time.monotonic() - pressed < 5, "Stop ends the job within a few seconds"
        assert "Stopped" in new_values(job, STATUS)[-1]
        wait_for(lambda: not _pruned_modules(before), 10, "the stopped run's models to be freed")

        cancelled = client.submit(**run_args(teacher_checkpoint, **long), api_name="/run")
        wait_for(lambda: len(new_values(cancelled, DREAMS)) >= 1, 60, "the dreams of the second run")
        pressed = time.monotonic()
        cancelled.cancel()  # what the Stop button does in the browser besides /stop: cancel the event
        wait_for(cancelled.done, 5, "the cancelled job to end")
        wait_for(lambda: not _pruned_modules(before), 10, "the cancelled run's models to be freed")

        again = client.submit(**run_args(teacher_checkpoint), api_name="/run")
        again.result(timeout=120)
        assert "Done" in new_values(again, STATUS)[-1]
        assert len(new_values(again, SUMMARY)[-1]["data"]) == 5  # teacher, pruned, refit, recovered, noise


def _error(client: Client, **args: Any) -> str:
    """The message a run with these inputs ends with; it must be plain words, never a traceback."""
    job = client.submit(**args, api_name="/run")
    with pytest.raises(AppError) as raised:
        job.result(timeout=60)
        pytest.fail(f"a run with {args} did not fail: {job.outputs()[-1][STATUS]}")
    message = str(raised.value)
    assert "Traceback" not in message and 'File "' not in message, message
    return message


def test_every_bad_input_gets_a_plain_message(teacher_checkpoint, image_root, tmp_path, monkeypatch):
    state = torch.load(teacher_checkpoint, weights_only=True)
    broken = tmp_path / "local"
    broken.mkdir()
    (broken / "corrupt.pt").write_bytes(b"\x00 not a checkpoint")
    torch.save({"state_dict": state["state_dict"]}, broken / "no-arch.pt")
    torch.save({**state, "arch": "resnet56"}, broken / "wrong-arch.pt")
    torch.save(state, broken / "gone.pt")
    torch.save({**state, "normalization": {"mean": [0.5]}}, broken / "bad-normalization.pt")
    teachers = (teacher_checkpoint, *sorted(broken.iterdir()))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no registry weights cached
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # and no way to fetch them
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    for no_proxy in ("no_proxy", "NO_PROXY"):  # the app itself stays reachable
        monkeypatch.setenv(no_proxy, "127.0.0.1,localhost")

    with served(tiny_options(teachers, image_root)) as client:
        good = run_args(teacher_checkpoint)
        cases = [
            ({"share": 1.0}, "greater than maximum value 0.95"),
            ({"share": -0.2}, "less than minimum value 0"),
            ({"teacher_id": "akamaster/resnet21"}, "not in the list of choices"),
            ({"teacher_id": ""}, "not in the list of choices"),
            ({"teacher_id": "akamaster/resnet56"}, "Cannot fetch weights for 'akamaster/resnet56'"),
            ({"teacher_id": str(broken / "corrupt.pt")}, "Cannot read checkpoint"),
            ({"teacher_id": str(broken / "no-arch.pt")}, "does not record its architecture"),
            ({"teacher_id": str(broken / "wrong-arch.pt")}, "does not match the architecture"),
            ({"teacher_id": str(broken / "bad-normalization.pt")}, "needs 'mean' and 'std'"),
            ({"budget_name": "Huge"}, "not in the list of choices"),
            ({"dream_count": 0}, "Dream count must be a whole number from 1"),
            ({"dream_count": None}, "Dream count is empty"),
            ({"inversion_steps": 0}, "Inversion steps must be a whole number from 1"),
            ({"kd_epochs": -3}, "KD epochs must be a whole number from 1"),
            ({"kd_temperature": 0}, "KD temperature must be above 0"),
            ({"bn_weight": -1}, "BatchNorm weight (r_bn) must be at least 0"),
            ({"tv_weight": -1e-3}, "TV weight must be at least 0"),
            ({"adi_weight": -0.5}, "ADI weight must be at least 0"),
            ({"run_seed": -1}, "Seed must be a whole number from 0"),
            ({"bn_weight": 1e300}, "The optimization diverged"),
        ]
        (broken / "gone.pt").unlink()  # listed at launch, deleted before the run
        cases.append(({"teacher_id": str(broken / "gone.pt")}, "does not exist"))
        for change, expected in cases:
            message = _error(client, **{**good, **change})
            assert expected in message, f"{change}: {message}"


def _deployment(kind: str, root: Path, image_root: Path) -> tuple[Path, str]:
    """(data, device) of an app deployed with one thing wrong."""
    if kind == "class-mismatch":
        return write_image_folder(root / "three" / "test", 2, classes=("a", "b", "c")).parent, "cpu"
    if kind == "no-images":
        (root / "empty" / "test" / "cat").mkdir(parents=True)
        return root / "empty", "cpu"
    if kind == "missing-data":
        return root / "missing", "cpu"
    return image_root, "tpu"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("class-mismatch", "has 3 classes but the teacher predicts 10"),
        ("no-images", "No images found"),
        ("missing-data", "is neither 'cifar10' nor an existing directory"),
        ("bad-device", "device 'tpu'"),
    ],
    ids=["class-mismatch", "no-images", "missing-data", "bad-device"],
)
def test_a_bad_deployment_is_explained_on_run(teacher_checkpoint, image_root, tmp_path, kind, expected):
    data, device = _deployment(kind, tmp_path, image_root)
    options = AppOptions(data=str(data), teachers=(teacher_checkpoint,), device=device, update_interval=0.0)
    with served(options) as client:
        assert expected in _error(client, **run_args(teacher_checkpoint))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_explained(teacher_checkpoint, image_root):
    with served(AppOptions(data=str(image_root), teachers=(teacher_checkpoint,), device="cuda")) as client:
        assert "no CUDA device is available" in _error(client, **run_args(teacher_checkpoint))
