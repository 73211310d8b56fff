"""Warm-up: run every window shape a stream will use before its first live call, so the one-off work (loading
or compiling kernels, CUDA-graph capture, TensorRT context set-up) happens while the host shows "loading".

A stream fed ``F`` frames per call makes model calls of ``F - 1`` pairs on its first call (no previous frame)
and ``F`` pairs on every later one, each split into windows of at most ``max_pairs`` pairs. Scope's 4-frame
chunks make windows of 3 and 4 pairs; the CLI's 16-frame chunks 15 and 16 (at 512x512, where ``max_pairs`` is
24). The PyTorch backend pads windows up to a few bucket sizes, so both of those are one compiled shape each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch

from .backends import FlowBackend
from .common.log import logger

# ``warmup=True`` means chunks of this many frames (the CLI's and ``bench``'s default).
DEFAULT_CHUNK_FRAMES = 16


def chunk_sizes(warmup: bool | int | Iterable[int]) -> list[int]:
    """The frames-per-call values a ``warmup=`` argument names (``True``: :data:`DEFAULT_CHUNK_FRAMES`)."""
    if warmup is True:
        return [DEFAULT_CHUNK_FRAMES]
    values = [warmup] if isinstance(warmup, int) and not isinstance(warmup, bool) else list(warmup or [])
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"warmup must be True, False, or frames per call (a positive integer or several), got {warmup!r}."
            )
    return values


def window_pair_counts(chunk_frames: Iterable[int], max_pairs: int) -> list[int]:
    """Pairs per model call of streams fed ``chunk_frames`` frames per call (first call and later ones)."""
    counts: set[int] = set()
    for frames in chunk_frames:
        for pairs in (frames - 1, frames):
            full, rest = divmod(pairs, max_pairs)
            if full:
                counts.add(max_pairs)
            if rest:
                counts.add(rest)
    return sorted(counts)


def needs_warm_up(backend: FlowBackend, device: torch.device) -> bool:
    """Whether ``backend``'s first call of a new shape does one-off work (compiling, graph capture, TensorRT
    context set-up): the backend says so, else assume it on CUDA (nothing to warm eagerly on the CPU)."""
    return bool(getattr(backend, "needs_warm_up", device.type == "cuda"))


def warm_up_backend(
    backend: FlowBackend,
    pair_counts: list[int],
    height: int,
    width: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Run each window shape once on ``backend``; ``progress(done, total)`` after each. Returns routes taken.

    Backends with one-off work per shape do it here (the PyTorch backend through its ``warm_up``, which also
    keeps compiled kernels as cache entries); a backend with nothing to warm (eager on the CPU) is skipped.
    """
    warm = getattr(backend, "warm_up", None)
    if not needs_warm_up(backend, device) or not pair_counts:
        return []
    logger.info("warming up optical flow (%s, %dx%d) for windows of %s frame pairs; a first compile for this GPU and "
                "size takes tens of seconds, later starts load it from the cache", backend.name, height, width,
                ", ".join(map(str, pair_counts)))
    started = time.perf_counter()
    routes: list[str] = []
    for done, pairs in enumerate(pair_counts, start=1):
        if warm is not None:
            routes.extend(warm([pairs]))
        else:
            backend.flow(torch.zeros(pairs + 1, 3, height, width, device=device))
            routes.append("run")
        if progress is not None:
            progress(done, len(pair_counts))
    logger.info("optical flow warm-up done in %.1f s (%s)", time.perf_counter() - started,
                ", ".join(sorted(set(routes))))
    return routes
