"""``dfkd`` command line: list teachers, evaluate one, recover a pruned one, show a recipe.

``dfkd recover`` has a few named flags for what users change (teacher, data, sparsity, scope, granularity,
preset, out, device, seed, baselines, dreams) and one generic ``--set section.field=value`` (repeatable) for
every field of the recipe: ``dream.*`` (:class:`DreamConfig`), ``refit.*`` (:class:`RefitConfig`),
``distill.*`` (:class:`DistillConfig`), and ``refit=on|off`` for the optional refit stage. Values are parsed
to the field's type and checked by the dataclasses themselves, so the command line never drifts from them.
``dfkd recipe [--preset P] [--set ...] [--json]`` prints every field with its value and its help (from each
field's metadata), which keeps ``dfkd recover --help`` short enough to read on one screen.
Errors a user can fix end with one readable line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ._files import reserved
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
RECIPE_SECTIONS = ("dream", "refit", "distill")  # the Recipe fields, in the order they run: --set dream.steps=100
SWITCHES = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
SET_FORM = "SECTION.FIELD=VALUE"
REFIT_HELP = "refit the pruned layers on the dreams before distillation"


def _suggest(word: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the nearest of ``choices``, or ''."""
    near = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _switch(text: str) -> bool:
    try:
        return SWITCHES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"expected on or off (or true/false, yes/no, 1/0), got {text!r}") from None


def _parse_set(item: str, base: Recipe) -> tuple[str, str | None, Any]:
    """One ``--set`` item as (section, field or None for ``refit`` itself, value); ``ValueError`` saying what
    was expected otherwise. A field's value is parsed against its value in ``base`` (the preset)."""
    key, eq, text = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ValueError(f"--set {item!r}: expected {SET_FORM}, e.g. --set dream.steps=100 (every field: dfkd recipe)")
    section, dot, name = key.partition(".")
    if section not in RECIPE_SECTIONS:
        raise ValueError(
            f"--set {item!r}: unknown section {section!r}{_suggest(section, list(RECIPE_SECTIONS))}; "
            f"sections: {', '.join(RECIPE_SECTIONS)} (every field: dfkd recipe)"
        )
    if not dot and section != "refit":
        raise ValueError(f"--set {item!r}: expected {SET_FORM}, e.g. --set {section}.<field>=VALUE; see dfkd recipe")
    if not dot:  # the refit stage itself: on or off
        try:
            return section, None, _switch(text)
        except ValueError as err:
            raise ValueError(f"--set {item!r}: refit: {err}") from None
    config = getattr(base, section) or RefitConfig()
    names = [f.name for f in dataclasses.fields(config)]
    name = name.strip().replace("-", "_")
    if name not in names:
        raise ValueError(
            f"--set {item!r}: unknown field {name!r} of {section}{_suggest(name, names)}; "
            f"{section} fields: {', '.join(names)}"
        )
    default = getattr(config, name)
    try:
        value = _switch(text) if isinstance(default, bool) else parse_knob(text.strip(), default)
    except ValueError as err:
        raise ValueError(f"--set {item!r}: {section}.{name}: {err}") from None
    return section, name, value


def recipe_from_sets(preset: str, granularity: str = "weight", items: list[str] | None = None) -> Recipe:
    """The recipe of ``preset`` for ``granularity`` with ``--set`` items applied (the last of a key wins)."""
    base = get_preset(preset, granularity)
    overrides: dict[str, dict[str, Any]] = {section: {} for section in RECIPE_SECTIONS}
    use_refit: bool | None = None
    for item in items or ():
        section, name, value = _parse_set(item, base)
        if name is None:
            use_refit = value
        else:
            overrides[section][name] = value
    refit_on = base.refit is not None if use_refit is None else use_refit
    if overrides["refit"] and not refit_on:
        raise ValueError(
            f"refit settings ({', '.join(overrides['refit'])}) given, but this recipe does not refit; "
            "add --set refit=on, or use a preset that refits (quick)"
        )
    return with_overrides(base, overrides["dream"], overrides["distill"], overrides["refit"], use_refit=use_refit)


def _add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar=SET_FORM,
        help="change one recipe field, e.g. --set dream.steps=100 --set distill.lr=0.03 --set refit=on "
        "(repeatable; the last of a key wins; every field: dfkd recipe)",
    )


def _add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher", required=True, metavar="ID|PATH", help="registry id (see dfkd teachers) or checkpoint path"
    )
    parser.add_argument("--arch", help="architecture of a checkpoint that does not record it")
    parser.add_argument("--normalization", help="imagenet, cifar10 or m1,m2,m3,s1,s2,s3 (if not recorded)")
    parser.add_argument(
        "--data", default="cifar10", help="cifar10 or an ImageFolder root with test/ (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def _add_recipe_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="default", help="recipe preset (default: %(default)s)"
    )
    parser.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default="weight",
        help="prune single weights (same shape) or whole channels (smaller, faster; pruned gradually, no refit)",
    )
    _add_set_flag(parser)


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

    _add_recover(commands)

    recipe = commands.add_parser(
        "recipe",
        help="print every recipe field with its value and help (what --set can change)",
        epilog="each line: section.field = value  # help. Change one with --set section.field=value.",
    )
    _add_recipe_choice(recipe)
    recipe.add_argument("--json", action="store_true", help="print the recipe as one JSON object")

    demo = commands.add_parser("demo", help="launch the Gradio app (further flags go to demo/app.py, e.g. --data)")
    demo.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    demo.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    demo.add_argument(
        "app_args", nargs=argparse.REMAINDER, help="passed on to the app: --data, --teacher-dir, --device"
    )
    return parser


def _add_recover(commands: Any) -> None:
    """The ``recover`` command and its flags."""
    rec = commands.add_parser(
        "recover",
        help="prune a teacher and recover it by data-free distillation",
        usage="dfkd recover --teacher ID|PATH --out DIR [--sparsity S] [--granularity G] [--preset P]\n"
        f"                    [--set {SET_FORM} ...] [options]",
        epilog="every recipe field: dfkd recipe; change one with --set section.field=value",
    )
    _add_teacher_flags(rec)
    rec.add_argument(
        "--sparsity",
        type=float,
        default=0.75,
        help="share to remove, in [0, 1): of the weights, or of the MACs by channel (default: %(default)s)",
    )
    rec.add_argument(
        "--scope",
        choices=SCOPES,
        default="global",
        help="how layers share the cut: global (one magnitude ranking, the paper's), layerwise, or lamp "
        "(one ranking of layer-normalized scores: no layer is emptied)",
    )
    rec.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help=f"output directory ({', '.join(OUTPUT_FILES)})"
    )
    rec.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    _add_recipe_choice(rec)
    rec.add_argument(
        "--baselines",
        default="noise",
        help=f"comma list of same-budget baselines ({', '.join(BASELINES)}: real training images, not data-free) or none",
    )
    rec.add_argument("--curve-per-class", type=int, default=200, help="test images per class, per-epoch curve (0: all)")
    rec.add_argument("--eval-per-class", type=int, default=0, help="test images per class, final accuracies (0: all)")
    rec.add_argument("--dreams", type=Path, help="reuse dreams.pt of an earlier run of this teacher (no dreaming)")
    rec.add_argument(
        "--no-cache",
        action="store_true",
        help="dream and run the noise baseline afresh, neither reusing nor storing them ($DFKD_DATA_DIR, else "
        "~/.cache/dfkd: dreams of the same teacher, dream recipe and seed, and the noise baseline of an identical run, "
        "are otherwise reused)",
    )
    rec.add_argument("--quiet", action="store_true", help="no progress bars")


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
    labels = {"noise": "noise", "real": "same recipe on real images"}
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
    lr = f"lr {distilled.lr:.3g}" + (f" (chosen by {len(distilled.lr_probes)} probes)" if distilled.lr_probes else "")
    if distilled.kept_epoch is None:
        return f"{lr}; last epoch returned (no held-out dreams to judge it)"
    if distilled.kept_epoch == 0:
        return f"{lr}; recovery did NOT beat the start on the held-out dreams: the start is returned"
    epochs = result.curve[-1][0]
    return f"{lr}; epoch {distilled.kept_epoch} of {epochs} kept (most agreement with the teacher on held-out dreams)"


def _cmd_recover(args: argparse.Namespace) -> int:
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none")
    check_output_dir(args.out, args.data)
    config = RecoveryConfig(
        teacher=args.teacher,
        data=args.data,
        sparsity=args.sparsity,
        scope=args.scope,
        granularity=args.granularity,
        recipe=recipe_from_sets(args.preset, args.granularity, args.sets),
        baselines=baselines,
        curve_per_class=args.curve_per_class,
        eval_per_class=args.eval_per_class,
        device=args.device,
        seed=args.seed,
        arch=args.arch,
        normalization=args.normalization,
        cache=not args.no_cache,
    )
    dreams = DreamSet.load(args.dreams) if args.dreams else None
    with reserved(args.out):  # a second run into the same --out is refused while this one goes on
        result = _run(config, dreams, Path(args.out), args.quiet)
        print(_summary(result), flush=True)  # before writing: a failure to write keeps the numbers on screen
        written = write_outputs(result, args.out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run(config: RecoveryConfig, dreams: DreamSet | None, out: Path, quiet: bool) -> RecoveryResult:
    """The run, with progress bars; its dreams saved into ``out`` as soon as they are made, and named on failure."""
    bars = ProgressBars(quiet, file=sys.stderr)
    result = None
    kept: Path | None = None  # the dreams, saved as soon as they are made: the expensive part is never lost
    try:
        for event in recover(config, dreams):
            bars(event)
            if isinstance(event, StageFinished) and event.stage is Stage.DREAM and "dreams" in event.summary:
                kept = event.summary["dreams"].save(out / "dreams.pt")
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
    return result


def _shown(value: Any) -> str:
    """A field's value as ``--set`` takes it."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _cmd_recipe(args: argparse.Namespace) -> int:
    recipe = recipe_from_sets(args.preset, args.granularity, args.sets)
    if args.json:
        print(json.dumps(dataclasses.asdict(recipe)))
        return 0
    lines: list[tuple[str, str]] = []
    for section in RECIPE_SECTIONS:
        config = getattr(recipe, section)
        if section == "refit":
            on = config is not None
            lines.append(
                (
                    "refit = " + ("on" if on else "off"),
                    REFIT_HELP + ("" if on else "; --set refit=on uses the values below"),
                )
            )
            config = config or RefitConfig()
        for f in dataclasses.fields(config):
            lines.append((f"{section}.{f.name} = {_shown(getattr(config, f.name))}", help_of(type(config), f.name)))
        lines.append(("", ""))
    width = max(len(left) for left, _ in lines)
    print(f"# preset {args.preset}, granularity {args.granularity}" + "".join(f", --set {item}" for item in args.sets))
    for left, help_text in lines[:-1]:
        print(f"{left:<{width}}   # {help_text}" if left else "")
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
    handlers = {
        "teachers": _cmd_teachers,
        "evaluate": _cmd_evaluate,
        "recover": _cmd_recover,
        "recipe": _cmd_recipe,
        "demo": _cmd_demo,
    }
    limit_threads()
    try:
        return handlers[args.command](args)
    except (ValueError, FloatingPointError) as err:
        print(f"dfkd {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (torch.OutOfMemoryError, MemoryError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(
            f"dfkd {args.command}: error: out of memory ({first}); lower the batch size (--set dream.batch_size=N, "
            "refit.batch_size or distill.batch_size), or run on --device cpu",
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
