"""Where the GPU time goes in one RAFT Small call, and how model-level precision/layout choices compare.

Prints (1) CUDA-graph replay times of :class:`RaftSequenceFlow` variants at one size and chunk, and (2) the
top kernels of one eager fp16 call from torch.profiler. Usage on a GPU machine::

    python benchmarks/profile_flow.py --size 512 --pairs 16
    python benchmarks/profile_flow.py --size 512 --pairs 16 --only "fused lookup" --fused-lookup --profile-compiled
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_flow import moving_texture  # noqa: E402  (same folder)
from scope_optical_flow_tensorrt.core.backends.cuda_graph import CudaGraphRunner
from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.weights import load_raft_small


def graph_ms(model: torch.nn.Module, frames: torch.Tensor, repeats: int = 20) -> float:
    runner = CudaGraphRunner(model, frames.device)
    with torch.inference_mode():
        for _ in range(3):
            runner(frames)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runner(frames)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def compile_shapes(size: int) -> None:
    """First-call (compile + capture) time per new window length, static vs dynamic shapes."""
    from scope_optical_flow_tensorrt.core.backends import BackendConfig
    from scope_optical_flow_tensorrt.core.backends import torch_backend

    device = torch.device("cuda")
    for dynamic in (True, False):
        torch_backend.COMPILE_DYNAMIC = dynamic
        torch._dynamo.reset()
        config = BackendConfig(height=size, width=size, device=device, fp16=True, num_flow_updates=12, max_pairs=16)
        backend = torch_backend.TorchFlowBackend(config, None)
        line = []
        for frames_count in (13, 17, 9):
            frames = moving_texture(frames_count, size, device)[0].permute(1, 0, 2, 3).contiguous()
            start = time.perf_counter()
            backend.flow(frames)
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                backend.flow(frames)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1000)
            line.append(f"T={frames_count}: first {first:5.1f} s, then {statistics.median(times):6.2f} ms")
        print(f"compile dynamic={dynamic}: " + "; ".join(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--profile-compiled", action="store_true", help="profile with the compiled update step")
    parser.add_argument("--shapes", action="store_true", help="only time compiles per window length")
    parser.add_argument("--fused-lookup", action="store_true", help="profile with the fused (Triton) lookup")
    parser.add_argument("--only", default=None, help="time only the variants whose name contains this")
    args = parser.parse_args()
    if args.shapes:
        compile_shapes(args.size)
        return
    device = torch.device("cuda")
    frames = moving_texture(args.pairs + 1, args.size, device)[0].permute(1, 0, 2, 3).contiguous()
    variants = {
        "fp32": dict(compute_dtype=torch.float32),
        "fp16, corr fp32": dict(compute_dtype=torch.float16),
        "fp16, corr fp16": dict(compute_dtype=torch.float16, corr_dtype=torch.float16),
        "fp16, corr fp16, fast block": dict(compute_dtype=torch.float16, corr_dtype=torch.float16,
                                            fast_update_block=True),
        "fp16, corr fp16, compiled step+encode": dict(compute_dtype=torch.float16, corr_dtype=torch.float16),
        "fp16, corr fp16, fast block, compiled step+encode": dict(
            compute_dtype=torch.float16, corr_dtype=torch.float16, fast_update_block=True),
        "fp16, corr fp16, fast block channels_last, compiled step+encode": dict(
            compute_dtype=torch.float16, corr_dtype=torch.float16, fast_update_block=True, channels_last=True),
        "fp16, corr fp16, fast block, fused lookup": dict(
            compute_dtype=torch.float16, corr_dtype=torch.float16, fast_update_block=True, fused_lookup=True),
        "fp16, corr fp16, fast block, fused lookup, compiled step+encode": dict(
            compute_dtype=torch.float16, corr_dtype=torch.float16, fast_update_block=True, fused_lookup=True),
    }
    reference = None
    for name, options in variants.items():
        if args.only is not None and args.only not in name and name != "fp32":  # fp32 stays: the reference
            continue
        raft, _ = load_raft_small(None)
        model = RaftSequenceFlow(raft, 12, **options).to(device).eval()  # type: ignore[arg-type]
        call = model
        if "compiled step" in name:  # noqa: SIM102
            model.update_step = torch.compile(model.update_step, dynamic=False)  # type: ignore[method-assign]
        if "+encode" in name:
            model.encode = torch.compile(model.encode, dynamic=False)  # type: ignore[method-assign]
        if "compiled forward" in name:
            call = torch.compile(model, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            call(frames)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        ms = graph_ms(call, frames)
        with torch.inference_mode():
            flow = model(frames).float()
        if reference is None:
            reference = flow
        diff = (flow - reference).abs()
        print(f"{name:40s} first call {first:6.1f} s  {ms:7.2f} ms/call  {ms / args.pairs:6.3f} ms/pair  "
              f"flow diff vs fp32 max {diff.max().item():.3f} mean {diff.mean().item():.4f} px", flush=True)

    raft, _ = load_raft_small(None)
    model = RaftSequenceFlow(raft, 12, compute_dtype=torch.float16, corr_dtype=torch.float16,
                             fast_update_block=True, fused_lookup=args.fused_lookup).to(device).eval()
    if args.profile_compiled:
        model.update_step = torch.compile(model.update_step, dynamic=False)  # type: ignore[method-assign]
        model.encode = torch.compile(model.encode, dynamic=False)  # type: ignore[method-assign]
    with torch.inference_mode():
        for _ in range(3):
            model(frames)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(frames)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90))


if __name__ == "__main__":
    main()
