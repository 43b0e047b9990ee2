"""Recipe ablation: what each idea added to the paper's recipe buys, at 75% and 90% sparsity.

Rows are cumulative: each one takes the last kept recipe above it and changes one thing, so the
difference between the two is what that idea is worth; ideas that did not pay are shown, marked
"not kept", and the next row builds on the last kept one. Every row is a full run of the library's
pipeline on the JPEG CIFAR-10 ResNet-20 teacher, scored on the whole test split, data-free
(no baseline, no real training image). Rows that share an inversion setting share the dreams,
and the table says so: their synthesis time is paid once.

Usage (from the repository root; writes JSON and a markdown table):

    python benchmarks/recipe.py --shared ../shared --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

import dfkd_core as dfkd
from dfkd_core.pipeline import PRESETS, Recipe, resolve_device
from dfkd_core.reconstruct import ReconstructionConfig

TEACHER = "weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt"  # inside shared/
DATA = "data/cifar10-jpeg"  # inside shared/
SPARSITIES = (0.75, 0.9)


def _kd(recipe: Recipe, **changes) -> Recipe:
    return dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, **changes))


def ablation() -> list[tuple[str, Recipe, bool]]:
    """(idea, recipe, kept) rows. Each row changes one thing in the last kept row above it (or, where
    the idea says so, in the row it names); ideas that did not pay are shown and not kept."""
    paper = PRESETS["paper"]
    recalibrated = _kd(paper, bn_mode="train")
    faster = _kd(recalibrated, lr=0.05)
    features = _kd(faster, feature_weight=1.0)
    gradual = _kd(features, prune_ramp=0.5)
    cutmix = _kd(features, mix="cutmix")
    more_dreams = dataclasses.replace(
        _kd(features, epochs=8), inversion=dataclasses.replace(features.inversion, num_images=4096, steps=50)
    )
    refit = dataclasses.replace(cutmix, reconstruction=ReconstructionConfig())
    refit_gentle = _kd(refit, lr=0.01, bn_mode="frozen")
    more_steps = _kd(cutmix, batch_size=32, lr=0.1)
    patient = _kd(more_steps, epochs=60)
    more_full_dreams = dataclasses.replace(
        more_steps, inversion=dataclasses.replace(more_steps.inversion, num_images=2048)
    )
    patient_more_dreams = dataclasses.replace(patient, inversion=more_full_dreams.inversion)
    return [
        ("paper: 1,024 dreams x 200 steps, logits-only KD, teacher BN kept, lr 0.01", paper, True),
        ("+ student BatchNorm recalibrated on the dreams", recalibrated, True),
        ("+ SGD learning rate 0.05", faster, True),
        ("+ layer-by-layer feature distillation", features, True),
        ("+ gradual pruning: weights removed smallest-first over the first half of KD", gradual, False),
        ("+ 4x the dreams at 1/4 the steps (4,096 x 50), 8 epochs: same synthesis and KD steps", more_dreams, False),
        ("+ cutmix of dream pairs during KD", cutmix, True),
        ("+ layer-wise refit of the pruned layers on the dreams before KD", refit, False),
        ("+ refit, then gentle KD (teacher BatchNorm statistics kept, lr 0.01)", refit_gentle, False),
        ("+ 4x the SGD steps: batches of 32 instead of 128, lr 0.1 = preset `default`", more_steps, True),
        ("+ batches of 16 instead of 32", _kd(more_steps, batch_size=16), False),
        ("+ peak lr 0.2 instead of 0.1", _kd(more_steps, lr=0.2), False),
        ("+ feature weight 0.3 instead of 1", _kd(more_steps, feature_weight=0.3), False),
        ("+ crops padded by 8 pixels instead of 4", _kd(more_steps, crop_padding=8), False),
        ("+ instead twice the dreams (2,048 x 200), 30 epochs", more_full_dreams, False),
        ("+ twice as long: 60 epochs", patient, True),
        ("+ twice the dreams (2,048 x 200) = preset `best`", patient_more_dreams, True),
    ]


def _key(config) -> str:
    """A short content hash of a (frozen dataclass) configuration, for cache file names. Stages
    switched off (``None``) are left out, so adding an optional stage keeps earlier rows cached."""
    fields = {name: value for name, value in dataclasses.asdict(config).items() if value is not None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def markdown(rows: list[dict], title: str) -> str:
    header = " | ".join(f"{s:.0%}" for s in SPARSITIES)
    lines = [
        title,
        "",
        f"| recipe | {header} | synthesis s | refit + distillation s (per sparsity) |",
        "|---|" + "---|" * (len(SPARSITIES) + 2),
    ]
    for r in rows:
        accs = " | ".join(f"{r['recovered'][f'{s}']:.2f}" for s in SPARSITIES)
        synth = f"{r['synthesis_s']:.0f}" + ("" if r["fresh_dreams"] else " (shared)")
        idea = r["idea"] if r.get("kept", True) else f"~~{r['idea']}~~ (not kept)"
        lines.append(f"| {idea} | {accs} | {synth} | {r['distillation_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", type=Path, default=Path("runs/recipe-cache"),
                        help="dream sets and finished rows are kept here, so an interrupted run resumes")  # fmt: skip
    args = parser.parse_args(argv)
    teacher, data = args.shared / TEACHER, args.shared / DATA
    if not teacher.is_file() or not data.is_dir():
        parser.error(f"{teacher} or {data} not found; pass --shared pointing at the shared/ assets folder")
    recipes = [recipe for _, recipe, _ in ablation()]
    if PRESETS["default"] not in recipes or PRESETS["best"] not in recipes:
        print("note: the library's default or best preset is not a row of the ablation", file=sys.stderr)

    command = "python " + " ".join(["benchmarks/recipe.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    dreams_by_inversion: dict[dfkd.InversionConfig, dfkd.DreamSet] = {}
    rows = []
    started = time.perf_counter()
    for idea, recipe, kept in ablation():
        key = _key(recipe)
        finished = args.cache / f"row-{key}.json"
        if finished.is_file():  # measured by an earlier, interrupted invocation
            rows.append(json.loads(finished.read_text()) | {"idea": idea, "kept": kept})
            continue
        dream_file = args.cache / f"dreams-{_key(recipe.inversion)}.pt"
        if recipe.inversion not in dreams_by_inversion and dream_file.is_file():
            dreams_by_inversion[recipe.inversion] = dfkd.DreamSet.load(dream_file)
        fresh = not any(r["recipe"]["inversion"] == dataclasses.asdict(recipe.inversion) for r in rows)
        row = {"idea": idea, "kept": kept, "recipe": dataclasses.asdict(recipe), "fresh_dreams": fresh, "recovered": {}}
        distill_s = []
        for sparsity in SPARSITIES:
            config = dfkd.RecoveryConfig(
                teacher=str(teacher), data=str(data), sparsity=sparsity, recipe=recipe, baselines=(), device=args.device
            )
            result = dfkd.run_recovery(config, dreams=dreams_by_inversion.get(recipe.inversion))
            if recipe.inversion not in dreams_by_inversion:
                result.dreams.save(dream_file)
            dreams_by_inversion[recipe.inversion] = result.dreams
            row["recovered"][f"{sparsity}"] = round(result.recovered_acc, 2)
            row["teacher_acc"], row[f"pruned_{sparsity}"] = round(result.teacher_acc, 2), round(result.pruned_acc, 2)
            row["dreams_teacher_top1"] = round(result.dreams.teacher_top1, 1)
            distill_s.append(result.timings["distillation"] + result.timings.get("reconstruction", 0.0))
        row["synthesis_s"] = result.dreams.seconds
        row["distillation_s"] = sum(distill_s) / len(distill_s)
        rows.append(row)
        finished.write_text(json.dumps(row))
        print(f"{idea}: {row['recovered']} ({time.perf_counter() - started:.0f} s so far)", flush=True)
        _write(args.out, rows, command, args.device)
    print(_write(args.out, rows, command, args.device))
    return 0


def _write(out: Path, rows: list[dict], command: str, device: str) -> str:
    title = (
        f"Recipe ablation, ResNet-20 JPEG teacher ({rows[0]['teacher_acc']:.2f}), CIFAR-10 (JPEG) test, 10,000 images; "
        f"recovered top-1 after global L1 pruning; {resolve_device(device)}, "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; `{command}`"
    )
    table = markdown(rows, title)
    (out / "recipe.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    (out / "recipe.md").write_text(table)
    return table


if __name__ == "__main__":
    sys.exit(main())
