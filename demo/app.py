"""The live Gradio app: pick a teacher and a prune ratio, watch dreams form and accuracy recover.

Start it with ``python demo/app.py`` (or ``dfkd demo``) and open http://127.0.0.1:7860.
Options: ``--host``/``--port``, ``--data`` (evaluation data: "cifar10", downloaded on first
use, or an ImageFolder root; env ``DFKD_DATA``), ``--teacher-dir`` (local checkpoints offered
besides the registry, repeatable; env ``DFKD_TEACHERS``, a path list), ``--device``.

The page renders the events of :func:`dfkd_core.recover` and nothing else: the pruning cliff,
dreams forming class by class, the student's accuracy climbing back next to the teacher, the
pruned level and KD on noise, then a summary table and the files to download. Each browser
session has its own run; Stop cancels within a few seconds and frees the run's memory.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # started as a script (python demo/app.py, a Hugging Face Space)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr
import torch

from demo.runner import (
    BUDGETS,
    UPDATE_INTERVAL_S,
    ZERO_GPU,
    Failure,
    find_local_teachers,
    friendly_error,
    parse_settings,
    preparations,
    stream_run,
    teacher_choices,
    teacher_label,
)
from demo.views import SUMMARY_HEADERS, LiveView
from dfkd_core.data import load_eval_set
from dfkd_core.pipeline import RecoveryConfig, resolve_device

__all__ = ["AppOptions", "RunControl", "build_app", "main"]

log = logging.getLogger("dfkd.demo")

DEFAULT_TEACHER = "akamaster/resnet20"
CPU_PREVIEW_EVERY = 5  # a CPU step takes ~0.5 s: a snapshot every few steps (and after the first) keeps the page live
INTRO = """
# Give a pruned network its accuracy back, without a single training image

1. **Prune**: remove most of the weights of a pretrained CIFAR-10 classifier and watch its accuracy fall off a cliff.
2. **Dream**: starting from random noise, DeepInversion paints images that the network recognizes,
   guided only by the statistics its BatchNorm layers remember from training.
3. **Distill**: the pruned network learns to answer like the original on those dreams, and its accuracy
   climbs back, next to what the same training on plain noise gives.

Pick a teacher and a sparsity, then press **Run**.
"""


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
        self.discard()
        self.out_dir = tempfile.mkdtemp(prefix="dfkd-demo-")
        return self.out_dir

    def discard(self) -> None:
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


def knob_values(budget: str) -> list[float]:
    """The Advanced controls' values for a budget: dream count, steps, KD epochs, temperature, r_bn, TV, ADI."""
    inv, kd = BUDGETS[budget].recipe.inversion, BUDGETS[budget].recipe.distill
    return [inv.num_images, inv.steps, kd.epochs, kd.temperature, inv.r_bn, inv.tv_l2, inv.adi]


def build_app(options: AppOptions) -> gr.Blocks:
    """The page and its events (not yet queued or launched; :func:`create_app` does the queueing)."""
    choices = teacher_choices(options.teachers)
    allowed = [value for _, value in choices]
    device_text, on_gpu = describe_device(options.device)
    default_budget = "Standard" if on_gpu else "Quick"
    preview_every = BUDGETS[default_budget].recipe.inversion.preview_every if on_gpu else CPU_PREVIEW_EVERY
    default_sparsity = RecoveryConfig.__dataclass_fields__["sparsity"].default

    with gr.Blocks(title="dfkd: data-free recovery of pruned networks", delete_cache=(3600, 3600)) as app:
        control = gr.State(RunControl(), delete_callback=lambda c: c.close())
        gr.Markdown(INTRO)
        gr.Markdown(
            f"Runs on **{device_text}**. Evaluation data: `{options.data}`."
            + ("" if on_gpu else " Without a GPU, use the Quick budget.")
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                teacher = gr.Dropdown(
                    choices, value=default_teacher(options.teachers), label="Teacher (pretrained on CIFAR-10)",
                    info="Grouped by family: ResNet, VGG, MobileNet, then local checkpoints", elem_id="teacher",
                )  # fmt: skip
                sparsity = gr.Slider(0.0, 0.95, value=default_sparsity, step=0.05, label="Sparsity",
                                     info="Fraction of the weights to remove", elem_id="sparsity")  # fmt: skip
                budget = gr.Radio(list(BUDGETS), value=default_budget, label="Budget", elem_id="budget",
                                  info=" · ".join(b.describe() for b in BUDGETS.values()))  # fmt: skip
                with gr.Accordion("Advanced: the recipe", open=False):
                    values = knob_values(default_budget)
                    num_images = gr.Number(values[0], precision=0, label="Dream count", elem_id="dream-count")
                    steps = gr.Number(values[1], precision=0, label="Inversion steps per batch", elem_id="steps")
                    epochs = gr.Number(values[2], precision=0, label="KD epochs", elem_id="epochs")
                    temperature = gr.Number(values[3], label="KD temperature")
                    r_bn = gr.Number(values[4], label="BatchNorm weight (r_bn)")
                    tv = gr.Number(values[5], label="TV weight (smoothness of the dreams)")
                    adi = gr.Number(values[6], label="ADI weight (0 = plain DeepInversion)")
                seed = gr.Number(0, precision=0, label="Seed")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.HTML("Press Run to start.", label="Progress", elem_id="status")
            with gr.Column(scale=2):
                dreams = gr.Gallery(label="Dreams: one tile per class, refreshed as they form", columns=5,
                                    height="auto", object_fit="contain", format="png", elem_id="dreams")  # fmt: skip
                with gr.Row():
                    losses = gr.Plot(label="Inversion losses", show_label=False)
                    accuracy = gr.Plot(label="Accuracy of the pruned student while it recovers", show_label=False)
                sparsity_plot = gr.Plot(label="Weights removed per layer", show_label=False)
                summary = gr.Dataframe(headers=SUMMARY_HEADERS, label="Summary", interactive=False)
                with gr.Accordion("Accuracy per epoch (live subset)", open=False):
                    curve_log = gr.Dataframe(headers=["epoch", "accuracy (%)"], interactive=False)
                files = gr.File(label="Downloads: recovered checkpoint (pruning made permanent), dreams, report",
                                file_count="multiple", interactive=False)  # fmt: skip

        outputs = {"status": status, "run": run_button, "dreams": dreams, "losses": losses, "accuracy": accuracy,
                   "log": curve_log, "sparsity": sparsity_plot, "summary": summary, "files": files}  # fmt: skip

        def show(changed: dict[str, Any]) -> dict[gr.components.Component, Any]:
            if "warning" in changed:
                gr.Warning(changed.pop("warning"))
            return {outputs[name]: value for name, value in changed.items()}

        def run(
            state: RunControl, teacher_id: str, share: float, budget_name: str, dream_count: float,
            inversion_steps: float, kd_epochs: float, kd_temperature: float, bn_weight: float, tv_weight: float,
            adi_weight: float, run_seed: float,
        ) -> Iterator[dict[gr.components.Component, Any]]:  # fmt: skip
            """One recovery, streamed: every pipeline event becomes an update of the outputs it changes."""
            state.stop_requested, state.running = False, True
            view: LiveView | None = None
            try:
                settings = parse_settings(
                    teacher_id, share, budget_name, dream_count, inversion_steps, kd_epochs, kd_temperature,
                    bn_weight, tv_weight, adi_weight, run_seed, allowed_teachers=allowed, data=options.data,
                    device=options.device, preview_every=preview_every, update_interval=options.update_interval,
                    out_dir=state.new_run_dir(),
                )  # fmt: skip
                view = LiveView(teacher_label(settings.teacher), settings.sparsity, settings.epochs, device_text,
                                refit=settings.config().recipe.reconstruction is not None)  # fmt: skip
                if budget_name == "Full" and not on_gpu:
                    gr.Warning(
                        "The Full budget is sized for a GPU; on this CPU it takes a long time. Quick takes minutes."
                    )
                yield show({"run": gr.Button(interactive=False), "status": view.status(), "dreams": None,
                            "losses": None, "accuracy": None, "log": [], "sparsity": None, "summary": None,
                            "files": None})  # fmt: skip
                for message, action in preparations(settings):
                    view.note = message
                    yield show({"status": view.status()})
                    action()
                worker = stream_run(settings)
                try:
                    for item in worker:
                        if state.stop_requested:
                            yield show({**view.stopped(), "run": gr.Button(interactive=True)})
                            return
                        if isinstance(item, Failure):
                            raise _UserFacing(item.message)
                        changed = view.apply(item)
                        if changed:
                            yield show(changed)
                finally:  # also on Stop and closed tabs: closing the worker ends the pipeline and frees memory
                    worker.close()
                yield show({"run": gr.Button(interactive=True), "status": view.status()})
            except Exception as err:
                message = err.message if isinstance(err, _UserFacing) else friendly_error(err)
                if isinstance(err, (ValueError, FileNotFoundError)):  # the user's to fix: no traceback
                    log.info("run refused: %s", message)
                elif not isinstance(err, _UserFacing):
                    log.exception("run failed")
                failed = view.failed(message) if view else {"status": f"<b>Failed</b><br>{html.escape(message)}"}
                yield show({**failed, "run": gr.Button(interactive=True)})
                raise gr.Error(message, print_exception=False) from None
            finally:
                state.running = False

        def stop(state: RunControl) -> dict[gr.components.Component, Any]:
            """Ask this session's run to end; the Stop button also cancels the run's event directly."""
            was_running = state.running
            state.stop_requested = True
            text = "Stopped. Press Run to start again." if was_running else "Nothing is running."
            return {status: f"<b>{text}</b>",
                    run_button: gr.Button(interactive=True)}  # fmt: skip

        run_event = run_button.click(
            run, [control, teacher, sparsity, budget, num_images, steps, epochs, temperature, r_bn, tv, adi, seed],
            list(outputs.values()), api_name="run", concurrency_limit=options.concurrency, concurrency_id="recovery",
            show_progress="minimal", show_progress_on=[status],
        )  # fmt: skip
        stop_button.click(stop, control, [status, run_button], api_name="stop", cancels=[run_event],
                          concurrency_limit=None)  # fmt: skip
        budget.change(knob_values, budget, [num_images, steps, epochs, temperature, r_bn, tv, adi],
                      api_visibility="private")  # fmt: skip
    return app


class _UserFacing(Exception):
    """A failure already put in plain words (by the worker)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def create_app(options: AppOptions) -> gr.Blocks:
    """The app with its queue: ``options.concurrency`` runs at a time, the rest wait their turn."""
    return build_app(options).queue(max_size=32, default_concurrency_limit=options.concurrency)


def warm_up(data: str) -> None:
    """Load (and, for "cifar10", download) the evaluation data once at start, so the first Run is quick."""
    print(f"dfkd demo: preparing the evaluation data {data!r} (downloaded or decoded on first use)...", flush=True)
    try:
        load_eval_set(data)
    except Exception as err:  # the Run button will show the same problem in plain words
        print(f"dfkd demo: warning: {friendly_error(err)}", file=sys.stderr, flush=True)


def _path_list(value: str | None) -> list[str]:
    return [part for part in (value or "").split(os.pathsep) if part]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dfkd demo", description="The live data-free recovery app (Gradio).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (env GRADIO_SERVER_NAME; default 127.0.0.1)")  # fmt: skip
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (env GRADIO_SERVER_PORT; default 7860)")  # fmt: skip
    parser.add_argument("--data", default=os.environ.get("DFKD_DATA", "cifar10"),
                        help="evaluation data: 'cifar10' (downloaded on first use) or an ImageFolder root with "
                             "test/ (env DFKD_DATA)")  # fmt: skip
    parser.add_argument("--teacher-dir", action="append", default=[], metavar="PATH",
                        help="a local checkpoint, or a folder of *.pt/*.pth/*.th checkpoints, offered besides the "
                             f"registry; repeatable (env DFKD_TEACHERS, separated by {os.pathsep!r})")  # fmt: skip
    parser.add_argument("--device", default=os.environ.get("DFKD_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--concurrency", type=int, default=1, help="runs at a time (default 1: one GPU, one run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    teachers = find_local_teachers(_path_list(os.environ.get("DFKD_TEACHERS")) + args.teacher_dir)
    options = AppOptions(data=args.data, teachers=tuple(teachers), device=args.device,
                         concurrency=max(1, args.concurrency))  # fmt: skip
    warm_up(options.data)
    create_app(options).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
