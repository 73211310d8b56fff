"""The correlation lookup alone: fused Triton kernel vs the grid_sample reference, correctness and speed.

One GPU call diagnoses the kernel: it checks the kernel against torchvision's ``CorrBlock.index_pyramid`` (fp32
and fp16 pyramids, radius 3 and 4), then times 12 lookups (one forward pass's worth) at RAFT Small's setting
(15 pairs, 512x512 input: 64x64 cells, 4 levels, radius 3, fp16 pyramid, output padded to 200 channels) for:
the eager grid_sample lookup, the same under torch.compile, the fused kernel per launch setting, and the fused
kernel inside torch.compile and a CUDA graph (as the default path runs it). Usage on a GPU machine::

    python benchmarks/bench_lookup.py
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_small
from torchvision.models.optical_flow.raft import CorrBlock

from _checkout import use_this_checkout  # noqa: E402  (same folder)

use_this_checkout()

from scope_optical_flow_tensorrt.core import corr_lookup as lookup_module  # noqa: E402
from scope_optical_flow_tensorrt.core.corr_lookup import corr_lookup  # noqa: E402
from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow  # noqa: E402

LOOKUPS = 12
FEATURES = 128  # RAFT Small's feature channels


def event_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured in a CUDA graph (after warm-up on a side stream), returned as its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def setup(pairs: int, cells: int, radius: int, dtype: torch.dtype, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A correlation pyramid of random features (as the model builds it) and coordinates around the grid."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    fmap1 = torch.randn(pairs, FEATURES, cells, cells, device="cuda", generator=generator)
    fmap2 = torch.randn(pairs, FEATURES, cells, cells, device="cuda", generator=generator)
    block = CorrBlock(num_levels=4, radius=radius)
    block.build_pyramid(fmap1.to(dtype), fmap2.to(dtype))
    ys, xs = torch.meshgrid(torch.arange(cells, device="cuda"), torch.arange(cells, device="cuda"), indexing="ij")
    coords = torch.stack([xs, ys]).float().expand(pairs, 2, cells, cells).clone()
    coords += 3 * torch.randn(coords.shape, device="cuda", generator=generator)
    return block.corr_pyramid, coords


def check(radius: int, dtype: torch.dtype) -> None:
    pyramid, coords = setup(3, 32, radius, dtype, seed=radius)
    coords[0, :, 0, :4] = torch.tensor([[0.0, 31.0, -2.5, 1e9], [0.0, 31.0, 40.0, -1e9]], device="cuda")
    block = CorrBlock(num_levels=4, radius=radius)
    block.corr_pyramid = [level.float() for level in pyramid]
    reference = block.index_pyramid(coords)  # fp32 over the same values
    fused = corr_lookup(pyramid, coords, radius).float()
    diff = (fused - reference).abs()
    scale = reference.abs().max().item()
    bound = 1e-4 if dtype == torch.float32 else 2e-3 * scale
    verdict = "OK" if diff.max().item() < bound else "MISMATCH"
    print(f"check radius {radius} {str(dtype):14s}: max diff {diff.max().item():.2e} mean {diff.mean().item():.2e} "
          f"(values up to {scale:.1f}; bound {bound:.1e}) {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_lookup.py needs a CUDA GPU.")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    for radius in (3, 4):
        for dtype in (torch.float32, torch.float16):
            check(radius, dtype)

    cells = args.size // 8
    pyramid, coords = setup(args.pairs, cells, 3, torch.float16)
    model = RaftSequenceFlow(raft_small(weights=None), compute_dtype=torch.float16, corr_dtype=torch.float16,
                             fast_update_block=True).cuda().eval()
    channels = model.update_block.corr_channels
    steps = [coords + 0.37 * step for step in range(LOOKUPS)]  # other positions per update, like the model

    def reference_one(position: torch.Tensor) -> torch.Tensor:
        features = model._lookup(pyramid, position).to(torch.float16)
        return F.pad(features, (0, 0, 0, 0, 0, channels - features.shape[1]))

    def fused_one(position: torch.Tensor) -> torch.Tensor:
        return corr_lookup(pyramid, position, 3, channels)

    reference_out, fused_out = reference_one(steps[0]), fused_one(steps[0])
    diff = (fused_out.float() - reference_out.float()).abs()
    print(f"fused vs grid_sample lookup at {args.pairs} pairs {args.size}x{args.size} (fp16): max {diff.max().item():.2e} "
          f"mean {diff.mean().item():.2e} (eager fp16 rounds its grid to fp16; the kernel does not)", flush=True)

    compiled_reference = torch.compile(reference_one, dynamic=False)
    compiled_fused = torch.compile(fused_one, dynamic=False)
    rows: list[tuple[str, Callable[[], object]]] = [
        ("grid_sample lookup + pad, eager", lambda: [reference_one(p) for p in steps]),
        ("grid_sample lookup + pad, torch.compile", lambda: [compiled_reference(p) for p in steps]),
        ("fused kernel, eager (custom op)", lambda: [fused_one(p) for p in steps]),
        ("fused kernel, torch.compile", lambda: [compiled_fused(p) for p in steps]),
    ]
    with torch.inference_mode():
        for name, fn in rows:
            print(f"{name:55s} {event_ms(fn):7.3f} ms per {LOOKUPS} lookups", flush=True)
        for name, fn in [("grid_sample lookup + pad, torch.compile, CUDA graph", rows[1][1]),
                         ("fused kernel, torch.compile, CUDA graph", rows[3][1])]:
            print(f"{name:55s} {event_ms(graphed(fn)):7.3f} ms per {LOOKUPS} lookups", flush=True)
        for block_pixels in (16, 32, 64):
            for num_warps in (2, 4, 8):
                def launch(bp: int = block_pixels, nw: int = num_warps) -> list[torch.Tensor]:
                    return [lookup_module._launch(p, pyramid, 3, channels, bp, nw) for p in steps]

                try:
                    same = torch.equal(launch()[0], fused_out)
                    ms = event_ms(graphed(launch))
                except Exception as error:  # one launch setting failing must not hide the others
                    print(f"fused BLOCK_PIXELS={block_pixels} num_warps={num_warps}: FAILED {error}", flush=True)
                    continue
                default = " (default)" if (block_pixels, num_warps) == (lookup_module.BLOCK_PIXELS,
                                                                         lookup_module.NUM_WARPS) else ""
                print(f"fused BLOCK_PIXELS={block_pixels:2d} num_warps={num_warps}, CUDA graph{default:10s}"
                      f"{ms:14.3f} ms per {LOOKUPS} lookups  same output: {same}", flush=True)


if __name__ == "__main__":
    main()
