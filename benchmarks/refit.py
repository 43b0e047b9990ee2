"""Refit alone: how much accuracy the layer-wise refit gives back, how fast, and whether dreams do as well as real images.

The ResNet-20 JPEG teacher is pruned (global L1) and refit with :func:`dfkd.refit`, no
distillation, on three image sources: the default recipe's dreams (1,024 x 200 steps, made once
and cached, shared with ``benchmarks/recipe.py``), and as a reference that is NOT data-free,
1,024 and 5,000 real training images. Scored on the whole test split.

Usage (from the repository root; writes JSON and a markdown table):

    python benchmarks/refit.py --shared ../shared --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import dfkd_core as dfkd
from dfkd_core.data import load_eval_set, load_train_subset

TEACHER = "weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt"  # inside shared/
DATA = "data/cifar10-jpeg"  # inside shared/
SPARSITIES = (0.75, 0.9)
REAL_COUNTS = (1024, 5000)  # real training images for the (not data-free) reference rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dreams", type=Path, help="a dreams.pt of the default recipe (dreamed when absent)")
    args = parser.parse_args(argv)
    teacher_path, data = args.shared / TEACHER, args.shared / DATA
    if not teacher_path.is_file() or not data.is_dir():
        parser.error(f"{teacher_path} or {data} not found; pass --shared pointing at the shared/ assets folder")
    device = dfkd.resolve_device(args.device)
    teacher = dfkd.load_teacher(str(teacher_path))
    test_set = load_eval_set(str(data))

    def accuracy(model: torch.nn.Module) -> float:
        return dfkd.evaluate(model, test_set, teacher.normalization, device=device)

    if args.dreams and args.dreams.is_file():
        dreams = dfkd.DreamSet.load(args.dreams)
    else:
        dreams = dfkd.dream(teacher, dfkd.PRESETS["default"].dream, device=device)
    sources = {f"{len(dreams)} dreams (data-free)": dreams.images}
    for count in REAL_COUNTS:  # the reference: real training images, NOT data-free
        sources[f"{count} real training images (not data-free)"] = (
            load_train_subset(str(data), count // len(teacher.classes)).images.float() / 255
        )

    rows = []
    for sparsity in SPARSITIES:
        pruned = dfkd.prune_model(teacher.model, sparsity)
        pruned_acc = accuracy(pruned)
        for source, images in sources.items():
            student = dfkd.prune_model(teacher.model, sparsity)
            config = dfkd.RefitConfig(num_images=len(images))
            started = time.perf_counter()
            dfkd.refit(student, teacher.model, images, teacher.normalization, config, device=device)
            seconds = time.perf_counter() - started
            row = {
                "sparsity": sparsity,
                "source": source,
                "pruned": round(pruned_acc, 2),
                "refit": round(accuracy(student), 2),
                "seconds": round(seconds, 1),
            }
            rows.append(row)
            print(row, flush=True)

    command = "python " + " ".join(["benchmarks/refit.py", *(argv if argv is not None else sys.argv[1:])])
    title = (
        f"Layer-wise refit alone (no distillation), ResNet-20 JPEG teacher ({accuracy(teacher.model):.2f}), "
        f"CIFAR-10 (JPEG) test, 10,000 images; {device}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; `{command}`"
    )
    lines = [title, "", "| sparsity | images | pruned | refit | refit s |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['sparsity']:.0%} | {r['source']} | {r['pruned']:.2f} | **{r['refit']:.2f}** | {r['seconds']:.0f} |"
        for r in rows
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refit.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    (args.out / "refit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
