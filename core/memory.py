"""Sizes checked against the device's memory before any of it is taken.

A call's largest tensors follow from its sizes before it makes them: the frames as float32 on the compute device,
the frames at the compute size, one frame pair's correlation volume (RAFT compares every 8x8 cell of one frame
with every cell of the next: ``(h/8 * w/8)^2`` values, its largest tensor by far at large sizes) and the output
maps. What a call certainly needs at once (a lower bound, so a call that fits is never refused) is checked against
the memory the device has free, so a size that cannot fit fails at once, with the size and the fix, before any
memory is taken or any stream state moves: not in the allocator, or after minutes of swapping.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .common.vocabulary import words

FLOAT_BYTES = 4
# Calls that certainly need less than this are not checked (no memory query on a live call at usual sizes).
CHECK_FROM_BYTES = 256 << 20
SUGGESTED_SIZE = (512, 512)


class TooLargeForMemory(ValueError):
    """A size whose tensors cannot fit the device's free memory (a ``ValueError``, like other bad sizes)."""


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device``: on CUDA the driver's free memory plus what torch's caching
    allocator holds unused; on the CPU the host's available memory (``MemAvailable``). ``None``: unknown."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
    if device.type == "cpu":
        return _host_available()
    return None


def correlation_bytes(height: int, width: int, element_bytes: int = FLOAT_BYTES) -> int:
    """One frame pair's correlation volume at compute size ``height`` x ``width`` (pyramid level 0 only)."""
    cells = (height // 8) * (width // 8)
    return cells * cells * element_bytes


def check_compute_size_fits(device: torch.device, size: tuple[int, int], element_bytes: int, native: bool) -> None:
    """Raise :class:`TooLargeForMemory` when one frame pair at compute ``size`` cannot fit ``device``."""
    needed = correlation_bytes(*size, element_bytes)
    free = _free_if_needed(device, needed)
    if free is None or needed <= free:
        return
    height, width = size
    where = f"the input's own size, {width}x{height}" if native else f"{width}x{height}"
    raise TooLargeForMemory(words(
        f"computing flow at {where} (width x height) needs at least {format_bytes(needed)} for one frame pair's "
        f"correlation volume (RAFT compares every 8x8 cell with every other), but {_describe(device)} has "
        f"{format_bytes(free)} free.",
        "Compute at a smaller size, e.g. {size=suggested}." if not native else
        "Compute at a fixed size instead, e.g. {size=suggested}, or pass smaller frames.",
        suggested=SUGGESTED_SIZE,
    ))


def check_call_fits(
    device: torch.device,
    *,
    frames: int,
    input_size: tuple[int, int],
    compute_size: tuple[int, int],
    output_size: tuple[int, int] | None,
    copies_input: bool,
    element_bytes: int,
    native: bool,
) -> None:
    """Raise :class:`TooLargeForMemory` when a call of ``frames`` frames (all videos of a batch) cannot fit
    ``device``: the compute size alone (:func:`check_compute_size_fits`), or the frames with the output maps.

    ``copies_input``: whether the frames are copied to float32 on the device (not for float32 frames already there);
    ``output_size``: the maps' size when the call makes them (``None``: raw flow only)."""
    check_compute_size_fits(device, compute_size, element_bytes, native)
    input_pixels = input_size[0] * input_size[1] if copies_input else 0
    compute_pixels = compute_size[0] * compute_size[1] if compute_size != input_size or not copies_input else 0
    computing = frames * 3 * (input_pixels + compute_pixels) * FLOAT_BYTES + correlation_bytes(*compute_size,
                                                                                              element_bytes)
    output = 2 * frames * 3 * output_size[0] * output_size[1] * FLOAT_BYTES if output_size is not None else 0
    drawing = frames * 2 * compute_size[0] * compute_size[1] * FLOAT_BYTES + output
    needed = max(computing, drawing)
    free = _free_if_needed(device, needed)
    if free is None or needed <= free:
        return
    height, width = input_size
    maps = ""
    if output_size is not None and output_size != input_size:
        maps = f" with output maps of {output_size[1]}x{output_size[0]}"
    fixes = "Pass fewer or smaller frames per call (the stream continues across calls: a video split in chunks "
    fixes += "gives the same maps)"
    if maps:
        fixes += ", or ask for a smaller output size (a Scope context's target_height x target_width)"
    raise TooLargeForMemory(words(
        f"{frames} frame(s) of {width}x{height} (width x height){maps} need at least {format_bytes(needed)} in one "
        f"call, but {_describe(device)} has {format_bytes(free)} free.",
        fixes + ".",
    ))


def check_maps_fit(device: torch.device, *, frames: int, flow_size: tuple[int, int],
                   output_size: tuple[int, int]) -> None:
    """Raise :class:`TooLargeForMemory` when ``frames`` flow maps of ``output_size``, drawn from flow of
    ``flow_size``, cannot fit ``device``."""
    needed = frames * (2 * flow_size[0] * flow_size[1] + 2 * 3 * output_size[0] * output_size[1]) * FLOAT_BYTES
    free = _free_if_needed(device, needed)
    if free is None or needed <= free:
        return
    raise TooLargeForMemory(
        f"{frames} flow map(s) of {output_size[1]}x{output_size[0]} (width x height) need at least "
        f"{format_bytes(needed)}, but {_describe(device)} has {format_bytes(free)} free. Ask for a smaller size, or "
        "draw fewer frames at a time."
    )


def format_bytes(count: float) -> str:
    """``48000000000000`` -> ``"48.0 TB"`` (decimal units)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _free_if_needed(device: torch.device, needed: int) -> int | None:
    """The free memory of ``device`` when ``needed`` is worth checking, else ``None``."""
    if needed < CHECK_FROM_BYTES:
        return None
    return available_bytes(device)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "this machine's memory" if device.type == "cpu" else str(device)


def _host_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
