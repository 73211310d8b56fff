"""The correlation lookup alone: fused Triton kernel vs the grid_sample reference, correctness and speed.

One GPU call diagnoses the kernel: it checks the kernel against torchvision's ``CorrBlock.index_pyramid`` (fp32
and fp16 pyramids, radius 3 and 4), then times 12 lookups (one forward pass's worth) at RAFT Small's setting
(15 pairs, 512x512 input: 64x64 cells, 4 levels, radius 3, fp16 pyramid, output padded to 200 channels) for:
the grid_sample lookup and the kernel, eager, under torch.compile and in a CUDA graph (as the default path runs
it), with and without the 1x1 convolution that reads the result (which shows any layout conversion
torch.compile adds between them), and the kernel per launch setting and output layout. Usage on a GPU
machine::

    python benchmarks/bench_lookup.py
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _checkout import use_this_checkout  # noqa: E402  (same folder)
from _timing import event_ms, graphed  # noqa: E402  (same folder)
from torchvision.models.optical_flow import raft_small
from torchvision.models.optical_flow.raft import CorrBlock

use_this_checkout()

from scope_optical_flow_tensorrt.core.model import corr_lookup as lookup_module  # noqa: E402
from scope_optical_flow_tensorrt.core.model.corr_lookup import corr_lookup  # noqa: E402
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow  # noqa: E402

LOOKUPS = 12
FEATURES = 128  # RAFT Small's feature channels


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

    def fused_one_channels_last(position: torch.Tensor) -> torch.Tensor:
        return corr_lookup(pyramid, position, 3, channels, channels_last=True)

    conv = model.update_block.convcorr1  # the layer that reads the lookup: 1x1, 200 -> 96 channels

    def with_conv(lookup: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda position: F.relu(conv(lookup(position)))

    reference_out, fused_out = reference_one(steps[0]), fused_one(steps[0])
    fused_last = fused_one_channels_last(steps[0])
    print(f"channels-last output equals the contiguous one: {torch.equal(fused_last, fused_out)} "
          f"(channels-last strides: {fused_last.is_contiguous(memory_format=torch.channels_last)})", flush=True)
    diff = (fused_out.float() - reference_out.float()).abs()
    print(f"fused vs grid_sample lookup at {args.pairs} pairs {args.size}x{args.size} (fp16): max {diff.max().item():.2e} "
          f"mean {diff.mean().item():.2e} (eager fp16 rounds its grid to fp16; the kernel does not)", flush=True)

    def each(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        return lambda: [fn(p) for p in steps]

    compiled = {name: torch.compile(fn, dynamic=False) for name, fn in [
        ("grid_sample", reference_one), ("fused", fused_one), ("fused channels-last", fused_one_channels_last),
        ("grid_sample + conv", with_conv(reference_one)), ("fused + conv", with_conv(fused_one)),
        ("fused channels-last + conv", with_conv(fused_one_channels_last))]}
    rows: list[tuple[str, Callable[[], object], bool]] = [  # (name, 12 lookups, also in a CUDA graph)
        ("grid_sample lookup + pad, eager", each(reference_one), False),
        ("fused kernel, eager (custom op)", each(fused_one), False),
        ("grid_sample lookup + pad, torch.compile", each(compiled["grid_sample"]), True),
        ("fused kernel, torch.compile", each(compiled["fused"]), True),
        ("fused kernel channels-last, torch.compile", each(compiled["fused channels-last"]), True),
        # with the convolution that reads it: shows the layout conversions torch.compile adds, if any
        ("grid_sample lookup + 1x1 conv + relu, torch.compile", each(compiled["grid_sample + conv"]), True),
        ("fused + 1x1 conv + relu, torch.compile", each(compiled["fused + conv"]), True),
        ("fused channels-last + 1x1 conv + relu, torch.compile", each(compiled["fused channels-last + conv"]), True),
    ]
    with torch.inference_mode():
        for name, fn, graph in rows:
            line = f"{name:55s} {event_ms(fn):7.3f} ms per {LOOKUPS} lookups"
            if graph:
                line += f"; in a CUDA graph {event_ms(graphed(fn)):7.3f} ms"
            print(line, flush=True)
        for channels_last in (False, True):
            for block_pixels in (16, 32, 64):
                for num_warps in (2, 4, 8):
                    def launch(bp: int = block_pixels, nw: int = num_warps,
                               cl: bool = channels_last) -> list[torch.Tensor]:
                        return [lookup_module._launch(p, pyramid, 3, channels, cl, block_pixels=bp, num_warps=nw)
                                for p in steps]

                    layout = "channels-last" if channels_last else "contiguous"
                    setting = f"fused {layout:13s} BLOCK_PIXELS={block_pixels:2d} num_warps={num_warps}"
                    try:
                        same = torch.equal(launch()[0], fused_out)
                        ms = event_ms(graphed(launch))
                    except Exception as error:  # one launch setting failing must not hide the others
                        print(f"{setting}: FAILED {error}", flush=True)
                        continue
                    default = " (default)" if (block_pixels, num_warps) == (lookup_module.BLOCK_PIXELS,
                                                                             lookup_module.NUM_WARPS) else ""
                    print(f"{setting}, CUDA graph{default:10s} {ms:8.3f} ms per {LOOKUPS} lookups  same output: {same}",
                          flush=True)


if __name__ == "__main__":
    main()
