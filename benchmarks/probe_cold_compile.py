"""Probe: what the compile child's scheduling class and compile threads cost a cold constructor.

``bench_faces.py`` measured the cold constructor (``load(warmup=4)`` then ``wait_for_compiled()`` on an empty
models folder) at 40.0 s (Scope) and 42.2 s (API) on an H200 machine with the child in Linux's ``SCHED_IDLE``
class (4c3b7df), against 29.2 and 26.3 s on an H100 with the child at nice +10 alone (633272e). Each variant here
is a fresh process on an empty models folder of its own (512x512, RAFT Small, seeded random weights), alternating,
``--repeats`` times:

- ``shipped``: as the package does: nice +10 and ``SCHED_IDLE``, 2 compile threads;
- ``nice_only``: the child at nice +10 alone (the host's ``lower_priority`` replaced for this process);
- ``threads_N`` (e.g. ``threads_16``): as shipped, with ``TORCHINDUCTOR_COMPILE_THREADS=N`` in the child's
  environment;
- ``shipped_calls`` and ``threads_N_calls``: as ``shipped`` and ``threads_N``, but the process makes 120 live
  4-frame calls (uint8 CPU frames, the caller's ``torch.cat`` in each, as ``bench_faces.py``'s API face) right
  after ``load()`` and only then waits: is a live call beside 16 compile threads in ``SCHED_IDLE`` still as fast?

Each records ``load_s``, ``constructor_s`` (``load`` + ``wait_for_compiled``), the package's log of the child
(start-up, compile) and of the switch (its parts), and for the ``_calls`` variants the calls' median and worst.

    python benchmarks/probe_cold_compile.py --out cold_compile_probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _probe import parse_probe_args, probe_header, run_variant  # noqa: E402  (same folder)

SIZE = 512
CHUNK_FRAMES = 4
LIVE_CALLS = 120
VARIANTS = ("shipped", "nice_only", "threads_16", "shipped_calls", "threads_16_calls")
THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"


def child(variant: str, models: Path, size: int) -> dict[str, Any]:
    if variant.startswith("threads_"):
        os.environ[THREADS_ENV] = variant.split("_")[1]
    import torch

    from bench_faces import moving_chunks
    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
    from scope_optical_flow_tensorrt.core.backends import compile_process

    if variant == "nice_only":
        def nice_only(pid: int) -> None:
            os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) +
                                                     compile_process.CHILD_NICENESS))

        compile_process.lower_priority = nice_only

    messages: list[str] = []
    began = time.perf_counter()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{time.perf_counter() - began:.2f} s: {record.getMessage()}")

    package_logger = logging.getLogger("scope_optical_flow_tensorrt")
    package_logger.setLevel(logging.INFO)
    package_logger.addHandler(Keep())

    chunks = moving_chunks(LIVE_CALLS, size) if variant.endswith("_calls") else []
    flow = OpticalFlowTensorRTPreprocessor(size, size, weights=None, models_dir=models)
    began = time.perf_counter()
    flow.load(warmup=CHUNK_FRAMES)
    load_s = time.perf_counter() - began
    calls_ms = []
    for chunk in chunks:
        call_began = time.perf_counter()
        flow(torch.cat(chunk), layout="FHWC")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        calls_ms.append((time.perf_counter() - call_began) * 1000)
    flow.wait_for_compiled()
    constructor_s = time.perf_counter() - began
    backend = flow.load()
    result: dict[str, Any] = {"variant": variant, "load_s": round(load_s, 2), "constructor_s": round(constructor_s, 2),
                              "shapes": {str(k): v for k, v in getattr(backend, "warmed_shapes", {}).items()},
                              "switch_seconds": {str(k): v for k, v in getattr(backend, "switch_seconds", {}).items()},
                              "log": messages}
    if calls_ms:
        result.update(calls_median_ms=round(statistics.median(calls_ms), 2), calls_first_ms=round(calls_ms[0], 2),
                      calls_worst_ms=round(max(calls_ms), 2),
                      calls_seconds=round(sum(calls_ms) / 1000, 2))
    flow.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per variant")
    parser.add_argument("--size", type=int, default=SIZE, help="frame height and width")
    args = parse_probe_args(parser)
    if args.child is not None:
        args.json.write_text(json.dumps(child(args.child, args.models_dir, args.size)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="probe_cold_compile_"))
    result: dict[str, Any] = {**probe_header(args.size), "runs": []}
    variants = [name for name in args.variants.split(",") if name]
    for index, variant in enumerate([name for _ in range(args.repeats) for name in variants]):
        started_at = time.time()
        row = run_variant(__file__, variant, work / f"models-{index}", work / f"{index}-{variant}.json", "--size",
                          str(args.size))
        row.update(started_at=round(started_at, 1), ended_at=round(time.time(), 1))  # to match a memory log
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after each process: a run cut short keeps them
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
