"""Dream speed: the library's dream step (DeepInversion) against a bare teacher forward+backward.

Both sides use the same teacher, the same batch of 32x32 images (channels_last, as the library
feeds them) and the same device. The bare side is a forward pass of the frozen teacher, as
given, and a backward pass to the input pixels (cross-entropy loss, nothing else). The library
side is ``dfkd_core.dream`` with the recipe's dream settings, end to end for one batch:
the BatchNorm-statistics prior (computed on the teacher with each Conv-BN pair folded, which
skips the BatchNorm passes the bare side pays for - so the ratio can exceed 1), total variation,
jitter and flip, Adam, clamping, best-iterate tracking, and its one-off costs per batch (folding,
two snapshots, the final top-1 check). Runs alternate (bare, library, bare, library, ...) so both
see the same machine state; the median of each is reported with their ratio (library / bare).

Usage (from the repository root; CPU always, CUDA too when present):

    python benchmarks/dream_speed.py \
        --teacher ../shared/weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt --out benchmarks/results
    python benchmarks/dream_speed.py --render benchmarks/results/dream_speed.json   # the table again
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tables import rerender  # benchmarks/tables.py: run as `python benchmarks/<script>.py`

import dfkd_core as dfkd
from dfkd_core import DreamConfig

BATCH = 256  # images per step: the recipe's dream batch size
STEPS = 50  # Adam steps per timed run (long enough that per-batch set-up is a small share)
REPEATS = 5  # timed runs of each side, interleaved; the median is reported
WARMUP_STEPS = 3  # untimed steps before the first timed run (allocator, kernel selection)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_backward(model: torch.nn.Module, batch: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` forward+backward passes of the frozen teacher to its input pixels."""
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    targets = torch.arange(batch, device=device) % 10
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), targets)
        (grad,) = torch.autograd.grad(loss, x)
    _sync(device)
    return time.perf_counter() - started


def library_dream(teacher: dfkd.Teacher, config: DreamConfig, device: torch.device) -> float:
    """Seconds for one batch of ``config.steps`` DeepInversion steps through the library."""
    _sync(device)
    started = time.perf_counter()
    dfkd.dream(teacher, config, device=device)
    _sync(device)
    return time.perf_counter() - started


def measure(teacher: dfkd.Teacher, device: torch.device, batch: int, steps: int, repeats: int) -> dict:
    model = teacher.model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    config = DreamConfig(num_images=batch, batch_size=batch, steps=steps, preview_every=steps)
    bare_forward_backward(model, batch, WARMUP_STEPS, device)
    library_dream(teacher, dataclasses.replace(config, steps=WARMUP_STEPS), device)
    bare_s, library_s = [], []
    for _ in range(repeats):
        bare_s.append(bare_forward_backward(model, batch, steps, device))
        library_s.append(library_dream(teacher, config, device))
    bare_rate = batch * steps / statistics.median(bare_s)
    library_rate = batch * steps / statistics.median(library_s)
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "bare_image_steps_per_s": round(bare_rate, 1),
        "library_image_steps_per_s": round(library_rate, 1),
        "ratio": round(library_rate / bare_rate, 3),
        "bare_s": [round(s, 3) for s in bare_s],
        "library_s": [round(s, 3) for s in library_s],
    }


def markdown(record: dict) -> str:
    """The table of a dream_speed.json record."""
    rows = record["rows"]
    lines = [
        f"Dream speed (image-steps/s, median of {rows[0]['repeats']} interleaved runs); "
        f"torch {record['torch']}; `{record['command']}`",
        "",
        "| teacher | device | batch | bare forward+backward | library dream step | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['teacher']} | {r['device']} | {r['batch']} | {r['bare_image_steps_per_s']:.0f} "
            f"| {r['library_image_steps_per_s']:.0f} | **{r['ratio']:.2f}** |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="registry id or checkpoint path")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", type=Path, default=None, help="write dream_speed.json and .md here")
    parser.add_argument("--render", type=Path, help="only rewrite the markdown table from this dream_speed.json")
    args = parser.parse_args(argv)
    if args.render:
        return rerender(args.render, markdown)
    if not args.teacher:
        parser.error("--teacher is required (unless --render)")

    teacher = dfkd.load_teacher(args.teacher)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    for name in devices:
        row = {
            "teacher": Path(args.teacher).name,
            **measure(teacher, torch.device(name), args.batch, args.steps, args.repeats),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python " + " ".join(["benchmarks/dream_speed.py", *(argv if argv is not None else sys.argv[1:])])
    record = {"command": command, "torch": torch.__version__, "rows": rows}
    table = markdown(record)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "dream_speed.json").write_text(json.dumps(record, indent=2) + "\n")
        (args.out / "dream_speed.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
