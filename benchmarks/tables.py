"""What the benchmark scripts share: rewriting a result's markdown table from its JSON, without a run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def rerender(results: Path, markdown: Callable[[dict[str, Any]], str]) -> int:
    """Write ``results`` (a .json of a benchmark) again as its .md table, print it; the exit status."""
    table = markdown(json.loads(results.read_text()))
    results.with_suffix(".md").write_text(table)
    print(table)
    return 0
