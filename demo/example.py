"""The finished example the page opens on: one full app run, recorded once and replayed at every page load.

A visitor sees what the app is for before pressing anything: dreams that have formed, the
accuracy cliff and the climb back, the summary. The recording is made by running the app's own
worker (:func:`demo.runner.stream_run`) and keeping the events the page draws; the page replays
them through the same :class:`demo.views.LiveView` a live run uses, so nothing is drawn twice
by different code. Regenerate it (never edit it) with::

    python demo/example.py --teacher ../shared/weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt \\
        --data ../shared/data/cifar10-jpeg

The files (``demo/example/``): ``recording.json`` (events, numbers, settings, how it was made)
and ``showcase.png`` (the showcase dreams at their last step, as a strip of 32x32 images).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from demo.runner import Failure, Outcome, RunPlan, stream_run, teacher_label, teacher_option
from demo.settings import BUDGETS, default_values, parse_settings
from demo.views import LiveView
from dfkd_core import Metric, Network, Stage, __version__, resolve_device
from dfkd_core.events import ImagesReady, MetricLogged, Progress, StageFinished
from dfkd_core.prune import LayerSparsity

__all__ = ["EXAMPLE_DIR", "example_outputs", "record", "replay"]

log = logging.getLogger("dfkd.demo")

EXAMPLE_DIR = Path(__file__).resolve().parent / "example"
RECORDING, SHOWCASE = "recording.json", "showcase.png"
EXAMPLE_BUDGET = "default"  # the recommended recipe: what a visitor should see first
EXAMPLE_SPARSITY = 0.75


def _encode(item: Any) -> dict[str, Any] | None:
    """An event (or the outcome) the page draws, as JSON; None for those it does not need."""
    if isinstance(item, MetricLogged):
        return {"kind": "metric", **dataclasses.asdict(item)}
    if isinstance(item, Progress) and item.stage is Stage.SHOWCASE and item.metrics:
        return {"kind": "progress", **dataclasses.asdict(item)}
    if isinstance(item, StageFinished):
        summary = {k: v for k, v in item.summary.items() if k != "dreams"}  # the page draws the numbers only
        if item.stage is Stage.PRUNE:
            summary["layers"] = [dataclasses.asdict(layer) for layer in summary["layers"]]
        return {"kind": "finished", "stage": item.stage, "seconds": item.seconds, "summary": summary}
    if isinstance(item, Outcome):
        return {"kind": "outcome", **dataclasses.asdict(dataclasses.replace(item, files=()))}
    return None


def _decode(record: dict[str, Any], images: ImagesReady | None) -> Any:
    """The event (or outcome) a JSON record stands for; ``images`` is the showcase snapshot to put back."""
    fields = {k: v for k, v in record.items() if k != "kind"}
    kind = record["kind"]
    if kind == "metric":
        stage, metric, network = (
            Stage(fields.pop("stage")),
            Metric(fields.pop("metric")),
            Network(fields.pop("network")),
        )
        return MetricLogged(stage, metric, network, **fields)
    if kind == "progress":
        return Progress(Stage(fields.pop("stage")), **fields)
    if kind == "finished":
        summary = dict(fields["summary"])
        if fields["stage"] == Stage.PRUNE:
            summary["layers"] = [LayerSparsity(**layer) for layer in summary["layers"]]
        return StageFinished(Stage(fields["stage"]), fields["seconds"], summary)
    if kind == "showcase":
        return images
    if kind == "outcome":
        fields["curve"] = tuple(tuple(point) for point in fields["curve"])
        fields["latency_ms"] = {n: {int(b): ms for b, ms in per.items()} for n, per in fields["latency_ms"].items()}
        return Outcome(**fields)
    raise ValueError(f"unknown record kind {kind!r}")


def _strip(images: torch.Tensor) -> Image.Image:
    """``(N, 3, H, W)`` pixels in [0, 1] as one PNG-ready row of N images."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(torch.cat(list(pixels), dim=2).permute(1, 2, 0).numpy())


def _unstrip(image: Image.Image, count: int) -> torch.Tensor:
    row = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    return torch.stack(row.chunk(count, dim=2)).float() / 255


def _where(device: str) -> str:
    """Where a run happens, in words: ``CPU (2 threads)`` or the GPU's name."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(resolved)})"
    return f"CPU ({torch.get_num_threads()} threads)"


def record(plan: RunPlan, out_dir: Path, command: str) -> dict[str, Any]:
    """Run ``plan`` through the app's worker and write the recording to ``out_dir``; returns it."""
    records: list[dict[str, Any]] = []
    showcase: ImagesReady | None = None
    started = time.perf_counter()
    for item in stream_run(plan):
        if isinstance(item, Failure):
            raise RuntimeError(f"the example run failed: {item.message}")
        if isinstance(item, ImagesReady) and item.stage is Stage.SHOWCASE:
            if showcase is None:
                records.append({"kind": "showcase"})  # where the last snapshot is replayed
            showcase = item
        elif (encoded := _encode(item)) is not None:
            records.append(encoded)
    if showcase is None or not isinstance(item, Outcome):
        raise RuntimeError("the example run ended without a showcase or an outcome")
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / SHOWCASE
    _strip(showcase.images).save(png, optimize=True)
    settings = plan.settings
    recording = {
        "made_by": command,
        "dfkd": __version__,
        "device": _where(plan.device),
        "seconds": round(time.perf_counter() - started, 1),
        "settings": dataclasses.asdict(settings) | {"teacher": teacher_label(settings.teacher)},
        "recipe": json.loads(json.dumps(dataclasses.asdict(settings.recipe()))),
        "showcase": {
            "step": showcase.step,
            "total": showcase.total,
            "labels": showcase.labels.tolist(),
            "classes": list(showcase.classes),
            "png_sha256": hashlib.sha256(png.read_bytes()).hexdigest(),
        },
        "events": records,
    }
    (out_dir / RECORDING).write_text(json.dumps(recording, indent=1) + "\n")
    return recording


def load_recording(folder: Path = EXAMPLE_DIR) -> tuple[dict[str, Any], ImagesReady]:
    """The stored recording and its showcase snapshot; ``ValueError`` if missing, damaged or edited."""
    try:
        recording = json.loads((folder / RECORDING).read_text())
        data = (folder / SHOWCASE).read_bytes()
        shown = recording["showcase"]
        if hashlib.sha256(data).hexdigest() != shown["png_sha256"]:
            raise ValueError(f"{SHOWCASE} is not the one recorded with {RECORDING}")
        with Image.open(folder / SHOWCASE) as image:
            images = _unstrip(image, len(shown["labels"]))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"no usable stored example in {folder.name}/ ({err}); run demo/example.py") from None
    labels = torch.tensor(shown["labels"])
    snapshot = ImagesReady(Stage.SHOWCASE, shown["step"], images, labels, tuple(shown["classes"]), shown["total"])
    return recording, snapshot


def replay(recording: dict[str, Any], snapshot: ImagesReady) -> Iterator[Any]:
    """The recorded events (and the outcome), in the order the run made them."""
    for entry in recording["events"]:
        yield _decode(entry, snapshot)


def example_outputs(folder: Path = EXAMPLE_DIR) -> dict[str, Any]:
    """The page's outputs showing the stored example (empty when there is none: the page opens blank)."""
    try:
        recording, snapshot = load_recording(folder)
    except ValueError as err:
        log.warning("%s", err)
        return {}
    settings = recording["settings"]
    recipe = recording["recipe"]
    shown: dict[str, Any] = {}
    try:
        view = LiveView(
            settings["teacher"],
            settings["sparsity"],
            recipe["distill"]["epochs"],
            recording["device"],
            refit=recipe["refit"] is not None,
            showcase=len(snapshot.labels) // len(snapshot.classes),
            granularity=settings["granularity"],
        )
        for item in replay(recording, snapshot):
            shown |= view.apply(item)
    except (KeyError, TypeError) as err:  # a recording older than the page's code: open blank, never fail
        log.warning("the stored example does not fit this version of the app (%r): run demo/example.py again", err)
        return {}
    budget = BUDGETS[settings["budget"]].label
    shown["status"] = view.recorded(
        f"A stored example: {settings['teacher']} at {settings['sparsity']:.0%} sparsity, {budget} budget, "
        f"recorded with this app. Press Run to make your own."
    )
    shown.pop("files", None)
    return shown


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="registry id or checkpoint path")
    parser.add_argument("--data", required=True, help="'cifar10' or an ImageFolder root with test/")
    parser.add_argument("--out", type=Path, default=EXAMPLE_DIR, help="where to write the recording")
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _arguments().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    local, teacher = teacher_option(args.teacher)
    values = {**default_values(EXAMPLE_BUDGET, teacher), "sparsity": EXAMPLE_SPARSITY}
    settings = parse_settings(values, {"teacher": [teacher]})
    plan = RunPlan(
        settings,
        data=args.data,
        teacher=str(local[0]) if local else "",
        device=args.device,
        update_interval=0.0,
        out_dir=str(args.out / ".run"),
    )
    command = shlex.join(["python", "demo/example.py", *argv])
    try:
        recording = record(plan, args.out, command)
    finally:
        shutil.rmtree(args.out / ".run", ignore_errors=True)
    outcome = next(e for e in recording["events"] if e["kind"] == "outcome")
    print(
        f"example: teacher {outcome['teacher_acc']:.2f} -> pruned {outcome['pruned_acc']:.2f} -> "
        f"recovered {outcome['recovered_acc']:.2f} (noise {outcome['noise_acc']:.2f}) in {recording['seconds']:.0f} s; "
        f"{sum(p.stat().st_size for p in args.out.iterdir() if p.is_file()) / 1e3:.0f} kB in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
