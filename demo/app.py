"""The live Gradio app: pick a teacher and a prune ratio, watch dreams form and accuracy recover.

Start it with ``python demo/app.py`` (or ``dfkd demo``) and open http://127.0.0.1:7860.
Options: ``--host``/``--port``, ``--data`` (evaluation data: "cifar10", downloaded on first
use, or an ImageFolder root; env ``DFKD_DATA``), ``--teacher-dir`` (local checkpoints offered
besides the registry, repeatable; env ``DFKD_TEACHERS``, a path list), ``--device``.

The page renders the events of :func:`dfkd_core.recover` and nothing else: the pruning cliff,
dreams forming class by class, the student's accuracy climbing back next to the teacher, the
pruned level and the same recipe on noise, then a summary table and the files to download. Each
browser session has its own run; Stop cancels within a few seconds and frees the run's memory.

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
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # started as a script (python demo/app.py, a Hugging Face Space)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr
import torch

from demo.runner import (
    UPDATE_INTERVAL_S,
    ZERO_GPU,
    Failure,
    RunPlan,
    find_local_teachers,
    friendly_error,
    preparations,
    stream_run,
    teacher_choices,
    teacher_label,
)
from demo.settings import (
    BUDGETS,
    CONTROL_NAMES,
    CONTROLS,
    RECIPE_CONTROLS,
    Control,
    by_name,
    default_values,
    parse_settings,
    recipe_values,
)
from demo.views import OUTPUTS, SUMMARY_HEADERS, LiveView
from dfkd_core import resolve_device
from dfkd_core.data import load_eval_set
from dfkd_core.zoo import CHECKPOINT_SUFFIXES

__all__ = ["AppOptions", "RunControl", "build_app", "create_app", "main", "serve_locally"]

log = logging.getLogger("dfkd.demo")

DEFAULT_TEACHER = "akamaster/resnet20"
CPU_PREVIEW_EVERY = 5  # a CPU step takes ~0.5 s: a snapshot every few steps (and after the first) keeps the page live
INTRO = """
# Give a pruned network its accuracy back, without a single training image

1. **Prune**: remove most of the weights of a pretrained CIFAR-10 classifier and watch its accuracy fall off a cliff.
2. **Dream**: starting from random noise, DeepInversion paints images that the network recognizes,
   guided only by the statistics its BatchNorm layers remember from training.
3. **Refit and distill**: the pruned network learns to answer like the original on those dreams, and its accuracy
   climbs back, next to what the same recipe on plain noise gives.

Pick a teacher and a sparsity, then press **Run**.
"""

Component = gr.components.Component


@dataclass(frozen=True)
class AppOptions:
    """How the app is deployed: which data and teachers it offers, where and how fast it runs."""

    data: str = "cifar10"  # evaluation data: "cifar10" or an ImageFolder root with test/
    teachers: tuple[Path, ...] = ()  # local checkpoints, offered besides the registry
    device: str = "auto"
    concurrency: int = 1  # runs at a time; one GPU serves one run well
    update_interval: float = UPDATE_INTERVAL_S  # seconds between page updates of the same kind


class RunControl:
    """One browser session's own state: its Stop flag and the folder holding its downloads."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.running = False
        self.out_dir: str | None = None

    def new_run_dir(self) -> str:
        """A fresh folder for this run's downloads (the previous run's is deleted)."""
        self.discard()
        self.out_dir = tempfile.mkdtemp(prefix="dfkd-demo-")
        return self.out_dir

    def discard(self) -> None:
        """Delete the current run's downloads."""
        if self.out_dir:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        self.out_dir = None

    def close(self) -> None:
        """The session ended (tab closed): stop its run and delete its files."""
        self.stop_requested = True
        self.discard()


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
    return str(min(local, key=lambda p: p.stat().st_size)) if local else DEFAULT_TEACHER


@dataclass(frozen=True)
class Deployment:
    """What the page offers and where it runs, worked out once from the options."""

    options: AppOptions
    teachers: tuple[tuple[str, str], ...]  # the teacher dropdown's (label, value) pairs
    device_text: str
    on_gpu: bool

    @classmethod
    def of(cls, options: AppOptions) -> Deployment:
        device_text, on_gpu = describe_device(options.device)
        return cls(options, tuple(teacher_choices(options.teachers)), device_text, on_gpu)

    @property
    def default_budget(self) -> str:
        return "default" if self.on_gpu else "quick"

    @property
    def preview_every(self) -> int:
        """Dreaming steps between snapshots: the preset's on a GPU, fewer on a CPU, whose steps are slow."""
        return BUDGETS[self.default_budget].recipe.dream.preview_every if self.on_gpu else CPU_PREVIEW_EVERY

    def choices(self) -> dict[str, list[tuple[str, str]]]:
        """The (label, value) pairs of every control that offers choices."""
        return {"teacher": list(self.teachers), "budget": [(b.label, name) for name, b in BUDGETS.items()]}


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
    # No minimum/maximum here: the app's own check names the control in plain words.
    return gr.Number(value, precision=0 if control.whole else None, **common)


def _controls_column(deployment: Deployment) -> tuple[dict[str, Component], dict[str, Component], gr.Button]:
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
    with gr.Row():
        run_button = gr.Button("Run", variant="primary", elem_id="run")
        stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
    status = gr.HTML("Press Run to start.", label="Progress", elem_id="status")
    return controls, {"status": status, "run": run_button}, stop_button


def _results_column() -> dict[str, Component]:
    """The dreams, the plots, the tables and the downloads, by output name (also their HTML ids)."""
    shown: dict[str, Component] = {}
    shown["dreams"] = gr.Gallery(
        label="Dreams: one tile per class, refreshed as they form",
        columns=5,
        height="auto",
        object_fit="contain",
        format="png",
        elem_id="dreams",
    )
    with gr.Row():
        shown["losses"] = gr.Plot(label="Dreaming losses", show_label=False, elem_id="losses")
        recovering = "Accuracy of the pruned student while it recovers"
        shown["accuracy"] = gr.Plot(label=recovering, show_label=False, elem_id="accuracy")
    shown["layers"] = gr.Plot(label="Weights removed per layer", show_label=False, elem_id="layers")
    shown["summary"] = gr.Dataframe(headers=SUMMARY_HEADERS, label="Summary", interactive=False, elem_id="summary")
    with gr.Accordion("Accuracy per epoch (live subset)", open=False):
        shown["log"] = gr.Dataframe(headers=["epoch", "accuracy (%)"], interactive=False, elem_id="log")
    shown["files"] = gr.File(
        label="Downloads: recovered checkpoint (pruning made permanent), dreams, report",
        file_count="multiple",
        interactive=False,
        elem_id="files",
    )
    return shown


# --- running -----------------------------------------------------------------------------------------------


class _UserFacing(Exception):
    """A failure already put in plain words (by the worker)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


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

    def plan(self, values: Sequence[Any], out_dir: str) -> RunPlan:
        """The controls' values (in table order) checked and joined with where the app runs them."""
        choices = {"teacher": [value for _, value in self.deployment.teachers]}
        options = self.deployment.options
        return RunPlan(
            settings=parse_settings(by_name(values), choices),
            data=options.data,
            device=options.device,
            preview_every=self.deployment.preview_every,
            update_interval=options.update_interval,
            out_dir=out_dir,
        )

    def run(self, session: RunControl, *values: Any) -> Iterator[dict[Component, Any]]:
        """One recovery for this session; ``values`` are the controls' values in :data:`CONTROL_NAMES` order."""
        session.stop_requested, session.running = False, True
        view: LiveView | None = None
        try:
            plan = self.plan(values, session.new_run_dir())
            settings = plan.settings
            refits = plan.config().recipe.refit is not None
            device = self.deployment.device_text
            view = LiveView(teacher_label(settings.teacher), settings.sparsity, settings.epochs, device, refit=refits)
            budget = BUDGETS[settings.budget]
            if budget.needs_gpu and not self.deployment.on_gpu:
                gr.Warning(f"The {budget.label} budget is sized for a GPU; on this CPU it takes a long time.")
            cleared = {name: None for name in OUTPUTS if name not in ("status", "run")}
            yield self.show({**cleared, "log": [], "run": gr.Button(interactive=False), "status": view.status()})
            yield from self._prepare(plan, view)
            yield from self._stream(plan, view, session)
        except Exception as err:
            message = self._explain(err)
            failed = view.failed(message) if view else {"status": f"<b>Failed</b><br>{html.escape(message)}"}
            yield self.show({**failed, "run": gr.Button(interactive=True)})
            raise gr.Error(message, print_exception=False) from None
        finally:
            session.running = False

    def _prepare(self, plan: RunPlan, view: LiveView) -> Iterator[dict[Component, Any]]:
        """First-use downloads, each announced in the status before it starts."""
        for message, action in preparations(plan):
            view.note = message
            yield self.show({"status": view.status()})
            action()

    def _stream(self, plan: RunPlan, view: LiveView, session: RunControl) -> Iterator[dict[Component, Any]]:
        """The worker's events as page updates, until the run ends or this session presses Stop."""
        worker = stream_run(plan)
        try:
            for item in worker:
                if session.stop_requested:
                    yield self.show({**view.stopped(), "run": gr.Button(interactive=True)})
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


def stop_run(session: RunControl) -> tuple[str, gr.Button]:
    """Ask this session's run to end (the Stop button also cancels the run's event): status and Run button."""
    was_running = session.running
    session.stop_requested = True
    text = "Stopped. Press Run to start again." if was_running else "Nothing is running."
    return f"<b>{text}</b>", gr.Button(interactive=True)


def _named_inputs(run: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``run(session, *values)`` with one named parameter per control, so /run API clients can pass
    the controls by name (the library's field names) instead of by position."""

    def run_by_name(*inputs: Any) -> Iterator[Any]:
        yield from run(*inputs)

    names = ("session", *CONTROL_NAMES)
    run_by_name.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    run_by_name.__doc__ = run.__doc__
    return run_by_name


def _wire_events(
    session: gr.State, controls: dict[str, Component], outputs: dict[str, Component], stop: gr.Button, run: RunHandler
) -> None:
    """Run (inputs: the controls in table order), Stop, and a budget change filling in its recipe."""
    concurrency = run.deployment.options.concurrency
    run_event = outputs["run"].click(
        _named_inputs(run.run),
        [session, *(controls[name] for name in CONTROL_NAMES)],
        [outputs[name] for name in OUTPUTS],
        api_name="run",
        concurrency_limit=concurrency,
        concurrency_id="recovery",
        show_progress="minimal",
        show_progress_on=[outputs["status"]],
    )
    stop.click(
        stop_run,
        session,
        [outputs["status"], outputs["run"]],
        api_name="stop",
        cancels=[run_event],
        concurrency_limit=None,
    )
    controls["budget"].change(
        recipe_values, controls["budget"], [controls[c.name] for c in RECIPE_CONTROLS], api_visibility="private"
    )


def build_app(options: AppOptions) -> gr.Blocks:
    """The page and its events (not yet queued or launched; :func:`create_app` does the queueing)."""
    deployment = Deployment.of(options)
    with gr.Blocks(title="dfkd: data-free recovery of pruned networks", delete_cache=(3600, 3600)) as app:
        session = gr.State(RunControl(), delete_callback=lambda c: c.close())
        gr.Markdown(INTRO)
        quick = BUDGETS["quick"].label
        gr.Markdown(
            f"Runs on **{deployment.device_text}**. Evaluation data: `{options.data}`."
            + ("" if deployment.on_gpu else f" Without a GPU, use the {quick} budget.")
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                controls, outputs, stop = _controls_column(deployment)
            with gr.Column(scale=2):
                outputs.update(_results_column())
        _wire_events(session, controls, outputs, stop, RunHandler(deployment, outputs))
    return app


def create_app(options: AppOptions) -> gr.Blocks:
    """The app with its queue: ``options.concurrency`` runs at a time, the rest wait their turn."""
    return build_app(options).queue(max_size=32, default_concurrency_limit=options.concurrency)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_locally(options: AppOptions) -> Iterator[str]:
    """The app as ``python demo/app.py`` serves it (same queue), on a free local port; yields its URL."""
    app = create_app(options)
    app.launch(server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield app.local_url
    finally:
        app.close()


def warm_up(data: str) -> None:
    """Load (and, for "cifar10", download) the evaluation data once at start, so the first Run is quick."""
    print(f"dfkd demo: preparing the evaluation data {data!r} (downloaded or decoded on first use)...", flush=True)
    try:
        load_eval_set(data)
    except Exception as err:  # the Run button will show the same problem in plain words
        print(f"dfkd demo: warning: {friendly_error(err)}", file=sys.stderr, flush=True)


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    teachers = find_local_teachers(_path_list(os.environ.get("DFKD_TEACHERS")) + args.teacher_dir)
    options = AppOptions(
        data=args.data, teachers=tuple(teachers), device=args.device, concurrency=max(1, args.concurrency)
    )
    warm_up(options.data)
    create_app(options).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
