"""Clips on several local devices: a ``ProcessPoolExecutor`` (spawn) with one worker process per device.

:class:`WorkerPool` starts its workers as soon as it is made, so they spawn, import torch, load and warm up
the model while the caller is still planning (probing the clips, ordering them). Each worker takes one device
from a queue in its initializer, pins itself to it and builds one preprocessor (loaded once, reused for every
clip it gets). Clips are submitted as separate tasks, so a free worker takes the next one in submission order
(dynamic distribution); a clip's temporal state lives in the one worker that runs it. Workers report when
they are ready, and frames done, through queues.

Workers die with their parent, however it ends (SIGKILL included): each watches a pipe whose only writer is the
parent (:func:`exit_with_parent`), so none is left behind holding a model in GPU memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any

from .clips import ClipJob, ClipResult, WriteSettings, run_job
from .errors import EXIT_FAILURE
from .preprocessor import worker_preprocessor

PACKAGE_LOGGER = "scope_optical_flow_tensorrt"
_worker: dict[str, Any] = {}


class WorkerPool:
    """One spawn worker process per entry of ``devices``, started now (a context manager: leaving it stops
    them). ``write`` is how every clip will be read and written; the workers warm up at its chunk size. They log as
    this process does (the package logger's level and format); ``verbose`` keeps tracebacks of failed clips."""

    def __init__(self, devices: list[str], write: WriteSettings, model: dict[str, Any], verbose: bool = False) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked; spawn also behaves alike everywhere
        self.devices = list(devices)
        self.labels = self.devices
        self.started_at = time.time()
        self.ready_at: dict[str, float] = {}  # worker ("DEVICE pid N") -> time.time() when it was loaded and warm
        self._device_queue = context.Queue()
        for device in self.devices:
            self._device_queue.put(device)
        self._frames_queue = context.Queue()
        self._ready_queue = context.Queue()
        self._stop = context.Event()  # set when the run ends early: queued clips return at once, running ones abort
        # The workers get the reading end; only this process holds the writing end, which closes when it dies.
        self._lifeline, self._parent_end = context.Pipe(duplex=False)
        threads = threads_per_worker(len(self.devices))
        if threads is not None and len(self.devices) > 1 and write.codec_threads is None:
            # Each worker's video decoder and encoder get its share of the cores: with FFmpeg's default every one
            # of them starts a thread per core, and the workers' threads crowd each other out.
            write = dataclasses.replace(write, codec_threads=threads)
        self.write = write
        self._executor = ProcessPoolExecutor(
            max_workers=len(self.devices),
            mp_context=context,
            initializer=_init_worker,
            initargs=(self._lifeline, self._device_queue, self._frames_queue, self._ready_queue, self._stop, model,
                      write.chunk, threads, verbose, logging_setup()),
        )
        # The executor spawns a process when a task is submitted and no worker is idle: one empty task per
        # device starts every worker now, not when the first clips are submitted.
        for _ in self.devices:
            self._executor.submit(_started)

    def run(self, jobs: list[ClipJob], on_result: Callable[[ClipResult], None],
            on_frames: Callable[[int], None]) -> None:
        """Run ``jobs``, handed to free workers in this order; ``on_result`` gets each clip's result as it ends
        (an exception it raises cancels the clips not started yet and is re-raised)."""
        futures: dict[Future[ClipResult], ClipJob] = {
            self._executor.submit(_run_clip, job, self.write): job for job in jobs
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            self._drain(on_frames)
            for future in finished:
                on_result(_result(future, futures[future]))
        self._drain(on_frames)

    def ready_seconds(self) -> dict[str, float]:
        """Seconds from the pool's start until each worker that reported so far was loaded and warmed up."""
        self._drain(lambda frames: None)
        return {worker: at - self.started_at for worker, at in sorted(self.ready_at.items())}

    def _drain(self, on_frames: Callable[[int], None]) -> None:
        for worker, at in _drained(self._ready_queue):
            self.ready_at[worker] = at
        for count in _drained(self._frames_queue):
            on_frames(count)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if error is not None:
                self._stop.set()
                self._executor.shutdown(wait=False, cancel_futures=True)
        finally:
            self._stop.set()  # workers still starting skip loading the model
            self._executor.shutdown(wait=True)
            self._drain(lambda frames: None)
            for channel in (self._frames_queue, self._ready_queue, self._device_queue):
                channel.close()
            self._parent_end.close()  # the workers have exited: nobody watches it any more
            self._lifeline.close()


def logging_setup() -> tuple[int, str | None]:
    """This process's package logger: its level and its first handler's format (``None``: no handler)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    formats = [getattr(handler.formatter, "_fmt", None) for handler in logger.handlers]
    return logger.level, next((text for text in formats if text), None)


def log_as(level: int, format: str | None) -> None:
    """A worker logs like its parent: the package logger's level, and a handler on stderr with its format."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(level)
    if format is not None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(format))
        logger.addHandler(handler)


def threads_per_worker(workers: int) -> int | None:
    """CPU threads per worker so the workers together use the machine's cores once (``None``: keep torch's
    default, because ``OMP_NUM_THREADS`` was set by the user)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def _result(future: Future[ClipResult], job: ClipJob) -> ClipResult:
    try:
        return future.result()
    except BrokenProcessPool as error:  # a worker died (killed, out of memory, crashed in native code)
        return ClipResult(job, error=f"a worker process died ({error}); its clips were not finished",
                          exit_code=EXIT_FAILURE)
    except Exception as error:  # e.g. a result that could not be sent back
        return ClipResult(job, error=f"{type(error).__name__}: {error}", exit_code=EXIT_FAILURE)


def _drained(channel: Any) -> list[Any]:
    """Everything waiting in a worker queue now (nothing once it is closed)."""
    items = []
    while True:
        try:
            items.append(channel.get_nowait())
        except queue.Empty:
            return items
        except (OSError, ValueError, EOFError):  # queue closed as the pool shut down
            return items


def _started() -> None:
    """The empty task that makes the executor start a worker (see :class:`WorkerPool`)."""


def exit_with_parent(lifeline: Any) -> None:
    """(In a worker.) End this process at once when the parent is gone: ``lifeline`` is the reading end of a pipe
    whose only writer is the parent, so it reports the end of the stream when the parent exits or is killed."""

    def watch() -> None:
        try:
            lifeline.recv_bytes()  # the parent never writes: this returns only when its end closes
        except (EOFError, OSError):
            pass
        os._exit(EXIT_FAILURE)

    threading.Thread(target=watch, daemon=True, name="optical-flow-parent-watch").start()


def _init_worker(lifeline: Any, device_queue: Any, frames_queue: Any, ready_queue: Any, stop: Any,
                 model: dict[str, Any], warmup: int, threads: int | None, verbose: bool,
                 log: tuple[int, str | None]) -> None:
    """Worker initializer: watch the parent (:func:`exit_with_parent`), take a device, pin to it, log as the
    parent does, build, load and warm up this worker's preprocessor (at ``warmup`` frames per call, the clips'
    chunk size), then report ready."""
    exit_with_parent(lifeline)
    device = device_queue.get()
    # Before torch is imported (and CUDA initialized) here: the worker sees only its GPU, as cuda:0.
    visible, local_device = worker_visible_devices(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None and "torch" not in sys.modules:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    else:
        local_device = device

    import torch

    log_as(*log)
    if threads is not None:
        torch.set_num_threads(threads)
    if local_device.startswith("cuda"):
        torch.cuda.set_device(torch.device(local_device))  # TensorRT and CUDA graphs use the current device
    options = {**model, "device": local_device}
    _worker.update(options=options, frames=frames_queue, stop=stop, verbose=verbose, label=device)
    if stop.is_set():  # the run ended (an error, nothing to do) while this worker was starting
        return
    try:
        worker_preprocessor(options, warmup=warmup)
    except Exception:  # reported with the first clip (run_job retries and marks it fatal); the pool must not break
        return
    ready_queue.put((f"{device} pid {os.getpid()}", time.time()))


def worker_visible_devices(device: str, visible: str | None) -> tuple[str | None, str]:
    """For a worker pinned to ``device`` (``cuda:N``, N counted among the GPUs this process sees): the
    ``CUDA_VISIBLE_DEVICES`` value that shows it only that GPU, and the device it then uses (``cuda:0``).

    Every worker then compiles for, and loads the compiled kernels of, ``cuda:0``: torch's compiled graphs are
    keyed by device index, so a worker on ``cuda:1`` would otherwise compile everything again (measured: 17 s
    before its first clip, while the ``cuda:0`` worker had started in 3 s). ``(None, device)`` for the CPU.
    """
    if not device.startswith("cuda"):
        return None, device
    index = int(device.partition(":")[2] or 0)
    if visible is None:
        return str(index), "cuda:0"
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if index >= len(entries):  # includes an empty value (no GPU visible): let CUDA report it as it would
        return None, device
    return entries[index], "cuda:0"


class Stopped(Exception):
    """The run was stopped (Ctrl-C, or an error in the main process) while this worker had a clip."""


def _run_clip(job: ClipJob, write: WriteSettings) -> ClipResult:
    stop = _worker["stop"]
    if stop.is_set():
        return ClipResult(job, error="not run: the run was stopped", exit_code=EXIT_FAILURE)

    def on_frames(count: int) -> None:
        _worker["frames"].put(count)
        if stop.is_set():
            raise Stopped("the run was stopped")  # process_clip discards this clip's partial outputs

    return run_job(job, write, _worker["options"], on_frames, _worker["verbose"], worker_device=_worker["label"])
