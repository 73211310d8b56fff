"""Where the GPU time goes in one RAFT Small call, and how model-level precision/layout choices compare.

Prints (1) CUDA-graph replay times of :class:`RaftSequenceFlow` variants at one size and chunk, and (2) the
top kernels of one eager fp16 call from torch.profiler. Usage on a GPU machine::

    python benchmarks/profile_flow.py --size 512 --pairs 16
    python benchmarks/profile_flow.py --size 512 --pairs 16 --only "fused lookup" --fused-lookup --profile-compiled
    python benchmarks/profile_flow.py --size 512 --pairs 15 --stages --kernels
    python benchmarks/profile_flow.py --size 512 --pairs 15 --stages --context-per-update
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import event_ms, graphed  # noqa: E402  (same folder)
from bench_flow import moving_texture, pyramid_from_full_volume  # noqa: E402  (same folder)
from scope_optical_flow_tensorrt.core.backends.cuda_graph import CudaGraphRunner
from scope_optical_flow_tensorrt.core.model.corr_lookup import corr_lookup
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.model.weights import load_raft_small
from torch.profiler import ProfilerActivity, profile


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


def replay_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph (captured after warm-up on a side stream)."""
    return event_ms(graphed(fn), repeats)


def stages(size: int, pairs: int, context_gates_once: bool = True, kernels: bool = False,
           channels_last: bool = False) -> None:
    """CUDA-graph times of the default model's stages (fp16, fast block, fused lookup, compiled): where each
    0.1 ms goes. ``context_gates_once=False``: the update block as before (context read by every update's
    GRU convolutions). ``kernels``: also the top GPU kernels of one compiled encode and one update step.
    ``channels_last``: the model's weights and activations channels-last (``RaftSequenceFlow(channels_last=True)``)."""
    from scope_optical_flow_tensorrt.core.model import fast_update

    device = torch.device("cuda")
    frames = moving_texture(pairs + 1, size, device)[0].permute(1, 0, 2, 3).contiguous()
    raft, _ = load_raft_small(None)
    fast_update.CONTEXT_GATES_ONCE = context_gates_once
    model = RaftSequenceFlow(raft, 12, compute_dtype=torch.float16, corr_dtype=torch.float16,
                             fast_update_block=True, fused_lookup=True, channels_last=channels_last).to(device).eval()
    fast_update.CONTEXT_GATES_ONCE = True
    block = model.update_block
    encode = torch.compile(model.encode, dynamic=False)
    step = torch.compile(model.update_step, dynamic=False)
    lookup = torch.compile(lambda pyramid, coords: corr_lookup(pyramid, coords, model.radius, block.corr_channels,
                                                               model.lookup_channels_last), dynamic=False)
    update_block = torch.compile(block, dynamic=False)
    feature_encoder = torch.compile(model.feature_encoder, dynamic=False)
    context_part = torch.compile(
        lambda images: block.context_gates(F.relu(model.context_encoder(images)[:, model.hidden_size:])),
        dynamic=False)
    pyramid_part = torch.compile(model._correlation_pyramid, dynamic=False)
    pyramid_before = torch.compile(lambda f1, f2: pyramid_from_full_volume(model, f1, f2), dynamic=False)
    with torch.inference_mode():
        images = (frames.half() * 2 - 1).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        pyramid, hidden, context = encode(frames)
        fmaps = model.feature_encoder(images)
        h, w = size // 8, size // 8
        coords0 = model._coords_grid(pairs, h, w, device)
        coords1 = coords0 + 0.5
        corr = corr_lookup(pyramid, coords1, model.radius, block.corr_channels, model.lookup_channels_last)
        flow = torch.zeros(pairs, block.flow_channels, h, w, device=device, dtype=torch.float16)
        rows = [
            ("whole forward (encode + 12 updates + upsample)", lambda: model.forward(frames)),
            ("encode: features, context, correlation pyramid", lambda: encode(frames)),
            (f"  feature encoder ({pairs + 1} frames)", lambda: feature_encoder(images)),
            (f"  context encoder{' + GRU context terms' if context_gates_once else ''} ({pairs} frames)",
             lambda: context_part(images[:-1])),
            ("  correlation pyramid (a product with pooled features per level)",
             lambda: pyramid_part(fmaps[:-1], fmaps[1:])),
            ("  (before: full volume, divided, pooled 3 times)", lambda: pyramid_before(fmaps[:-1], fmaps[1:])),
            ("one update step (lookup + update block), x12 in a forward", lambda: step(pyramid, context, hidden,
                                                                                       coords0, coords1)),
            ("  fused lookup alone", lambda: lookup(pyramid, coords1)),
            ("  update block alone (motion encoder, GRU, flow head)", lambda: update_block(hidden, context, corr,
                                                                                           flow)),
        ]
        model.encode, model.update_step = encode, step  # type: ignore[method-assign]
        label = "GRU context terms once per call" if context_gates_once else "GRU context read at every update"
        label += ", channels-last" if channels_last else ""
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        print(f"stages at {size}x{size}, {pairs} pairs, fp16, fused lookup, compiled, CUDA graphs, {label}:")
        for name, fn in rows:
            ms = replay_ms(fn)
            print(f"  {name:62s} {ms:7.3f} ms  ({ms / pairs:6.3f} ms per pair)", flush=True)
        if kernels:
            kernel_table("compiled encode", lambda: encode(frames))
            kernel_table("compiled update step", lambda: step(pyramid, context, hidden, coords0, coords1))


def kernel_table(label: str, fn: Callable[[], object], calls: int = 5) -> None:
    """The GPU kernels of ``fn`` (eager launches of compiled code) by total time, per call."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = [event for event in prof.key_averages() if event.device_time_total > 0]
    events.sort(key=lambda event: event.device_time_total, reverse=True)
    total = sum(event.device_time_total for event in events) / calls
    print(f"kernels of one {label} call ({total / 1000:.3f} ms of GPU time, summed):")
    for event in events[:25]:
        ms = event.device_time_total / calls / 1000
        print(f"  {ms:7.3f} ms {100 * ms * 1000 / total:5.1f}%  x{event.count // calls:<3d} {event.key[:110]}")


def compile_shapes(size: int) -> None:
    """First-call (compile + capture) time per new window length, static vs dynamic shapes."""
    from scope_optical_flow_tensorrt.core.backends import BackendConfig, torch_backend

    device = torch.device("cuda")
    for dynamic in (True, False):
        torch_backend.COMPILE_DYNAMIC = dynamic
        torch._dynamo.reset()
        config = BackendConfig(height=size, width=size, device=device, fp16=True, num_flow_updates=12, max_pairs=16,
                               compile_in_background=False)
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
    parser.add_argument("--stages", action="store_true", help="only time the default model's stages")
    parser.add_argument("--context-per-update", action="store_true",
                        help="with --stages: the update block as before (GRU context read at every update)")
    parser.add_argument("--kernels", action="store_true", help="with --stages: top kernels of encode, update step")
    parser.add_argument("--channels-last", action="store_true", help="with --stages: the model channels-last")
    args = parser.parse_args()
    if args.shapes:
        compile_shapes(args.size)
        return
    if args.stages:
        stages(args.size, args.pairs, not args.context_per_update, args.kernels, args.channels_last)
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
