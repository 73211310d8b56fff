"""Clips on several local devices: a ``ProcessPoolExecutor`` (spawn) with one worker process per device.

Each worker takes one device from a queue in its initializer, pins itself to it and builds one preprocessor
(loaded once, reused for every clip it gets). Clips are submitted as separate tasks, so a free worker takes
the next one (dynamic distribution); a clip's temporal state lives in the one worker that runs it. Workers
report frames done through a queue for the combined progress bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .clips import ClipJob, ClipResult, WriteSettings, run_job, worker_preprocessor
from .errors import EXIT_FAILURE
from .state import configure_logging, settings

_worker: dict[str, Any] = {}


def run_pool(
    jobs: list[ClipJob],
    write: WriteSettings,
    model: dict[str, Any],
    devices: list[str],
    on_result: Callable[[ClipResult], None],
    on_frames: Callable[[int], None],
) -> None:
    """Run ``jobs`` on one worker per entry of ``devices``; ``on_result`` gets each clip's result as it ends
    (an exception it raises cancels the clips not started yet and is re-raised)."""
    import multiprocessing

    devices = devices[: len(jobs)]  # no idle workers loading a model for nothing
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked; spawn also behaves alike everywhere
    device_queue = context.Queue()
    for device in devices:
        device_queue.put(device)
    frames_queue = context.Queue()
    stop = context.Event()  # set when the run ends early: queued clips return at once, running ones abort
    threads = threads_per_worker(len(devices))
    if threads is not None and len(devices) > 1 and write.codec_threads is None:
        # Each worker's video decoder and encoder get its share of the cores: with FFmpeg's default every one
        # of them starts a thread per core, and the workers' threads crowd each other out.
        write = dataclasses.replace(write, codec_threads=threads)
    pool = ProcessPoolExecutor(
        max_workers=len(devices),
        mp_context=context,
        initializer=_init_worker,
        initargs=(device_queue, frames_queue, stop, model, threads, settings.verbose, settings.quiet),
    )
    try:
        futures: dict[Future[ClipResult], ClipJob] = {pool.submit(_run_clip, job, write): job for job in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(frames_queue, on_frames)
            for future in finished:
                on_result(_result(future, futures[future]))
        _drain(frames_queue, on_frames)
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        frames_queue.close()
        device_queue.close()


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


def _drain(frames_queue: Any, on_frames: Callable[[int], None]) -> None:
    while True:
        try:
            on_frames(frames_queue.get_nowait())
        except queue.Empty:
            return
        except (OSError, ValueError, EOFError):  # queue closed as the pool shut down
            return


def _init_worker(device_queue: Any, frames_queue: Any, stop: Any, model: dict[str, Any], threads: int | None,
                 verbose: bool, quiet: bool) -> None:
    """Worker initializer: take a device, pin to it, build and load this worker's preprocessor."""
    device = device_queue.get()
    # Before torch is imported (and CUDA initialized) here: the worker sees only its GPU, as cuda:0.
    visible, local_device = worker_visible_devices(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None and "torch" not in sys.modules:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    else:
        local_device = device

    import torch

    settings.verbose, settings.quiet = verbose, quiet
    configure_logging()
    if threads is not None:
        torch.set_num_threads(threads)
    if local_device.startswith("cuda"):
        torch.cuda.set_device(torch.device(local_device))  # TensorRT and CUDA graphs use the current device
    options = {**model, "device": local_device}
    _worker.update(options=options, frames=frames_queue, stop=stop, verbose=verbose, label=device)
    # A failure is reported with the first clip (run_job retries and marks it fatal); the pool must not break here.
    with contextlib.suppress(Exception):
        worker_preprocessor(options)


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
