"""Moving chunks between host and device for the clip pipeline: pinned host buffers, device-to-host copies on a
copy stream of their own, and GPU busy time. torch is imported only when these are used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# Chunks in flight between two stages: enough to keep each stage busy while its neighbour works on the next,
# few enough that host memory stays a handful of chunks whatever the clip's length.
QUEUE_DEPTH = 2


def host_allocator(device: Any) -> Callable[[tuple[int, ...]], np.ndarray]:
    """``allocate(shape)`` for decoded uint8 chunks: pinned (page-locked) memory when computing on CUDA, so the
    copy to the GPU is asynchronous; plain numpy memory otherwise."""
    if device.type != "cuda":
        return lambda shape: np.empty(shape, dtype=np.uint8)

    import torch

    def allocate(shape: tuple[int, ...]) -> np.ndarray:
        # torch's caching host allocator recycles the pinned blocks, so this costs no cudaHostAlloc per chunk.
        return torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()

    return allocate


class HostChunk:
    """One chunk's outputs in host memory (``"images"``, ``"flow"``), readable once :meth:`array` returns."""

    def __init__(
        self, arrays: dict[str, np.ndarray], size: tuple[int, int], ready: Any = None, keep: Any = None
    ) -> None:
        self._arrays = arrays
        self.height, self.width = size  # of the frames (outputs at the input size)
        self._ready = ready  # a CUDA event recorded after the copies, or None when nothing is in flight
        self._keep = keep  # buffers that must outlive the copies (the pinned input chunk)

    def array(self, name: str) -> np.ndarray:
        if self._ready is not None:
            self._ready.synchronize()
        return self._arrays[name]


class DeviceToHost:
    """Copies a chunk's outputs to host memory without stopping the compute stream: on CUDA the copies run on a
    stream of their own, into pinned buffers, after the work that made them; the writer waits on an event."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def copy(self, outputs: dict[str, Any], size: tuple[int, int], keep: Any = None) -> HostChunk:
        import torch

        if self._stream is None:
            return HostChunk({name: tensor.numpy() for name, tensor in outputs.items()}, size, keep=keep)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        arrays: dict[str, np.ndarray] = {}
        with torch.cuda.stream(self._stream):
            for name, tensor in outputs.items():
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host.copy_(tensor, non_blocking=True)
                tensor.record_stream(self._stream)  # the device memory stays ours until the copy is done
                arrays[name] = host.numpy()
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return HostChunk(arrays, size, ready, keep)


class GpuTimer:
    """Context manager summing the GPU time of the work enqueued inside it (CUDA events; read at the end)."""

    def __init__(self, device: Any) -> None:
        self.enabled = device.type == "cuda"
        self._spans: list[tuple[Any, Any]] = []
        self._device = device

    def __enter__(self) -> GpuTimer:
        if self.enabled:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(self._device))
            self._spans.append((start, None))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self._device))
            self._spans[-1] = (self._spans[-1][0], end)

    def seconds(self) -> float:
        """GPU seconds of every span (waits for the last one to finish)."""
        total = 0.0
        for start, end in self._spans:
            if end is not None:
                end.synchronize()
                total += start.elapsed_time(end) / 1000.0
        return total
