"""The batch's entry point, :func:`process`: many clips in, flow out. The command line's ``run`` is a call of it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clips import ClipJob, ClipResult, WriteSettings
from .dispatch import largest_first
from .errors import CliError, UsageError
from .outputs import DEFAULT_X264_PRESET
from .plan import parse_devices, plan_jobs, split_done
from .preprocessor import build_preprocessor
from .progress import ProgressBar, ProgressCallback, Tracker
from .report import write_report
from .words import speaking, words
from .workers import start_workers

PathLike = str | os.PathLike[str]


@dataclass
class BatchReport:
    """Outcome of a batch: one result per clip that ran (or was refused), the clips skipped as done.

    ``collection`` is False for one clip named directly and run in this process (``run clip.mp4 -o flow.mp4``):
    its outputs must not exist yet (unless ``overwrite``), and its result carries the exception it failed with."""

    results: list[ClipResult] = field(default_factory=list)
    skipped: list[ClipJob] = field(default_factory=list)
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)
    worker_ready_s: dict[str, float] = field(default_factory=dict)  # worker -> seconds until loaded and warm
    collection: bool = True

    @property
    def done(self) -> list[ClipResult]:
        return [result for result in self.results if result.ok]

    @property
    def failed(self) -> list[ClipResult]:
        return [result for result in self.results if not result.ok]

    @property
    def frames(self) -> int:
        return sum(result.frames for result in self.done)


def process(
    inputs: PathLike | Sequence[PathLike] = (),
    output: PathLike | None = None,
    *,
    flow_npy: PathLike | None = None,
    flow_flo: PathLike | None = None,
    manifest: PathLike | None = None,
    overwrite: bool = False,
    devices: str | Sequence[str] | None = None,
    ray_address: str | None = None,
    chunk: int = 16,
    decoder: str = "auto",
    fps: float | None = None,
    codec: str | None = None,
    x264_preset: str = DEFAULT_X264_PRESET,
    flow_size: str = "input",
    report: PathLike | None = None,
    progress: ProgressCallback | bool | None = None,
    verbose: bool = False,
    **preprocessor: Any,
) -> BatchReport:
    """Flow maps (and raw flow) for many clips; returns a :class:`BatchReport` with one result per clip.

    ``process(["a.mp4", "frames/"], output="flow/{stem}.mp4", devices="all")``

    Args:
        inputs: what ``run`` takes as INPUT: a video, a folder of images or a glob (one clip); a folder or glob
            of videos, or a list of videos, image folders and globs (one clip each); a list of image files (the
            frames of one clip). Or ``manifest``: a CSV file with a header ``input`` plus any of ``output``,
            ``flow_npy``, ``flow_flo``, one clip a line.
        output, flow_npy, flow_flo: where each clip's flow maps (a video, or a folder of PNGs), raw flow (one
            ``.npy`` array, or a folder of per-frame ``.npy`` files) and Middlebury ``.flo`` files go. For many
            clips, a folder (``flow/`` writes ``flow/<stem>.mp4``) or a template with ``{stem}`` or ``{name}``.
        overwrite: redo clips whose outputs exist. Otherwise a clip whose outputs all exist is skipped (resume),
            and one with only some of them fails; one clip named directly must not have its outputs yet.
        devices: one worker process per device: ``"all"`` (every GPU), ``"0,1"``, ``"cuda:0,cuda:2"``,
            ``"cpu:4"``, or a list of torch devices. ``ray_address``: the Ray cluster instead (``"auto"``,
            ``"ray://HOST:10001"``, ``"local"``). Neither: the clips run one after the other in this process.
        chunk: frames decoded and computed at a time (bounds memory; results do not depend on it).
        decoder: ``"auto"``, ``"cpu"`` or ``"nvdec"``. ``fps``: the output video's frame rate (default the
            input's; 30 for images). ``codec``, ``x264_preset``: the video encoder. ``flow_size``: raw flow at
            the ``"input"`` or the ``"compute"`` resolution.
        report: write a JSON report there (per clip frames, seconds, busy seconds per stage, output times).
        progress: called with a :class:`.progress.Progress` as the batch goes; ``None``: a tqdm bar on stderr
            where stderr is a terminal; ``False``: nothing.
        verbose: keep each failed clip's traceback in its result (``detail``).
        **preprocessor: ``OpticalFlowTensorRTPreprocessor``'s arguments (``height``, ``width``, ``model``,
            ``device``, ``weights``, ``preset``, ``normalization``, ...); ``device`` is this process's device
            and the Ray actors' kind (``cuda`` or ``cpu``), ``devices`` the workers'.

    A clip's failure is recorded in its result (``error``, ``exit_code``), never raised, and the other clips go on.
    Raised: bad options (:class:`.errors.UsageError`), an unreadable manifest, and a model that cannot be loaded
    (every clip would fail alike). Messages name options in the words of the preprocessor's ``vocabulary``, or of
    the current one (``core.common.vocabulary``): ``overwrite=True`` by default, ``--overwrite`` from ``run``.
    """
    with speaking(preprocessor.get("vocabulary")) as vocabulary:  # the batch's messages speak it too
        preprocessor = {**preprocessor, "vocabulary": vocabulary}  # and its workers, wherever they run
        if devices is not None and ray_address is not None:
            raise UsageError(words("give {devices} (this machine) or {ray_address} (a cluster), not both."))
        specs = (os.fspath(inputs),) if isinstance(inputs, (str, os.PathLike)) else tuple(map(os.fspath, inputs))
        plan = plan_jobs(specs, _path(manifest), _path(output), _path(flow_npy), _path(flow_flo))
        write = WriteSettings(chunk=chunk, fps=fps, codec=codec, flow_size=flow_size, overwrite=overwrite,
                              preset=x264_preset, decoder=decoder)
        if isinstance(devices, str):
            devices = parse_devices(devices, preprocessor.get("strict_device", False))
        batch = plan.collection or devices is not None or ray_address is not None
        callback = ProgressBar() if progress is None or progress is True else progress or None
        outcome = run_clips(plan.jobs, write, preprocessor, None if devices is None else list(devices), ray_address,
                            collection=batch, progress=callback, verbose=verbose)
    outcome.collection = batch
    if report is not None:
        write_report(Path(report), outcome.results, outcome.seconds, skipped=[job.name for job in outcome.skipped],
                     workers=outcome.workers, worker_ready_s=outcome.worker_ready_s)
    return outcome


def run_clips(
    jobs: list[ClipJob],
    write: WriteSettings,
    model: dict[str, Any],
    devices: list[str] | None = None,
    ray_address: str | None = None,
    *,
    collection: bool = True,
    progress: ProgressCallback | None = None,
    verbose: bool = False,
) -> BatchReport:
    """Run ``jobs`` (skipping done ones) here (``devices=None``), in one worker process per entry of ``devices``,
    or on the Ray cluster at ``ray_address``. ``model`` holds the preprocessor's arguments. A clip's failure is
    recorded in the report, never raised; a model that cannot be loaded stops the batch with that error.
    ``collection=False``: one clip named directly, whose outputs must not exist yet (no resume) and whose model,
    here, loads while its first chunks decode.

    Workers start (spawn, import torch, load and warm up the model) before the clips are probed and ordered,
    the largest first (:func:`.dispatch.largest_first`), so planning costs no time of its own; here, in
    this process, the clips run in the order given."""
    started = time.perf_counter()
    workers_elsewhere = devices is not None or ray_address is not None
    if workers_elsewhere:
        build_preprocessor(**{**model, "device": "cpu", "strict_device": False})  # checks option values; loads nothing
    pending, skipped, refused = split_done(jobs, write.overwrite) if collection else (list(jobs), [], [])
    report = BatchReport(results=list(refused), skipped=skipped)
    tracker = Tracker(len(pending), progress)

    def collect(result: ClipResult) -> None:
        if result.fatal:
            raise _fatal_error(result)
        report.results.append(result)
        tracker.clip_done(result)

    try:
        if pending:
            with start_workers(model, write, devices, ray_address, len(pending), verbose, tracker.clip_started,
                               load_ahead=collection) as workers:
                workers.run(largest_first(pending) if workers_elsewhere else pending, collect, tracker.add_frames)
            report.workers = workers.labels
            report.worker_ready_s = workers.ready_seconds()
    finally:
        tracker.close()
    report.seconds = time.perf_counter() - started
    return report


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def _fatal_error(result: ClipResult) -> BaseException:
    """The error that stops a batch: the model's own where it ran in this process."""
    if result.exception is not None:
        return result.exception
    error = CliError(f"a worker ({result.worker}) could not load the model: {result.error}")
    error.exit_code = result.exit_code
    return error
