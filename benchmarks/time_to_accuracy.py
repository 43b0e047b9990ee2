"""Time to accuracy: what each way of making a transfer set buys per second of wall clock.

One script, one process, the runs one after the other on the same machine (JPEG CIFAR-10 ResNet-20
teacher, global L1 pruning, 90% sparsity by default). Each curve is the student's accuracy on the
fixed curve subset (200 test images per class) against the seconds since its transfer set started
to be made - load and prune are the same for every curve and are left out:

    deepinversion  the fixed-set recipe: DeepInversion dreams first, then distillation epochs on them
    generator      the generator recipe: a short warm-up, then a fresh batch every few student steps
    real           the generator recipe's schedule on as many REAL training images (the oracle, not
                   data-free; its clock starts when its images are loaded)
    real-fixed     the fixed-set recipe on as many real images as dreams (the oracle of the fixed set)

The last point of each curve (a star in the plot) is the accuracy on the full test split.

Usage (from the repository root; writes JSON, a markdown table and a PNG plot):

    python benchmarks/time_to_accuracy.py --shared ../shared --out benchmarks/results
    python benchmarks/time_to_accuracy.py --render benchmarks/results/time_to_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from recovery import machine, recipe_words  # benchmarks/recovery.py
from tables import rerender

import dfkd_core as dfkd
from dfkd_core.events import Metric, MetricLogged, Network, Stage, StageStarted

TEACHER = "weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt"  # inside shared/
DATA = "data/cifar10-jpeg"  # inside shared/
CURVES = ("deepinversion", "generator")  # each the `default` preset, with that synthesis
ORACLES = {"deepinversion": "real-fixed", "generator": "real"}  # the real-image curve each run also draws
COLOURS = {"deepinversion": "tab:blue", "generator": "tab:orange", "real": "tab:green", "real-fixed": "tab:olive"}


def _curves(config: dfkd.RecoveryConfig, name: str) -> tuple[dict[str, list[tuple[float, float]]], dfkd.RecoveryResult]:
    """Run ``config``; the (seconds, accuracy) curve of the dreams and of the real-image oracle."""
    curves: dict[str, list[tuple[float, float]]] = {name: [], ORACLES[name]: []}
    clock = {name: 0.0, ORACLES[name]: 0.0}
    result = None
    for event in dfkd.recover(config):
        now = time.perf_counter()
        if isinstance(event, StageStarted) and event.stage is Stage.DREAM:
            clock[name] = now
        if isinstance(event, MetricLogged) and event.metric is Metric.CURVE_ACCURACY:
            if event.network is Network.RECOVERED:
                curves[name].append((now - clock[name], event.value))
            elif event.network is Network.REAL:
                if event.step == 0:  # the oracle's images are loaded: its clock starts
                    clock[ORACLES[name]] = now
                curves[ORACLES[name]].append((now - clock[ORACLES[name]], event.value))
        if isinstance(event, dfkd.Finished):
            result = event.result
    assert result is not None
    curves[name][-1] = (curves[name][-1][0], result.recovered_acc)
    if result.baselines["real"] is not None:
        curves[ORACLES[name]][-1] = (curves[ORACLES[name]][-1][0], result.baselines["real"])
    return curves, result


def markdown(record: dict) -> str:
    meta = record["meta"]
    lines = [
        f"Time to accuracy, {meta['teacher']} at {meta['sparsity']:.0%} sparsity (global L1), CIFAR-10 (JPEG); "
        f"{meta['machine']}; torch {meta['versions']['torch']}; `{meta['command']}`",
        "",
        "Seconds from the start of synthesis (or, for the real-image oracles, of training); accuracy on the full",
        "test split at the end, on 2,000 test images at the points between. *real* rows are NOT data-free.",
        "",
        "| curve | recipe | final accuracy | seconds to the end | synthesis s | distill s |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        points = row["points"]
        lines.append(
            f"| {row['name']} | {row['recipe']} | **{points[-1][1]:.2f}** | {points[-1][0]:.0f} "
            f"| {row.get('synthesis_s', '-')} | {row.get('distill_s', '-')} |"
        )
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in record["rows"]:
        seconds, accuracy = zip(*row["points"])
        style = "--" if row["name"].startswith("real") else "-"
        label = f"{row['name']} ({accuracy[-1]:.1f}%)" + (" - not data-free" if style == "--" else "")
        colour = COLOURS[row["name"]]
        ax.plot(seconds[:-1], accuracy[:-1], style, marker="o", markersize=3, color=colour, label=label)
        ax.plot(seconds[-1], accuracy[-1], "*", markersize=11, color=colour)  # the full test split, at the end
    meta = record["meta"]
    ax.set(
        xlabel="wall-clock seconds (2-core CPU); star: the full test split at the end",
        ylabel="top-1 % (CIFAR-10 JPEG test)",
        title=f"{meta['teacher']} at {meta['sparsity']:.0%} sparsity: accuracy against time",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--curves", nargs="+", default=list(CURVES), choices=list(CURVES))
    parser.add_argument("--no-oracle", dest="oracle", action="store_false", help="skip the real-image curves")
    parser.add_argument("--render", type=Path, help="only rewrite the table and plot from this .json")
    args = parser.parse_args(argv)
    if args.render:
        record = json.loads(args.render.read_text())
        plot(record, args.render.with_suffix(".png"))
        return rerender(args.render, markdown)

    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(["benchmarks/time_to_accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    rows: list[dict] = []
    for name in args.curves:
        config = dfkd.RecoveryConfig(
            teacher=str(args.shared / TEACHER),
            data=str(args.shared / DATA),
            sparsity=args.sparsity,
            recipe=dfkd.with_overrides(dfkd.get_preset("default"), synthesis=name),
            baselines=("real",) if args.oracle else (),
            device="cpu",
        )
        curves, result = _curves(config, name)
        report = result.report()
        words = recipe_words(report["settings"]["recipe"])
        timings = report["timings_s"]
        rows.append(
            {
                "name": name,
                "recipe": words,
                "points": curves[name],
                "synthesis_s": round(timings["dream"]),
                "distill_s": round(timings["distill"]),
            }
        )
        if args.oracle:
            rows.append({"name": ORACLES[name], "recipe": words, "points": curves[ORACLES[name]]})
        meta = {
            "command": command,
            "machine": machine(),
            "teacher": "ResNet-20 (JPEG, 87.98)",
            "sparsity": args.sparsity,
            "versions": report["versions"],
        }
        _write(args.out, {"meta": meta, "rows": rows})
        print(f"{name}: {result.recovered_acc:.2f} ({timings['total']:.0f} s)", flush=True)
    return 0


def _write(out: Path, record: dict) -> None:
    path = out / "time_to_accuracy.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    (out / "time_to_accuracy.md").write_text(markdown(record))
    plot(record, path.with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(main())
