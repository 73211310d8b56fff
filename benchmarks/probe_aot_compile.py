"""Probe: Dynamo's ahead-of-time compile (``torch.compile(...).aot_compile`` + ``load_compiled_function``) against
our cache entries (``save_cache_artifacts`` + a Dynamo trace in each process) for a warm process's load.

In fresh processes on one GPU, at 512x512, RAFT Small, seeded random weights, windows of 4 pairs (5 frames):

- ``build``: ``encode`` and ``update_step`` compiled ahead of time (fresh Inductor cache) and saved; seconds, bytes;
- ``load`` (twice, each in a fresh process with its own empty Inductor cache): the import of torch's compiler
  stack, each ``load_compiled_function``, the first call, the CUDA-graph capture, then steady ms per call against
  the uncompiled graph, and the largest flow difference from the uncompiled model;
- ``current`` (twice, on one fresh models folder): ``load(warmup=4)`` + ``wait_for_compiled()`` of the
  preprocessor as it is, with its ``switch_seconds``.

    python benchmarks/probe_aot_compile.py --out probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _checkout import use_this_checkout  # noqa: E402  (same folder)

SIZE = 512
PAIRS = 4
CALLS = 100


def build_model(size: int, fused_lookup: bool) -> Any:
    import torch

    from scope_optical_flow_tensorrt.core.backends.base import BackendConfig
    from scope_optical_flow_tensorrt.core.backends.torch_backend import TorchFlowBackend

    config = BackendConfig(height=size, width=size, device=torch.device("cuda"), fp16=True, num_flow_updates=12,
                           max_pairs=8, cuda_graphs=False, torch_compile=False, fused_lookup=fused_lookup)
    return TorchFlowBackend(config, None).model


def example_inputs(model: Any, frames: Any) -> tuple[Any, ...]:
    pyramid, hidden, context = model.encode(frames)
    n, _, h, w = frames.shape
    coords0 = model._coords_grid(n - 1, h // 8, w // 8, frames.device)
    return pyramid, context, hidden, coords0, coords0.clone()


def aot_compile(fn: Any, inputs: tuple[Any, ...]) -> Any:
    """``torch.compile(fn, fullgraph=True).aot_compile`` (torch 2.11 has it behind ``enable_aot_compile``)."""
    import torch
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(enable_aot_compile=True):
        wrapped = torch.compile(fn, fullgraph=True, dynamic=False)
    if hasattr(wrapped, "aot_compile"):
        return wrapped.aot_compile((inputs, {}))
    from torch._dynamo.aot_compile import aot_compile_fullgraph
    from torch._dynamo.hooks import Hooks

    return aot_compile_fullgraph(fn, (inputs, {}), hooks=Hooks(),
                                 backend=torch._TorchCompileInductorWrapper(None, None, False))


def child_build(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    model = build_model(args.size, args.fused_lookup)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        frames = torch.rand(PAIRS + 1, 3, args.size, args.size, device="cuda")
        began = time.perf_counter()
        encode = aot_compile(model.encode, (frames,))
        out["encode_compile_s"] = round(time.perf_counter() - began, 2)
        step_inputs = example_inputs(model, frames)
        began = time.perf_counter()
        step = aot_compile(model.update_step, step_inputs)
        out["update_step_compile_s"] = round(time.perf_counter() - began, 2)
        for name, compiled in (("encode", encode), ("update_step", step)):
            path = args.folder / f"{name}.aot"
            compiled.save_compiled_function(str(path))
            out[f"{name}_bytes"] = path.stat().st_size
        eager = model(frames)
        compiled_flow = model.forward_with(frames, lambda f: encode(model, f), lambda *a: step(model, *a))
        out["build_max_diff_px"] = float((eager.float() - compiled_flow.float()).abs().max())
    return out


def child_load(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    import torch

    from scope_optical_flow_tensorrt.core.backends.cuda_graph import CudaGraphRunner
    from scope_optical_flow_tensorrt.core.backends.torch_backend import compile_settings

    out: dict[str, Any] = {"import_torch_s": round(time.perf_counter() - started, 2)}
    model = build_model(args.size, args.fused_lookup)
    torch.cuda.synchronize()
    t = time.perf_counter()
    import torch._dynamo  # noqa: F401
    import torch._inductor.codecache  # noqa: F401
    out["import_compiler_s"] = round(time.perf_counter() - t, 3)
    fns = {}
    with compile_settings():
        for name in ("encode", "update_step"):
            t = time.perf_counter()
            with open(args.folder / f"{name}.aot", "rb") as file:
                fns[name] = torch.compiler.load_compiled_function(file)
            out[f"load_{name}_s"] = round(time.perf_counter() - t, 3)

        def forward(frames: Any) -> Any:
            return model.forward_with(frames, lambda f: fns["encode"](model, f),
                                      lambda *a: fns["update_step"](model, *a)).float()

        with torch.inference_mode():
            frames = torch.rand(PAIRS + 1, 3, args.size, args.size, device="cuda")
            t = time.perf_counter()
            try:
                first = forward(frames)
            except RuntimeError as error:  # a guard: on torch 2.11 the trace saw frames as normal tensors
                out["guard_error"] = str(error)[:400]
                for fn in fns.values():
                    fn.disable_guard_check()
                t = time.perf_counter()
                first = forward(frames)
            torch.cuda.synchronize()
            out["first_call_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            graph = CudaGraphRunner(forward, torch.device("cuda"))
            graph(frames)
            torch.cuda.synchronize()
            out["graph_s"] = round(time.perf_counter() - t, 3)
            out["warm_load_total_s"] = round(out["import_compiler_s"] + out["load_encode_s"] + out["load_update_step_s"]
                                             + out["first_call_s"] + out["graph_s"], 3)
            eager_graph = CudaGraphRunner(lambda f: model(f).float(), torch.device("cuda"))
            out["max_diff_vs_uncompiled_px"] = float((eager_graph(frames) - first).abs().max())
            for name, run in (("aot_graph_ms", graph), ("uncompiled_graph_ms", eager_graph)):
                for _ in range(10):
                    run(frames)
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(CALLS):
                    run(frames)
                torch.cuda.synchronize()
                out[name] = round((time.perf_counter() - t) * 1000 / CALLS, 3)
    out["process_s"] = round(time.perf_counter() - started, 2)
    return out


def child_current(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    import torch

    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    out: dict[str, Any] = {"import_s": round(time.perf_counter() - started, 2)}
    torch.zeros(1, device="cuda")
    t = time.perf_counter()
    flow = OpticalFlowTensorRTPreprocessor(args.size, args.size, weights=None, models_dir=args.folder)
    flow.load(warmup=PAIRS)
    flow.wait_for_compiled()
    out["load_and_wait_s"] = round(time.perf_counter() - t, 2)
    backend = flow.load()
    out["switch_seconds"] = {str(k): v for k, v in backend.switch_seconds.items()}
    out["shapes"] = {str(k): v for k, v in backend.warmed_shapes.items()}
    return out


def run_child(kind: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-"))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as result:
        pass
    command = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--json", result.name,
               "--size", str(args.size)] + (["--no-fused-lookup"] if not args.fused_lookup else [])
    began = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        return {"error": f"rc {completed.returncode}", "tail": (completed.stdout + completed.stderr)[-3000:]}
    out = json.loads(Path(result.name).read_text())
    out["wall_s"] = round(time.perf_counter() - began, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--no-fused-lookup", dest="fused_lookup", action="store_false")
    parser.add_argument("--skip-current", action="store_true")
    parser.add_argument("--child", default=None)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    use_this_checkout()
    if args.child is not None:
        result = {"build": child_build, "load": child_load, "current": child_current}[args.child](args)
        args.json.write_text(json.dumps(result))
        return 0
    import torch

    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "size": args.size, "pairs": PAIRS, "fused_lookup": args.fused_lookup}
    aot_folder = Path(tempfile.mkdtemp(prefix="aot-"))
    report["build"] = run_child("build", aot_folder, args)
    print(json.dumps(report["build"]), flush=True)
    report["load"] = []
    for _ in range(2):
        report["load"].append(run_child("load", aot_folder, args))
        print(json.dumps(report["load"][-1]), flush=True)
    if not args.skip_current:
        models = Path(tempfile.mkdtemp(prefix="models-"))
        report["current"] = []
        for _ in range(2):
            report["current"].append(run_child("current", models, args))
            print(json.dumps(report["current"][-1]), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
