"""Recipe ablation: what each idea added to the paper's recipe buys, at 75% and 90% sparsity.

Rows are cumulative: each one takes the last kept recipe above it and changes one thing, so the
difference between the two is what that idea is worth; ideas that did not pay are shown, marked
"not kept", and the next row builds on the last kept one. Every row is a full run of the library's
pipeline on the JPEG CIFAR-10 ResNet-20 teacher, scored on the whole test split, data-free
(no baseline, no real training image). Rows that share a dream setting share the dreams, and the
table says so: their dream time is paid once.

Usage (from the repository root; writes JSON and a markdown table):

    python benchmarks/recipe.py --shared ../shared --out benchmarks/results
    python benchmarks/recipe.py --render benchmarks/results/recipe.json   # the table again, no run
    python benchmarks/recipe.py --shared ../shared --append   # run only rows the results file lacks
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
from tables import rerender  # benchmarks/tables.py: run as `python benchmarks/<script>.py`

import dfkd_core as dfkd
from dfkd_core import DistillConfig, DreamConfig, Recipe, RefitConfig

TEACHER = "weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt"  # inside shared/
DATA = "data/cifar10-jpeg"  # inside shared/
SPARSITIES = (0.75, 0.9)

# The paper's reference recipe: logits-only distillation with the teacher's BatchNorm statistics kept,
# batches of 128 at lr 0.01, no cutmix, on 1,024 dreams of 200 steps.
PAPER = Recipe(
    DreamConfig(num_images=1024, steps=200),
    DistillConfig(epochs=30, batch_size=128, lr=0.01, feature_weight=0.0, bn_mode="frozen", cutmix=False),
)


def _kd(recipe: Recipe, **changes) -> Recipe:
    return dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, **changes))


def _dreams(recipe: Recipe, **changes) -> Recipe:
    return dataclasses.replace(recipe, dream=dataclasses.replace(recipe.dream, **changes))


def ablation() -> list[tuple[str, Recipe, bool]]:
    """(idea, recipe, kept) rows. Each row changes one thing in the last kept row above it (or, where
    the idea says so, in the row it names); ideas that did not pay are shown and not kept."""
    recalibrated = _kd(PAPER, bn_mode="train")
    faster = _kd(recalibrated, lr=0.05)
    features = _kd(faster, feature_weight=1.0)
    more_dreams = _dreams(_kd(features, epochs=8), num_images=4096, steps=50)
    cutmix = _kd(features, cutmix=True)
    refit = dataclasses.replace(cutmix, refit=RefitConfig())
    refit_gentle = _kd(refit, lr=0.01, bn_mode="frozen")
    more_steps = _kd(cutmix, batch_size=32, lr=0.1)
    patient = _kd(more_steps, epochs=60)
    more_full_dreams = _dreams(more_steps, num_images=2048)
    patient_more_dreams = _dreams(patient, num_images=2048)
    return [
        ("paper: 1,024 dreams x 200 steps, logits-only distillation, teacher BN kept, lr 0.01", PAPER, True),
        ("+ student BatchNorm recalibrated on the dreams", recalibrated, True),
        ("+ SGD learning rate 0.05", faster, True),
        ("+ layer-by-layer feature distillation", features, True),
        (
            "+ 4x the dreams at 1/4 the steps (4,096 x 50), 8 epochs: same dreaming and distillation steps",
            more_dreams,
            False,
        ),
        ("+ cutmix of dream pairs during distillation", cutmix, True),
        ("+ layer-wise refit of the pruned layers on the dreams before distillation", refit, False),
        ("+ refit, then gentle distillation (teacher BatchNorm statistics kept, lr 0.01)", refit_gentle, False),
        ("+ 4x the SGD steps: batches of 32 instead of 128, lr 0.1 = preset `default`", more_steps, True),
        ("+ batches of 16 instead of 32", _kd(more_steps, batch_size=16), False),
        ("+ peak lr 0.2 instead of 0.1", _kd(more_steps, lr=0.2), False),
        ("+ feature weight 0.3 instead of 1", _kd(more_steps, feature_weight=0.3), False),
        ("+ crops padded by 8 pixels instead of 4", _kd(more_steps, crop_padding=8), False),
        (
            "preset `default` again, on the fresh dream set the next two rows share",
            more_steps,
            True,
        ),
        ("+ peak lr 0.03 instead of 0.1", _kd(more_steps, lr=0.03), False),
        (
            "+ gradual pruning: from 50% up to the target over the first 25 of the 30 epochs (Zhu & Gupta's cubic "
            "schedule; in `best`, below)",
            _kd(more_steps, gradual_epochs=25),
            False,
        ),
        ("+ instead twice the dreams (2,048 x 200), 30 epochs", more_full_dreams, False),
        ("+ twice as long: 60 epochs", patient, True),
        ("+ twice the dreams (2,048 x 200)", patient_more_dreams, True),
        (
            "+ gradual pruning from 50% up to the target over the first 50 of the 60 epochs = preset `best`",
            _kd(patient_more_dreams, gradual_epochs=50),
            True,
        ),
    ]


def _key(config) -> str:
    """A short content hash of a (frozen dataclass) configuration, for cache file names. Stages
    switched off (``None``) are left out, so adding an optional stage keeps earlier rows cached."""
    fields = {name: value for name, value in dataclasses.asdict(config).items() if value is not None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def markdown(record: dict) -> str:
    """The table of a recipe.json record."""
    rows = record["rows"]
    title = (
        f"Recipe ablation, ResNet-20 JPEG teacher ({rows[0]['teacher_acc']:.2f}), CIFAR-10 (JPEG) test, "
        f"10,000 images; recovered top-1 after global L1 pruning; {record['device']}, {record['threads']} threads; "
        f"torch {record['torch']}; " + "; ".join(f"`{c}`" for c in record.get("commands") or [record["command"]])
    )
    sparsities = list(rows[0]["recovered"])  # as recorded: "0.75", "0.9"
    header = " | ".join(f"{float(s):.0%}" for s in sparsities)
    lines = [
        title,
        "",
        f"| recipe | {header} | dream s | refit + distill s (per sparsity) |",
        "|---|" + "---|" * (len(sparsities) + 2),
    ]
    for r in rows:
        accs = " | ".join(f"{r['recovered'][s]:.2f}" for s in sparsities)
        dream_s = f"{r['dream_s']:.0f}" + ("" if r["fresh_dreams"] else " (shared)")
        idea = r["idea"] if r.get("kept", True) else f"~~{r['idea']}~~ (not kept)"
        lines.append(f"| {idea} | {accs} | {dream_s} | {r['refit_distill_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("runs/recipe-cache"),
        help="dream sets and finished rows are kept here, so an interrupted run resumes",
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the rows --out already has (same idea); run only the others"
    )
    parser.add_argument("--render", type=Path, help="only rewrite the markdown table from this recipe.json")
    args = parser.parse_args(argv)
    if args.render:
        return rerender(args.render, markdown)

    teacher, data = args.shared / TEACHER, args.shared / DATA
    if not teacher.is_file() or not data.is_dir():
        parser.error(f"{teacher} or {data} not found; pass --shared pointing at the shared/ assets folder")
    recipes = [recipe for _, recipe, _ in ablation()]
    if dfkd.PRESETS["default"] not in recipes or dfkd.PRESETS["best"] not in recipes:
        print("note: the library's default or best preset is not a row of the ablation", file=sys.stderr)

    command = "python " + " ".join(["benchmarks/recipe.py", *(argv if argv is not None else sys.argv[1:])])
    stem = args.out / "recipe"
    appending = args.append and stem.with_suffix(".json").is_file()
    earlier = json.loads(stem.with_suffix(".json").read_text()) if appending else {"rows": []}
    measured = {r["idea"]: r for r in earlier["rows"]}
    record = {
        "commands": list(
            dict.fromkeys([*(earlier.get("commands") or [earlier["command"]] if appending else []), command])
        ),
        "device": str(dfkd.resolve_device(args.device)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    dreams_by_setting: dict[DreamConfig, dfkd.DreamSet] = {}
    rows = record["rows"]
    started = time.perf_counter()
    for idea, recipe, kept in ablation():
        finished = args.cache / f"row-{_key(recipe)}.json"
        if idea in measured or finished.is_file():  # in the results already, or measured before an interruption
            rows.append((measured.get(idea) or json.loads(finished.read_text())) | {"idea": idea, "kept": kept})
            continue
        made_before = recipe.dream in dreams_by_setting or (args.cache / f"dreams-{_key(recipe.dream)}.pt").is_file()
        row = {"idea": idea, "kept": kept, "recipe": dataclasses.asdict(recipe), "fresh_dreams": not made_before}
        row |= _measure(recipe, args, dreams_by_setting)
        rows.append(row)
        finished.write_text(json.dumps(row))
        print(f"{idea}: {row['recovered']} ({time.perf_counter() - started:.0f} s so far)", flush=True)
        _write(stem, record)
    print(_write(stem, record))
    return 0


def _measure(recipe: Recipe, args: argparse.Namespace, dreams_by_setting: dict) -> dict:
    """One row's figures: the recipe run at every sparsity on the ablation's teacher. The dream set is
    made once per dream setting and kept in ``args.cache``."""
    teacher, data = args.shared / TEACHER, args.shared / DATA
    dream_file = args.cache / f"dreams-{_key(recipe.dream)}.pt"
    if recipe.dream not in dreams_by_setting and dream_file.is_file():
        dreams_by_setting[recipe.dream] = dfkd.DreamSet.load(dream_file)
    row: dict = {"recovered": {}}
    refit_distill_s = []
    for sparsity in SPARSITIES:
        config = dfkd.RecoveryConfig(
            teacher=str(teacher), data=str(data), sparsity=sparsity, recipe=recipe, baselines=(), device=args.device
        )
        result = dfkd.run_recovery(config, dreams=dreams_by_setting.get(recipe.dream))
        if recipe.dream not in dreams_by_setting:
            result.dreams.save(dream_file)
            dreams_by_setting[recipe.dream] = result.dreams
        row["recovered"][f"{sparsity}"] = round(result.recovered_acc, 2)
        row["teacher_acc"], row[f"pruned_{sparsity}"] = round(result.teacher_acc, 2), round(result.pruned_acc, 2)
        row["dreams_teacher_top1"] = round(result.dreams.teacher_top1, 1)
        refit_distill_s.append(result.timings["distill"] + result.timings.get("refit", 0.0))
    row["dream_s"] = result.dreams.seconds
    row["refit_distill_s"] = sum(refit_distill_s) / len(refit_distill_s)
    return row


def _write(stem: Path, record: dict) -> str:
    table = markdown(record)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)
    return table


if __name__ == "__main__":
    sys.exit(main())
