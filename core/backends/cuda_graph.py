"""CUDA-graph replay of a fixed-shape module: one capture per input shape, replays after that.

RAFT's forward is some 300 small kernels per call; launching them from Python costs more than running them
for short chunks. A captured graph launches them all at once. :class:`RaftSequenceFlow` creates nothing on
the CPU in its forward pass, which is what makes it capturable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import Tensor

from ..common.log import log_once, logger

WARMUP_RUNS = 2
_CAPTURING = threading.Lock()


class CudaGraphRunner:
    """Calls ``module(x)`` through a CUDA graph captured for ``x``'s shape (all graphs share one memory pool).

    Results are copied out of the graph's static buffers, so they stay valid after later calls.
    """

    def __init__(self, module: Callable[[Tensor], Tensor], device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}.")
        self.module = module
        self.device = device
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[tuple[int, ...], torch.dtype], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        self._failed: set[tuple[tuple[int, ...], torch.dtype]] = set()

    @property
    def captured_shapes(self) -> list[tuple[int, ...]]:
        return [shape for shape, _ in self._graphs]

    def retry_failed(self) -> None:
        """Let shapes whose capture was interrupted try again on their next call."""
        self._failed.clear()

    def drop(self, rows: int) -> None:
        """Forget the graphs captured for inputs of ``rows`` rows (the next such call captures anew)."""
        for key in [key for key in self._graphs if key[0][0] == rows]:
            del self._graphs[key]

    def __call__(self, inputs: Tensor) -> Tensor:
        key = (tuple(inputs.shape), inputs.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            if key in self._failed:  # until retry_failed(): a capture here could again break another thread's work
                return self.module(inputs)
            try:
                entry = self._capture(inputs)
            except RuntimeError as error:
                # Another thread of the process synchronized the whole device (or the stream) during the capture,
                # which CUDA forbids while any stream captures. Serve this shape without a graph for now.
                self._failed.add(key)
                log_once("cuda-graph-capture-interrupted",
                         f"a CUDA graph capture was interrupted ({str(error).splitlines()[0][:200]}), probably by "
                         "another thread synchronizing the GPU; this shape runs without a graph until the next "
                         "warm-up or wait_for_compiled().")
                torch.cuda.synchronize(self.device)  # let the invalidated capture's work settle
                return self.module(inputs)
            self._graphs[key] = entry
        graph, static_input, static_output = entry
        static_input.copy_(inputs)
        graph.replay()
        return static_output.clone()

    def _capture(self, inputs: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
        logger.info("capturing a CUDA graph for input shape %s", list(inputs.shape))
        static_input = inputs.clone()
        side_stream = torch.cuda.Stream(self.device)
        side_stream.wait_stream(torch.cuda.current_stream(self.device))
        # warm-up outside the graph: cuDNN picks algorithms, allocations settle
        with torch.cuda.device(self.device), torch.cuda.stream(side_stream):
            for _ in range(WARMUP_RUNS):
                self.module(static_input)
        torch.cuda.current_stream(self.device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        # Captures run only in the caller's own thread (a first call of a shape, a warm-up, a waiting switch to
        # compiled kernels). thread_local: what other threads of the host do on their own streams (allocations,
        # launches, stream waits) does not break the capture. A device-wide synchronize from another thread during
        # these milliseconds still would: CUDA has no capture mode that allows it.
        with _CAPTURING, torch.cuda.device(self.device), torch.cuda.graph(
            graph, pool=self._pool, capture_error_mode="thread_local"
        ):
            static_output = self.module(static_input)
        graph.replay()  # the first launch uploads the graph to the device: here, not in the caller's next call
        return graph, static_input, static_output
