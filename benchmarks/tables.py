"""What the benchmark scripts share: rewriting a result's markdown table from its JSON, without a run,
reading the recipes older results recorded, and a cache of each teacher's dreams across runs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dfkd_core as dfkd


def write_study(out: Path, name: str, record: dict[str, Any], lines: list[str]) -> None:
    """Save a study's ``record`` as ``out/<name>.json`` and its table ``lines`` as ``out/<name>.md``; print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    table = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(table)
    print(table)


def rerender(results: Path, markdown: Callable[[dict[str, Any]], str]) -> int:
    """Write ``results`` (a .json of a benchmark) again as its .md table, print it; the exit status."""
    table = markdown(json.loads(results.read_text()))
    results.with_suffix(".md").write_text(table)
    print(table)
    return 0


# Knobs since retired (benchmarks/archive.md) that older results still record, each with the value that is now the
# library's only behaviour; a result recording another value ran a recipe the library no longer has.
RETIRED = {"generator": None}  # the generator synthesis: DeepInversion's fixed set is the only way to dream
RETIRED_DISTILL = {"lr_warmup": 0.0, "dropout": False}  # no learning-rate warm-up; the student's dropout off


def current_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recorded recipe (``settings.recipe`` of a report) as the library records one now: without the retired knobs
    it holds at what the library now always does (any other value stays, so that it equals no current recipe)."""
    kept = {k: v for k, v in recipe.items() if k not in RETIRED or v != RETIRED[k]}
    distill = {k: v for k, v in recipe["distill"].items() if k not in RETIRED_DISTILL or v != RETIRED_DISTILL[k]}
    return kept | {"distill": distill}


def cached_dreams(cache: Path | None, teacher: str, recipe: dfkd.Recipe) -> dfkd.DreamSet | None:
    """The dreams kept in ``cache`` for ``teacher``, or None when there are none; ``SystemExit`` naming the
    file when they were made with other dream settings than ``recipe``'s (delete it to dream again)."""
    path = cache / f"{teacher}.pt" if cache else None
    if path is None or not path.is_file():
        return None
    dreams = dfkd.DreamSet.load(path)
    wanted = dataclasses.asdict(recipe.dream)
    made = {key: (dreams.settings or {}).get(key) for key in wanted}
    if made != wanted:
        changed = sorted(key for key in wanted if made[key] != wanted[key])
        raise SystemExit(
            f"{path} holds dreams made with other settings ({', '.join(changed)}); delete it to dream again"
        )
    return dreams


def keep_dreams(cache: Path | None, teacher: str, dreams: dfkd.DreamSet) -> None:
    """Save ``dreams`` as ``teacher``'s in ``cache`` unless it already holds them (a no-op without a cache)."""
    path = cache / f"{teacher}.pt" if cache else None
    if path is not None and not path.is_file():
        dreams.save(path)
