"""``dfkd`` command line: list teachers, evaluate one, recover a pruned one.

Every recipe knob of :class:`DreamConfig` (``--dream-*``), :class:`RefitConfig` (``--refit-*``,
with ``--refit/--no-refit`` to switch the stage) and :class:`DistillConfig` (``--distill-*``) is a
flag, generated from the dataclasses (help text from each field's metadata), so the two can never
drift apart.
Errors a user can fix end with one readable line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ._knobs import help_of, parse_knob
from ._version import __version__
from .device import limit_threads
from .dream import DreamSet
from .events import Finished, Stage, StageFinished
from .outputs import OUTPUT_FILES, check_output_dir, write_outputs
from .pipeline import BASELINES, PRESETS, Recipe, RecoveryConfig, RecoveryResult, get_preset, recover, with_overrides
from .progress import ProgressBars
from .prune import GRANULARITIES, SCOPES
from .refit import RefitConfig
from .zoo import get_pretrained, list_teachers

EXIT_USAGE = 2
RECIPE_SECTIONS = ("dream", "refit", "distill")  # the Recipe fields, each a flag prefix: --dream-steps, ...


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    default = get_preset("default")
    for section in RECIPE_SECTIONS:
        config = getattr(default, section) or RefitConfig()
        group = parser.add_argument_group(
            f"{section} (overrides the preset; defaults shown are the 'default' preset's)"
        )
        if section == "refit":
            group.add_argument(
                "--refit",
                dest="use_refit",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="refit the pruned layers on the dreams before distillation (default: as the preset)",
            )
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            flag, dest = f"--{section}-{f.name.replace('_', '-')}", f"{section}.{f.name}"
            help_text = f"{help_of(type(config), f.name)} (default: {value})"
            help_text = help_text.replace("%", "%%")  # argparse %-formats help: a knob's "50%" must stay text
            if isinstance(value, bool):
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                group.add_argument(
                    flag,
                    dest=dest,
                    type=_knob_parser(value),
                    default=None,
                    metavar=type(value).__name__.upper() if not isinstance(value, str) else "VALUE",
                    help=help_text,
                )


def _knob_parser(default: Any) -> Any:
    """An argparse ``type`` for a knob whose default is ``default`` (see :func:`parse_knob`)."""

    def parse(text: str) -> Any:
        try:
            return parse_knob(text, default)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = type(default).__name__  # what argparse names in "invalid ... value"
    return parse


def _recipe_from_args(args: argparse.Namespace) -> Recipe:
    overrides: dict[str, dict[str, Any]] = {section: {} for section in RECIPE_SECTIONS}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            overrides[section][name] = value
    return with_overrides(
        get_preset(args.preset, args.granularity),
        overrides["dream"],
        overrides["distill"],
        overrides["refit"],
        use_refit=args.use_refit,
    )


def _add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="registry id (see `dfkd teachers`) or checkpoint path")
    parser.add_argument("--arch", help="architecture of a checkpoint that does not record it")
    parser.add_argument("--normalization", help="'imagenet', 'cifar10' or 'm1,m2,m3,s1,s2,s3' (if not recorded)")
    parser.add_argument(
        "--data", default="cifar10", help="evaluation data: 'cifar10' or an ImageFolder root with test/"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfkd", description="Data-free recovery of pruned networks (DeepInversion + knowledge distillation)."
    )
    parser.add_argument("--version", action="version", version=f"dfkd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    teachers = commands.add_parser("teachers", help="list the pretrained teachers of the registry")
    teachers.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*resnet*'")
    teachers.add_argument("--json", action="store_true", help="print one JSON object per line")

    evaluate = commands.add_parser("evaluate", help="top-1 accuracy of a teacher on held-out data")
    _add_teacher_flags(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    rec = commands.add_parser("recover", help="prune a teacher and recover it by data-free distillation")
    _add_teacher_flags(rec)
    rec.add_argument(
        "--sparsity",
        type=float,
        default=0.75,
        help="fraction to remove, in [0, 1): of the Conv/Linear weights, or of the MACs with --granularity channel",
    )
    rec.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default="weight",
        help="remove single weights (weight, the paper's: same shape and speed) or whole channels with "
        "Torch-Pruning (channel: a smaller, faster network; the preset's recipe then prunes gradually during "
        "distillation, from 20%% of the MACs over 5/6 of the epochs, without the refit)",
    )
    rec.add_argument(
        "--scope",
        choices=SCOPES,
        default="global",
        help="one magnitude threshold over all layers (global, the paper's), one per layer (layerwise), or one "
        "over scale-free layer-adaptive scores (lamp); for channels, the same rankings of whole channels",
    )
    rec.add_argument("--out", required=True, type=Path, help=f"output directory ({', '.join(OUTPUT_FILES)})")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--preset", choices=tuple(PRESETS), default="default", help="recipe preset")
    rec.add_argument(
        "--baselines",
        default="noise",
        help=f"comma list of same-budget baselines ({', '.join(BASELINES)}: "
        "the oracle on real training images), or none",
    )
    rec.add_argument(
        "--curve-per-class", type=int, default=200, help="test images per class for the per-epoch curve (0 = all)"
    )
    rec.add_argument(
        "--eval-per-class", type=int, default=0, help="test images per class for reported accuracies (0 = all)"
    )
    rec.add_argument(
        "--dreams", type=Path, help="reuse dreams.pt from an earlier run of the same teacher (skips dreaming)"
    )
    rec.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_recipe_flags(rec)

    demo = commands.add_parser("demo", help="launch the Gradio app (further flags go to demo/app.py, e.g. --data)")
    demo.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    demo.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    demo.add_argument(
        "app_args", nargs=argparse.REMAINDER, help="passed on to the app: --data, --teacher-dir, --device"
    )
    return parser


def _cmd_teachers(args: argparse.Namespace) -> int:
    ids = list_teachers(args.pattern)
    if not ids:
        raise ValueError(f"no teacher matches {args.pattern!r}; `dfkd teachers` lists them all")
    rows = [get_pretrained(i) for i in ids]
    if args.json:
        for r in rows:
            record = {
                "id": r.id,
                "arch": r.arch,
                "family": r.family,
                "num_params": r.num_params,
                "reported_acc": r.reported_acc,
                "normalization": r.normalization.as_dict(),
                "license": r.license,
                "url": r.url,
            }
            print(json.dumps(record))
        return 0
    width = max(len(i) for i in ids)
    print(f"{'id':<{width}}  {'params':>10}  {'top-1':>6}  {'norm':<8}  license")
    for r in rows:
        norm = "imagenet" if r.normalization.mean[0] == 0.485 else "cifar10"
        print(f"{r.id:<{width}}  {r.num_params:>10,}  {r.reported_acc:>6.2f}  {norm:<8}  {r.license}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_eval_set
    from .device import resolve_device
    from .evaluate import align_classes, evaluate, measure_size
    from .zoo import load_teacher

    device = resolve_device(args.device)
    teacher = load_teacher(args.teacher, arch=args.arch, normalization=args.normalization)
    data, note = align_classes(load_eval_set(args.data), teacher, args.data)
    if note:
        print(f"dfkd evaluate: note: {note}", file=sys.stderr)
    accuracy = evaluate(teacher.model.to(device), data, teacher.normalization, device=device)
    size = measure_size(teacher.model, tuple(data.images.shape[1:]))
    record = {
        "teacher": args.teacher,
        "arch": teacher.arch,
        "accuracy": round(accuracy, 2),
        "params": size.params,
        "macs": size.macs,
        "num_images": len(data),
        "dataset": data.name,
        "device": str(device),
    }
    print(
        json.dumps(record)
        if args.json
        else f"{args.teacher} ({teacher.arch}, {size.params:,} parameters, {size.macs / 1e6:.1f}M MACs) on {data.name}: "
        f"{accuracy:.2f}% top-1 over {len(data):,} images"
    )
    return 0


def _summary(result: RecoveryResult) -> str:
    """Every accuracy of the run, its sparsity and its wall time on one line; on a second, what the run chose
    without labels: the learning rate and the epoch kept by the held-out agreement."""
    parts = [f"teacher {result.teacher_acc:.2f}%", f"pruned {result.pruned_acc:.2f}%"]
    if result.refit_acc is not None:
        parts.append(f"refit {result.refit_acc:.2f}%")
    parts.append(f"recovered {result.recovered_acc:.2f}%")
    labels = {"noise": "noise", "real": "real-data oracle"}
    parts += [f"{labels[name]} {value:.2f}%" for name, value in result.baselines.items() if value is not None]
    speed = ", ".join(f"{x:.2f}x at batch {b}" for b, x in result.speedup().items())
    line = (
        "  ".join(parts)
        + f"  ({result.pruning}; CPU speed-up {speed}; {result.timings['total']:.0f} s on {result.device})"
    )
    return line + "\n" + _choices(result)


def _choices(result: RecoveryResult) -> str:
    """What the run decided on the held-out dreams alone, in words."""
    distilled = result.distilled
    lr = f"lr {distilled.lr:.3g}" + (f" (best of {len(distilled.lr_probes)} probes)" if distilled.lr_probes else "")
    if distilled.kept_epoch is None:
        return f"{lr}; last epoch returned (no held-out dreams to judge it)"
    if distilled.kept_epoch == 0:
        return f"{lr}; recovery did NOT beat the start on the held-out dreams: the start is returned"
    epochs = result.curve[-1][0]
    return f"{lr}; epoch {distilled.kept_epoch} of {epochs} kept (most agreement with the teacher on held-out dreams)"


def _cmd_recover(args: argparse.Namespace) -> int:
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none")
    check_output_dir(args.out)
    config = RecoveryConfig(
        teacher=args.teacher,
        data=args.data,
        sparsity=args.sparsity,
        scope=args.scope,
        granularity=args.granularity,
        recipe=_recipe_from_args(args),
        baselines=baselines,
        curve_per_class=args.curve_per_class,
        eval_per_class=args.eval_per_class,
        device=args.device,
        seed=args.seed,
        arch=args.arch,
        normalization=args.normalization,
    )
    dreams = DreamSet.load(args.dreams) if args.dreams else None
    bars = ProgressBars(args.quiet, file=sys.stderr)
    result = None
    kept: Path | None = None  # the dreams, saved as soon as they are made: the expensive part is never lost
    try:
        for event in recover(config, dreams):
            bars(event)
            if isinstance(event, StageFinished) and event.stage is Stage.DREAM and "dreams" in event.summary:
                kept = event.summary["dreams"].save(Path(args.out) / "dreams.pt")
            if isinstance(event, Finished):
                result = event.result
    except BaseException:
        if kept is not None:
            print(
                f"dfkd recover: the dreams are saved in {kept}; add --dreams {kept} to skip dreaming", file=sys.stderr
            )
        raise
    finally:
        bars.close()
    assert result is not None
    print(_summary(result), flush=True)  # before writing: a failure to write keeps the numbers on screen
    written = write_outputs(result, args.out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Start ``demo/app.py`` of the source checkout this package runs from (editable install)."""
    import importlib.util

    app = Path(__file__).resolve().parents[1] / "demo" / "app.py"
    if not app.is_file():
        raise ValueError(
            "the app ships with the source repository: clone it, `pip install -e '.[demo]'`, then `dfkd demo`"
        )
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the app needs Gradio: pip install -e '.[demo]'")
    spec = importlib.util.spec_from_file_location("dfkd_demo_app", app)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main(["--host", args.host, "--port", str(args.port), *args.app_args])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"teachers": _cmd_teachers, "evaluate": _cmd_evaluate, "recover": _cmd_recover, "demo": _cmd_demo}
    limit_threads()
    try:
        return handlers[args.command](args)
    except (ValueError, FloatingPointError) as err:
        print(f"dfkd {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (torch.OutOfMemoryError, MemoryError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(
            f"dfkd {args.command}: error: out of memory ({first}); lower --dream-batch-size, --refit-batch-size or "
            "--distill-batch-size, or run on --device cpu",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except OSError as err:  # a missing file, no permission, a full disk: the user's to fix, not a traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"dfkd {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"dfkd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
