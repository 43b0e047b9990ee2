"""The SMOKE budget of the tutorial notebooks, defined once for all four.

``DFKD_SMOKE=1`` shrinks every budget so that each notebook runs top to bottom in about a minute
on a CPU (the tests and ``notebook_tools.py execute --smoke`` use it). Numbers measured in SMOKE
mode (a handful of dreams, 20 test images per class) only show that the code runs; they say
nothing about the method. The notebooks import this module from their own folder.
"""

from __future__ import annotations

import os

import dfkd_core as dfkd

SMOKE = os.environ.get("DFKD_SMOKE", "0") == "1"
EVAL_PER_CLASS = 20  # test images per class behind every accuracy in SMOKE mode


def smoke_recipe(recipe: dfkd.Recipe) -> dfkd.Recipe:
    """``recipe`` on the SMOKE budget: 60 dreams x 40 steps, then 5 epochs of distillation in batches
    of 30; every other setting (the refit included) stays the recipe's own."""
    return dfkd.with_overrides(
        recipe,
        dream={"num_images": 60, "batch_size": 60, "steps": 40, "preview_every": 10},
        distill={"epochs": 5, "batch_size": 30},
    )
