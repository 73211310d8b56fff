"""A worker thread that compiles window shapes while the caller goes on serving them uncompiled.

Loading compiled kernels takes seconds even from a warm cache (importing torch's compiler stack, Dynamo tracing
the model again, loading Inductor's cached graphs; benchmarks/NOTES.md), and a first compile tens of seconds.
The PyTorch backend therefore serves a new shape at once from the uncompiled model in a CUDA graph and hands the
shape to this worker, which compiles (or loads) it, captures its graph and then switches the shape over.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import torch

from ..log import logger

# Dynamo compiles one frame at a time per process anyway; workers of several backends (e.g. two sizes in one
# ComfyUI) take turns instead of interleaving their compiles and CUDA-graph captures.
_ONE_AT_A_TIME = threading.Lock()


class BackgroundCompiler:
    """Runs ``task(pairs)`` once per requested window shape, in request order, on one worker thread.

    The thread is not a daemon: a process that ends while a compile is running waits for it, so the compiled
    kernels are still saved as a cache entry for the next process (a daemon thread could also be stopped
    inside a CUDA call at exit).
    """

    def __init__(self, task: Callable[[int], None], device: torch.device) -> None:
        self._task = task
        self._device = device
        self._requested: set[int] = set()
        self._queue: deque[int] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Whether shapes are waiting or being compiled."""
        with self._changed:
            return self._thread is not None

    def requested(self, pairs: int) -> bool:
        """Whether ``pairs`` was asked for (waiting, being compiled or done)."""
        with self._changed:
            return pairs in self._requested

    def request(self, pairs: int) -> None:
        """Compile ``pairs`` (once; later requests of the same shape do nothing)."""
        with self._changed:
            if pairs in self._requested:
                return
            self._requested.add(pairs)
            self._queue.append(pairs)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="optical-flow-compile", daemon=False)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every requested shape is done (or ``timeout`` seconds); whether it finished."""
        with self._changed:
            return self._changed.wait_for(lambda: self._thread is None, timeout)

    def _run(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        while True:
            with self._changed:
                if not self._queue:
                    self._thread = None
                    self._changed.notify_all()
                    return
                pairs = self._queue.popleft()
            try:
                with _ONE_AT_A_TIME:
                    self._task(pairs)
            except BaseException as error:  # the task handles its failures; this only keeps the worker honest
                logger.error("background compile of windows of %d pairs stopped: %s: %s", pairs,
                             type(error).__name__, error)
