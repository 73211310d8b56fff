"""The preprocessor as a guest in a host's process (Scope, ComfyUI): what it changes there, and whether it stalls or
breaks the host's threads. Each measurement runs in a fresh Python process of its own (``--child``):

1. ``entry``: the compiled-kernel cache entry built alone, and built after the host compiled a model of its own
   (a torchvision ResNet-18 under torch.compile): its size, and whether the process's environment variables and
   Dynamo/Inductor configuration are the same after construct, ``load(warmup=4)``, ``wait_for_compiled()``, calls
   and ``close()``. A further process then compiles the host's model again with the same Inductor cache folder:
   its compile must hit that cache (the guest did not move it).
2. ``loop``: the host's calling pattern for ``--seconds`` from construction: 4-frame uint8 calls on the CPU, each
   followed by ``torch.cuda.synchronize()``, while a second host thread runs its own GPU work (matrix products on
   its own stream, each followed by a synchronize of that stream and a copy to the CPU; ``--device-sync`` makes
   it a device-wide ``torch.cuda.synchronize()``). Once the compile is done, the host calls
   ``wait_for_compiled(0)`` once, at a pause of its choosing (not counted as a live call). Reports errors, the
   worst call while compiling, and frames/s and worst call for each second of the run.

``--import-from DIR`` imports the package from ``DIR`` instead (e.g. an earlier commit unpacked there, to measure
"before" in the same run on the same machine). Writes ``--out`` (JSON) with every child's result.

    python benchmarks/bench_guest.py --out benchmarks/results/guest.json
    python benchmarks/bench_guest.py --import-from .before --modes loop --out benchmarks/results/guest_before.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _import_package(import_from: str | None) -> None:
    if import_from:
        folder = str(Path(import_from).resolve())
        sys.path.insert(0, folder)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from _checkout import use_this_checkout

        use_this_checkout()


def _config_snapshot() -> dict[str, Any]:
    import torch
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    def plain(config: Any) -> dict[str, str]:
        return {name: repr(value) for name, value in sorted(config.get_config_copy().items())}

    return {
        "env": dict(os.environ),
        "dynamo": plain(dynamo_config),
        "inductor": plain(inductor_config),
        "cudnn": [torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
                  torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()],
        "device": torch.cuda.current_device(),
        "stream": torch.cuda.current_stream().cuda_stream,
        "switch_interval": sys.getswitchinterval(),
    }


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for part in before:
        if isinstance(before[part], dict):
            keys = set(before[part]) | set(after[part])
            delta = {k: [before[part].get(k), after[part].get(k)] for k in sorted(keys)
                     if before[part].get(k) != after[part].get(k)}
            if delta:
                changed[part] = delta
        elif before[part] != after[part]:
            changed[part] = [before[part], after[part]]
    return changed


def _host_model_compile() -> dict[str, int]:
    """The host's own model under torch.compile: returns Inductor's cache hits and misses for it."""
    import torch
    import torchvision
    from torch._dynamo.utils import counters

    model = torchvision.models.resnet18().cuda().eval()
    compiled = torch.compile(model)
    hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
    with torch.no_grad():
        compiled(torch.randn(2, 3, 224, 224, device="cuda"))
    torch.cuda.synchronize()
    return {"fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"] - hits),
            "fxgraph_cache_miss": int(counters["inductor"]["fxgraph_cache_miss"] - misses)}


def child_entry(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    result: dict[str, Any] = {"mode": "entry", "host_compile_first": args.host_compile}
    if args.host_compile:
        result["host_compile"] = _host_model_compile()
    before = _config_snapshot()
    flow = OpticalFlowTensorRTPreprocessor(args.size, args.size, weights=None, models_dir=args.models_dir)
    flow.load(warmup=4)
    result["all_compiled"] = flow.wait_for_compiled(timeout=600)
    frames = torch.randint(0, 256, (4, args.size, args.size, 3), dtype=torch.uint8)
    for _ in range(5):
        flow(frames, layout="FHWC")
    torch.cuda.synchronize()
    backend = flow.load()
    result["routes"] = {str(k): v for k, v in getattr(backend, "warmed_shapes", {}).items()}
    close = getattr(flow, "close", None)
    if close is not None:
        close()
    after = _config_snapshot()
    changed = _diff(before, after)
    result["changed"] = changed
    result["env_unchanged"] = "env" not in changed
    result["dynamo_config_unchanged"] = "dynamo" not in changed
    result["inductor_config_unchanged"] = "inductor" not in changed
    entries = sorted(Path(args.models_dir).glob("*.torchcache"))
    result["entries"] = {p.name: p.stat().st_size for p in entries}
    result["entry_bytes"] = sum(p.stat().st_size for p in entries)
    return result


def child_host_again(args: argparse.Namespace) -> dict[str, Any]:
    return {"mode": "host-again", "host_compile": _host_model_compile()}


def child_loop(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    constructed = time.perf_counter()
    errors: list[str] = []
    stop = threading.Event()
    host_iterations = [0]

    def host_thread() -> None:
        stream = torch.cuda.Stream()
        a = torch.randn(2048, 2048, device="cuda")
        while not stop.is_set():
            try:
                with torch.cuda.stream(stream):
                    b = a @ a
                    if args.device_sync:
                        torch.cuda.synchronize()
                    else:
                        stream.synchronize()
                    b[0, :4].cpu()
                host_iterations[0] += 1
            except Exception as error:  # what the guest must never cause
                errors.append(f"host thread: {type(error).__name__}: {str(error)[:200]}")
                time.sleep(0.01)
            time.sleep(0.002)

    worker = threading.Thread(target=host_thread, daemon=True)
    worker.start()
    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    constructed = time.perf_counter()
    flow = OpticalFlowTensorRTPreprocessor(args.size, args.size, weights=None, models_dir=args.models_dir)
    flow.load(warmup=4)
    load_s = time.perf_counter() - constructed
    frames = torch.randint(0, 256, (4, args.size, args.size, 3), dtype=torch.uint8)
    calls: list[tuple[float, float, bool]] = []  # (seconds since construction, call ms, compile still running)
    switch_s: float | None = None
    switched_at: float | None = None
    while time.perf_counter() - constructed < args.seconds:
        compiler = getattr(flow.load(), "compiler", None)
        compiling = bool(compiler is not None and compiler.busy)
        started = time.perf_counter()
        try:
            flow(frames, layout="FHWC")
            torch.cuda.synchronize()
        except Exception as error:
            errors.append(f"caller: {type(error).__name__}: {str(error)[:200]}")
        now = time.perf_counter()
        calls.append((started - constructed, (now - started) * 1000, compiling))
        if not compiling and switch_s is None and not args.no_switch:
            # the host's pause of its choosing (new API: loads the compiled kernels; old API: nothing to wait for)
            switch_started = time.perf_counter()
            flow.wait_for_compiled(timeout=0)
            switch_s = time.perf_counter() - switch_started
            switched_at = switch_started - constructed
    stop.set()
    worker.join(5)
    per_second: dict[int, list[float]] = {}
    for at, ms, _ in calls:
        per_second.setdefault(int(at), []).append(ms)
    during = [ms for _, ms, compiling in calls if compiling]
    after = [ms for at, ms, compiling in calls if not compiling and switched_at is not None and at > switched_at]
    return {
        "mode": "loop", "device_sync": args.device_sync, "seconds": args.seconds, "load_s": round(load_s, 3),
        "errors": errors[:20], "error_count": len(errors), "calls": len(calls), "host_thread_iterations": host_iterations[0],
        "worst_call_ms_during_compile": round(max(during), 2) if during else None,
        "calls_during_compile": len(during),
        "compile_done_at_s": round(switched_at, 2) if switched_at is not None else None,
        "switch_s": round(switch_s, 3) if switch_s is not None else None,
        "worst_call_ms_after_switch": round(max(after), 2) if after else None,
        "median_call_ms_after_switch": round(sorted(after)[len(after) // 2], 3) if after else None,
        "per_second": [{"second": s, "frames_per_s": round(4 * len(v) / max(1e-9, sum(v) / 1000), 1) if v else 0,
                        "calls": len(v), "worst_ms": round(max(v), 2)} for s, v in sorted(per_second.items())],
    }


def _run_child(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env,
                          timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"argv": argv, "returncode": done.returncode, "stderr": done.stderr[-3000:]}
    return {**json.loads(lines[-1]), "argv": argv}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guest.json")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--modes", default="entry,loop")
    parser.add_argument("--loops", default="cold,warm,warm-device-sync", help="loop variants to run")
    parser.add_argument("--import-from", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="entry", help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--host-compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device-sync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-switch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _import_package(args.import_from)
    if args.child:
        run = {"entry": child_entry, "host-again": child_host_again, "loop": child_loop}[args.mode]
        print(json.dumps(run(args)), flush=True)
        return 0

    import torch

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    work = Path(tempfile.mkdtemp(prefix="guest-"))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "host-inductor-cache")  # the host's own compile cache
    common = ["--size", str(args.size), "--seconds", str(args.seconds)]
    if args.import_from:
        common += ["--import-from", args.import_from]
    result: dict[str, Any] = {"environment": {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                              "import_from": args.import_from or "this checkout"}}
    if "entry" in args.modes.split(","):
        alone = _run_child([*common, "--mode", "entry", "--models-dir", str(work / "alone")], env)
        hosted = _run_child([*common, "--mode", "entry", "--host-compile", "--models-dir", str(work / "hosted")], env)
        again = _run_child([*common, "--mode", "host-again"], env)
        result.update(entry_alone=alone, entry_after_host_compile=hosted, host_compile_again=again)
        result["entry_bytes_alone"] = alone.get("entry_bytes")
        result["entry_bytes_after_host_compile"] = hosted.get("entry_bytes")
        result["env_unchanged"] = bool(alone.get("env_unchanged") and hosted.get("env_unchanged"))
        result["dynamo_config_unchanged"] = bool(alone.get("dynamo_config_unchanged")
                                                 and hosted.get("dynamo_config_unchanged"))
        result["host_compile_hits_its_cache"] = again.get("host_compile", {}).get("fxgraph_cache_miss") == 0
    if "loop" in args.modes.split(","):
        loops: dict[str, Any] = {}
        for variant in args.loops.split(","):
            models = work / f"loop-{'warm' if 'warm' in variant else variant}"
            if variant.startswith("warm") and not any(models.glob("*.torchcache")):
                # fill the cache first (not timed)
                _run_child([*common, "--mode", "entry", "--models-dir", str(models)], env)
            extra = ["--device-sync"] if "device-sync" in variant else []
            loops[variant] = _run_child([*common, "--mode", "loop", "--models-dir", str(models), *extra], env)
            print(variant, json.dumps({k: v for k, v in loops[variant].items() if k != "per_second"}), flush=True)
        result["loops"] = loops
        result["host_loop_errors"] = sum(int(loop.get("error_count", 0)) for loop in loops.values())
        result["worst_call_ms_during_compile"] = max(
            (loop["worst_call_ms_during_compile"] for loop in loops.values()
             if loop.get("worst_call_ms_during_compile") is not None), default=None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("loops",)}, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
