"""One clip's work, shared by ``run`` on one input and by every scale-out path (process pool, Ray).

A :class:`ClipJob` names an input and its outputs; :func:`process_clip` streams it through a preprocessor
in chunks and writes the outputs atomically. :func:`run_job` is the worker-side wrapper: it keeps one
preprocessor per process (loaded once) and turns a clip's failure into a :class:`ClipResult` instead of an
exception, so one bad clip never stops the others.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_FAILURE, CliError
from .inputs import open_inputs
from .options import build_preprocessor, load_model
from .outputs import (
    FloFolderWriter,
    NpyArrayWriter,
    NpyFolderWriter,
    PngFolderWriter,
    StagedOutputs,
    VideoWriter,
    is_video_path,
)
from .state import progress_bar


@dataclass(frozen=True)
class ClipJob:
    """One clip: ``inputs`` as ``run`` takes them (a video, an image folder, a glob or image files) and the
    outputs to write (at least one)."""

    inputs: tuple[str, ...]
    output: Path | None = None
    flow_npy: Path | None = None
    flow_flo: Path | None = None

    @property
    def name(self) -> str:
        return self.inputs[0] if len(self.inputs) == 1 else f"{len(self.inputs)} images ({self.inputs[0]}, ...)"

    @property
    def outputs(self) -> list[Path]:
        return [path for path in (self.output, self.flow_npy, self.flow_flo) if path is not None]


@dataclass(frozen=True)
class WriteSettings:
    """How a clip is read and written (the ``run`` options that are not the preprocessor's)."""

    chunk: int = 16
    fps: float | None = None
    codec: str | None = None
    flow_size: str = "input"
    overwrite: bool = False


@dataclass
class ClipResult:
    """What became of one clip. ``error`` is a one-line message when it failed (``detail`` the traceback)."""

    job: ClipJob
    frames: int = 0
    size: tuple[int, int] = (0, 0)
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0
    detail: str | None = None
    worker: str = ""  # "DEVICE pid N" of the process that ran it
    started_at: float = 0.0  # time.time() when the clip started (after the model was loaded)
    fatal: bool = False  # the worker could not load the model: every clip would fail the same way

    @property
    def ok(self) -> bool:
        return self.error is None


def process_clip(
    flow: Any,
    job: ClipJob,
    settings: WriteSettings,
    on_frames: Callable[[int], None] | None = None,
) -> ClipResult:
    """Compute and write one clip with ``flow`` (its stream is reset first, so clips never share state).

    Progress goes to ``on_frames(n)`` after each chunk, or to a progress bar of its own when ``None``.
    Raises the CLI's errors (input, output, usage) on failure; the outputs are then left untouched.
    """
    flow.reset()
    started_at = time.time()
    source = open_inputs(list(job.inputs), settings.fps)
    started = time.perf_counter()
    with StagedOutputs(settings.overwrite) as staged:
        image_writers: list[Any] = []
        flow_writers: list[Any] = []
        if job.output is not None:
            if is_video_path(job.output):
                image_writers.append(VideoWriter(staged.add(job.output, folder=False), source.frame_rate,
                                                 settings.codec))
            else:
                image_writers.append(PngFolderWriter(staged.add(job.output, folder=True)))
        if job.flow_npy is not None:
            if job.flow_npy.suffix.lower() == ".npy":
                flow_writers.append(NpyArrayWriter(staged.add(job.flow_npy, folder=False)))
            else:
                flow_writers.append(NpyFolderWriter(staged.add(job.flow_npy, folder=True)))
        if job.flow_flo is not None:
            flow_writers.append(FloFolderWriter(staged.add(job.flow_flo, folder=True)))
        writers = image_writers + flow_writers
        try:
            load_model(flow)
            if on_frames is None:
                with progress_bar(total=source.num_frames, unit="frame", desc="flow") as bar:
                    frames, size = _stream(flow, source, settings, image_writers, flow_writers, bar.update)
            else:
                frames, size = _stream(flow, source, settings, image_writers, flow_writers, on_frames)
            for writer in writers:
                writer.close()
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
    return ClipResult(job, frames=frames, size=size, seconds=time.perf_counter() - started, started_at=started_at)


def _stream(
    flow: Any,
    source: Any,
    settings: WriteSettings,
    image_writers: list[Any],
    flow_writers: list[Any],
    on_frames: Callable[[int], Any],
) -> tuple[int, tuple[int, int]]:
    """Decode, compute and write chunk by chunk; the preprocessor carries the last frame across chunks."""
    import torch

    from ..core.resize import resize_flow

    frames_done = 0
    size = (0, 0)
    for frames in source.chunks(settings.chunk):
        size = frames.shape[1:3]
        raw = flow.compute_flow(torch.from_numpy(frames), layout="FHWC")  # [1, F, 2, h, w]
        if image_writers:
            images = to_uint8_frames(flow.flow_to_image(raw, size=size))
            for writer in image_writers:
                writer.write(images)
        if flow_writers:
            vectors = resize_flow(raw[0], *size) if settings.flow_size == "input" else raw[0]
            vectors = vectors.float().cpu().numpy()
            for writer in flow_writers:
                writer.write(vectors)
        frames_done += frames.shape[0]
        on_frames(frames.shape[0])
    return frames_done, (int(size[0]), int(size[1]))


def to_uint8_frames(maps: Any) -> Any:
    """``[1, 3, F, H, W]`` in ``[-1, 1]`` -> ``[F, H, W, 3]`` uint8 numpy."""
    import torch

    images = ((maps[0] + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return images.permute(1, 2, 3, 0).contiguous().cpu().numpy()


# -- worker side: one preprocessor per process, failures as results ----------------------------------------

_worker: dict[str, Any] = {}


def worker_preprocessor(options: dict[str, Any]) -> Any:
    """This process's preprocessor for ``options`` (``build_preprocessor``'s arguments), built and loaded on
    first use and kept for every later clip (a new one only if the options change)."""
    key = repr(sorted(options.items()))
    if _worker.get("key") != key:
        _worker.clear()
        flow = build_preprocessor(**options)
        load_model(flow)
        _worker.update(key=key, flow=flow)
    return _worker["flow"]


def run_job(
    job: ClipJob,
    settings: WriteSettings,
    options: dict[str, Any],
    on_frames: Callable[[int], None] | None = None,
    verbose: bool = False,
) -> ClipResult:
    """:func:`process_clip` with this process's preprocessor; never raises for a clip's own failure.

    A failure to build or load the preprocessor is marked ``fatal`` (it is not the clip's fault)."""
    label = str(options.get("device", ""))
    try:
        flow = worker_preprocessor(options)
    except Exception as error:
        return _failed(job, error, label, verbose, fatal=True)
    label = f"{flow.device} pid {os.getpid()}"
    try:
        result = process_clip(flow, job, settings, on_frames or (lambda frames: None))
    except Exception as error:
        return _failed(job, error, label, verbose, fatal=False)
    result.worker = label
    return result


def _failed(job: ClipJob, error: Exception, worker: str, verbose: bool, fatal: bool) -> ClipResult:
    message = " ".join((str(error) or type(error).__name__).split())
    if not isinstance(error, CliError):
        message = f"{type(error).__name__}: {message}"
    code = error.exit_code if isinstance(error, CliError) else EXIT_FAILURE
    detail = traceback.format_exc() if verbose else None
    return ClipResult(job, error=message, exit_code=code, detail=detail, worker=worker, fatal=fatal)
