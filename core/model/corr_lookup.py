"""Fused correlation lookup for the CUDA path: one Triton kernel instead of RAFT's grid_sample lookup.

RAFT samples, at every update, a (2r+1) x (2r+1) window around each pixel's current match from each level of
the all-pairs correlation pyramid (bilinear, zero outside). torchvision does it with one ``grid_sample`` per
level plus the grid arithmetic, a concatenation and (for the padded update block) a channel pad.
:func:`corr_lookup` does all of it in one kernel that writes the update block's input directly: ``[pairs,
out_channels, h, w]`` (contiguous), the samples in torchvision's channel order, then zeros up to
``out_channels``. Same numbers as ``torchvision.models.optical_flow.raft.CorrBlock.index_pyramid``
(``grid_sample`` bilinear, ``align_corners=True``, zero padding; centroids halved per level), except that
sampling positions are computed in fp32 where the eager fp16 path rounds its normalized grid to fp16.

It is a ``torch.library`` custom op (``scope_optical_flow::corr_lookup``) so that torch.compile keeps it as
one opaque call and CUDA graphs capture its launch. It runs on CUDA with Triton; on the CPU only under
Triton's interpreter (``TRITON_INTERPRET=1``, used by the tests). The eager ``grid_sample`` lookup in
:class:`~.raft.RaftSequenceFlow` stays the reference, the CPU path and what is exported to ONNX.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

OP_NAMESPACE = "scope_optical_flow"
MAX_LEVELS = 4
# Launch configuration (no autotuning: a benchmark inside CUDA-graph capture would break it);
# The alternatives were timed by a one-off script (benchmarks/NOTES.md, "Fused correlation lookup").
BLOCK_PIXELS = 32
NUM_WARPS = 4


def triton_available() -> bool:
    """Whether Triton can be imported (it ships with torch's CUDA wheels on Linux)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install raising something else
        return False
    return True


def fused_lookup_available(device: torch.device) -> bool:
    """The fused lookup runs on CUDA devices where Triton is importable."""
    return device.type == "cuda" and torch.cuda.is_available() and triton_available()


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def lookup_channels(num_levels: int, radius: int) -> int:
    """Channels of the looked-up correlation features before padding: levels x (2r+1)^2."""
    return num_levels * (2 * radius + 1) ** 2


def _check(coords: Tensor, levels: Sequence[Tensor], radius: int, out_channels: int) -> None:
    if coords.dim() != 4 or coords.shape[1] != 2:
        raise ValueError(f"corr_lookup: coords must be [pairs, 2, h, w] (x, y), got {list(coords.shape)}.")
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"corr_lookup: 1 to {MAX_LEVELS} pyramid levels are supported, got {len(levels)}.")
    if radius < 0:
        raise ValueError(f"corr_lookup: radius must be >= 0, got {radius}.")
    needed = lookup_channels(len(levels), radius)
    if out_channels < needed:
        raise ValueError(f"corr_lookup: out_channels {out_channels} < {needed} ({len(levels)} levels, radius {radius}).")
    pairs, _, h, w = coords.shape
    for index, level in enumerate(levels):
        if level.dim() != 4 or level.shape[0] != pairs * h * w or level.shape[1] != 1:
            raise ValueError(f"corr_lookup: pyramid level {index} must be [pairs*h*w={pairs * h * w}, 1, H, W], "
                             f"got {list(level.shape)}.")
        if level.device != coords.device or level.dtype != levels[0].dtype:
            raise ValueError("corr_lookup: all pyramid levels must share one device and dtype with coords' device.")


def _launch(coords: Tensor, levels: Sequence[Tensor], radius: int, out_channels: int, channels_last: bool = False,
            block_pixels: int = BLOCK_PIXELS, num_warps: int = NUM_WARPS) -> Tensor:
    """Run the kernel (no custom-op wrapper): for the op below and for benchmarks of launch settings."""
    _check(coords, levels, radius, out_channels)
    from ._corr_lookup_triton import corr_lookup_kernel

    pairs, _, h, w = coords.shape
    if coords.stride(2) != w * coords.stride(3):  # pixels must be addressable as one flat index
        coords = coords.contiguous()
    levels = [level.contiguous() for level in levels]
    out = _empty_output(coords, levels, out_channels, channels_last)
    dims: list[int] = []
    for index in range(MAX_LEVELS):
        dims += list(levels[index].shape[-2:]) if index < len(levels) else [0, 0]
    pointers = [levels[index] if index < len(levels) else levels[0] for index in range(MAX_LEVELS)]
    padding = out_channels - lookup_channels(len(levels), radius)
    grid = (-(-(h * w) // block_pixels), pairs)
    with torch.cuda.device(coords.device) if coords.is_cuda else contextlib.nullcontext():
        corr_lookup_kernel[grid](
            coords, out, *pointers, *dims,
            h * w, coords.stride(0), coords.stride(1), coords.stride(3),
            out.stride(0), out.stride(1), out.stride(3), out_channels,
            NUM_LEVELS=len(levels), RADIUS=radius, WINDOW=_next_power_of_2((2 * radius + 1) ** 2),
            PAD_BLOCK=_next_power_of_2(padding) if padding > 0 else 0, BLOCK_PIXELS=block_pixels,
            X_MAJOR=channels_last, num_warps=num_warps,
        )
    return out


def _empty_output(coords: Tensor, levels: Sequence[Tensor], out_channels: int, channels_last: bool) -> Tensor:
    pairs, _, h, w = coords.shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((pairs, out_channels, h, w), device=coords.device, dtype=levels[0].dtype,
                       memory_format=layout)


def _corr_lookup_impl(coords: Tensor, levels: list[Tensor], radius: int, out_channels: int,
                      channels_last: bool) -> Tensor:
    return _launch(coords, levels, radius, out_channels, channels_last)


def _corr_lookup_fake(coords: Tensor, levels: list[Tensor], radius: int, out_channels: int,
                      channels_last: bool) -> Tensor:
    _check(coords, levels, radius, out_channels)
    return _empty_output(coords, levels, out_channels, channels_last)


def _define_op() -> Callable[..., Tensor]:
    """The custom op, defined once per process: this module may be imported twice under two package names
    (ComfyUI imports the repository folder as a package of its own), and an op name can be defined only once."""
    try:
        return getattr(torch.ops, OP_NAMESPACE).corr_lookup
    except (AttributeError, RuntimeError):
        pass
    op = torch.library.custom_op(f"{OP_NAMESPACE}::corr_lookup", _corr_lookup_impl, mutates_args=())
    op.register_fake(_corr_lookup_fake)
    return op


_corr_lookup_op = _define_op()


def corr_lookup(pyramid: Sequence[Tensor], coords: Tensor, radius: int, out_channels: int | None = None,
                channels_last: bool = False) -> Tensor:
    """Correlation features ``[pairs, out_channels, h, w]`` in the pyramid's dtype.

    ``pyramid``: levels ``[pairs*h*w, 1, H_l, W_l]`` (as built by torchvision's ``CorrBlock``); ``coords``:
    ``[pairs, 2, h, w]`` absolute (x, y) positions at level 0, float32. Channels ``l*(2r+1)^2 + i*(2r+1) + j``
    hold level l sampled at ``(x / 2^l + i - r, y / 2^l + j - r)``; channels past ``levels*(2r+1)^2`` (up to
    ``out_channels``, default none) are zero. The result is contiguous, or channels-last with ``channels_last``
    (the layout torch.compile gives convolution inputs on CUDA).
    """
    levels = list(pyramid)
    channels = lookup_channels(len(levels), radius) if out_channels is None else out_channels
    return _corr_lookup_op(coords, levels, radius, channels, channels_last)
