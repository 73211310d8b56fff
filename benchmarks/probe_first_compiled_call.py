"""Probe: why a warm process's first compiled call can take 20-40 ms where the next ones take 5.

``bench_faces.py``'s API face (commit 4c3b7df, one H200) timed the first 4-frame call after ``wait_for_compiled()``
at 12.0, 23.5 and 39.5 ms in its three processes, against 4.9-5.0 ms steady; the GPU work the switch queued is
already finished by then (``tests/test_gpu.py`` checks the stream is idle). The suspect here is Python's cyclic
garbage collector: loading the compiled kernels (Dynamo's trace, Inductor's graphs) leaves hundreds of thousands
of new objects, which makes a full (generation 2) collection due, and the next live call's allocations start it.

One process first fills a fresh models folder (``load(warmup=4)``, ``wait_for_compiled()``); then, alternating,
``--processes`` fresh processes per variant build the preprocessor on that warm folder, ``load(warmup=4)``,
``wait_for_compiled()`` and time ``--calls`` 4-frame calls of uint8 CPU frames (the caller's ``torch.cat`` timed
apart as ``cat_ms``):

- ``plain``: as a user's script does;
- ``collect_after_wait``: ``gc.collect()`` right after ``wait_for_compiled()``, where the caller waits anyway.

Every collection during the calls is recorded (``gc.callbacks``: generation, ms, the call it fell in).

    python benchmarks/probe_first_compiled_call.py --out probe_first_compiled_call.json
"""

from __future__ import annotations

import argparse
import gc
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
VARIANTS = ("plain", "collect_after_wait")


def child(variant: str, models: Path, calls: int) -> dict[str, Any]:
    import torch

    from bench_faces import moving_chunks
    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    chunks = moving_chunks(calls, SIZE)
    flow = OpticalFlowTensorRTPreprocessor(SIZE, SIZE, weights=None, models_dir=models)
    began = time.perf_counter()
    flow.load(warmup=CHUNK_FRAMES)
    flow.wait_for_compiled()
    collect_ms = None
    if variant == "collect_after_wait":
        collected = time.perf_counter()
        gc.collect()
        collect_ms = round((time.perf_counter() - collected) * 1000, 2)
    ready_s = time.perf_counter() - began
    if variant == "prime":
        flow.close()
        return {"variant": variant, "ready_s": round(ready_s, 2)}

    collections: list[dict[str, Any]] = []
    call_index = [-1]
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["at"] = time.perf_counter()
        else:
            collections.append({"call": call_index[0], "generation": info["generation"],
                                "ms": round((time.perf_counter() - started.pop("at", time.perf_counter())) * 1000,
                                            2)})

    counts_before = gc.get_count()
    gc.callbacks.append(on_gc)
    rows = []
    try:
        for index, chunk in enumerate(chunks):
            call_index[0] = index
            call_began = time.perf_counter()
            frames = torch.cat(chunk)
            cat_ms = (time.perf_counter() - call_began) * 1000
            flow(frames, layout="FHWC")
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rows.append({"wall_ms": round((time.perf_counter() - call_began) * 1000, 2), "cat_ms": round(cat_ms, 3)})
    finally:
        gc.callbacks.remove(on_gc)
    backend = flow.load()
    result = {"variant": variant, "ready_s": round(ready_s, 2), "collect_ms": collect_ms,
              "gc_counts_before_calls": list(counts_before),
              "shapes": {str(k): v for k, v in getattr(backend, "warmed_shapes", {}).items()},
              "first_calls_ms": [row["wall_ms"] for row in rows[:5]],
              "first_calls_cat_ms": [row["cat_ms"] for row in rows[:5]],
              "steady_ms": round(statistics.median(row["wall_ms"] for row in rows[10:]), 3),
              "collections": collections}
    flow.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per variant")
    parser.add_argument("--calls", type=int, default=40)
    args = parse_probe_args(parser)
    if args.child is not None:
        args.json.write_text(json.dumps(child(args.child, args.models_dir, args.calls)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="probe_first_compiled_call_"))
    result: dict[str, Any] = {**probe_header(SIZE), "runs": []}
    order = ["prime"] + [variant for _ in range(args.processes) for variant in VARIANTS]
    for index, variant in enumerate(order):
        row = run_variant(__file__, variant, work / "models", work / f"{index}-{variant}.json", "--calls",
                          str(args.calls))
        result["runs"].append(row)
        print(json.dumps({key: value for key, value in row.items() if key != "error"}), flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after each process: a run cut short keeps them
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
