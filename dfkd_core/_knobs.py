"""Recipe fields with their help text, and the range checks every recipe dataclass shares.

A field's help is data (``dataclasses.Field.metadata["help"]``): the CLI turns it into ``--help``
text and the app into control descriptions, so what a knob means is written exactly once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["help_of", "knob", "parse_knob", "require_at_most", "require_finite", "require_positive_int"]


def knob(default: Any, help: str) -> Any:
    """A dataclass field with a default (the recommended recipe) and a one-line help text."""
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(cls: type, name: str) -> str:
    """The help text of field ``name`` of dataclass ``cls`` ('' when it has none)."""
    return next((f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name), "")


def require_positive_int(config: Any, section: str, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` that is not a whole number >= 1."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{section} {name} must be a whole number >= 1, got {value!r}")


def require_finite(config: Any, section: str, *names: str, positive: bool = False) -> None:
    """Raise ``ValueError`` naming the first of ``names`` that is not a finite number >= 0 (> 0 if ``positive``)."""
    for name in names:
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"{section} {name} must be a finite number {bound}, got {value!r}")


def require_at_most(config: Any, section: str, limits: dict[str, float]) -> None:
    """Raise ``ValueError`` naming the first field above its limit in ``limits``: a value that cannot finish
    within reason on any machine (10^9 steps, a temperature whose square overflows) is refused up front."""
    for name, limit in limits.items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise ValueError(f"{section} {name} must be at most {limit:g}, got {value!r}")


def parse_knob(text: str, default: Any) -> Any:
    """``text`` (from a command line or a form) as a value of a knob whose default is ``default``: a whole
    number, a number, or a word; a word knob that also takes numbers (``distill.lr``: ``auto`` or a rate)
    gets a number when ``text`` is one. ``ValueError`` saying what was expected otherwise."""
    if isinstance(default, bool):
        raise ValueError("a switch takes no value")
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ValueError(f"expected {kind}, got {text!r}") from None
    try:
        return float(text)
    except ValueError:
        return text
