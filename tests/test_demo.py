"""The Gradio app, launched for real on a free local port and driven through its API with gradio_client.

Runs use tiny recipes. The recovery test uses the real ResNet-20 teacher on a 300-image slice
of the JPEG CIFAR-10 test split (a meaningful teacher is what makes "recovered above pruned"
a fair claim); the others use a generated teacher, so they run anywhere.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import tempfile
import threading
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
from gradio_client.exceptions import AppError, ValidationError

from demo.app import AppOptions, build_app, serve_locally
from demo.runner import teacher_option
from demo.settings import (
    BUDGETS,
    CONTROL_NAMES,
    CONTROLS,
    RECIPE_CONTROLS,
    InputError,
    Settings,
    by_name,
    default_values,
    parse_settings,
    recipe_values,
)
from demo.views import OUTPUTS, STAGES, LiveView, output_index
from dfkd_core import PRESETS, Stage, get_preset, load_checkpoint
from dfkd_core.prune import measured_sparsity
from dfkd_core.zoo import CIFAR10_CLASSES

from .conftest import shared_asset, write_image_folder

LABEL = {control.name: control.label for control in CONTROLS}
TINY = {"num_images": 40, "steps": 6, "epochs": 2}  # a recipe that runs in seconds on a CPU
STAGE_COUNT = len(STAGES)  # the quick budget refits and the app shows a showcase, so its runs have every stage


def client_of(url: str) -> Client:
    """An API client that, like a page, keeps up with the stream: it reads files where the server keeps
    them instead of downloading every dream tile of every update."""
    return Client(url, verbose=False, download_files=False)


@contextmanager
def served(options: AppOptions) -> Iterator[Client]:
    """The app as ``python demo/app.py`` serves it (same queue), on a free port, for one test."""
    with serve_locally(options) as app:
        yield client_of(app.local_url)


def tiny_options(teachers: tuple[Path, ...], data: Path | str, **kwargs: Any) -> AppOptions:
    return AppOptions(**{"data": str(data), "teachers": teachers, "device": "cpu", **kwargs})


def run_args(teacher: Path | str, sparsity: float = 0.5, **changes: Any) -> dict[str, Any]:
    """The /run inputs by control name: the quick budget cut to the tiny recipe, with ``changes``; a local
    ``teacher`` is named as the page names it (its file name)."""
    choice = teacher_option(str(teacher))[1]
    return {**default_values("quick", choice), **TINY, "sparsity": sparsity, **changes}


def new_values(job: Any, output: str) -> list[Any]:
    """The values one output took over a streamed job, skipping steps that left it unchanged."""
    index = output_index(output)
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


@pytest.mark.slow
@pytest.mark.assets
def test_quick_run_streams_dreams_and_accuracy_and_recovers(tmp_path):
    teacher = shared_asset("weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt").resolve()
    data = jpeg_slice(tmp_path / "slice", per_class=30)
    with served(tiny_options((teacher,), data)) as client:
        job = client.submit(**run_args(teacher, sparsity=0.8), api_name="/run")
        job.result(timeout=300)
        outputs = job.outputs()
        files = {Path(f["path"]).name: Path(f["path"]) for f in new_values(job, "files")[-1]}  # the server's copies
        assert set(files) == {"student.pt", "dreams.png", "dreams.pt", "report.json"}
        student = load_checkpoint(files["student.pt"])  # read while served: the copies go when the tab's session ends

    grids = new_values(job, "dreams")
    assert len(grids) >= 3, "the showcase tiles are refreshed while the dreams form"
    steps = [int(grid[0]["caption"].rsplit(" ", 1)[1].split("/")[0]) for grid in grids]
    assert steps == sorted(steps) and steps[0] < 20, "the showcase starts from noise and moves forward"
    assert [tile["caption"] for tile in grids[-1]] == [f"{c} · 200/200" for c in CIFAR10_CLASSES]
    assert len(new_values(job, "losses")) >= 2, "the loss plot shows while dreaming (throttled) and at its end"
    assert len(new_values(job, "accuracy")) >= 3, "the accuracy plot grows epoch by epoch"
    assert [row[0] for row in new_values(job, "log")[-1]["data"]] == [0, 1, 2]
    summaries = new_values(job, "summary")
    assert len(summaries) == 2, "the summary is cleared at the start and filled at the end"
    dreams, summary = output_index("dreams"), output_index("summary")
    first_grid = next(i for i, out in enumerate(outputs) if out[dreams] in grids)
    first_summary = next(i for i, out in enumerate(outputs) if out[summary] in summaries[1:])
    assert first_grid < first_summary, "dreams stream in long before the end"
    statuses = new_values(job, "status")
    assert any(f"Stage 3 of {STAGE_COUNT}" in s and "left in this stage" in s for s in statuses)
    assert "Done" in statuses[-1] and "full test split (300 images)" in statuses[-1]
    assert len(new_values(job, "layers")) == 1, "the per-layer chart appears once, after pruning"

    rows = {row[0]: row for row in summaries[-1]["data"]}
    teacher_acc, pruned = percent(rows["Teacher (dense)"][1]), percent(rows["Pruned, no recovery"][1])
    recovered = percent(rows["Recovered: distillation on dreams"][1])
    assert recovered > pruned + 5, f"recovered {recovered}% is not above pruned {pruned}%"
    noise = percent(rows["Baseline: same recipe on noise"][1])
    assert teacher_acc > pruned and noise < recovered, f"the same recipe on noise ({noise}%) beat the dreams"
    refit = percent(rows["Refit on dreams, before distillation"][1])
    assert refit > pruned, "the quick budget refits the pruned layers"
    nonzero = {name: int(row[2].replace(",", "")) for name, row in rows.items()}
    assert nonzero["Recovered: distillation on dreams"] < 0.3 * nonzero["Teacher (dense)"]

    assert not any(name.endswith("_mask") for name in student.model.state_dict())
    assert measured_sparsity(student.model) == pytest.approx(0.8, abs=1e-3)


def _pruned_modules(ignore: weakref.WeakSet | None = None) -> list[torch.nn.Module]:
    """Live pruned layers (they carry a mask), leaving out those in ``ignore`` (alive before the test)."""
    gc.collect()
    found = [m for m in gc.get_objects() if isinstance(m, torch.nn.Conv2d) and hasattr(m, "weight_mask")]
    return [m for m in found if ignore is None or m not in ignore]


@pytest.mark.slow
def test_stop_ends_the_run_frees_it_and_a_new_run_works(teacher_checkpoint, image_root):
    long = {"steps": 2_000}  # the page's most: minutes on a CPU, so Stop ends it first
    before = weakref.WeakSet(_pruned_modules())
    with served(tiny_options((teacher_checkpoint,), image_root)) as server:
        client = client_of(server.src)
        job = client.submit(**run_args(teacher_checkpoint, **long), api_name="/run")
        wait_for(lambda: len(new_values(job, "dreams")) >= 2, 60, "the first dream grids")
        assert _pruned_modules(before), "a running job holds its pruned student"

        other_tab = client_of(client.src)  # a second browser session
        assert "Nothing is running" in other_tab.predict(api_name="/stop")
        seen = len(new_values(job, "status"))
        wait_for(lambda: len(new_values(job, "status")) > seen, 30, "the run to go on after another tab's Stop")

        assert "Stopped" in client.predict(api_name="/stop")
        job.result(timeout=60)  # a guard against a hang only: how fast Stop acts is measured by demo/timing.py
        assert "Stopped" in new_values(job, "status")[-1]
        wait_for(lambda: not _pruned_modules(before), 10, "the stopped run's models to be freed")

        cancelled = client.submit(**run_args(teacher_checkpoint, **long), api_name="/run")
        wait_for(lambda: len(new_values(cancelled, "dreams")) >= 1, 60, "the dreams of the second run")
        cancelled.cancel()  # an API client that gives up on its job
        wait_for(cancelled.done, 60, "the cancelled job to end")
        wait_for(lambda: not _pruned_modules(before), 10, "the cancelled run's models to be freed")

        again = client.submit(**run_args(teacher_checkpoint), api_name="/run")
        again.result(timeout=120)
        assert "Done" in new_values(again, "status")[-1]
        assert len(new_values(again, "summary")[-1]["data"]) == 5  # teacher, pruned, refit, recovered, noise


@pytest.mark.slow
def test_stop_works_while_the_queue_is_full(teacher_checkpoint, image_root, monkeypatch):
    """Stop does not wait in the run queue: with one run going on and the queue full behind it, a tab can still
    stop its run (and another tab is told that nothing of its own is running)."""
    import demo.app as app_module

    monkeypatch.setattr(app_module, "QUEUE_SIZE", 1)
    long = {"steps": 2_000}
    with served(tiny_options((teacher_checkpoint,), image_root)) as server:
        running, waiting, late = (client_of(server.src) for _ in range(3))
        first = running.submit(**run_args(teacher_checkpoint, **long), api_name="/run")
        wait_for(lambda: len(new_values(first, "dreams")) >= 1, 60, "the first run to start")
        second = waiting.submit(**run_args(teacher_checkpoint, **long), api_name="/run")
        wait_for(lambda: second.status().code.name in ("IN_QUEUE", "QUEUE_FULL"), 30, "the second run to queue")
        with pytest.raises(ValidationError, match=r"The queue is full \(1 runs waiting\)"):
            late.predict(**run_args(teacher_checkpoint), api_name="/run")
        assert "Nothing is running" in late.predict(api_name="/stop")
        assert "Stopped" in running.predict(api_name="/stop")
        first.result(timeout=60)
        assert "Stopped" in waiting.predict(api_name="/stop")
        second.result(timeout=60)
        assert "Stopped" in new_values(second, "status")[-1], "stopped while it waited, or as soon as it started"


@pytest.mark.slow
def test_the_server_takes_no_uploads(teacher_checkpoint, image_root):
    import urllib.error
    import urllib.request

    with served(tiny_options((teacher_checkpoint,), image_root)) as client:
        boundary = "dfkd"
        body = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.txt"\r\n\r\nhello\r\n--{boundary}--\r\n'
        for route in ("gradio_api/upload", "gradio_api/process_recording"):
            request = urllib.request.Request(
                client.src.rstrip("/") + "/" + route,
                data=body.encode(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 403 and refused.value.read() == b"This app takes no uploads."
        assert "Nothing is running" in client.predict(api_name="/stop"), "the rest of the API still answers"


@pytest.mark.slow
def test_a_run_cancelled_while_it_waits_does_not_lock_its_tab(teacher_checkpoint, image_root):
    """A client that cancels its queued job never reaches the run, which would clear the tab's queued mark; the
    next Run of that tab is still admitted."""
    with served(tiny_options((teacher_checkpoint,), image_root)) as server:
        running, cancelling = client_of(server.src), client_of(server.src)
        first = running.submit(**run_args(teacher_checkpoint, steps=2_000), api_name="/run")
        wait_for(lambda: len(new_values(first, "dreams")) >= 1, 60, "the first run to start")
        queued = cancelling.submit(**run_args(teacher_checkpoint), api_name="/run")
        wait_for(lambda: queued.status().code.name == "IN_QUEUE", 30, "the second run to queue")
        queued.cancel()
        wait_for(lambda: queued.done(), 30, "the cancelled job to end")
        again = cancelling.submit(**run_args(teacher_checkpoint), api_name="/run")
        assert "Stopped" in running.predict(api_name="/stop")
        first.result(timeout=60)
        again.result(timeout=300)
        assert "Done" in new_values(again, "status")[-1]


def _error(client: Client, **args: Any) -> str:
    """The message a run with these inputs is refused with (before it queues) or ends with; it must be plain
    words, never a traceback."""
    with pytest.raises((AppError, ValidationError)) as raised:
        job = client.submit(**args, api_name="/run")
        job.result(timeout=60)
        pytest.fail(f"a run with {args} did not fail: {job.outputs()[-1][output_index('status')]}")
    message = str(raised.value)
    assert "Traceback" not in message and 'File "' not in message, message
    unsent = message
    for value in args.values():  # a value the client sent may be named back to it
        unsent = unsent.replace(str(value), "") if isinstance(value, str) and value else unsent
    for server_folder in (tempfile.gettempdir(), os.getcwd()):  # where the tests' files and the repository are
        assert server_folder not in unsent, f"a server path reached the page: {message}"
    return message


@pytest.mark.slow
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
            ({"sparsity": 1.0}, "sparsity must be a number in [0, 1)"),
            ({"sparsity": -0.2}, "sparsity must be a number in [0, 1)"),
            ({"teacher": "akamaster/resnet21"}, "is not one of the choices"),
            ({"teacher": ""}, "pick one from the list first"),
            ({"teacher": "akamaster/resnet56"}, "Cannot fetch weights for 'akamaster/resnet56'"),
            ({"teacher": "corrupt.pt"}, "Cannot read checkpoint"),
            ({"teacher": "no-arch.pt"}, "does not record its architecture"),
            ({"teacher": "wrong-arch.pt"}, "does not match the architecture"),
            ({"teacher": "bad-normalization.pt"}, "needs 'mean' and 'std'"),
            ({"teacher": str(broken / "corrupt.pt")}, "is not one of the choices"),  # paths are not choices
            ({"budget": "Huge"}, "is not one of the choices"),
            ({"num_images": 0}, f"{LABEL['num_images']} must be a whole number from 1"),
            ({"num_images": None}, f"{LABEL['num_images']} is empty"),
            ({"steps": 0}, f"{LABEL['steps']} must be a whole number from 1"),
            ({"epochs": -3}, f"{LABEL['epochs']} must be a whole number from 1"),
            ({"lr": "0"}, f"{LABEL['lr']} must be above 0"),
            ({"lr": "2"}, f"{LABEL['lr']} must be at most 1"),
            ({"lr": "fast"}, f"{LABEL['lr']} must be a number"),
            ({"seed": -1}, f"{LABEL['seed']} must be a whole number from 0"),
        ]
        (broken / "gone.pt").unlink()  # listed at launch, deleted before the run
        cases.append(({"teacher": "gone.pt"}, "does not exist"))
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_explained(teacher_checkpoint, image_root):
    with served(AppOptions(data=str(image_root), teachers=(teacher_checkpoint,), device="cuda")) as client:
        assert "no CUDA device is available" in _error(client, **run_args(teacher_checkpoint))


# --- one table of controls, one of outputs: the page, the parser and the scripts all read them ----------


def _event(app: Any, api_name: str) -> Any:
    return next(fn for fn in app.fns.values() if fn.api_name == api_name)


def test_the_page_the_api_and_the_parser_follow_the_control_table(teacher_checkpoint):
    app = build_app(AppOptions(teachers=(teacher_checkpoint,), device="cpu"))
    run = _event(app, "run")
    controls = run.inputs
    assert [c.elem_id for c in controls] == [c.elem_id for c in CONTROLS], "click inputs in table order"
    assert [c.label for c in controls] == [c.label for c in CONTROLS]
    assert [getattr(c, "info", None) or "" for c in controls] == [c.info for c in CONTROLS]
    parameters = app.get_api_info()["named_endpoints"]["/run"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == list(CONTROL_NAMES), "/run takes the controls by name"
    defaults = default_values("quick", teacher_checkpoint.name)  # the page starts on a CPU with quick
    assert [c.value for c in controls] == [defaults[name] for name in CONTROL_NAMES]
    assert [c.elem_id for c in run.outputs] == list(OUTPUTS), "outputs in the order of the named table"

    budget_change = _event(app, "recipe_values")
    assert [c.elem_id for c in budget_change.outputs] == [c.elem_id for c in RECIPE_CONTROLS]
    assert [f.name for f in dataclasses.fields(Settings)] == list(CONTROL_NAMES)


def test_output_positions_for_api_clients_come_from_the_output_table(teacher_checkpoint):
    """demo/timing.py and these tests read a /run step's outputs by name through output_index."""
    app = build_app(AppOptions(teachers=(teacher_checkpoint,), device="cpu"))
    returns = app.get_api_info()["named_endpoints"]["/run"]["returns"]
    components = {c.elem_id: c for c in _event(app, "run").outputs}
    api_outputs = [name for name in OUTPUTS if name != "run"]  # Gradio sends no buttons to API clients
    assert len(returns) == len(api_outputs)
    for name in api_outputs:
        assert returns[output_index(name)]["component"].lower() == type(components[name]).__name__.lower()
    with pytest.raises(ValueError, match="not sent"):
        output_index("run")


def test_settings_round_trip_through_the_table_and_run_the_preset():
    values = default_values("quick", "akamaster/resnet20")
    settings = parse_settings(by_name([values[name] for name in CONTROL_NAMES]), {"teacher": ["akamaster/resnet20"]})
    assert dataclasses.asdict(settings) == values
    assert settings.recipe() == PRESETS["quick"], "the quick budget runs the quick preset as it is"
    channels = parse_settings({**values, "granularity": "channel"}, {"teacher": ["akamaster/resnet20"]})
    assert channels.recipe() == get_preset("quick", "channel"), "... and for channels, its gradual version"
    assert recipe_values("best") == [c.recipe_value(PRESETS["best"]) for c in RECIPE_CONTROLS]
    changed = parse_settings({**values, "steps": 7.0, "lr": " 0.03 "}, {"teacher": ["akamaster/resnet20"]})
    assert changed.steps == 7 and isinstance(changed.steps, int)
    assert changed.recipe().dream.steps == 7 and changed.recipe().distill.lr == 0.03
    assert parse_settings({**values, "lr": "Auto"}, {"teacher": ["akamaster/resnet20"]}).recipe().distill.lr == "auto"
    finer = parse_settings({**values, "sparsity": 0.97}, {"teacher": ["akamaster/resnet20"]})
    assert finer.sparsity == 0.97, "the parser's sparsity rule is the library's [0, 1), not the slider's grid"
    assert set(BUDGETS) == set(PRESETS), "the budgets are the library's presets"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("sparsity", 1.0, "[0, 1)"),  # the library's rule, not the slider's 0.95
        ("sparsity", "many", "must be a number"),
        ("num_images", 2.5, "must be a whole number"),
        ("num_images", True, "must be a number, got True"),
        ("lr", "nan", "must be a finite number"),
        ("teacher", "elsewhere.pt", "is not one of the choices"),
        ("budget", "", "pick one from the list first"),
    ],
)
def test_a_bad_value_is_refused_naming_the_control(name, value, expected):
    values = {**default_values("quick", "akamaster/resnet20"), name: value}
    with pytest.raises(InputError) as refused:
        parse_settings(values, {"teacher": ["akamaster/resnet20"]})
    assert str(refused.value).startswith(LABEL[name]) and expected in str(refused.value)


def test_the_stages_a_run_shows_follow_its_recipe():
    assert set(STAGES) == set(Stage), "one label per stage"
    assert LiveView("t", 0.5, 2, "cpu", refit=True, showcase=2).stages == tuple(Stage)
    assert Stage.REFIT not in LiveView("t", 0.5, 2, "cpu", refit=False, showcase=2).stages
    assert Stage.SHOWCASE not in LiveView("t", 0.5, 2, "cpu", refit=True).stages


# --- start-up, sessions, the stored example ------------------------------------------------------------


@pytest.mark.slow
def test_the_page_is_served_at_once_while_the_start_up_downloads(teacher_checkpoint, image_root):
    import httpx

    from demo.startup import Preparation, Step

    release = threading.Event()
    slow = Preparation(
        [Step("downloading CIFAR-10's test split (first start only)", release.wait, lambda: "42 of 170 MB")]
    )
    with serve_locally(tiny_options((teacher_checkpoint,), image_root), slow) as app:
        assert httpx.get(app.local_url, timeout=10).status_code == 200
        assert not slow.done, "the page is served while the start-up still waits"
        client = client_of(app.local_url)
        job = client.submit(**run_args(teacher_checkpoint), api_name="/run")
        wait_for(
            lambda: any("Waiting for the app to finish starting" in s for s in new_values(job, "status")),
            30,
            "a waiting run",
        )
        waiting = next(s for s in new_values(job, "status") if "Waiting" in s)
        assert "downloading CIFAR-10" in waiting and "42 of 170 MB" in waiting
        release.set()
        job.result(timeout=120)
        assert "Done" in new_values(job, "status")[-1], "the run goes on once the start-up is done"
    failed = Preparation([Step("downloading", lambda: 1 / 0)], explain=lambda err: "the host did not answer").start()
    assert failed.wait(5) and failed.status() == "Getting ready failed: the host did not answer"


def _run_folders(app: Any) -> list[Path]:
    return [p for p in app.deployment.sessions.root.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_a_closed_session_leaves_no_files(teacher_checkpoint, image_root, monkeypatch):
    from gradio.processing_utils import hash_file
    from gradio.utils import get_upload_folder

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # how soon the server notices a client has gone
    with serve_locally(tiny_options((teacher_checkpoint,), image_root)) as app:
        tab = client_of(app.local_url)
        tab.submit(**run_args(teacher_checkpoint), api_name="/run").result(timeout=120)
        (folder,) = _run_folders(app)
        assert (folder / "student.pt").is_file(), "the downloads are in the session's own folder"
        served_copies = [
            Path(get_upload_folder()) / hash_file(f) for f in folder.iterdir() if f.suffix in (".pt", ".json")
        ]
        assert served_copies and all(copy.is_dir() for copy in served_copies), "Gradio serves copies of the downloads"
        tab.close()  # the tab is closed: its heartbeat ends, Gradio's unload event fires
        wait_for(lambda: not _run_folders(app), 30, "the closed session's folder to be removed")
        assert not any(copy.exists() for copy in served_copies), "and the copies Gradio served them from"

        idle = client_of(app.local_url)
        idle.submit(**run_args(teacher_checkpoint), api_name="/run").result(timeout=120)
        assert len(_run_folders(app)) == 1
        app.deployment.sessions.lifetime = 0.0  # the next run sweeps every session idle longer than this
        assert app.deployment.sessions.sweep() and not _run_folders(app)


def test_the_stored_example_is_small_current_and_shown_on_load():
    from demo.example import EXAMPLE_BUDGET, EXAMPLE_DIR, example_outputs, load_recording
    from dfkd_core.pipeline import SHOWCASE_STEPS

    recording, snapshot = load_recording()  # refuses a showcase.png that is not the recorded one
    assert sum(p.stat().st_size for p in EXAMPLE_DIR.iterdir()) < 200_000, "well under 1 MB"
    assert recording["made_by"].startswith("python demo/example.py")
    assert recording["settings"]["budget"] == EXAMPLE_BUDGET and recording["settings"]["sparsity"] == 0.75
    current = json.loads(json.dumps(dataclasses.asdict(BUDGETS[EXAMPLE_BUDGET].recipe)))
    recorded = dict(recording["recipe"])
    recorded["distill"] = {"gradual_epochs": 0, "gradual_start": 0.5, **recorded["distill"]}  # recorded in one cut
    assert recorded == current, "the budget's recipe changed: run demo/example.py again"
    assert snapshot.step == snapshot.total == SHOWCASE_STEPS and len(snapshot.images) == 20
    shown = example_outputs()
    assert "Stored example" in shown["status"] and "Press Run to make your own" in shown["status"]
    assert [caption for _, caption in shown["dreams"]] == [f"{c} · 200/200" for c in CIFAR10_CLASSES]
    rows = {row[0]: row for row in shown["summary"]}
    assert percent(rows["Recovered: distillation on dreams"][1]) > percent(rows["Pruned, no recovery"][1]) + 20
    assert shown["accuracy"] is not None and shown["layers"] is not None and shown["losses"] is not None


@pytest.mark.slow
def test_a_recording_replays_as_the_run_showed_it(teacher_checkpoint, image_root, tmp_path):
    from demo.example import example_outputs, record
    from demo.runner import RunPlan

    local, choice = teacher_option(str(teacher_checkpoint))
    settings = parse_settings(run_args(teacher_checkpoint), {"teacher": [choice]})
    plan = RunPlan(
        settings,
        str(image_root),
        teacher=str(local[0]),
        device="cpu",
        update_interval=0.0,
        out_dir=str(tmp_path / "run"),
    )
    view = LiveView(choice, settings.sparsity, settings.epochs, "cpu", refit=True, showcase=plan.showcase)
    live: dict[str, Any] = {}
    from demo.runner import stream_run

    for item in stream_run(plan):
        live |= view.apply(item)
    record(plan, tmp_path / "example", "python demo/example.py --test")
    shown = example_outputs(tmp_path / "example")
    # Everything but the latency, which the recording's own run measured again, is as the live run showed it.
    assert [row[:-1] for row in shown["summary"]] == [row[:-1] for row in live["summary"]]
    assert shown["log"] == live["log"]
    assert all(re.fullmatch(r"[\d.e+]+ ms \(batch 1\) · [\d.e+]+ ms \(batch 4\)", row[-1]) for row in shown["summary"])
    assert [c for _, c in shown["dreams"]] == [c for _, c in live["dreams"]]
    assert all((a == b).all() for (a, _), (b, _) in zip(shown["dreams"], live["dreams"])), "the same pixels"
    (tmp_path / "example" / "showcase.png").write_bytes(b"edited by hand")
    assert example_outputs(tmp_path / "example") == {}, "an edited example is not shown"


def test_zero_gpu_requests_fit_a_visitors_quota_and_grow_with_the_work():
    from demo.runner import MAX_GPU_SECONDS, RunPlan, _gpu_seconds

    def seconds(teacher: str, budget: str, **changes: Any) -> int:
        values = {**default_values(budget, teacher), **changes}
        return _gpu_seconds(RunPlan(parse_settings(values, {"teacher": [teacher]}), "cifar10"))

    duration_factor, signed_out_quota = 1.5, 120  # spaces multiplies requests on its current GPUs; seconds a day
    assert seconds("akamaster/resnet20", "default") * duration_factor <= signed_out_quota
    assert seconds("akamaster/resnet20", "quick") < seconds("akamaster/resnet20", "default")
    assert seconds("akamaster/resnet56", "default") > seconds("akamaster/resnet20", "default")
    assert seconds("akamaster/resnet20", "default", num_images=8_192) == MAX_GPU_SECONDS


@pytest.mark.slow
def test_a_run_ends_at_the_apps_time_limit_and_keeps_what_it_made(teacher_checkpoint, image_root):
    with served(tiny_options((teacher_checkpoint,), image_root, run_minutes=0.05)) as client:
        job = client.submit(**run_args(teacher_checkpoint, steps=2_000), api_name="/run")
        job.result(timeout=60)  # ends without an error, like Stop
        status, dreams = new_values(job, "status")[-1], new_values(job, "dreams")
    assert "Stopped" in status and "limit of 0.05 minutes per run" in status and "smaller budget" in status
    assert dreams and dreams[-1], "the dreams made before the limit left the page"


@pytest.mark.slow
def test_a_gpu_schedulers_refusal_reaches_the_visitor_unchanged_with_a_hint(
    teacher_checkpoint, image_root, monkeypatch
):
    import gradio as gr

    import demo.app

    refusal = "You have exceeded your free ZeroGPU quota (75s requested vs. 40s left). Try again in 20:13:01."

    def refused(plan):  # what spaces.GPU raises in place of the run when the visitor's quota is spent
        raise gr.Error(refusal, title="ZeroGPU quota exceeded")
        yield

    monkeypatch.setattr(demo.app, "stream_run", refused)
    with served(tiny_options((teacher_checkpoint,), image_root)) as client:
        job = client.submit(**run_args(teacher_checkpoint), api_name="/run")
        with pytest.raises(AppError, match="exceeded your free ZeroGPU quota"):
            job.result(timeout=60)
        status = new_values(job, "status")[-1]
    assert refusal in status and "choose the Quick budget" in status and "duplicate the Space" in status


@pytest.mark.slow
def test_several_clients_at_once_and_a_greedy_one(teacher_checkpoint, image_root):
    """Load: API clients at once, as scripts would come. The one asking for the maximum of everything is
    refused before it queues, with a message naming the limit; a second Run from a busy session is refused;
    the others complete, each with its own files; the page keeps loading in under 2 s meanwhile."""
    import httpx

    with serve_locally(tiny_options((teacher_checkpoint,), image_root)) as app:
        greedy = client_of(app.local_url)
        maximum = {c.name: c.high for c in RECIPE_CONTROLS if c.whole}  # dream count, steps, epochs at their caps
        with pytest.raises(ValidationError, match="image-steps, above this app's limit"):
            greedy.predict(**run_args(teacher_checkpoint, **maximum), api_name="/run")

        clients = [client_of(app.local_url) for _ in range(3)]
        jobs = [c.submit(**run_args(teacher_checkpoint, seed=i), api_name="/run") for i, c in enumerate(clients)]
        # One slot: whichever job the queue takes first starts; the others wait, and a session with a waiting
        # job is as busy as one with a running job.
        wait_for(lambda: any(new_values(job, "status") for job in jobs), 120, "a first run to start")
        with pytest.raises(ValidationError, match="already has a run waiting or going"):
            clients[0].predict(**run_args(teacher_checkpoint), api_name="/run")
        loads = []
        while not jobs[-1].done():
            started = time.monotonic()
            assert httpx.get(app.local_url, timeout=30).status_code == 200
            loads.append(time.monotonic() - started)
            time.sleep(1)
        assert loads and max(loads) < 2, f"the page took {max(loads):.1f} s to load while runs went on"

        for seed, job in enumerate(jobs):  # each session gets its own run's files: its report names its seed
            job.result(timeout=600)
            assert "Done" in new_values(job, "status")[-1]
            files = {Path(f["path"]).name: Path(f["path"]) for f in new_values(job, "files")[-1]}
            assert json.loads(files["report.json"].read_text())["settings"]["seed"] == seed


def test_the_folders_of_an_app_that_was_killed_are_removed_at_the_next_start(tmp_path):
    """A SIGTERM leaves the app's root folder behind; the next app removes every root whose owner process is
    gone (or that names none), and never the root of an app still running."""
    import subprocess

    from demo.sessions import OWNER_FILE, ROOT_PREFIX, remove_abandoned_roots

    gone = subprocess.Popen(["true"])
    gone.wait()
    roots = {name: tmp_path / f"{ROOT_PREFIX}{name}" for name in ("killed", "nameless", "running")}
    for root in roots.values():
        (root / "run-x").mkdir(parents=True)
    (roots["killed"] / OWNER_FILE).write_text(str(gone.pid))
    (roots["running"] / OWNER_FILE).write_text(str(os.getpid()))
    assert sorted(remove_abandoned_roots(tmp_path)) == sorted([roots["killed"], roots["nameless"]])
    assert roots["running"].is_dir() and not roots["killed"].exists()
