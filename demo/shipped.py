"""Dreams shipped with the app, so that the first visitor of its default teacher does not wait for them.

Dreaming is the largest part of a Quick run on a CPU, and dreams depend on the teacher, the dream recipe and the
seed only. The app's default teacher has the dreams of its CPU budget made once, here, and kept in ``demo/dreams/``
beside a JSON file that says how they were made. At start-up the app puts them into the dream cache
(:meth:`dfkd_core.cache.DreamCache.adopt`), where a run of that teacher, recipe and seed finds them; any other
run dreams as usual. Regenerate them (never edit them) with::

    python demo/shipped.py --teacher akamaster/resnet20 --budget quick
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.settings import BUDGETS
from dfkd_core import ProgressBars, __version__, dream, load_teacher
from dfkd_core.cache import DreamCache
from dfkd_core.zoo import file_sha256

__all__ = ["SHIPPED_DIR", "adopt_shipped", "shipped_files"]

SHIPPED_DIR = Path(__file__).resolve().parent / "dreams"
SEED = 0  # the app's default seed


def shipped_files() -> list[Path]:
    """The shipped dream sets, one ``.pt`` per teacher and budget."""
    return sorted(SHIPPED_DIR.glob("*.pt"))


def adopt_shipped(cache: DreamCache | None = None) -> list[Path]:
    """Put every shipped dream set into the dream cache; returns their entries."""
    cache = cache or DreamCache()
    return [cache.adopt(file) for file in shipped_files()]


def make(teacher_name: str, budget: str, command: str) -> Path:
    """Dream the transfer set of ``budget`` for ``teacher_name`` and keep it in :data:`SHIPPED_DIR`."""
    teacher = load_teacher(teacher_name)
    recipe = BUDGETS[budget].recipe.dream
    bars = ProgressBars(file=sys.stderr)
    try:
        dreams = dream(teacher, recipe, seed=SEED, callback=bars)
    finally:
        bars.close()
    path = dreams.save(SHIPPED_DIR / f"{teacher.arch}-{budget}.pt")
    provenance = {
        "teacher": teacher_name,
        "teacher_sha256": teacher.sha256,
        "budget": budget,
        "seed": SEED,
        "dreams_sha256": file_sha256(path),
        "teacher_top1": round(dreams.teacher_top1, 2),
        "seconds": round(dreams.seconds, 1),
        "dfkd": __version__,
        "command": command,
    }
    path.with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="akamaster/resnet20", help="a registry id (the app's default teacher)")
    parser.add_argument("--budget", default="quick", choices=list(BUDGETS))
    args = parser.parse_args(argv)
    command = "python demo/shipped.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(make(args.teacher, args.budget, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
