"""A run's peak memory for its record (metrics.json `peak_memory`): the process's resident high-water mark on
the CPU, and torch's allocator peak on a CUDA device.

Hand-written because neither torch nor the standard library resets a process's RSS high-water mark: Linux
(4.0 and later) does when "5" is written to /proc/self/clear_refs, so a run in a process that ran others before
it (an in-process sweep) still records its own peak. Where that file is missing (macOS) the peak is the process's
since it started, and the record says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def reset() -> str:
    """Start a run's measurement; returns what its peak will cover: 'run' or 'process' (no reset possible)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return "process"
    return "run"


def resident_peak_mb() -> float:
    """The process's resident-set high-water mark (since the last reset where Linux allows one), in MiB."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB elsewhere


def record(device: torch.device, since: str) -> dict:
    """metrics.json's `peak_memory`: resident MiB, the device allocator's peak MiB on CUDA, and what they cover."""
    fields = {"rss_mb": round(resident_peak_mb(), 1), "since": f"{since} start"}
    if device.type == "cuda":
        fields["device_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return fields
