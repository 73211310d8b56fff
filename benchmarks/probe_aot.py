"""Probe of the ahead-of-time route: our sequence model as an AOTInductor package, loaded in a fresh process.

An earlier probe (torchvision's own ``raft_small``, torch 2.11, one H200) compiled a package in 102 s whose
correlation lookup went through ``cudnn_grid_sampler`` (no AOTInductor C shim: proxy executor), and loading it
in a fresh process crashed with a segmentation fault. This probe exports :class:`RaftSequenceFlow` (fp16, the
regrouped update block, no CPU tensors in its forward) with cuDNN disabled while tracing and compiling, so the
lookup is ``grid_sampler_2d``, which Inductor lowers to its own gather kernels, then:

1. ``compile`` (a fresh process): ``torch.export.export`` + ``torch._inductor.aoti_compile_and_package``
   into a ``.pt2`` file; reports the export and compile times and whether any cuDNN sampler is left;
2. ``load`` (another fresh process): ``torch._inductor.aoti_load_package``, first call, then CUDA-graph
   capture and replay of the loaded model; reports load time, first-call time, replay ms, and the flow's
   difference from fp32 eager on the same weights and frames.

Prints one JSON line per step and writes ``benchmarks/results/aot_probe.json``::

    python benchmarks/probe_aot.py                 # 512x512, 4 pairs (Scope's chunks), 12 updates
    python benchmarks/probe_aot.py --size 256      # quicker

Needs CUDA; a compile of a few minutes at most is expected (the child times out after 8 minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()

from _checkout import ROOT, use_this_checkout  # noqa: E402  (same folder)

CHILD_TIMEOUT_S = 480


def build_model(updates: int, half: bool) -> Any:
    import torch

    from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow
    from scope_optical_flow_tensorrt.core.weights import load_raft_small

    raft, _ = load_raft_small(None)  # seeded random weights: speed and parity do not depend on their values
    dtype = torch.float16 if half else torch.float32
    model = RaftSequenceFlow(raft, updates, compute_dtype=dtype, corr_dtype=dtype, fast_update_block=half)
    return model.to("cuda").eval()


def example_frames(pairs: int, size: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, size + 4 * pairs, size + 4 * pairs, generator=generator)
    base = torch.nn.functional.avg_pool2d(base, 5, stride=1, padding=2)[0]
    frames = [base[:, 2 * i : 2 * i + size, i : i + size] for i in range(pairs + 1)]
    return torch.stack(frames).cuda()


def step_compile(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    model = build_model(args.updates, half=True)
    frames = example_frames(args.pairs, args.size)
    with torch.backends.cudnn.flags(enabled=False), torch.inference_mode():
        started = time.perf_counter()
        exported = torch.export.export(model, (frames,))
        exported_at = time.perf_counter()
        # grid_sample stays aten.grid_sampler (composite) in the exported graph; which kernel it becomes is
        # decided on decomposition, which with cuDNN disabled must be grid_sampler_2d
        graph_text = str(exported.run_decompositions().graph)
        exported_at = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(exported, package_path=str(args.package))
        compiled_at = time.perf_counter()
    return {
        "step": "compile",
        "export_s": round(exported_at - started, 1),
        "compile_s": round(compiled_at - exported_at, 1),
        "package_bytes": Path(path).stat().st_size,
        "cudnn_sampler_in_graph": "cudnn_grid_sampler" in graph_text,
        "grid_sampler_2d_in_graph": "grid_sampler_2d" in graph_text,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
    }


def step_load(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from scope_optical_flow_tensorrt.core.backends.cuda_graph import CudaGraphRunner

    imported = time.perf_counter()
    frames = example_frames(args.pairs, args.size)
    torch.cuda.synchronize()
    started = time.perf_counter()
    # run_single_threaded: the runner without its model-container locking, which CUDA-graph capture needs
    runner = torch._inductor.aoti_load_package(str(args.package), run_single_threaded=True)
    loaded = time.perf_counter()
    with torch.inference_mode():
        flow = runner(frames)
        flow = flow[0] if isinstance(flow, (list, tuple)) else flow  # the package returns the flattened outputs
        torch.cuda.synchronize()
        first = time.perf_counter()
        reference = build_model(args.updates, half=False)(frames)
        def call(x: Any) -> Any:
            out = runner(x)
            return out[0] if isinstance(out, (list, tuple)) else out

        graphs = CudaGraphRunner(call, torch.device("cuda"))
        replayed = graphs(frames)
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            tick = time.perf_counter()
            graphs(frames)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - tick)
        eager_times = []
        for _ in range(5):
            tick = time.perf_counter()
            runner(frames)
            torch.cuda.synchronize()
            eager_times.append(time.perf_counter() - tick)
    difference = (flow.float() - reference.float()).abs()
    return {
        "step": "load",
        "import_s": round(imported - PROCESS_START, 2),
        "load_s": round(loaded - started, 2),
        "first_call_s": round(first - loaded, 3),
        "construct_to_first_flow_s": round(first - started, 2),
        "replay_ms": round(sorted(times)[len(times) // 2] * 1e3, 2),
        "no_graph_ms": round(sorted(eager_times)[len(eager_times) // 2] * 1e3, 2),
        "graph_matches_direct_max": float((replayed.float() - flow.float()).abs().max()),
        "flow_vs_fp32_eager_mean_px": float(difference.mean()),
        "flow_vs_fp32_eager_max_px": float(difference.max()),
        "flow_mean_magnitude_px": float(reference.float().abs().mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="compute height and width")
    parser.add_argument("--pairs", type=int, default=4, help="frame pairs per call (Scope's chunks: 4)")
    parser.add_argument("--updates", type=int, default=12, help="RAFT flow updates")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "aot_probe.json")
    parser.add_argument("--step", choices=("compile", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--package", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_this_checkout()
    if args.step:
        result = step_compile(args) if args.step == "compile" else step_load(args)
        print(json.dumps(result))
        return 0

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aot-probe-") as temp:
        package = Path(temp) / f"raft_small_{args.size}x{args.size}_{args.pairs}pairs.pt2"
        for step in ("compile", "load"):
            command = [sys.executable, str(Path(__file__).resolve()), "--step", step, "--package", str(package),
                       "--size", str(args.size), "--pairs", str(args.pairs), "--updates", str(args.updates)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
            if done.returncode != 0:  # a crash (e.g. the earlier probe's segmentation fault) is a result too
                result = {"step": step, "exit_code": done.returncode, "stderr_tail": done.stderr[-3000:]}
            else:
                result = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(result), flush=True)
            results.append(result)
            if done.returncode != 0:
                break
    report = {"size": args.size, "pairs": args.pairs, "flow_updates": args.updates, "steps": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
