"""Recipe ablation: what each idea added to the paper's recipe buys, at 75% and 90% sparsity.

Rows are cumulative: each one takes the recipe of the row above and changes one thing, so the
difference between two rows is what that idea is worth. Every row is a full run of the library's
pipeline on the JPEG CIFAR-10 ResNet-20 teacher, scored on the whole test split, data-free
(no baseline, no real training image). Rows that share an inversion setting share the dreams,
and the table says so: their synthesis time is paid once.

Usage (from the repository root; writes JSON and a markdown table):

    python benchmarks/recipe.py --shared ../shared --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

import dfkd_core as dfkd
from dfkd_core.pipeline import PRESETS, Recipe, resolve_device

TEACHER = "weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt"  # inside shared/
DATA = "data/cifar10-jpeg"  # inside shared/
SPARSITIES = (0.75, 0.9)


def _kd(recipe: Recipe, **changes) -> Recipe:
    return dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, **changes))


def ablation() -> list[tuple[str, Recipe]]:
    """(idea, recipe) rows, each the previous recipe plus one change; the last is the library default."""
    paper = PRESETS["paper"]
    recalibrated = _kd(paper, bn_mode="train")
    faster = _kd(recalibrated, lr=0.05)
    features = _kd(faster, feature_weight=1.0)
    return [
        ("paper: 1,024 dreams x 200 steps, logits-only KD, teacher BN kept, lr 0.01", paper),
        ("+ student BatchNorm recalibrated on the dreams", recalibrated),
        ("+ SGD learning rate 0.05", faster),
        ("+ layer-by-layer feature distillation", features),
    ]


def markdown(rows: list[dict], title: str) -> str:
    header = " | ".join(f"{s:.0%}" for s in SPARSITIES)
    lines = [
        title,
        "",
        f"| recipe | {header} | synthesis s | distillation s (per sparsity) |",
        "|---|" + "---|" * (len(SPARSITIES) + 2),
    ]
    for r in rows:
        accs = " | ".join(f"{r['recovered'][f'{s}']:.2f}" for s in SPARSITIES)
        synth = f"{r['synthesis_s']:.0f}" + ("" if r["fresh_dreams"] else " (shared)")
        lines.append(f"| {r['idea']} | {accs} | {synth} | {r['distillation_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    teacher, data = args.shared / TEACHER, args.shared / DATA
    if not teacher.is_file() or not data.is_dir():
        parser.error(f"{teacher} or {data} not found; pass --shared pointing at the shared/ assets folder")
    if ablation()[-1][1] != PRESETS["default"]:
        print("note: the last row differs from the library's default recipe", file=sys.stderr)

    command = "python " + " ".join(["benchmarks/recipe.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    dreams_by_inversion: dict[dfkd.InversionConfig, dfkd.DreamSet] = {}
    rows = []
    started = time.perf_counter()
    for idea, recipe in ablation():
        fresh = recipe.inversion not in dreams_by_inversion
        row = {"idea": idea, "recipe": dataclasses.asdict(recipe), "fresh_dreams": fresh, "recovered": {}}
        distill_s = []
        for sparsity in SPARSITIES:
            config = dfkd.RecoveryConfig(
                teacher=str(teacher), data=str(data), sparsity=sparsity, recipe=recipe, baselines=(), device=args.device
            )
            result = dfkd.run_recovery(config, dreams=dreams_by_inversion.get(recipe.inversion))
            dreams_by_inversion[recipe.inversion] = result.dreams
            row["recovered"][f"{sparsity}"] = round(result.recovered_acc, 2)
            row["teacher_acc"], row[f"pruned_{sparsity}"] = round(result.teacher_acc, 2), round(result.pruned_acc, 2)
            row["dreams_teacher_top1"] = round(result.dreams.teacher_top1, 1)
            distill_s.append(result.timings["distillation"])
        row["synthesis_s"] = result.dreams.seconds
        row["distillation_s"] = sum(distill_s) / len(distill_s)
        rows.append(row)
        print(f"{idea}: {row['recovered']} ({time.perf_counter() - started:.0f} s so far)", flush=True)
        title = (
            f"Recipe ablation, ResNet-20 JPEG teacher ({row['teacher_acc']:.2f}), CIFAR-10 (JPEG) test, 10,000 images; "
            f"recovered top-1 after global L1 pruning; {resolve_device(args.device)}, "
            f"{torch.get_num_threads()} threads; torch {torch.__version__}; `{command}`"
        )
        table = markdown(rows, title)
        (args.out / "recipe.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
        (args.out / "recipe.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
