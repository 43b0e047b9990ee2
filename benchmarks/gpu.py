"""The GPU path, measured: the app's budgets end to end on every family, the ZeroGPU duration each needs, and what
mixed precision and torch.compile buy for dreaming and distillation.

    python benchmarks/gpu.py --shared ../shared                   # benchmarks/results/gpu/gpu.json and gpu.md

Needs a CUDA GPU: on a machine without one it says so and exits with status 2 (nothing is written). It is sized
to finish in about 5 minutes on one H100:

* **budgets**: the pipeline, unchanged, with each budget's recipe (``--budgets``; the app's Quick and Default by
  default) on each JPEG teacher at 75% of the weights, dreams made afresh (no dream cache), no baseline, the
  final accuracies on the full test split. Per row: seconds per stage and end to end, and the ZeroGPU duration
  to ask for (:data:`ZERO_GPU_MARGIN` times the run's seconds), beside the app's current request.
* **speed-ups**: a dream batch (256 images x :data:`DREAM_STEPS` steps) and one distillation epoch on each family,
  in float32, in bfloat16 autocast, and compiled (``torch.compile``, ResNet-20 only: compiling costs tens of
  seconds per network). A variant that fails is recorded with its error, not fatal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's demo/, for the app's budgets

from recovery import TEACHERS, machine  # benchmarks/recovery.py: run as `python benchmarks/<script>.py`

import dfkd_core as dfkd
from demo.settings import BUDGETS

SPARSITY = 0.75  # the app's default prune ratio
ZERO_GPU_MARGIN = 1.25  # ask ZeroGPU for this many times the measured seconds: first-call warm-up, a busier card
DREAM_BATCH = 256  # images of the timed dream batch: the recipe's batch
DREAM_STEPS = 20  # steps of the timed dream batch (after WARMUP_STEPS untimed ones)
WARMUP_STEPS = 3
DISTILL_IMAGES = 1024  # the timed distillation epoch: the default recipe's transfer set, in its batches of 32
COMPILED = ("resnet20",)  # families whose compiled variant is timed
NO_GPU = 2  # exit status on a machine without a CUDA GPU


def no_gpu_message() -> str:
    build = torch.version.cuda or "none (a CPU-only build of torch)"
    return (
        "benchmarks/gpu.py measures the GPU path and needs a CUDA GPU, but torch sees none here "
        f"(torch {torch.__version__}, CUDA build: {build}). Run it on a machine where "
        "`python -c 'import torch; print(torch.cuda.is_available())'` prints True; "
        "the CPU path is measured by benchmarks/headline.py and demo/timing.py."
    )


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn()`` takes, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def budget_row(teacher: str, budget: str, shared: Path, device: torch.device) -> dict[str, Any]:
    """One run of the pipeline with ``budget``'s recipe on ``teacher``: its stages' seconds and accuracies."""
    config = dfkd.RecoveryConfig(
        teacher=str(shared / "weights" / "cifar10-jpeg-teachers" / TEACHERS[teacher]),
        data=str(shared / "data" / "cifar10-jpeg"),
        sparsity=SPARSITY,
        recipe=BUDGETS[budget].recipe,
        baselines=(),
        curve_per_class=BUDGETS[budget].curve_per_class,
        device=str(device),
        cache=False,
    )
    result = dfkd.run_recovery(config)
    total = result.timings["total"]
    return {
        "teacher": teacher,
        "budget": budget,
        "pruned_acc": round(result.pruned_acc, 2),
        "recovered_acc": round(result.recovered_acc, 2),
        "timings_s": {k: round(v, 1) for k, v in result.timings.items()},
        "zero_gpu_request_s": math.ceil(ZERO_GPU_MARGIN * total),
        "app_request_resnet20_s": BUDGETS[budget].gpu_seconds,
    }


def _dream_batch(teacher: dfkd.Teacher, device: torch.device, steps: int) -> Callable[[], Any]:
    recipe = dfkd.DreamConfig(DREAM_BATCH, batch_size=DREAM_BATCH, steps=steps, holdout=0, preview_every=steps)
    return lambda: dfkd.dream(teacher, recipe, device=device)


def _distill_epoch(teacher: dfkd.Teacher, device: torch.device) -> Callable[[], Any]:
    images = torch.rand(DISTILL_IMAGES, 3, 32, 32)
    student = dfkd.prune_model(teacher.model, SPARSITY)
    config = dfkd.DistillConfig(epochs=1, lr=0.01)
    return lambda: dfkd.distill(student, teacher.model, images, teacher.normalization, config, device=device)


def speed_row(teacher: dfkd.Teacher, name: str, device: torch.device, variant: str) -> dict[str, Any]:
    """Seconds of a dream batch and of a distillation epoch on ``teacher`` in ``variant``: "float32", "bfloat16"
    (autocast) or "compiled" (torch.compile of the teacher)."""
    teacher = replace(teacher, model=teacher.model.to(device).eval())
    context: Callable[[], AbstractContextManager[Any]] = nullcontext
    if variant == "bfloat16":
        context = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    row: dict[str, Any] = {"teacher": name, "variant": variant}
    try:
        if variant == "compiled":
            started = time.perf_counter()
            teacher = replace(teacher, model=torch.compile(teacher.model))
            with context():
                _dream_batch(teacher, device, WARMUP_STEPS)()  # compiles
            row["compile_s"] = round(time.perf_counter() - started, 1)
        with context():
            _timed(_dream_batch(teacher, device, WARMUP_STEPS), device)
            row["dream_step_ms"] = round(
                1000 * _timed(_dream_batch(teacher, device, DREAM_STEPS), device) / DREAM_STEPS, 2
            )
            epoch = _distill_epoch(teacher, device)
            _timed(epoch, device)
            row["distill_epoch_s"] = round(_timed(epoch, device), 2)
    except Exception as err:  # one variant failing (a compiler error, say) is a finding, not the end of the run
        row["error"] = f"{type(err).__name__}: {err}"[:300]
    return row


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"# The GPU path ({record['machine']})",
        "",
        f"`{record['command']}`",
        "",
        f"Each budget end to end at {SPARSITY:.0%} of the weights, dreams made afresh, no baseline; seconds of wall clock.",
        "",
        "| teacher | budget | pruned | recovered | dream s | distill s | total s | ZeroGPU request s | app asks (ResNet-20) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["budgets"]:
        t = r["timings_s"]
        lines.append(
            f"| {r['teacher']} | {r['budget']} | {r['pruned_acc']:.2f} | {r['recovered_acc']:.2f} | {t.get('dream', 0):.1f} "
            f"| {t.get('distill', 0):.1f} | {t['total']:.1f} | {r['zero_gpu_request_s']} | {r['app_request_resnet20_s']} |"
        )
    lines += [
        "",
        f"Speed-ups: a dream batch of {DREAM_BATCH} ({DREAM_STEPS} steps timed), one distillation epoch ({DISTILL_IMAGES} images).",
        "",
        "| teacher | variant | dream ms/step | distill s/epoch | compile s | error |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["speed"]:
        lines.append(
            f"| {r['teacher']} | {r['variant']} | {r.get('dream_step_ms', '-')} | {r.get('distill_epoch_s', '-')} "
            f"| {r.get('compile_s', '-')} | {r.get('error', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    parser.add_argument("--budgets", nargs="+", default=["quick", "default"], choices=list(BUDGETS))
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(no_gpu_message(), file=sys.stderr)
        return NO_GPU
    if not (args.shared / "data" / "cifar10-jpeg").is_dir():
        parser.error(f"{args.shared / 'data' / 'cifar10-jpeg'} not found; pass --shared pointing at shared/")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    command = "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record: dict[str, Any] = {"machine": machine(), "command": command.strip(), "budgets": [], "speed": []}
    record["versions"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "dfkd": dfkd.__version__}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every row: a run cut short keeps what it measured
        (args.out / "gpu.json").write_text(json.dumps(record, indent=1) + "\n")
        (args.out / "gpu.md").write_text(markdown(record))

    for name in args.teachers:
        teacher = dfkd.load_teacher(str(args.shared / "weights" / "cifar10-jpeg-teachers" / TEACHERS[name]))
        for variant in ("float32", "bfloat16", *(("compiled",) if name in COMPILED else ())):
            record["speed"].append(speed_row(teacher, name, device, variant))
            print(json.dumps(record["speed"][-1]), flush=True)
            save()
    for budget in args.budgets:
        for teacher in args.teachers:
            record["budgets"].append(budget_row(teacher, budget, args.shared, device))
            print(json.dumps(record["budgets"][-1]), flush=True)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
