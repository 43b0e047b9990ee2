"""Where the work runs: the device a user names, checked against what this machine has, and how
many CPU threads it may use."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["limit_threads", "resolve_device", "usable_cpus"]

CGROUP = Path("/sys/fs/cgroup")  # where Linux containers publish their CPU quota


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA device is available; use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return resolved


def _cgroup_quota(root: Path) -> float | None:
    """The CPUs a container's quota allows (cgroup v2 ``cpu.max``, else v1 CFS), or None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may really use: its affinity mask, capped by the container's CPU quota.

    torch sizes its thread pool from the host's cores; in a container with a quota (a 2-vCPU
    Space on a 16-core host) that many threads fight over 2 CPUs and every step slows down.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def limit_threads() -> int:
    """Cap torch's CPU threads at :func:`usable_cpus`; returns the thread count now in use."""
    usable = usable_cpus()
    if torch.get_num_threads() > usable:
        torch.set_num_threads(usable)
    return torch.get_num_threads()
