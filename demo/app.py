"""The live Gradio app: pick a teacher and a prune ratio, watch dreams form and accuracy recover.

Start it with ``python demo/app.py`` (or ``dfkd demo``) and open http://127.0.0.1:7860.
Options: ``--host``/``--port``, ``--data`` (evaluation data: "cifar10", downloaded on first
use, or an ImageFolder root; env ``DFKD_DATA``), ``--teacher-dir`` (local checkpoints offered
besides the registry, repeatable; env ``DFKD_TEACHERS``, a path list), ``--device``.

The page opens on a stored example (:mod:`demo.example`) and is served at once: first-use
downloads run in the background (:mod:`demo.startup`) with their progress on the page. A run
renders the events of :func:`dfkd_core.recover` and nothing else: the pruning cliff, a showcase
of dreams forming step by step, the student's accuracy climbing back next to the teacher, the
pruned level and the same recipe on noise, then a summary table and the files to download. Each
browser session has its own run and files (:mod:`demo.sessions`); Stop cancels within a few
seconds and frees the run's memory, and a closed tab's files are deleted.

The controls come from :data:`demo.settings.CONTROLS` and the outputs from
:data:`demo.views.OUTPUTS`; the Run event takes the controls' values in the table's order.
"""

from __future__ import annotations

import argparse
import html
import inspect
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # started as a script (python demo/app.py, a Hugging Face Space)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr
import torch
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from demo.example import example_outputs
from demo.runner import (
    UPDATE_INTERVAL_S,
    ZERO_GPU,
    Failure,
    RunPlan,
    data_label,
    find_local_teachers,
    friendly_error,
    local_teacher_names,
    preparations,
    stream_run,
    teacher_choices,
    teacher_label,
)
from demo.sessions import RunControl, Sessions
from demo.settings import (
    BUDGETS,
    CONTROL_NAMES,
    CONTROLS,
    RECIPE_CONTROLS,
    Control,
    InputError,
    Settings,
    by_name,
    check_work,
    default_values,
    describe_work_limit,
    parse_settings,
    recipe_values,
)
from demo.shipped import adopt_shipped
from demo.startup import Preparation, Step
from demo.views import OUTPUTS, SUMMARY_HEADERS, LiveView
from dfkd_core import resolve_device
from dfkd_core.data import load_eval_set
from dfkd_core.device import limit_threads
from dfkd_core.zoo import CHECKPOINT_SUFFIXES

__all__ = ["AppOptions", "build_app", "create_app", "main", "serve_locally"]

log = logging.getLogger("dfkd.demo")

DEFAULT_TEACHER = "akamaster/resnet20"
PAPER_URL = "https://arxiv.org/abs/2511.20702"
DEEPINVERSION_URL = "https://arxiv.org/abs/1912.08795"
DOWNLOAD_STALL_S = 60  # a first-use download that receives nothing for this long fails instead of hanging
RUN_MINUTES = 60.0  # the longest run the app allows: a Best run of a ResNet-20 on 2 CPU cores fits
STARTUP_POLL_S = 1.0  # how often the page asks how the start-up goes, while it goes on
INTRO = f"""
# Give a pruned network its accuracy back, without a single training image

1. **Prune**: remove most of the weights (or whole channels, for a network that runs faster) of a pretrained
   CIFAR-10 classifier and watch its accuracy fall off a cliff.
2. **Dream**: starting from random noise, DeepInversion paints images that the network recognizes,
   guided only by the statistics its BatchNorm layers remember from training.
3. **Refit and distill**: the pruned network learns to answer like the original on those dreams, and its accuracy
   climbs back, next to what the same recipe on plain noise gives.

Pick a teacher and a sparsity, then press **Run**. The method: [the paper]({PAPER_URL}), after
[DeepInversion]({DEEPINVERSION_URL}) (Yin et al., CVPR 2020).
"""
CSS = """
#dreams .caption-label { font-size: 0.8em; }
@media (max-width: 640px) {  /* a phone: two tiles across instead of five */
  #dreams .grid-container { grid-template-columns: repeat(2, minmax(100px, 1fr)) !important; }
}
"""
THEME = gr.themes.Soft(primary_hue="indigo", font=("ui-sans-serif", "system-ui", "sans-serif"))

Component = gr.components.Component


@dataclass(frozen=True)
class AppOptions:
    """How the app is deployed: which data and teachers it offers, where and how fast it runs."""

    data: str = "cifar10"  # evaluation data: "cifar10" or an ImageFolder root with test/
    teachers: tuple[Path, ...] = ()  # local checkpoints, offered besides the registry
    device: str = "auto"
    concurrency: int = 1  # runs at a time; one GPU serves one run well
    update_interval: float = UPDATE_INTERVAL_S  # seconds between page updates of the same kind
    run_minutes: float = RUN_MINUTES  # a run is ended after this long, so no visitor holds the app for hours


def describe_device(device: str) -> tuple[str, bool]:
    """Where runs happen, in words, and whether that is a GPU."""
    if ZERO_GPU:
        return "a ZeroGPU GPU (taken for each run)", True
    try:
        resolved = resolve_device(device)
    except ValueError as err:
        return f"{device!r}, which is not usable here ({err})", False
    if resolved.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(resolved)})", True
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''}; no GPU found)", False


def default_teacher(local: Sequence[Path]) -> str:
    """The smallest local checkpoint (the quickest to run) if there is one, else a registry ResNet-20."""
    if not local:
        return DEFAULT_TEACHER
    smallest = min(local, key=lambda p: p.stat().st_size)
    return next(name for name, path in local_teacher_names(local).items() if path == smallest)


@dataclass(frozen=True)
class Deployment:
    """What the page offers and where it runs, worked out once from the options."""

    options: AppOptions
    teachers: tuple[tuple[str, str], ...]  # the teacher dropdown's (label, value) pairs
    local: dict[str, Path]  # local checkpoints by the name the page uses for them
    device_text: str
    on_gpu: bool
    preparation: Preparation  # first-use downloads, in the background after launch
    sessions: Sessions

    @classmethod
    def of(cls, options: AppOptions, preparation: Preparation | None = None) -> Deployment:
        device_text, on_gpu = describe_device(options.device)
        if preparation is None:
            steps = preparations(options.data, default_teacher(options.teachers))
            steps.append(Step("reading the evaluation images", lambda: load_eval_set(options.data)))
            steps.append(Step("putting the shipped dreams into the dream cache", adopt_shipped))
            preparation = Preparation(steps, friendly_error)
        local = local_teacher_names(options.teachers)
        return cls(
            options, tuple(teacher_choices(options.teachers)), local, device_text, on_gpu, preparation, Sessions()
        )

    @property
    def default_budget(self) -> str:
        return "default" if self.on_gpu else "quick"

    def choices(self) -> dict[str, list[tuple[str, str]]]:
        """The (label, value) pairs of every control that offers choices."""
        return {
            "teacher": list(self.teachers),
            "granularity": [("weights", "weight"), ("channels", "channel")],
            "budget": [(b.label, name) for name, b in BUDGETS.items()],
        }


# --- the page ----------------------------------------------------------------------------------------------


def control_component(control: Control, value: Any, choices: Sequence[tuple[str, str]] = ()) -> Component:
    """The Gradio component of one row of the control table."""
    common: dict[str, Any] = {"label": control.label, "info": control.info or None, "elem_id": control.elem_id}
    if control.kind == "dropdown":
        return gr.Dropdown(list(choices), value=value, **common)
    if control.kind == "radio":
        return gr.Radio(list(choices), value=value, **common)
    if control.kind == "slider":
        return gr.Slider(control.low, control.high, value=value, step=control.step, **common)
    if control.kind == "text":
        return gr.Textbox(str(value), max_lines=1, **common)
    # No minimum/maximum here: the app's own check names the control in plain words.
    return gr.Number(value, precision=0 if control.whole else None, **common)


def _header(deployment: Deployment) -> gr.Markdown:
    """The introduction, where runs happen, the Duplicate button on a Space, and the start-up status."""
    space = os.environ.get("SPACE_ID")
    code = f" · [the code](https://huggingface.co/spaces/{space}/tree/main)" if space else ""
    gr.Markdown(INTRO.rstrip() + code)
    quick = BUDGETS["quick"].label
    with gr.Row(equal_height=True):
        gr.Markdown(
            f"Runs on **{deployment.device_text}**. Accuracy is measured on {data_label(deployment.options.data)}."
            + ("" if deployment.on_gpu else f" Without a GPU, use the {quick} budget.")
        )
        if space:  # the button does nothing off Spaces
            gr.DuplicateButton("Duplicate this Space: your own hardware and GPU quota", scale=0)
    return gr.Markdown(deployment.preparation.status(), elem_id="startup")


def _controls_column(
    deployment: Deployment, shown: dict[str, Any]
) -> tuple[dict[str, Component], dict[str, Component], gr.Button]:
    """The controls (in table order, advanced ones in a collapsed panel), Run, Stop and the status.

    Returns the controls by name, the outputs this column holds (status, run) and the Stop button.
    """
    values = default_values(deployment.default_budget, default_teacher(deployment.options.teachers))
    choices = deployment.choices()
    controls: dict[str, Component] = {}
    for advanced, group in itertools.groupby(CONTROLS, key=lambda c: c.advanced):
        with gr.Accordion("Advanced: the recipe", open=False) if advanced else nullcontext():
            for control in group:
                controls[control.name] = control_component(control, values[control.name], choices.get(control.name, ()))
            if advanced:
                gr.Markdown(describe_work_limit(deployment.on_gpu), elem_id="work-limit")
    with gr.Row():
        run_button = gr.Button("Run", variant="primary", elem_id="run")
        stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
    status = gr.HTML(shown.get("status", "Press Run to start."), label="Progress", elem_id="status")
    return controls, {"status": status, "run": run_button}, stop_button


def _results_column(shown: dict[str, Any]) -> dict[str, Component]:
    """The dreams, the plots, the tables and the downloads, by output name (also their HTML ids); ``shown``
    holds their first values (the stored example)."""
    outputs: dict[str, Component] = {}
    outputs["dreams"] = gr.Gallery(
        shown.get("dreams"),
        label="Dreams forming out of noise, one tile per class",
        columns=5,
        height="auto",
        object_fit="contain",
        format="png",
        elem_id="dreams",
    )
    with gr.Row():
        outputs["losses"] = gr.Plot(shown.get("losses"), label="Dreaming losses", show_label=False, elem_id="losses")
        recovering = "Accuracy of the pruned student while it recovers"
        outputs["accuracy"] = gr.Plot(shown.get("accuracy"), label=recovering, show_label=False, elem_id="accuracy")
    outputs["layers"] = gr.Plot(
        shown.get("layers"), label="Weights removed per layer", show_label=False, elem_id="layers"
    )
    outputs["summary"] = gr.Dataframe(
        shown.get("summary"), headers=SUMMARY_HEADERS, label="Summary", interactive=False, elem_id="summary"
    )
    with gr.Accordion("Accuracy per epoch (live subset)", open=False):
        outputs["log"] = gr.Dataframe(
            shown.get("log"), headers=["epoch", "accuracy (%)"], interactive=False, elem_id="log"
        )
    outputs["files"] = gr.File(
        label="Downloads: recovered checkpoint (pruning made permanent), dreams, report",
        file_count="multiple",
        interactive=False,
        elem_id="files",
    )
    return outputs


# --- running -----------------------------------------------------------------------------------------------


class _UserFacing(Exception):
    """A failure already put in plain words (by the worker)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


SHARED_GPU_HINT = (
    "The GPU of this Space is shared and each visitor has a daily quota: choose the Quick budget, try again later, "
    "or duplicate the Space to run on your own hardware."
)


class RunHandler:
    """The Run button: one recovery, streamed, every pipeline event an update of the outputs it changes."""

    def __init__(self, deployment: Deployment, outputs: dict[str, Component]):
        self.deployment = deployment
        self.outputs = outputs

    def show(self, changed: dict[str, Any]) -> dict[Component, Any]:
        """Named output values as Gradio's {component: value}; a "warning" becomes a pop-up."""
        if "warning" in changed:
            gr.Warning(changed.pop("warning"))
        return {self.outputs[name]: value for name, value in changed.items()}

    def settings(self, values: Sequence[Any]) -> Settings:
        """The controls' values (in table order) checked by the table and against this device's work cap."""
        choices = {"teacher": [value for _, value in self.deployment.teachers]}
        return check_work(parse_settings(by_name(values), choices), self.deployment.on_gpu)

    def plan(self, values: Sequence[Any], out_dir: Path) -> RunPlan:
        """The controls' values (in table order) checked and joined with where the app runs them."""
        deployment = self.deployment
        settings = self.settings(values)
        local = deployment.local.get(settings.teacher)
        return RunPlan(
            settings=settings,
            data=deployment.options.data,
            teacher=str(local) if local else "",
            device=deployment.options.device,
            update_interval=deployment.options.update_interval,
            out_dir=str(out_dir),
        )

    def admit(self, request: gr.Request, *values: Any) -> list[Any]:
        """Runs when Run is pressed (or /run is called), before the job joins the queue: a request with bad
        values or too much work never waits in line, and a session holds at most one queued or running job.

        Returns one ``gr.validate`` per control: the page shows a refusal under the control it is about, and
        API clients get it as a ``ValidationError``."""
        verdicts = [gr.validate(True, "") for _ in values]
        session = self.deployment.sessions[request.session_hash]
        if session.queued and not session.running and _runs_in_queue(request) == 0:
            session.queued = False  # its job left the queue without starting: its client cancelled it
        if session.queued or session.running:
            verdicts[0] = gr.validate(
                False, "This tab already has a run waiting or going: press Stop first, or wait for it to end."
            )
            return verdicts
        if self.deployment.sessions.waiting() >= QUEUE_SIZE:
            verdicts[0] = gr.validate(
                False, f"The queue is full ({QUEUE_SIZE} runs waiting): try again in a few minutes."
            )
            return verdicts
        try:
            self.settings(values)
        except InputError as err:
            named = [i for i, c in enumerate(CONTROLS) if str(err).startswith(c.label)]
            verdicts[named[0] if named else CONTROL_NAMES.index("num_images")] = gr.validate(False, str(err))
            return verdicts
        session.stop_requested, session.queued = False, True
        return verdicts

    def run(self, request: gr.Request, *values: Any) -> Iterator[dict[Component, Any]]:
        """One recovery for this session; ``values`` are the controls' values in :data:`CONTROL_NAMES` order."""
        sessions = self.deployment.sessions
        sessions.sweep()
        session = sessions[request.session_hash]
        session.queued = False
        if session.stop_requested:  # Stop was pressed while this run waited in the queue
            yield self.show({"status": "<b>Stopped before it started.</b> Press Run to start again."})
            return
        session.running = True
        view: LiveView | None = None
        try:
            plan = self.plan(values, session.new_run_dir(sessions.root))
            settings = plan.settings
            refits = plan.config().recipe.refit is not None
            device = self.deployment.device_text
            title = teacher_label(settings.teacher)
            view = LiveView(
                title,
                settings.sparsity,
                settings.epochs,
                device,
                refit=refits,
                showcase=plan.showcase,
                granularity=settings.granularity,
            )
            budget = BUDGETS[settings.budget]
            if budget.needs_gpu and not self.deployment.on_gpu:
                gr.Warning(f"The {budget.label} budget is sized for a GPU; on this CPU it takes a long time.")
            cleared = {name: None for name in OUTPUTS if name not in ("status", "run")}
            yield self.show({**cleared, "log": [], "run": gr.Button(interactive=False), "status": view.status()})
            yield from self._await_startup(view)
            yield from self._prepare(plan, view)
            yield from self._stream(plan, view, session)
        except gr.Error as err:  # from the spaces package (ZeroGPU quota, an aborted GPU task): passed on as is
            log.info("run refused by the GPU scheduler: %s", err.message)
            message = f"{err.message} {SHARED_GPU_HINT}"
            failed = view.failed(message) if view else {"status": f"<b>Failed</b><br>{html.escape(message)}"}
            yield self.show({**failed, "run": gr.Button(interactive=True)})
            raise
        except Exception as err:
            message = self._explain(err)
            failed = view.failed(message) if view else {"status": f"<b>Failed</b><br>{html.escape(message)}"}
            yield self.show({**failed, "run": gr.Button(interactive=True)})
            raise gr.Error(message, print_exception=False) from None
        finally:
            session.running = False

    def _await_startup(self, view: LiveView) -> Iterator[dict[Component, Any]]:
        """Wait for the start-up's downloads, saying so; their failure is this run's."""
        preparation = self.deployment.preparation
        while not preparation.wait(STARTUP_POLL_S):
            view.note = f"Waiting for the app to finish starting. {preparation.status()}"
            yield self.show({"status": view.status()})
        if preparation.error:
            raise _UserFacing(preparation.status())

    def _prepare(self, plan: RunPlan, view: LiveView) -> Iterator[dict[Component, Any]]:
        """First-use downloads of this run's choices, each announced in the status before it starts."""
        for step in preparations(plan.data, plan.teacher or plan.settings.teacher):
            view.note = step.message[:1].upper() + step.message[1:] + "..."
            yield self.show({"status": view.status()})
            step.action()

    def _stream(self, plan: RunPlan, view: LiveView, session: RunControl) -> Iterator[dict[Component, Any]]:
        """The worker's events as page updates, until the run ends or this session presses Stop."""
        worker = stream_run(plan)
        minutes = self.deployment.options.run_minutes
        deadline = time.monotonic() + 60 * minutes
        try:
            for item in worker:
                if session.stop_requested:
                    yield self.show({**view.stopped(), "run": gr.Button(interactive=True)})
                    return
                if time.monotonic() > deadline:  # ends like Stop: what the run made so far stays on the page
                    note = (
                        f"This run reached the app's limit of {minutes:g} minutes per run, so that every visitor "
                        "gets a turn; what it made so far stays on the page. Choose a smaller budget, or run "
                        "dfkd recover on your own machine."
                    )
                    yield self.show({**view.stopped(note), "run": gr.Button(interactive=True)})
                    return
                if isinstance(item, Failure):
                    raise _UserFacing(item.message)
                changed = view.apply(item)
                if changed:
                    yield self.show(changed)
        finally:  # also on Stop and closed tabs: closing the worker ends the pipeline and frees memory
            worker.close()
        yield self.show({"run": gr.Button(interactive=True), "status": view.status()})

    @staticmethod
    def _explain(err: Exception) -> str:
        """The failure in plain words; the traceback goes to the log only when it is not the user's to fix."""
        message = err.message if isinstance(err, _UserFacing) else friendly_error(err)
        if isinstance(err, (ValueError, FileNotFoundError)):
            log.info("run refused: %s", message)
        elif not isinstance(err, _UserFacing):
            log.exception("run failed")
        return message


def _runs_in_queue(request: gr.Request) -> int | None:
    """How many /run jobs of this session wait in Gradio's queue; None where the queue cannot be read (a Gradio
    whose queue is built otherwise: the session's own mark then stands)."""
    try:
        queue = request.request.app.get_blocks()._queue
        waiting = (event for line in queue.event_queue_per_concurrency_id.values() for event in line.queue)
        return sum(event.session_hash == request.session_hash and event.fn.api_name == "run" for event in waiting)
    except AttributeError:
        return None


def _session_events(sessions: Sessions) -> tuple[Callable[..., Any], Callable[..., None]]:
    """Stop (this session's run) and the end of a session (its tab closed), both found by session hash."""

    def stop_run(request: gr.Request) -> tuple[str, gr.Button]:
        """Ask this session's run to end (the Stop button also cancels the run's event): status and Run button."""
        session = sessions[request.session_hash]
        was_running, was_waiting = session.running, session.queued
        session.stop_requested = True
        if was_running:
            text = "Stopped. Press Run to start again."
        elif was_waiting:  # it leaves the queue at its turn, without running
            text = "Stopped: the waiting run will not start."
        else:
            text = "Nothing is running."
        return f"<b>{text}</b>", gr.Button(interactive=True)

    def end_session(request: gr.Request) -> None:
        sessions.close(request.session_hash)

    return stop_run, end_session


def _named_inputs(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler(request, *values)`` with one named parameter per control, so /run API clients can pass the
    controls by name (the library's field names) instead of by position. A generator (the run) stays one."""
    if inspect.isgeneratorfunction(handler):

        def by_name(*inputs: Any) -> Any:
            yield from handler(*inputs)

    else:

        def by_name(*inputs: Any) -> Any:
            return handler(*inputs)

    parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)]
    parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in CONTROL_NAMES]
    by_name.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    by_name.__annotations__ = {"request": gr.Request}  # how Gradio finds the parameter it fills itself
    by_name.__doc__ = handler.__doc__
    return by_name


def _startup_events(app: gr.Blocks, startup: gr.Markdown, preparation: Preparation) -> None:
    """The start-up status on the page: current at each page load, polled while the preparation goes on."""

    def current() -> tuple[str, gr.Timer]:
        return preparation.status(), gr.Timer(active=not preparation.done)

    timer = gr.Timer(STARTUP_POLL_S, active=not preparation.done)
    timer.tick(current, None, [startup, timer], queue=False, show_progress="hidden")
    app.load(current, None, [startup, timer], queue=False, show_progress="hidden", api_name="startup")


def _wire_events(
    app: gr.Blocks, controls: dict[str, Component], outputs: dict[str, Component], stop: gr.Button, run: RunHandler
) -> None:
    """Run (inputs: the controls in table order), Stop, a budget change filling in its recipe, a closed tab."""
    concurrency = run.deployment.options.concurrency
    outputs["run"].click(
        _named_inputs(run.run),
        [controls[name] for name in CONTROL_NAMES],
        [outputs[name] for name in OUTPUTS],
        validator=_named_inputs(run.admit),
        preprocess=False,  # the settings table checks every value (demo.settings), with messages that name the control
        api_name="run",
        concurrency_limit=concurrency,
        concurrency_id="recovery",
        show_progress="minimal",
        show_progress_on=[outputs["status"]],
    )
    stop_run, end_session = _session_events(run.deployment.sessions)
    # Stop sets this session's flag; the run notices it at its next event and ends as a finished event (a
    # cancelled one would show "Error" on the page).
    stop.click(
        stop_run,
        None,
        [outputs["status"], outputs["run"]],
        api_name="stop",
        queue=False,  # never waits behind runs: Stop works while the queue is full
    )
    controls["budget"].change(
        recipe_values,
        controls["budget"],
        [controls[c.name] for c in RECIPE_CONTROLS],
        api_visibility="private",
        queue=False,  # works even while the queue is full
    )
    app.unload(end_session)


def build_app(options: AppOptions, preparation: Preparation | None = None) -> gr.Blocks:
    """The page and its events (not yet queued or launched; :func:`create_app` does the queueing).

    ``preparation``: the start-up's downloads (default: the evaluation data and the default
    teacher, when missing); :func:`main` starts it once the page is served.
    """
    deployment = Deployment.of(options, preparation)
    shown = example_outputs()
    with gr.Blocks(title="dfkd: data-free recovery of pruned networks", delete_cache=(3600, 3600)) as app:
        startup = _header(deployment)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                controls, outputs, stop = _controls_column(deployment, shown)
            with gr.Column(scale=2):
                outputs.update(_results_column(shown))
        _wire_events(app, controls, outputs, stop, RunHandler(deployment, outputs))
        _startup_events(app, startup, deployment.preparation)
    app.deployment = deployment  # type: ignore[attr-defined]  # for main() and the tests
    return app


def create_app(options: AppOptions, preparation: Preparation | None = None) -> gr.Blocks:
    """The app with its queue: ``options.concurrency`` runs at a time, the rest wait their turn."""
    # The runs waiting are capped at admission (RunHandler.admit), not by Gradio's queue, which would also refuse Stop
    return build_app(options, preparation).queue(max_size=None, default_concurrency_limit=options.concurrency)


QUEUE_SIZE = 8  # runs waiting at most: one per session, so a handful of scripted clients cannot fill a day
UPLOAD_ROUTES = ("/upload", "/process_recording")  # Gradio's routes that store a client's files on the server


class NoUploads:
    """ASGI middleware: the page takes no files, so the server refuses every upload (403) before reading a byte
    of it: a stranger cannot park files on the Space and have it serve them back."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith(UPLOAD_ROUTES):
            await PlainTextResponse("This app takes no uploads.", status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


LAUNCH = {"theme": THEME, "css": CSS, "app_kwargs": {"middleware": [Middleware(NoUploads)]}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_locally(options: AppOptions, preparation: Preparation | None = None) -> Iterator[gr.Blocks]:
    """The app as ``python demo/app.py`` serves it (same queue, start-up started after launch), on a free
    local port; yields it (``app.local_url``, ``app.deployment``)."""
    app = create_app(options, preparation)
    app.launch(server_port=_free_port(), prevent_thread_lock=True, quiet=True, **LAUNCH)
    app.deployment.preparation.start()
    try:
        yield app
    finally:
        app.close()
        app.deployment.sessions.close_all()


def _persistent_storage() -> None:
    """On a Space with a storage volume at /data, keep downloads there: a restart then finds them."""
    data = Path("/data")
    if data.is_dir() and os.access(data, os.W_OK):
        os.environ.setdefault("DFKD_DATA_DIR", str(data / "dfkd"))
        os.environ.setdefault("TORCH_HOME", str(data / "torch"))


def _path_list(value: str | None) -> list[str]:
    """The entries of a PATH-like environment value."""
    return [part for part in (value or "").split(os.pathsep) if part]


def _arguments() -> argparse.ArgumentParser:
    """The command line of ``python demo/app.py`` (and ``dfkd demo``)."""
    parser = argparse.ArgumentParser(prog="dfkd demo", description="The live data-free recovery app (Gradio).")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to serve on (env GRADIO_SERVER_NAME; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port (env GRADIO_SERVER_PORT; default 7860)",
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("DFKD_DATA", "cifar10"),
        help="evaluation data: 'cifar10' (downloaded on first use) or an ImageFolder root with test/ (env DFKD_DATA)",
    )
    parser.add_argument(
        "--teacher-dir",
        action="append",
        default=[],
        metavar="PATH",
        help=f"a local checkpoint, or a folder of checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}), offered besides "
        f"the registry; repeatable (env DFKD_TEACHERS, separated by {os.pathsep!r})",
    )
    parser.add_argument("--device", default=os.environ.get("DFKD_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--concurrency", type=int, default=1, help="runs at a time (default 1: one GPU, one run)")
    parser.add_argument(
        "--run-minutes",
        type=float,
        default=float(os.environ.get("DFKD_RUN_MINUTES", RUN_MINUTES)),
        help=f"a run is ended after this many minutes (env DFKD_RUN_MINUTES; default {RUN_MINUTES:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    limit_threads()
    _persistent_storage()
    # torchvision's and torch.hub's downloads set no timeout: a stalled host must fail the start-up, not hang it.
    socket.setdefaulttimeout(DOWNLOAD_STALL_S)
    teachers = find_local_teachers(_path_list(os.environ.get("DFKD_TEACHERS")) + args.teacher_dir)
    if not args.run_minutes > 0:
        raise SystemExit(f"dfkd demo: --run-minutes must be above 0, got {args.run_minutes}")
    options = AppOptions(
        data=args.data,
        teachers=tuple(teachers),
        device=args.device,
        concurrency=max(1, args.concurrency),
        run_minutes=args.run_minutes,
    )
    app = create_app(options)
    app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, **LAUNCH)
    app.deployment.preparation.start()  # after launch: the page is served while the downloads run
    try:
        app.block_thread()
    finally:
        app.deployment.sessions.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
