"""Side-by-side GPU benchmark: the naive per-pair torchvision loop vs this package's backends.

Runs in one process on one GPU and prints, for each resolution and chunk length: ms per chunk, frames/s,
speed-up over the naive loop, peak GPU memory, first-call time (load + warm-up/capture/compile) and the
accuracy cost against an fp32 eager reference on the same weights (flow and visualization differences).
The reference uses the grid_sample correlation lookup, the default the fused Triton lookup; the compiled model
with grid_sample (``fused_lookup=False``) runs beside it for comparison.
Writes JSON and a Markdown table (``--out``). ``--models`` picks the RAFT models (default RAFT Small); each
model gets its own naive loop and fp32 reference. Usage on a GPU machine::

    python benchmarks/bench_flow.py --out benchmarks/results
    python benchmarks/bench_flow.py --sizes 512 --chunks 4 16 --models raft_small raft_large --variants naive torch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from _checkout import use_this_checkout  # noqa: E402  (same folder)

use_this_checkout()  # run from a checkout without installing

from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor  # noqa: E402
from scope_optical_flow_tensorrt.core.backends import BACKENDS, torch_backend
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow  # noqa: E402
from scope_optical_flow_tensorrt.core.model.specs import MODEL_NAMES, model_spec  # noqa: E402

UPDATES = 12


@dataclass
class Result:
    variant: str
    size: int
    chunk: int
    ms_per_chunk: float
    ms_spread: tuple[float, float]
    frames_per_s: float
    speedup_vs_naive: float | None
    peak_memory_gb: float
    first_call_s: float
    flow_max_diff_px: float | None = None
    flow_mean_diff_px: float | None = None
    vis_max_diff_255: float | None = None
    vis_mean_diff_255: float | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    model: str = "raft_small"


# Variants that differ from the default by a setting outside the preprocessor's arguments (variant_settings):
# cuDNN's autotuner, and Inductor options (weights frozen into the compiled graph as constants, so Inductor
# can fold and pre-layout them; 1x1 convolutions compiled as matrix multiplies with fused epilogues; autotuned
# kernel choices, Triton convolution templates among them, with their pointwise epilogues fused).
CUDNN_BENCHMARK = "cudnn.benchmark"
INDUCTOR_OPTIONS = {"Inductor freezing": "freezing", "Inductor conv_1x1_as_mm": "conv_1x1_as_mm",
                    "Inductor max_autotune": "max_autotune"}
# The update block as it was before the GRUs' context terms were computed once per call (core/fast_update.py).
CONTEXT_PER_UPDATE = "GRU context read at every update (before)"
# The correlation pyramid as torchvision builds it (the full volume divided by sqrt(C), then pooled level by
# level), as the model did before it correlated with pooled features (RaftSequenceFlow._correlation_pyramid).
FULL_VOLUME_PYRAMID = "pyramid pooled from the full volume (before)"
# The model's weights and activations in the other memory layout than the default's (torch_backend).
OTHER_LAYOUT = "channels-last model" if not torch_backend.CHANNELS_LAST_ON_CUDA else "contiguous model"


def pyramid_from_full_volume(model: RaftSequenceFlow, fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's ``CorrBlock.build_pyramid`` arithmetic (the :data:`FULL_VOLUME_PYRAMID` row)."""
    pairs, channels, h, w = fmap1.shape
    f1 = fmap1.to(model.corr_dtype).reshape(pairs, channels, h * w)
    f2 = fmap2.to(model.corr_dtype).reshape(pairs, channels, h * w)
    level = (torch.matmul(f1.transpose(1, 2), f2) / channels**0.5).reshape(pairs * h * w, 1, h, w)
    pyramid = [level]
    for _ in range(model.num_levels - 1):
        level = F.avg_pool2d(level, kernel_size=2, stride=2)
        pyramid.append(level)
    return pyramid


@contextmanager
def variant_settings(name: str) -> Iterator[None]:
    """The settings a variant's name asks for, restored after. Inductor options and a replaced method are not
    part of Dynamo's guards, so such a variant starts from a reset Dynamo (else it reuses the default's compiled
    code: a first run of the full-volume row took 0.3 s to its first call, i.e. compiled nothing)."""
    import torch._inductor.config as inductor_config
    from scope_optical_flow_tensorrt.core.model import fast_update

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK in name
    fast_update.CONTEXT_GATES_ONCE = CONTEXT_PER_UPDATE not in name
    layout = torch_backend.CHANNELS_LAST_ON_CUDA
    torch_backend.CHANNELS_LAST_ON_CUDA = layout != (OTHER_LAYOUT in name)
    pyramid = RaftSequenceFlow._correlation_pyramid
    if FULL_VOLUME_PYRAMID in name:
        RaftSequenceFlow._correlation_pyramid = pyramid_from_full_volume  # type: ignore[method-assign]
    options = {option: True for label, option in INDUCTOR_OPTIONS.items() if label in name}
    fresh_dynamo = bool(options) or FULL_VOLUME_PYRAMID in name
    if fresh_dynamo:
        torch._dynamo.reset()
    try:
        with inductor_config.patch(options):
            yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        fast_update.CONTEXT_GATES_ONCE = True
        torch_backend.CHANNELS_LAST_ON_CUDA = layout
        RaftSequenceFlow._correlation_pyramid = pyramid  # type: ignore[method-assign]
        if fresh_dynamo:
            torch._dynamo.reset()


def onnxruntime_on_cuda() -> bool:
    """onnxruntime is timed only with its CUDA execution provider (its CPU provider is no GPU benchmark)."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "onnxruntime" in BACKENDS and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def moving_texture(frames: int, size: int, device: torch.device) -> torch.Tensor:
    """``[1, 3, F, size, size]`` in [0,1]: a smooth random texture panning 3 px right and 1 px down per frame."""
    generator = torch.Generator().manual_seed(0)
    margin = 4 * frames + 8
    texture = torch.rand(1, 3, size + margin, size + margin, generator=generator)
    texture = torch.nn.functional.avg_pool2d(texture, 5, stride=1, padding=2)[0]
    clip = [texture[:, margin - 1 * i - 4 : margin - 1 * i - 4 + size, margin - 3 * i - 4 : margin - 3 * i - 4 + size]
            for i in range(frames)]
    return torch.stack(clip, dim=1).unsqueeze(0).to(device)


def timed(fn: Callable[[], torch.Tensor], warmup: int, repeats: int) -> tuple[list[float], torch.Tensor]:
    out = fn()
    for _ in range(warmup):
        out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times, out


def naive_loop(
    model_name: str, weights: object, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The earlier plugin's structure: torchvision's model fp32, one call per pair, flow_to_image per frame."""
    from torchvision.utils import flow_to_image

    model = model_spec(model_name).build(weights=None).to(device).eval()
    if weights is not None:
        state = torch.load(weights, map_location=device, weights_only=True)
        from scope_optical_flow_tensorrt.core.model.weights import convert_state_dict

        model.load_state_dict(convert_state_dict(state, model_name), strict=False)

    @torch.inference_mode()
    def run(previous: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        frames = torch.cat([previous, chunk[0].permute(1, 0, 2, 3)])  # [F+1, 3, H, W]
        maps = []
        for i in range(frames.shape[0] - 1):
            flow = model(frames[i : i + 1] * 2 - 1, frames[i + 1 : i + 2] * 2 - 1, num_flow_updates=UPDATES)[-1]
            maps.append(flow_to_image(flow).float() / 127.5 - 1)
        return torch.stack(maps, dim=2)

    return run


def measure_variant(
    name: str, make: Callable[[], OpticalFlowTensorRTPreprocessor], clip: torch.Tensor, chunk: int,
    reference: tuple[torch.Tensor, torch.Tensor] | None, warmup: int, repeats: int,
) -> tuple[Result, tuple[torch.Tensor, torch.Tensor]]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    first = clip[:, :, :1]
    body = clip[:, :, 1 : chunk + 1]
    start = time.perf_counter()
    pre = make()
    pre.warm_up([chunk])  # as a user would (load(warmup=chunk)): ahead-of-time packages are built or loaded here
    pre.wait_for_compiled()  # the compiled kernels, not the uncompiled graphs that serve while they compile
    pre(first)
    pre(body)
    torch.cuda.synchronize()
    first_call = time.perf_counter() - start
    times, _ = timed(lambda: pre(body), warmup, repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9
    # accuracy: a fresh stream over the same frames, flow and pictures
    pre.reset()
    pre(first)
    flow = pre.compute_flow(body)
    pre.reset()
    pre(first)
    vis = pre(body)
    result = Result(
        variant=name, size=clip.shape[-1], chunk=chunk, ms_per_chunk=statistics.median(times),
        ms_spread=(min(times), max(times)), frames_per_s=chunk / statistics.median(times) * 1000,
        speedup_vs_naive=None, peak_memory_gb=peak, first_call_s=first_call,
    )
    if reference is not None:
        ref_flow, ref_vis = reference
        result.flow_max_diff_px = (flow - ref_flow).abs().max().item()
        result.flow_mean_diff_px = (flow - ref_flow).abs().mean().item()
        result.vis_max_diff_255 = ((vis - ref_vis).abs().max() * 127.5).item()
        result.vis_mean_diff_255 = ((vis - ref_vis).abs().mean() * 127.5).item()
    del pre
    return result, (flow, vis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768])
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 12, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--weights", nargs="+", default=None,
                        help="local RAFT .pth files, each used for the model it holds (default: ../shared/weights, "
                             "else seeded random)")
    parser.add_argument("--models", nargs="+", default=["raft_small"], choices=MODEL_NAMES,
                        help="RAFT models to time, each with its own naive loop and fp32 reference")
    parser.add_argument("--variants", nargs="+", default=None, help="subset of variant names to run")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow first call)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and results.md")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="cache folder for compiled packages (default: the plugin's models folder)")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        raise SystemExit("bench_flow.py needs a CUDA GPU.")
    device = torch.device("cuda")
    weights_by_model = find_weights(args.weights)
    weights_note = ", ".join(
        f"{model}: pretrained ({weights_by_model[model]})" if model in weights_by_model else
        f"{model}: seeded random (no pretrained file; speed does not depend on weight values)"
        for model in args.models
    )

    def ours(**options: object) -> Callable[[], OpticalFlowTensorRTPreprocessor]:
        def make() -> OpticalFlowTensorRTPreprocessor:
            return OpticalFlowTensorRTPreprocessor(size, size, device="cuda", weights=spec, num_flow_updates=UPDATES,
                                                   model=model, models_dir=args.models_dir,
                                                   **options)  # type: ignore[arg-type]
        return make

    results: list[Result] = []
    for model in args.models:
        weights = weights_by_model.get(model)
        spec = str(weights) if weights else None
        naive = naive_loop(model, weights, device)
        for size in args.sizes:
            for chunk in args.chunks:
                clip = moving_texture(chunk + 1, size, device)
                # (a) naive baseline
                if args.variants is None or "naive" in args.variants:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    times, _ = timed(lambda: naive(clip[0, :, :1].permute(1, 0, 2, 3), clip[:, :, 1:]), 1,
                                     max(3, args.repeats // 3))
                    naive_ms = statistics.median(times)
                    results.append(Result("naive per-pair loop, fp32 eager (torchvision)", size, chunk, naive_ms,
                                          (min(times), max(times)), chunk / naive_ms * 1000, 1.0,
                                          torch.cuda.max_memory_allocated() / 1e9, 0.0, model=model))
                else:
                    naive_ms = None
                variants: list[tuple[str, Callable[[], OpticalFlowTensorRTPreprocessor]]] = [
                    ("ours torch fp32 eager (reference)",
                     ours(backend="torch", fp16=False, cuda_graphs=False, torch_compile=False, fused_lookup=False)),
                    ("ours torch fp16 eager", ours(backend="torch", fp16=True, cuda_graphs=False, torch_compile=False)),
                    ("ours torch fp16 + CUDA graphs", ours(backend="torch", fp16=True, torch_compile=False)),
                    ("ours torch fp16 + compile + CUDA graphs, grid_sample lookup",
                     ours(backend="torch", fused_lookup=False)),
                    ("ours torch fp16 + compile + CUDA graphs (default: fused Triton lookup)", ours(backend="torch")),
                    (f"ours torch fp16 + compile + CUDA graphs, {CONTEXT_PER_UPDATE}", ours(backend="torch")),
                    (f"ours torch fp16 + compile + CUDA graphs, {FULL_VOLUME_PYRAMID}", ours(backend="torch")),
                    (f"ours torch fp16 + compile + CUDA graphs, {OTHER_LAYOUT}", ours(backend="torch")),
                    (f"ours torch fp16 + compile + CUDA graphs, {CUDNN_BENCHMARK}", ours(backend="torch")),
                    *[(f"ours torch fp16 + compile + CUDA graphs, {label}", ours(backend="torch"))
                      for label in INDUCTOR_OPTIONS],
                ]
                if onnxruntime_on_cuda():
                    variants.append(("ours onnxruntime (CUDA EP)", ours(backend="onnxruntime", fp16=False)))
                elif "onnxruntime" in BACKENDS and size == min(args.sizes) and chunk == min(args.chunks):
                    # Without its CUDA provider onnxruntime runs on the CPU: timed once, at the smallest setting.
                    variants.append(("ours onnxruntime (CPU EP, no CUDA EP here)",
                                     ours(backend="onnxruntime", fp16=False)))
                reference = None
                for name, make in variants:
                    if args.variants is not None and not any(v in name for v in args.variants):
                        continue
                    try:
                        with variant_settings(name):
                            result, outputs = measure_variant(name, make, clip, chunk, reference, args.warmup,
                                                              args.repeats)
                    except Exception as error:  # report and go on: one backend failing must not hide the others
                        print(f"[{model} {size} x{chunk}] {name}: FAILED {type(error).__name__}: {error}", flush=True)
                        continue
                    result.model = model
                    if reference is None:
                        reference = outputs
                    if naive_ms is not None:
                        result.speedup_vs_naive = naive_ms / result.ms_per_chunk
                    results.append(result)
                    print(f"[{model} {size} x{chunk}] {name}: {result.ms_per_chunk:.2f} ms, "
                          f"{result.frames_per_s:.0f} fps, {result.peak_memory_gb:.2f} GB", flush=True)

    environment = {
        "device": torch.cuda.get_device_name(0),
        "onnxruntime": "CUDA EP" if onnxruntime_on_cuda() else "CPU EP only (timed at the smallest size and chunk)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "weights": weights_note,
        "updates": UPDATES,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    table = render_markdown(results, environment)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"environment": environment,
                                                            "results": [asdict(r) for r in results]}, indent=2))
        (args.out / "results.md").write_text(table)


def find_weights(paths: list[str] | None) -> dict[str, Path]:
    """Model name -> a pretrained file holding its weights, from ``paths`` or ../shared/weights."""
    from scope_optical_flow_tensorrt.core.model.weights import checkpoint_model

    if paths is None:
        shared = Path(__file__).resolve().parents[2] / "shared" / "weights"
        candidates = sorted(shared.glob("*.pth")) if shared.is_dir() else []
    else:
        candidates = [Path(path) for path in paths]
    found: dict[str, Path] = {}
    for path in candidates:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            found.setdefault(checkpoint_model(state.get("state_dict", state), path).name, path)
        except Exception as error:  # a foreign file in the folder is skipped, an explicit one is reported
            print(f"weights {path}: skipped ({type(error).__name__}: {error})", flush=True)
    return found


def render_markdown(results: list[Result], environment: dict[str, object]) -> str:
    lines = [f"{key}: {value}  " for key, value in environment.items()]
    lines += ["", "| model | size | chunk | variant | ms/chunk | frames/s | x naive | peak GB | first call s | flow max/mean px | vis max/mean (/255) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        speedup = f"{r.speedup_vs_naive:.1f}" if r.speedup_vs_naive else "-"
        flow = f"{r.flow_max_diff_px:.3f} / {r.flow_mean_diff_px:.4f}" if r.flow_max_diff_px is not None else "-"
        vis = f"{r.vis_max_diff_255:.1f} / {r.vis_mean_diff_255:.2f}" if r.vis_max_diff_255 is not None else "-"
        lines.append(f"| {r.model} | {r.size} | {r.chunk} | {r.variant} | {r.ms_per_chunk:.2f} | {r.frames_per_s:.0f} | {speedup} | "
                     f"{r.peak_memory_gb:.2f} | {r.first_call_s:.1f} | {flow} | {vis} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
