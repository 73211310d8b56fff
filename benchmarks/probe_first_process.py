"""Probe: why live calls right after ``load()`` are slow in a user's first process (the one that starts a compile).

``bench_faces.py``'s API face, process 1, ran its 120 calls right after ``load(warmup=4)`` at 36 ms per 4-frame
call, while the same calls beside the same compile process, later in an older process
(``probe_compile_neighbour.py``), ran at 7.6-8 ms, as uncompiled calls alone do. Each variant here is a fresh
process on an empty models folder (512x512, RAFT Small, seeded random weights) that times 4-frame calls of CPU
uint8 frames for ``--seconds`` after ``load(warmup=4)``, then stops its compile process:

- ``bench``: as the bench's process 1 (220 chunks of frames made before the preprocessor);
- ``one_chunk``: the same chunk each call (is it the frames' host memory?);
- ``later``: calls start ``--delay`` seconds after ``load()`` (is it the child's start-up phase?);
- ``plain_caller``: the calls go to a second preprocessor without torch.compile, the compile process belongs to
  the first (is it the compiling preprocessor's call path?);
- ``no_compile``: no compile process at all (``torch_compile=False``; the baseline of a fresh process);
- ``cat_in_call``: each call first concatenates its four ``[1, H, W, 3]`` CPU frames (``torch.cat``, timed apart
  as ``cat_ms``), as the bench's calls do; ``no_compile_cat_in_call`` the same without a compile process;
  ``cat_in_call_one_thread`` with ``torch.set_num_threads(1)`` in this process (is it the caller's own CPU work,
  on torch's intra-op threads, that the child slows, and what would give it back?). A variant that moved the
  child to Linux's ``SCHED_IDLE`` class after ``load()`` (``results/history/first_process_probe_cat_9f43151.json``)
  is gone: the host does that as it starts the child since 4e89ca3.

Per call it records when it started (seconds after ``load()``), its wall time, the CPU time of the calling thread,
the GPU time between CUDA events around it, and the compile process's phase (``starting``: before its first
report; ``compiling``; ``done``). Per variant it gives medians per phase.

    python benchmarks/probe_first_process.py --out probe_first_process.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _probe import parse_probe_args, probe_header, run_variant  # noqa: E402  (same folder)

SIZE = 512
CHUNK_FRAMES = 4
BENCH_CHUNKS = 220
VARIANTS = ("no_compile", "bench", "one_chunk", "later", "plain_caller", "no_compile_cat_in_call", "cat_in_call",
            "cat_in_call_one_thread")


def child(variant: str, models: Path, seconds: float, delay: float) -> dict[str, Any]:
    import torch

    from bench_faces import moving_chunks
    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    cat_in_call = "cat_in_call" in variant
    frame_lists = moving_chunks(BENCH_CHUNKS if variant != "one_chunk" else 1, SIZE)
    chunks: list[Any] = frame_lists if cat_in_call else [torch.cat(chunk) for chunk in frame_lists]
    flow = OpticalFlowTensorRTPreprocessor(SIZE, SIZE, weights=None, models_dir=models,
                                           torch_compile=not variant.startswith("no_compile"))
    began = time.perf_counter()
    flow.load(warmup=CHUNK_FRAMES)
    load_s = time.perf_counter() - began
    caller = flow
    if variant == "plain_caller":
        caller = OpticalFlowTensorRTPreprocessor(SIZE, SIZE, weights=None, models_dir=models, torch_compile=False)
        caller.load(warmup=CHUNK_FRAMES)
    compiler = getattr(flow.load(), "compiler", None)
    if variant == "later":
        time.sleep(delay)
    if variant.endswith("one_thread"):
        torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    start, stop = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else (None, None)
    loaded = time.perf_counter()
    rows = []
    index = 0
    while time.perf_counter() - loaded < seconds:
        chunk = chunks[index % len(chunks)]
        index += 1
        phase = child_phase(compiler)
        wall, cpu = time.perf_counter(), time.thread_time()
        cat_ms = 0.0
        if cat_in_call:
            chunk = torch.cat(chunk)
            cat_ms = (time.perf_counter() - wall) * 1000
        if start is not None:
            start.record()
        caller(chunk, layout="FHWC")
        if stop is not None:
            stop.record()
            torch.cuda.synchronize()
        rows.append({"at": round(wall - began - load_s, 3), "wall_ms": round((time.perf_counter() - wall) * 1000, 2),
                     "cpu_ms": round((time.thread_time() - cpu) * 1000, 2),
                     "gpu_ms": round(start.elapsed_time(stop), 2) if start is not None else 0.0,
                     "cat_ms": round(cat_ms, 3), "phase": phase})
    flow.close()
    return {"variant": variant, "load_s": round(load_s, 2), "calls": len(rows), "by_phase": by_phase(rows),
            "rows": rows}


def child_phase(compiler: Any) -> str:
    if compiler is None:
        return "none"
    if not compiler.busy:
        return "done"
    return "compiling" if getattr(compiler, "_reported", False) else "starting"


def by_phase(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    phases: dict[str, dict[str, float]] = {}
    for phase in dict.fromkeys(row["phase"] for row in rows):
        chosen = [row for row in rows if row["phase"] == phase]
        phases[phase] = {"calls": len(chosen), "from_s": chosen[0]["at"], "to_s": chosen[-1]["at"],
                         **{f"median_{key}": round(statistics.median(row[key] for row in chosen), 2)
                            for key in ("wall_ms", "cpu_ms", "gpu_ms", "cat_ms")},
                         "max_cat_ms": max(row["cat_ms"] for row in chosen)}
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seconds", type=float, default=6.0, help="how long each process calls")
    parser.add_argument("--delay", type=float, default=6.0, help="the later variant's pause after load()")
    args = parse_probe_args(parser)
    if args.child is not None:
        args.json.write_text(json.dumps(child(args.child, args.models_dir, args.seconds, args.delay)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="probe_first_process_"))
    result: dict[str, Any] = {**probe_header(SIZE), "variants": {}}
    for variant in [name for name in args.variants.split(",") if name]:
        row = run_variant(__file__, variant, work / f"models-{variant}", work / f"{variant}.json", "--seconds",
                          str(args.seconds), "--delay", str(args.delay))
        result["variants"][variant] = row
        if "error" not in row:
            print(variant, json.dumps(row["by_phase"]), flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after each variant: a run cut short keeps them
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
