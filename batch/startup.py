"""When this process started, and the moments of its start-up ("cli_main", "preprocessor_built"), for the report
and the start-up log line of each clip."""

from __future__ import annotations

import os
import time
from pathlib import Path

# Moments of this process's start-up, time.time() by name.
timeline: dict[str, float] = {}


def process_started_at() -> float:
    """``time.time()`` at which this process started (from ``/proc`` on Linux; else when the batch was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()
