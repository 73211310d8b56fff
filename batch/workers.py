"""Who runs a batch's clips: this process (:class:`LocalWorkers`), one worker process per device
(:class:`.pool.WorkerPool`) or Ray actors (:class:`.ray_runner.RayWorkers`). All three are started before the
clips are planned, take clips as they come and hand back one result per clip."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from .clips import ClipJob, ClipResult, WriteSettings, run_clip
from .preprocessor import build_preprocessor, load_model
from .startup import timeline


class Workers(Protocol):
    """Workers started ahead of their clips (a context manager: leaving it stops them)."""

    labels: list[str]

    def run(self, jobs: list[ClipJob], on_result: Callable[[ClipResult], None],
            on_frames: Callable[[int], None]) -> None: ...

    def ready_seconds(self) -> dict[str, float]: ...

    def __enter__(self) -> Workers: ...

    def __exit__(self, *exc_info: Any) -> None: ...


class LocalWorkers:
    """This process as the one worker: its preprocessor is built now (a bad option fails here, before any clip)
    and loaded now too with ``load_ahead`` (a batch: a model that does not load stops it before any output is
    made), else with the first clip, while that clip decodes. The clips run one after the other, in the order
    given; ``on_start`` hears each clip's frame count as it starts. Leaving the context lets the model go; a
    compile still running in its child process finishes and keeps its kernels for the next run, as in any host."""

    def __init__(self, model: dict[str, Any], write: WriteSettings, verbose: bool = False,
                 on_start: Callable[[int | None], None] | None = None, load_ahead: bool = False) -> None:
        self.flow = build_preprocessor(**model)
        timeline["preprocessor_built"] = time.time()
        if load_ahead:
            load_model(self.flow, warmup=write.chunk)
        self.write, self.verbose, self.on_start = write, verbose, on_start
        self.labels = [str(self.flow.device)]  # where the clips run: the CPU after a fallback, not the cuda asked for

    def run(self, jobs: list[ClipJob], on_result: Callable[[ClipResult], None],
            on_frames: Callable[[int], None]) -> None:
        worker = f"{self.flow.device} pid {os.getpid()}"
        for job in jobs:
            on_result(run_clip(self.flow, job, self.write, on_frames, self.on_start, verbose=self.verbose,
                               worker=worker))

    def ready_seconds(self) -> dict[str, float]:
        """Empty: this process loads the model with its first clip."""
        return {}

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flow = None


def start_workers(model: dict[str, Any], write: WriteSettings, devices: list[str] | None, ray_address: str | None,
                  clips: int, verbose: bool = False, on_start: Callable[[int | None], None] | None = None,
                  load_ahead: bool = True) -> Workers:
    """This process (no ``devices``, no ``ray_address``), one process per device, or the Ray cluster at
    ``ray_address``: at most ``clips`` workers (no idle worker loads a model for nothing)."""
    if ray_address is not None:
        from .ray_runner import RayWorkers

        return RayWorkers(ray_address, write, model, clips, verbose=verbose)
    if devices is not None:
        from .pool import WorkerPool

        return WorkerPool(devices[:clips], write, model, verbose=verbose)
    return LocalWorkers(model, write, verbose, on_start, load_ahead)
