"""Probe: what a first compile in the child process costs the host's live calls, and which part of the child costs it.

In one process on one GPU (512x512, RAFT Small, seeded random weights, 4-frame calls of CPU uint8 frames), the
uncompiled graphs are timed call after call:

- ``alone``: nothing else runs;
- ``import_torch_no_bytecode``: beside a process that imports torch with an empty bytecode folder (what this GPU
  machine's image does on its first import; a normal install has its bytecode);
- ``import_torch``: beside a process that only imports torch (CPU);
- ``import_compiler`` and ``import_compiler_niced``: beside a process that imports torch and its compiler stack
  (Dynamo, Inductor, Triton), at the host's priority and at the compile process's lower one;
- ``spin_N`` and ``spin_N_niced``: beside N processes that only keep a CPU busy for 3 s, at the host's priority
  and at the compile process's lower one (is it CPU time the host loses, and does priority give it back?);
- ``cuda_context``: beside a process that imports torch, makes a CUDA context and idles;
- ``compile``: beside the real compile process of a preprocessor with ``compile_in_background=True`` (fresh models
  folder), calling that preprocessor as a user would, until the child is done;
- ``compile_threads_N``: the same with ``TORCHINDUCTOR_COMPILE_THREADS=N`` in the child's environment.

It also records the CPU's topology (the hyper-threads that share cpu0's core).

Each row gives the median ms per call, and for the neighbours the medians per second of the neighbour's life, so
the phase that slows the host shows.

    python benchmarks/probe_compile_neighbour.py --out probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _checkout import use_this_checkout  # noqa: E402  (same folder)

SIZE = 512
CHUNK_FRAMES = 4


def frames(count: int, size: int) -> list[Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (size + 64, size + 64, 3), dtype=torch.uint8, generator=generator)
    return [base[i : i + size, 2 * i : 2 * i + size].unsqueeze(0).contiguous() for i in range(count)]


def timed_until(call: Any, chunk: Any, done: Any, at_least_s: float, at_most_s: float) -> list[tuple[float, float]]:
    """(seconds since the start, ms) of each call, until ``done()`` after ``at_least_s`` or ``at_most_s``."""
    import torch

    rows = []
    began = time.perf_counter()
    while True:
        start = time.perf_counter()
        call(chunk)
        torch.cuda.synchronize()
        end = time.perf_counter()
        rows.append((start - began, (end - start) * 1000))
        if end - began >= at_most_s or (end - began >= at_least_s and done()):
            return rows


def summary(rows: list[tuple[float, float]]) -> dict[str, Any]:
    by_second: dict[int, list[float]] = {}
    for at, ms in rows:
        by_second.setdefault(int(at), []).append(ms)
    return {"calls": len(rows), "median_ms": round(statistics.median(ms for _, ms in rows), 3),
            "seconds": round(rows[-1][0], 1),
            "median_ms_by_second": {second: round(statistics.median(values), 2)
                                    for second, values in sorted(by_second.items())}}


def cpu_topology() -> dict[str, Any]:
    """The CPU's model and the logical CPUs that share cpu0's core (more than one: hyper-threads)."""
    siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return {"model": model, "logical_cpus": os.cpu_count(),
            "cpu0_siblings": siblings.read_text().strip() if siblings.exists() else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", default="16", help="compile-thread counts to try, comma-separated")
    args = parser.parse_args()
    use_this_checkout()
    import torch

    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
    from scope_optical_flow_tensorrt.core.backends.compile_process import lower_priority

    work = Path(tempfile.mkdtemp(prefix="probe_neighbour_"))
    chunk = torch.cat(frames(CHUNK_FRAMES, SIZE))
    plain = OpticalFlowTensorRTPreprocessor(SIZE, SIZE, weights=None, models_dir=work / "plain", torch_compile=False)
    plain.load(warmup=CHUNK_FRAMES)

    def call_plain(x: Any) -> None:
        plain(x, layout="FHWC")

    result: dict[str, Any] = {"device": f"{torch.cuda.get_device_name()} ({os.cpu_count()} cores)",
                              "torch": torch.__version__, "size": f"{SIZE}x{SIZE}", "weights": "seeded random",
                              "commit": os.environ.get("BENCH_COMMIT")}
    timed_until(call_plain, chunk, lambda: True, 2.0, 2.0)  # settle the clocks
    result["alone"] = summary(timed_until(call_plain, chunk, lambda: True, 3.0, 3.0))
    print("alone", result["alone"]["median_ms"], flush=True)
    result["cpu"] = cpu_topology()
    compiler_stack = "import torch, torch._dynamo, torch._inductor.compile_fx, triton"
    subprocess.run([sys.executable, "-c", compiler_stack], check=True)  # its bytecode, as an install has it
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    cores = os.cpu_count() or 1
    neighbours: list[tuple[str, str, int, bool, dict[str, str]]] = [
        ("import_torch_no_bytecode", "import torch", 1, False, {"PYTHONPYCACHEPREFIX": str(work / "no-bytecode")}),
        ("import_torch", "import torch", 1, False, {}),
        ("import_compiler", compiler_stack, 1, False, {}),
        ("import_compiler_niced", compiler_stack, 1, True, {}),
    ]
    for count in sorted({1, max(1, cores // 2), cores}):
        neighbours += [(f"spin_{count}", spin, count, False, {}), (f"spin_{count}_niced", spin, count, True, {})]
    neighbours.append(("cuda_context", "import torch, time; torch.zeros(1, device='cuda'); time.sleep(3)", 1, False,
                       {}))
    for name, code, count, niced, environment in neighbours:
        processes = [subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **environment})
                     for _ in range(count)]
        if niced:
            for process in processes:
                lower_priority(process.pid)
        rows = timed_until(call_plain, chunk, lambda: all(p.poll() is not None for p in processes), 0.5, 60.0)
        for process in processes:
            process.wait()
        result[name] = summary(rows)
        print(name, result[name]["median_ms"], result[name]["median_ms_by_second"], flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after each row: a run cut short keeps them
    variants: list[tuple[str, str | None]] = [("compile", None)]
    variants += [(f"compile_threads_{n}", n) for n in args.threads.split(",") if n]
    for name, threads in variants:
        if threads is None:
            os.environ.pop("TORCHINDUCTOR_COMPILE_THREADS", None)
        else:
            os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = threads
        flow = OpticalFlowTensorRTPreprocessor(SIZE, SIZE, weights=None, models_dir=work / name,
                                               compile_in_background=True)
        started = time.perf_counter()
        flow.load(warmup=CHUNK_FRAMES)
        load_s = time.perf_counter() - started
        compiler = getattr(flow.load(), "compiler", None)

        def call_flow(x: Any, flow: Any = flow) -> None:
            flow(x, layout="FHWC")

        rows = timed_until(call_flow, chunk, lambda: not getattr(compiler, "busy", False), 1.0, 120.0)
        reports = getattr(compiler, "reports", {})
        result[name] = {"load_s": round(load_s, 2), **summary(rows),
                        "child_compile_s": {str(pairs): report.get("seconds") for pairs, report in reports.items()}}
        print(name, result[name]["median_ms"], result[name]["median_ms_by_second"], flush=True)
        flow.close()
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    os.environ.pop("TORCHINDUCTOR_COMPILE_THREADS", None)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
