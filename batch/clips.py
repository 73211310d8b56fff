"""One clip's work, the same wherever it runs (this process, a worker process, a Ray actor).

A :class:`ClipJob` names an input and its outputs; :func:`process_clip` streams it through a preprocessor
in chunks and writes the outputs atomically. :func:`run_clip` turns a clip's failure into a :class:`ClipResult`
instead of an exception, so one bad clip never stops the others; :func:`run_job` is its worker-side form, with
the one preprocessor its process keeps (loaded once).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .colour import rgb_to_yuv420p, yuv_to_rgb
from .errors import EXIT_FAILURE, CliError, InputError, ModelError, UsageError
from .inputs import FrameChunk, choose_decoder, image_readers, open_inputs
from .outputs import DEFAULT_X264_PRESET, ClipOutputs, Sink
from .pipeline import Prefetcher, Stages, StageTimer, WriterThread
from .preprocessor import load_model, worker_preprocessor
from .startup import process_started_at
from .transfer import QUEUE_DEPTH, DeviceToHost, GpuTimer, HostChunk, host_allocator
from .words import speaking

logger = logging.getLogger("scope_optical_flow_tensorrt.batch")  # not core.log: that would import torch


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
    preset: str = DEFAULT_X264_PRESET  # libx264's preset for video outputs
    decoder: str = "auto"  # video decoding: "auto", "cpu" or "nvdec"
    queue_depth: int = QUEUE_DEPTH  # chunks in flight between two stages (bounds host memory)
    png_threads: int | None = None  # threads compressing PNGs; None: half the cores, at most 16
    codec_threads: int | None = None  # threads of each video decoder and encoder; None: FFmpeg's choice (all cores)


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
    started_at: float = 0.0  # time.time() when the clip started
    fatal: bool = False  # the worker could not load the model: every clip would fail the same way
    decoder: str = ""  # which video decoder ran ("cpu", "nvdec"; "" for images)
    stages: dict[str, float] = field(default_factory=dict)  # busy seconds per stage (see ClipStages)
    first_output_at: float | None = None  # time.time() when the first output chunk was written
    last_output_at: float | None = None  # time.time() when the last output chunk was written
    exception: BaseException | None = field(default=None, repr=False, compare=False)  # the error, in its own process

    @property
    def ok(self) -> bool:
        return self.error is None


def process_clip(
    flow: Any,
    job: ClipJob,
    settings: WriteSettings,
    on_frames: Callable[[int], None] | None = None,
    on_start: Callable[[int | None], None] | None = None,
) -> ClipResult:
    """Compute and write one clip with ``flow`` (its stream is reset first, so clips never share state).

    Three stages overlap: a reader thread decodes chunks ahead (into pinned memory on CUDA), this thread
    computes flow and its outputs on the compute device (one device-to-host copy per chunk and output kind,
    on a copy stream), and one writer thread per output encodes and writes behind. Queues between them hold
    ``settings.queue_depth`` chunks, so memory stays flat on long clips. The first failure in any stage (or
    an exception from ``on_frames``, or Ctrl-C) stops every stage and discards every output.

    Progress goes to ``on_start(frames)`` once the model is loaded (the clip's frame count, ``None`` where its
    container does not say) and to ``on_frames(n)`` after each chunk is computed. Raises the batch's errors
    (input, output, usage; :class:`.errors.ModelError` when the model does not load) on failure; the outputs are
    then left untouched.
    """
    flow.reset()
    started_at = time.time()
    source = open_inputs(list(job.inputs), settings.fps)
    if source.num_frames is not None and source.num_frames < 2:
        raise InputError(_one_frame(job))
    started = time.perf_counter()
    decoder = choose_decoder(settings.decoder, source, flow.device) if source.kind == "video" else ""
    # On CUDA, videos stay YUV 4:2:0 until the GPU converts them (cheaper than swscale on the reader's CPU).
    chunks = source.decoded_chunks(settings.chunk, host_allocator(flow.device), image_readers(),
                                   decoder or "cpu", keep_yuv=flow.device.type == "cuda",
                                   threads=settings.codec_threads or 0)
    with ClipOutputs(job, source.frame_rate, settings, inputs=input_paths(job, source)) as sinks, \
            Stages(chunks, [(sink.kind, sink.write) for sink in sinks], settings.queue_depth) as threads:
        # decoding has started; it goes on while the model loads and warms up
        load_started = time.perf_counter()
        load_model(flow, warmup=settings.chunk)
        load_seconds = time.perf_counter() - load_started
        if on_start is not None:
            on_start(source.num_frames)
        computed = _compute(flow, threads.reader, settings, sinks, threads.writers, on_frames or _ignore,
                            source.num_frames, job.name)
        if computed.frames < 2:  # a video of one frame (its length was not known before decoding)
            raise InputError(_one_frame(job))
    stages = {"load": load_seconds, "decode": threads.reader.timer.seconds, **computed.stages}
    for sink, thread in zip(sinks, threads.writers):
        stages[f"write_{sink.kind}"] = thread.timer.seconds
    written = [thread for thread in threads.writers if thread.first_done_at is not None]
    result = ClipResult(
        job,
        frames=computed.frames,
        size=computed.size,
        seconds=time.perf_counter() - started,
        started_at=started_at,
        decoder=decoder,
        stages=stages,
        first_output_at=max((t.first_done_at for t in written), default=None),  # type: ignore[arg-type]
        last_output_at=max((t.last_done_at for t in written), default=None),  # type: ignore[arg-type]
    )
    logger.info(
        "%s: %d frames in %.2f s; busy seconds: %s", job.name, result.frames, result.seconds,
        ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items()),
    )
    if result.first_output_at is not None:
        logger.info(
            "start-up: first output frame %.2f s after the process started = %.2f s before this clip (Python, "
            "imports, preprocessor construction, earlier clips) + %.2f s model load and warm-up (kernels compiled "
            "or loaded from cache, CUDA graphs captured) + %.2f s first chunk + %.2f s until written",
            result.first_output_at - process_started_at(), started_at - process_started_at(), load_seconds,
            computed.first_chunk_seconds, result.first_output_at - started_at - load_seconds - computed.first_chunk_seconds,
        )
    return result


def input_paths(job: ClipJob, source: Any) -> list[Path]:
    """What no output of ``job`` may replace: the files its frames are read from and the paths its INPUT names."""
    named = [Path(spec).expanduser() for spec in job.inputs]
    return [*(getattr(source, "files", None) or []), *(path for path in named if path.exists())]


def _one_frame(job: ClipJob) -> str:
    return (f"{job.name} has one frame: flow is the motion between two frames, so one frame has no motion to "
            "measure (its map would be white). Give a video, or a folder or glob of two images or more.")


@dataclass
class _Computed:
    frames: int
    size: tuple[int, int]
    stages: dict[str, float]
    first_chunk_seconds: float


def _compute(
    flow: Any,
    chunks: Prefetcher[FrameChunk],
    settings: WriteSettings,
    sinks: list[Sink],
    threads: list[WriterThread],
    on_frames: Callable[[int], Any],
    clip_frames: int | None = None,
    clip_name: str = "",
) -> _Computed:
    """The compute stage: flow for each decoded chunk, its outputs made on the device and sent to the writers.

    The preprocessor carries the last frame across chunks, so the result equals one call over the whole clip.
    From the second chunk on, shapes whose compiled kernels are ready (entries on disk, or just compiled by the
    child) switch over where the work left repays it at the rate measured after the first chunk
    (:func:`worth_switching`); else the uncompiled graphs serve on.
    """
    import torch

    from ..core.common.errors import FrameError
    from ..core.memory import TooLargeForMemory
    from ..core.resize import resize_flow

    device = flow.device
    copier = DeviceToHost(device)
    timer = StageTimer()
    gpu_timer = GpuTimer(device)
    frames_done = 0
    size = (0, 0)
    started = time.perf_counter()
    first_chunk_seconds = 0.0
    first_chunk: tuple[int, float] | None = None  # (frames, compute seconds) after the first chunk
    said_uncompiled = False
    for chunk in chunks:  # RGB [F, H, W, 3] or YUV planes, uint8, pinned on CUDA
        size = (chunk.height, chunk.width)
        wanted = {sink.takes_for(*size) for sink in sinks}

        def work() -> HostChunk:
            with gpu_timer:
                frames = torch.from_numpy(chunk.data)
                if chunk.yuv is not None:
                    frames = yuv_to_rgb(frames.to(device, non_blocking=True), chunk.yuv, *size)
                raw = flow.compute_flow(frames, layout="FHWC")  # [1, F, 2, h, w]
                outputs: dict[str, Any] = {}
                if wanted & {"images", "yuv420p"}:
                    # raw is this preprocessor's own flow: no finiteness read-back (it would stall each chunk)
                    images = to_uint8_images(flow.flow_to_image(raw, size=size, check_finite=False))
                    if "images" in wanted:
                        outputs["images"] = images
                    if "yuv420p" in wanted:  # the video encoder's input, converted here rather than in its thread
                        outputs["yuv420p"] = rgb_to_yuv420p(images)
                if "flow" in wanted:
                    vectors = resize_flow(raw[0], *size) if settings.flow_size == "input" else raw[0]
                    outputs["flow"] = vectors.float().contiguous()
            # The frames stay referenced until the writers have the outputs: their pinned memory must not be
            # reused while the asynchronous copy to the device may still read it.
            return copier.copy(outputs, size, keep=chunk.data)

        try:
            host = timer.time(work)
        except FrameError as error:  # e.g. frames too small for --size native: bad input, not a failure
            raise InputError(str(error)) from error
        except TooLargeForMemory as error:  # this clip's own size cannot fit: the message names the fix
            raise UsageError(str(error)) from error
        for thread in threads:
            thread.submit(host)
        if frames_done == 0:
            first_chunk_seconds = time.perf_counter() - started
        frames_done += len(chunk)
        _frames_in_process[0] += len(chunk)
        on_frames(len(chunk))
        left = None if clip_frames is None else clip_frames - frames_done
        if first_chunk is None:
            # The first chunk pays one-time costs (first calls, the encoders' set-up): its time is not the rate.
            first_chunk = (frames_done, timer.seconds)
            if left is None:
                flow.wait_for_compiled(timeout=0)  # an unknown length counts as long: switch what is ready
            continue
        seconds_per_frame = (timer.seconds - first_chunk[1]) / (frames_done - first_chunk[0])
        if worth_switching(left, seconds_per_frame):
            flow.wait_for_compiled(timeout=0)  # switches the shapes whose compiled kernels are ready, if any
        elif not said_uncompiled and getattr(flow.load(), "compiled", False):
            said_uncompiled = True
            logger.info("%s: the uncompiled graphs serve this clip (%d frames left): switching to compiled kernels "
                        "takes seconds that it would not repay (batch/clips.py, worth_switching)", clip_name, left)
    stages = {"compute": timer.seconds}
    if gpu_timer.enabled:
        stages["compute_gpu"] = gpu_timer.seconds()
    return _Computed(frames_done, size, stages, first_chunk_seconds)


# Loading a shape's compiled kernels in this process and capturing their graph: 3-5 s from an entry of an
# earlier process, 6.3-7.2 s right after the child compiled them (caches cold) on an H100 (benchmarks/NOTES.md,
# switch_seconds); the compiled kernels then run about twice as fast as the uncompiled graphs. The larger cost is
# counted: a switch that does not pay stalls the pipeline for nothing.
SWITCH_COST_S = 6.5
_frames_in_process = [0]  # frames this process has computed (all clips): batch workers go on to more clips


def worth_switching(frames_left: int | None, seconds_per_frame: float) -> bool:
    """Whether loading ready compiled kernels now (:data:`SWITCH_COST_S`, the pipeline waits) is repaid by the
    work still expected: the rest of this clip, plus as much again as this process has done so far (a batch worker
    that has done many clips will likely do more). Unknown lengths count as long. At the uncompiled graphs' 816
    frames/s (512x512, H100) that is about 10,600 frames: shorter work is served uncompiled from start to end."""
    if frames_left is None:
        return True
    expected = frames_left + _frames_in_process[0]
    return expected * seconds_per_frame / 2 > SWITCH_COST_S


def to_uint8_images(maps: Any) -> Any:
    """``[1, 3, F, H, W]`` in ``[-1, 1]`` -> ``[F, H, W, 3]`` uint8 on the same device."""
    import torch

    images = ((maps[0] + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return images.permute(1, 2, 3, 0).contiguous()


def to_uint8_frames(maps: Any) -> Any:
    """``[1, 3, F, H, W]`` in ``[-1, 1]`` -> ``[F, H, W, 3]`` uint8 numpy."""
    return to_uint8_images(maps).cpu().numpy()


# -- failures as results; the worker side: one preprocessor per process ------------------------------------


def run_job(
    job: ClipJob,
    settings: WriteSettings,
    options: dict[str, Any],
    on_frames: Callable[[int], None] | None = None,
    verbose: bool = False,
    worker_device: str | None = None,
) -> ClipResult:
    """:func:`run_clip` with this process's preprocessor, in a worker process or a Ray actor.

    A failure to build or load the preprocessor is marked ``fatal`` (it is not the clip's fault).
    ``worker_device`` names the worker's device in results (a pool worker that sees only its GPU runs on
    ``cuda:0`` whichever GPU it is). The result travels to another process: it carries the error's message and
    exit code, not the exception; messages speak the caller's vocabulary (``options["vocabulary"]``)."""
    with speaking(options.get("vocabulary")):
        try:
            flow = worker_preprocessor(options)
        except Exception as error:
            result = _failed(job, error, worker_device or str(options.get("device", "cuda")), verbose, fatal=True)
        else:
            result = run_clip(flow, job, settings, on_frames, verbose=verbose,
                              worker=f"{worker_device or flow.device} pid {os.getpid()}")
    result.exception = None
    return result


def run_clip(
    flow: Any,
    job: ClipJob,
    settings: WriteSettings,
    on_frames: Callable[[int], None] | None = None,
    on_start: Callable[[int | None], None] | None = None,
    *,
    verbose: bool = False,
    worker: str = "",
) -> ClipResult:
    """:func:`process_clip`, never raising for a clip's own failure: that becomes the result (``fatal`` when the
    model did not load, which is not the clip's fault). ``worker`` names where it ran."""
    try:
        result = process_clip(flow, job, settings, on_frames, on_start)
    except Exception as error:
        return _failed(job, error, worker, verbose, fatal=isinstance(error, ModelError))
    result.worker = worker
    return result


def _ignore(count: int) -> None:
    """No progress wanted."""


def _failed(job: ClipJob, error: Exception, worker: str, verbose: bool, fatal: bool) -> ClipResult:
    message = " ".join((str(error) or type(error).__name__).split())
    if not isinstance(error, CliError):
        message = f"{type(error).__name__}: {message}"
    code = error.exit_code if isinstance(error, CliError) else EXIT_FAILURE
    detail = traceback.format_exc() if verbose else None
    return ClipResult(job, error=message, exit_code=code, detail=detail, worker=worker, fatal=fatal, exception=error)
