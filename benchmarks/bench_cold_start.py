"""Cold start of the PyTorch fast path: seconds from constructing the preprocessor to its first flow map.

Every measurement is a fresh Python process (``--child``), as a user's would be. Per route (``jit``, the
default: the uncompiled model's CUDA graph serves while a child process compiles the kernels into a
``.torchcache`` entry, which ``wait_for_compiled()`` then loads; ``jit-wait``: the same, but the warm-up waits for
the compiled kernels, ``compile_in_background=False``):

1. **cold**: an empty temporary models folder and Inductor cache, a fresh ``TRITON_HOME`` and
   ``CUDA_CACHE_PATH``: a new machine. The compile process compiles and keeps the cache entries.
2. **warm** (``--warm-runs`` times): the same folders: the entries and torch's cache exist.
3. **entry only**: the Inductor cache deleted, only the ``.torchcache`` entries kept (as after a wiped /tmp or a
   copied models folder): shows that the entries alone serve the kernels.

Each child constructs ``OpticalFlowTensorRTPreprocessor`` (backend torch, CUDA, fp16, random weights), calls
``load()`` (model, and the entry's artifacts hot-loaded), ``warm_up([chunk])`` and one real call of ``chunk``
uint8 frames, and reports the breakdown (import, model load, artifact load, warm-up, first map), the route the
warm-up took, and torch's cache hit/miss counters; then it waits for the compiled kernels and reports when they
served (``construct_to_compiled_serving_s``) and a compiled call's time. ``--bytecode-cache`` lets the children
keep Python bytecode of torch's modules (for machines set not to write it, as the GPU machine here is);
``--profile`` writes a cProfile of each child. Writes ``cold_start.json`` (the issue's shape: ``environment``,
``size``, ``warm_process_first_map_s``, ``cold_first_call_s`` for the default route, plus every run)::

    python benchmarks/bench_cold_start.py                        # 512x512, 4-frame chunks (Scope's), default route
    python benchmarks/bench_cold_start.py --routes jit,jit-wait  # both routes

Takes a few minutes on one H100/H200 (a cold compile at 512x512 is 20-60 s per route).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()

from _checkout import ROOT, use_this_checkout  # noqa: E402  (same folder)

ROUTES = ("jit", "jit-wait")
# Routes whose warm-up waits for the compiled kernels (compile_in_background=False); the others serve the first
# map from the uncompiled model's CUDA graph while a child process compiles the kernels.
WAIT_ROUTES = ("jit-wait",)
CHILD_TIMEOUT_S = 480


def bytecode_state() -> dict[str, Any]:
    """Whether this interpreter reads and writes cached bytecode for torch's modules (a slow import otherwise)."""
    import importlib.util

    spec = importlib.util.find_spec("torch._inductor.lowering")
    source = spec.origin if spec is not None else None
    cached = importlib.util.cache_from_source(source) if source else None
    installed = Path(source).parent / "__pycache__" / f"{Path(source).stem}.{sys.implementation.cache_tag}.pyc" \
        if source else None
    return {
        "dont_write_bytecode": bool(sys.flags.dont_write_bytecode),
        "pycache_prefix": sys.pycache_prefix,
        "installed_pyc_of_torch_inductor_lowering": bool(installed and installed.exists()),
        "pyc_used_of_torch_inductor_lowering": bool(cached and Path(cached).exists()),
    }


def child(models_dir: Path, size: int, chunk: int, updates: int, device_name: str,
          profile: bool = False, background: bool = True) -> dict[str, Any]:
    """One fresh process's start: construct, load, warm up, first map (and one more call for reference)."""
    import cProfile
    import io
    import logging
    import pstats

    import torch
    from torch._dynamo.utils import counters

    handler = logging.StreamHandler(sys.stderr)  # the package's log, timestamped, for the parent's report
    handler.setFormatter(logging.Formatter("%(relativeCreated)8.0f ms  %(message)s"))
    logging.getLogger("scope_optical_flow_tensorrt").addHandler(handler)
    logging.getLogger("scope_optical_flow_tensorrt").setLevel(logging.INFO)

    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    imported = time.perf_counter()
    device = torch.device(device_name)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    frames = torch.randint(0, 256, (chunk, size, size, 3), dtype=torch.uint8, device=device)
    sync()

    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    flow = OpticalFlowTensorRTPreprocessor(size, size, device=device, weights=None, backend="torch",
                                           strict_device=True, num_flow_updates=updates, models_dir=models_dir,
                                           compile_in_background=background)
    backend = flow.load()
    loaded = time.perf_counter()
    routes = flow.warm_up([chunk])
    sync()
    warmed = time.perf_counter()
    flow(frames)
    sync()
    first = time.perf_counter()
    profile_text = None
    if profiler is not None:
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
        profile_text = text.getvalue()
    flow(frames)  # the uncompiled graph's time, where the compiled kernels are still on their way
    sync()
    second = time.perf_counter()
    flow.wait_for_compiled()
    compiled_serving = time.perf_counter()
    flow(frames)
    sync()
    started_call = time.perf_counter()
    flow(frames)
    sync()
    compiled_call = time.perf_counter() - started_call
    cache = getattr(backend, "kernel_cache", None)
    return {
        "import_s": round(imported - PROCESS_START, 2),
        "model_load_s": round(loaded - started, 2),
        "artifact_load_s": round(cache.load_seconds, 2) if cache is not None else None,
        "warmup_s": round(warmed - loaded, 2),
        "first_map_s": round(first - warmed, 3),
        "construct_to_first_map_s": round(first - started, 2),
        "second_call_ms": round((second - first) * 1e3, 2),
        "construct_to_compiled_serving_s": round(compiled_serving - started, 2),
        "compiled_call_ms": round(compiled_call * 1e3, 2),
        "routes": routes,
        "compiled_routes": {str(pairs): route for pairs, route in getattr(backend, "warmed_shapes", {}).items()},
        "failed_shapes": {str(k): v for k, v in getattr(backend, "failed_shapes", {}).items()},
        "compiled": bool(getattr(backend, "compiled", False)),
        "inductor_counters": {name: int(value) for name, value in counters["inductor"].items()
                              if name.startswith("fxgraph_cache")},
        "aot_autograd_counters": {name: int(value) for name, value in counters["aot_autograd"].items()
                                  if "cache" in name},
        "torch_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "bytecode": bytecode_state(),
        "profile": profile_text,
    }


def run_child(args: argparse.Namespace, models_dir: Path, env: dict[str, str], label: str,
              route: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--models-dir", str(models_dir),
               "--size", str(args.size), "--chunk", str(args.chunk), "--updates", str(args.updates),
               "--device", args.device] + (["--profile"] if args.profile else []) + \
        (["--wait-compiled"] if route in WAIT_ROUTES else [])
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 2)
    result["log"] = [line for line in done.stderr.splitlines() if " ms  " in line][-40:]
    entries = sorted(models_dir.glob("*.torchcache"))
    result["entries"] = {path.name: path.stat().st_size for path in entries}
    print(f"  {label:<11} construct->first map {result['construct_to_first_map_s']:6.2f} s  (import "
          f"{result['import_s']:.1f}, load {result['model_load_s']:.2f}, artifacts {result['artifact_load_s']}, "
          f"warm-up {result['warmup_s']:.2f}, first map {result['first_map_s'] * 1e3:.0f} ms; next call "
          f"{result['second_call_ms']:.1f} ms)  compiled serving at {result['construct_to_compiled_serving_s']:.2f} s "
          f"({result['compiled_call_ms']:.1f} ms a call)  route {','.join(result['routes']) or '-'} "
          f"{result['compiled_routes']}  {result['inductor_counters']}", flush=True)
    for pairs, reason in result["failed_shapes"].items():
        print(f"    no compiled kernels for {pairs} pairs: {reason}", flush=True)
    if result.get("profile") and args.profile_out is not None:
        with args.profile_out.open("a") as out:
            out.write(f"\n===== {label} ({result['construct_to_first_map_s']} s) =====\n{result['profile']}")
        result["profile"] = f"see {args.profile_out.name}"
    if args.show_log:
        for line in result["log"]:
            print(f"    {line[:300]}", flush=True)
    return result


def measure_route(args: argparse.Namespace, route: str, work: Path) -> dict[str, Any]:
    models_dir = work / route / "models"
    env = {key: value for key, value in os.environ.items() if key not in ("TRITON_CACHE_DIR",)}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / route / "inductor")
    env["TRITON_HOME"] = str(work / route / "triton_home")  # Triton's own ~/.triton, fresh for this route
    env["CUDA_CACHE_PATH"] = str(work / route / "cuda_cache")
    if args.bytecode_cache:  # what a normal install has: compiled bytecode of torch's modules, written once
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    print(f"route {route}:", flush=True)
    cold = run_child(args, models_dir, env, "cold", route)
    warm = [run_child(args, models_dir, env, f"warm {i + 1}", route) for i in range(args.warm_runs)]
    shutil.rmtree(work / route / "inductor", ignore_errors=True)
    entry_only = run_child(args, models_dir, env, "entry only", route)
    return {
        "cold": cold,
        "warm": warm,
        "entry_only": entry_only,
        "cold_first_call_s": cold["construct_to_first_map_s"],
        "warm_process_first_map_s": min(run["construct_to_first_map_s"] for run in warm),
        "cold_compiled_serving_s": cold["construct_to_compiled_serving_s"],
        "warm_compiled_serving_s": min(run["construct_to_compiled_serving_s"] for run in warm),
        "entry_only_first_map_s": entry_only["construct_to_first_map_s"],
        "warm_route": warm[-1]["routes"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="compute height and width")
    parser.add_argument("--chunk", type=int, default=4, help="frames per call (Scope: 4, CLI: 16)")
    parser.add_argument("--updates", type=int, default=12, help="RAFT flow updates")
    parser.add_argument("--routes", default="jit", help="comma-separated: jit (the default route), jit-wait")
    parser.add_argument("--warm-runs", type=int, default=2, help="warm processes per route")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold_start.json")
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (smoke test: no compiling)")
    parser.add_argument("--show-log", action="store_true", help="print each child's log lines")
    parser.add_argument("--bytecode-cache", action="store_true",
                        help="let the children write and read Python bytecode of torch's modules in a folder of "
                             "the run (for machines whose Python is set not to, PYTHONDONTWRITEBYTECODE)")
    parser.add_argument("--profile", action="store_true", help="cProfile each child from construction to first map")
    parser.add_argument("--profile-out", type=Path, help="where the profiles go (default: next to --out)")
    parser.add_argument("--wait-compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_this_checkout()
    if args.child:
        print(json.dumps(child(args.models_dir, args.size, args.chunk, args.updates, args.device, args.profile,
                               background=not args.wait_compiled)))
        return 0
    if args.profile and args.profile_out is None:
        args.profile_out = args.out.with_suffix(".profile.txt")
    if args.profile_out is not None:
        args.profile_out.parent.mkdir(parents=True, exist_ok=True)
        args.profile_out.write_text(f"cProfile of each child, construction to first map ({args.out.name})\n")

    routes = [route.strip() for route in args.routes.split(",") if route.strip()]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        parser.error(f"unknown route(s) {unknown}; use {', '.join(ROUTES)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cold-start-") as temp:
        results = {route: measure_route(args, route, Path(temp)) for route in routes}
    default = results[routes[0]]
    first_cold = default["cold"]
    report = {
        "environment": {
            "device": first_cold["device"],
            "torch": first_cold["torch"],
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "bytecode_cache_forced": args.bytecode_cache,
            "bytecode_in_children": first_cold.get("bytecode"),
            "python_dont_write_bytecode_env": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        },
        "size": args.size,
        "chunk": args.chunk,
        "flow_updates": args.updates,
        "route": routes[0],
        "definitions": "seconds from constructing the preprocessor to its first flow map (load, warm-up for "
                       "`chunk`-frame calls and one call; process start and imports excluded, see import_s); "
                       "cold: empty models folder and empty torch/Triton caches; warm: best of the warm runs; "
                       "*_compiled_serving_s: from constructing it until its compiled kernels serve (on the jit "
                       "route the first maps come from the uncompiled model's CUDA graph until then)",
        "warm_process_first_map_s": default["warm_process_first_map_s"],
        "cold_first_call_s": default["cold_first_call_s"],
        "routes": results,
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'route':<10}{'cold s':>9}{'warm s':>9}{'entry only s':>14}{'compiled serving cold/warm s':>31}"
          "  warm route")
    for route, result in results.items():
        print(f"{route:<10}{result['cold_first_call_s']:>9.2f}{result['warm_process_first_map_s']:>9.2f}"
              f"{result['entry_only_first_map_s']:>14.2f}{result['cold_compiled_serving_s']:>20.2f} / "
              f"{result['warm_compiled_serving_s']:<8.2f}  {','.join(result['warm_route'])}")
    print(f"wrote {args.out} ({report['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
