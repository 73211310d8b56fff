"""``process(report=FILE)`` (``run --report FILE``): what a run did, as JSON, for scripts and benchmarks (per
clip: frames, seconds, busy seconds per stage, when the first and last output frames were written; per process:
start time, peak GPU memory)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .clips import ClipResult
from .errors import OutputError
from .startup import process_started_at, timeline


def clip_entry(result: ClipResult) -> dict[str, Any]:
    return {
        "input": list(result.job.inputs),
        "outputs": [str(path) for path in result.job.outputs],
        "ok": result.ok,
        "error": result.error,
        "frames": result.frames,
        "size": list(result.size),
        "seconds": round(result.seconds, 4),
        "decoder": result.decoder,
        "stages": {name: round(seconds, 4) for name, seconds in result.stages.items()},
        "started_at": result.started_at,
        "first_output_at": result.first_output_at,
        "last_output_at": result.last_output_at,
        "worker": result.worker,
    }


def write_report(path: Path, results: list[ClipResult], seconds: float, **extra: Any) -> None:
    """Write the JSON report (clip entries, wall seconds, process start, peak GPU memory of this process)."""
    started = process_started_at()
    report: dict[str, Any] = {
        "process_started_at": started,
        "finished_at": time.time(),
        "seconds": round(seconds, 4),
        "clips": [clip_entry(result) for result in results],
        # Seconds after the process started: the CLI's entry (Python and its imports before it), the preprocessor
        # built (torch imported, device chosen).
        "timeline": {name: round(moment - started, 3) for name, moment in timeline.items()},
        **extra,
    }
    try:
        import resource

        report["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    except ImportError:  # not on Windows
        pass
    torch = sys.modules.get("torch")  # only if this run imported it; never imported for the report
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        report["gpu_peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as error:
        raise OutputError(f"cannot write the report {path}: {error.strerror or error}") from error

