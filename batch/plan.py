"""``run`` over many clips: which clips (a folder of videos, a glob, several videos, a manifest), where their
outputs go, which are already done (resume), and running them in this process, in one worker process per
device (:mod:`.pool`) or on a Ray cluster (:mod:`.ray_runner`), with one progress bar and a final report.

Every clip goes through :func:`.clips.process_clip`, the same code as ``run`` on one input.
"""

from __future__ import annotations

import csv
import glob
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .clips import ClipJob, ClipResult, WriteSettings, run_job
from .dispatch import largest_first
from .errors import EXIT_FAILURE, CliError, InputError, UsageError
from .inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, natural_key
from ..cli.options import build_preprocessor
from .report import write_report
from .outputs import is_video_path
from ..cli.state import PROG_NAME, notice, progress_bar, say, settings

MANIFEST_COLUMNS = ("input", "output", "flow_npy", "flow_flo")


@dataclass
class Plan:
    """The clips to run; ``collection`` is False for one clip named directly (the classic ``run``)."""

    jobs: list[ClipJob]
    collection: bool


@dataclass
class BatchReport:
    """Outcome of a batch: one result per clip that ran (or was refused), the clips skipped as done."""

    results: list[ClipResult] = field(default_factory=list)
    skipped: list[ClipJob] = field(default_factory=list)
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)
    worker_ready_s: dict[str, float] = field(default_factory=dict)  # worker -> seconds until loaded and warm

    @property
    def done(self) -> list[ClipResult]:
        return [result for result in self.results if result.ok]

    @property
    def failed(self) -> list[ClipResult]:
        return [result for result in self.results if not result.ok]

    @property
    def frames(self) -> int:
        return sum(result.frames for result in self.done)


# -- which clips, which outputs ---------------------------------------------------------------------------


def plan_jobs(
    input_specs: tuple[str, ...],
    manifest: Path | None,
    output: Path | None,
    flow_npy: Path | None,
    flow_flo: Path | None,
) -> Plan:
    """Clips from ``--manifest`` or from INPUT (a folder of videos, a glob of videos, several video files are a
    collection; anything else is one clip, read as ``run`` always did). Outputs of a collection come from
    folders or ``{stem}``/``{name}`` templates."""
    templates = {"output": output, "flow_npy": flow_npy, "flow_flo": flow_flo}
    if manifest is not None:
        jobs = [_job_from_row(row, templates, where) for row, where in read_manifest(manifest)]
    else:
        videos = video_collection(input_specs)
        if videos is None:
            return Plan([ClipJob(tuple(input_specs), output, flow_npy, flow_flo)], collection=False)
        count = len(videos)
        jobs = [ClipJob((str(video),), *(_target(templates[k], video, k, count) for k in MANIFEST_COLUMNS[1:]))
                for video in videos]
    _check_distinct_outputs(jobs)
    return Plan(jobs, collection=True)


def video_collection(specs: tuple[str, ...]) -> list[Path] | None:
    """The video files INPUT names when it is a collection of clips, in natural name order; else ``None``."""
    if len(specs) > 1:
        paths = [Path(spec).expanduser() for spec in specs]
        videos = [path for path in paths if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES]
        return sorted(videos, key=natural_key) if len(videos) == len(paths) else None
    if len(specs) != 1:
        return None
    path = Path(specs[0]).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
    elif not path.exists() and any(char in specs[0] for char in "*?["):
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    else:
        return None
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        return None  # frames of one clip
    videos = sorted((p for p in files if p.suffix.lower() in VIDEO_SUFFIXES), key=natural_key)
    return videos or None  # no videos: the one-clip path says what is wrong (no images, no matches)


def read_manifest(path: Path) -> list[tuple[dict[str, str], str]]:
    """Rows of a manifest CSV (header ``input`` plus any of ``output``, ``flow_npy``, ``flow_flo``; lines
    starting with ``#`` and blank lines are ignored; relative paths are relative to the manifest's folder).
    Returns ``(row, "FILE:LINE")`` pairs."""
    try:
        text = path.expanduser().read_text(encoding="utf-8-sig")
    except OSError as error:
        raise InputError(f"cannot read manifest {path}: {error.strerror or error}") from error
    numbered = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise InputError(f"manifest {path} lists no clips; write a header line 'input,output' and one clip a line.")
    reader = csv.reader(line for _, line in numbered)
    header = [name.strip().lower() for name in next(reader)]
    unknown = [name for name in header if name not in MANIFEST_COLUMNS]
    if "input" not in header or unknown or len(set(header)) != len(header):
        raise InputError(f"manifest {path}: the first line must be a header naming the columns, e.g. "
                         f"'input,output' (allowed: {', '.join(MANIFEST_COLUMNS)}); got {','.join(header)!r}.")
    base = path.expanduser().absolute().parent
    rows = []
    for (number, _), cells in zip(numbered[1:], reader):
        where = f"{path}:{number}"
        if len(cells) > len(header):
            raise InputError(f"{where}: {len(cells)} cells but the header has {len(header)} columns; "
                             "quote paths that contain commas.")
        row = {name: cell.strip() for name, cell in zip(header, cells)}
        if not row.get("input"):
            raise InputError(f"{where}: the input cell is empty; every line needs an input.")
        rows.append(({name: _resolve(value, base) for name, value in row.items() if value}, where))
    if not rows:
        raise InputError(f"manifest {path} has a header but no clips.")
    return rows


def _resolve(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _job_from_row(row: dict[str, str], templates: dict[str, Path | None], where: str) -> ClipJob:
    source = Path(row["input"])
    outputs = {key: Path(row[key]) if key in row else _target(templates[key], source, key, 2)
               for key in MANIFEST_COLUMNS[1:]}
    if not any(outputs.values()):
        raise UsageError(f"{where}: no output for {row['input']}; fill its output column or give -o/--flow-npy/"
                         "--flow-flo (a folder or a {stem} template) for rows without one.")
    return ClipJob((row["input"],), outputs["output"], outputs["flow_npy"], outputs["flow_flo"])


def _target(template: Path | None, clip: Path, kind: str, count: int) -> Path | None:
    """A clip's output path from a ``{stem}``/``{name}`` template, or ``FOLDER/<stem>.mp4|.npy|/``."""
    if template is None:
        return None
    text = str(template)
    option = {"output": "-o", "flow_npy": "--flow-npy", "flow_flo": "--flow-flo"}[kind]
    if any(char in clip.name for char in "*?["):
        clip = clip.parent  # a glob of frames (in a manifest) is named after its folder
    if "{" in text:
        try:
            return Path(text.format(stem=clip.stem, name=clip.name))
        except (KeyError, IndexError, ValueError) as error:
            raise UsageError(f"{option} {text}: a template may hold {{stem}} (the clip's name without extension) "
                             f"and {{name}} only ({error!r} is not one).") from error
    single_file = is_video_path(template) if kind == "output" else template.suffix.lower() == ".npy"
    if single_file:
        raise UsageError(f"{option} {text} names one file but there are {count} or more clips; give a folder "
                         f"({option} {template.with_suffix('')}/) or a template ({option} "
                         f"'{template.parent / ('{stem}' + template.suffix)}').")
    name = {"output": f"{clip.stem}.mp4", "flow_npy": f"{clip.stem}.npy", "flow_flo": clip.stem}[kind]
    return template / name


def _check_distinct_outputs(jobs: list[ClipJob]) -> None:
    owners: dict[Path, str] = {}
    for job in jobs:
        for path in job.outputs:
            key = path.expanduser().absolute()
            if key in owners:
                raise UsageError(f"{owners[key]} and {job.name} would both write {path}; use a template with "
                                 "{name} or a manifest to give each clip its own output.")
            owners[key] = job.name


def split_done(jobs: list[ClipJob], overwrite: bool) -> tuple[list[ClipJob], list[ClipJob], list[ClipResult]]:
    """``(to run, done already, refused)``. Outputs are written atomically, so one that exists is complete: a
    clip whose outputs all exist is skipped (resume). One with only some of them is refused without
    ``--overwrite`` (an earlier run stopped between moving its outputs into place, or they are not ours)."""
    if overwrite:
        return list(jobs), [], []
    pending, done, refused = [], [], []
    for job in jobs:
        existing = [path for path in job.outputs if path.exists()]
        if not existing:
            pending.append(job)
        elif len(existing) == len(job.outputs):
            done.append(job)
        else:
            missing = [str(path) for path in job.outputs if path not in existing]
            message = (f"only some outputs exist ({', '.join(map(str, existing))}; missing: {', '.join(missing)}); "
                       "delete them or pass --overwrite to redo this clip.")
            refused.append(ClipResult(job, error=message, exit_code=EXIT_FAILURE))
    return pending, done, refused


# -- devices ------------------------------------------------------------------------------------------------


def parse_devices(text: str, strict: bool = False) -> list[str]:
    """``--devices`` -> one torch device per worker: ``all`` (every CUDA GPU; one CPU worker without CUDA,
    unless ``strict``), ``0,1`` or ``cuda:0,cuda:1``, ``cpu`` or ``cpu:N``."""
    spec = text.strip().lower()
    if spec == "cpu":
        return ["cpu"]
    if spec.startswith("cpu:"):
        count = spec[4:]
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--devices {text}: write cpu:N with N a positive number of CPU workers (e.g. cpu:2).")
        return ["cpu"] * int(count)
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "all":
        if available:
            return [f"cuda:{index}" for index in range(available)]
        if strict:
            raise UsageError("--devices all with --strict-device: this machine has no CUDA GPU; use --devices cpu:N.")
        notice(f"{PROG_NAME}: warning: --devices all: no CUDA GPU here, so one CPU worker runs the clips "
               "(use --devices cpu:N for more).")
        return ["cpu"]
    devices = []
    for part in spec.split(","):
        part = part.strip().removeprefix("cuda:")
        if not part.isdigit():
            raise UsageError(f"--devices {text}: {part!r} is not a GPU index; write all, 0,1, cuda:0,cuda:1 or cpu:N.")
        if int(part) >= available:
            raise UsageError(f"--devices {text}: GPU {part} does not exist (this machine has {available} CUDA "
                             "device(s)); use --devices all, or cpu:N for CPU workers.")
        devices.append(f"cuda:{int(part)}")
    return devices


# -- running ------------------------------------------------------------------------------------------------


class BatchProgress:
    """One bar for the whole batch: clips done of all (with time left), frames and failures so far."""

    def __init__(self, total: int, show: bool = True) -> None:
        self.bar = progress_bar(total=total, unit="clip", desc="clips") if show else None
        self.frames = 0
        self.failed = 0

    def add_frames(self, count: int) -> None:
        self.frames += count
        self._refresh()

    def clip_done(self, result: ClipResult) -> None:
        self.failed += 0 if result.ok else 1
        if self.bar is not None:
            self.bar.update(1)
        self._refresh()

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(frames=self.frames, failed=self.failed, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_clips(
    jobs: list[ClipJob],
    write: WriteSettings,
    model: dict[str, Any],
    devices: list[str] | None = None,
    ray_address: str | None = None,
    show_progress: bool = True,
) -> BatchReport:
    """Run ``jobs`` (skipping done ones) here (``devices=None``), in one worker process per entry of
    ``devices``, or on the Ray cluster at ``ray_address``. ``model`` holds ``build_preprocessor``'s
    arguments. A clip's failure is recorded in the report, never raised; a worker that cannot load the
    model stops the batch with that error.

    Workers start (spawn, import torch, load and warm up the model) before the clips are probed and ordered,
    the largest first (:func:`.dispatch.largest_first`), so planning costs no time of its own; here, in
    this process, the clips run in the order given."""
    started = time.perf_counter()
    build_preprocessor(**{**model, "device": "cpu", "strict_device": False})  # checks option values; loads nothing
    pending, skipped, refused = split_done(jobs, write.overwrite)
    report = BatchReport(results=list(refused), skipped=skipped)
    progress = BatchProgress(len(pending), show_progress)

    def collect(result: ClipResult) -> None:
        if result.fatal:
            raise _fatal_error(result)
        report.results.append(result)
        progress.clip_done(result)

    try:
        if not pending:
            pass
        elif ray_address is None and devices is None:
            report.workers = [str(model["device"])]
            for job in pending:
                collect(run_job(job, write, model, progress.add_frames, settings.verbose))
        else:
            with _start_workers(write, model, devices, ray_address, len(pending)) as workers:
                workers.run(largest_first(pending), collect, progress.add_frames)
            report.workers = workers.labels
            report.worker_ready_s = workers.ready_seconds()
    finally:
        progress.close()
    report.seconds = time.perf_counter() - started
    return report


class Workers(Protocol):
    """Workers started ahead of their clips (:class:`.pool.WorkerPool`, :class:`.ray_runner.RayWorkers`)."""

    labels: list[str]

    def run(self, jobs: list[ClipJob], on_result: Callable[[ClipResult], None],
            on_frames: Callable[[int], None]) -> None: ...

    def ready_seconds(self) -> dict[str, float]: ...

    def __enter__(self) -> Workers: ...

    def __exit__(self, *exc_info: Any) -> None: ...


def _start_workers(write: WriteSettings, model: dict[str, Any], devices: list[str] | None, ray_address: str | None,
                   clips: int) -> Workers:
    """Start at most ``clips`` workers (no idle worker loads a model for nothing)."""
    if ray_address is not None:
        from .ray_runner import RayWorkers

        return RayWorkers(ray_address, write, model, clips)
    from .pool import WorkerPool

    return WorkerPool((devices or [])[:clips], write, model)


def _fatal_error(result: ClipResult) -> CliError:
    error = CliError(f"a worker ({result.worker}) could not load the model: {result.error}")
    error.exit_code = result.exit_code
    return error


def run_batch_command(
    jobs: list[ClipJob],
    write: WriteSettings,
    model: dict[str, Any],
    devices: str | None,
    ray_address: str | None,
    report_path: Path | None = None,
) -> None:
    """``run`` for many clips: run them, print a summary line, list failures and exit non-zero if any."""
    device_list = parse_devices(devices, model.get("strict_device", False)) if devices is not None else None
    report = run_clips(jobs, write, model, device_list, ray_address, show_progress=not settings.quiet)
    where = ", ".join(report.workers) or (f"Ray ({ray_address})" if ray_address is not None else str(model["device"]))
    seconds = max(report.seconds, 1e-9)
    if report_path is not None:
        write_report(report_path, report.results, report.seconds, skipped=[job.name for job in report.skipped],
                     workers=report.workers, worker_ready_s=report.worker_ready_s)
    say(f"{len(report.done)} clip(s) done, {len(report.skipped)} skipped (outputs exist), {len(report.failed)} "
        f"failed: {report.frames} frames in {report.seconds:.1f} s ({len(report.done) / seconds:.2f} clips/s, "
        f"{report.frames / seconds:.1f} frames/s) on {where}")
    for result in report.failed:
        if settings.verbose and result.detail:
            notice(result.detail.rstrip())
        notice(f"{PROG_NAME}: failed: {result.job.name}: {result.error}")
    if report.failed:
        raise CliError(f"{len(report.failed)} of {len(jobs)} clip(s) failed (listed above); the others are written. "
                       "Run the same command again to retry them (finished clips are skipped).")
