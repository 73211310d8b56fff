"""What a batch runs: which clips (one input, a folder of videos, a glob, several inputs, a manifest), where
their outputs go, which are already done (resume), and on which devices.
"""

from __future__ import annotations

import csv
import glob
import logging
from dataclasses import dataclass
from pathlib import Path

from .clips import ClipJob, ClipResult
from .errors import EXIT_FAILURE, InputError, UsageError
from .inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, natural_key
from .outputs import is_video_path
from .words import option_name, placeholder, setting, words

logger = logging.getLogger("scope_optical_flow_tensorrt.batch")

MANIFEST_COLUMNS = ("input", "output", "flow_npy", "flow_flo")


@dataclass
class Plan:
    """The clips to run; ``collection`` is False for one clip named directly (the classic ``run``)."""

    jobs: list[ClipJob]
    collection: bool


# -- which clips, which outputs ---------------------------------------------------------------------------


def plan_jobs(
    input_specs: tuple[str, ...],
    manifest: Path | None,
    output: Path | None,
    flow_npy: Path | None,
    flow_flo: Path | None,
) -> Plan:
    """Clips from ``manifest`` or from the inputs (see :func:`clip_collection`: a collection of clips, or one clip,
    read as ``run`` always did). Outputs of a collection come from folders or ``{stem}``/``{name}`` templates;
    those of one clip are the paths given (a template is filled in)."""
    if manifest is None and not input_specs:
        raise UsageError(words("missing {inputs}: give a video, a folder, a glob, several files, or {manifest=file}.",
                               file=placeholder("FILE")))
    if manifest is not None and input_specs:
        raise UsageError(words("give either {inputs} or {manifest}, not both."))
    if output is None and flow_npy is None and flow_flo is None and manifest is None:
        raise UsageError(words("nothing to write: give {output}, {flow_npy} and/or {flow_flo}."))
    if output is not None and output.suffix.lower() in IMAGE_SUFFIXES:
        folder = f"{output.with_suffix('')}/"
        raise UsageError(f"{setting('output', str(output))}: an image file cannot hold a sequence; give a folder for "
                         f"PNG frames (e.g. {setting('output', folder)}) or a video file (.mp4).")
    templates = {"output": output, "flow_npy": flow_npy, "flow_flo": flow_flo}
    if manifest is not None:
        jobs = [_job_from_row(row, templates, where) for row, where in read_manifest(manifest)]
    else:
        clips = clip_collection(input_specs)
        if clips is None:
            clip = Path(input_specs[0]) if len(input_specs) == 1 else Path(input_specs[0]).parent
            named = [_target(template, clip, kind, 1) if template is not None and "{" in str(template) else template
                     for kind, template in templates.items()]
            return Plan([ClipJob(tuple(input_specs), *named)], collection=False)
        count = len(clips)
        jobs = [ClipJob((str(clip),), *(_target(templates[k], clip, k, count) for k in MANIFEST_COLUMNS[1:]))
                for clip in clips]
    _check_distinct_outputs(jobs)
    return Plan(jobs, collection=True)


def clip_collection(specs: tuple[str, ...]) -> list[Path] | None:
    """The clips INPUT names when it is a collection, in natural name order; ``None`` when it is one clip.

    One word is a collection when it is a folder or glob of videos. Several words are one clip when any is an
    image file (its frames, e.g. a glob the shell expanded); otherwise each word is a clip (a video, a folder or
    glob of frames), and a folder or glob of videos gives its videos."""
    if len(specs) > 1:
        paths = [Path(spec).expanduser() for spec in specs]
        if any(path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES for path in paths):
            return None
        clips = [clip for spec, path in zip(specs, paths) for clip in (_videos(spec) or [path])]
        return sorted(clips, key=natural_key)
    return _videos(specs[0]) if specs else None


def _videos(spec: str) -> list[Path] | None:
    """The videos in folder or glob ``spec``, in natural name order; ``None`` for anything else (a video, a
    folder or glob of frames, a path that does not exist)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
    elif not path.exists() and any(char in spec for char in "*?["):
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
        given = "/".join(map(option_name, MANIFEST_COLUMNS[1:]))
        raise UsageError(f"{where}: no output for {row['input']}; fill its output column or give {given} "
                         "(a folder or a {stem} template) for rows without one.")
    return ClipJob((row["input"],), outputs["output"], outputs["flow_npy"], outputs["flow_flo"])


def _target(template: Path | None, clip: Path, kind: str, count: int) -> Path | None:
    """A clip's output path from a ``{stem}``/``{name}`` template, or ``FOLDER/<stem>.mp4|.npy|/``."""
    if template is None:
        return None
    text = str(template)
    if any(char in clip.name for char in "*?["):
        clip = clip.parent  # a glob of frames (in a manifest) is named after its folder
    if "{" in text:
        try:
            return Path(text.format(stem=clip.stem, name=clip.name))
        except (KeyError, IndexError, ValueError) as error:
            raise UsageError(f"{setting(kind, text)}: a template may hold {{stem}} (the clip's name without extension) "
                             f"and {{name}} only ({error!r} is not one).") from error
    single_file = is_video_path(template) if kind == "output" else template.suffix.lower() == ".npy"
    if single_file:
        folder, stems = f"{template.with_suffix('')}/", str(template.parent / ("{stem}" + template.suffix))
        raise UsageError(f"{setting(kind, text)} names one file but there are {count} or more clips; give a folder "
                         f"({setting(kind, folder)}) or a template ({setting(kind, stems)}).")
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
    ``overwrite`` (an earlier run stopped between moving its outputs into place, or they are not ours)."""
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
                       f"delete them or pass {setting('overwrite', True)} to redo this clip.")
            refused.append(ClipResult(job, error=message, exit_code=EXIT_FAILURE))
    return pending, done, refused


# -- devices ------------------------------------------------------------------------------------------------


def parse_devices(text: str, strict: bool = False) -> list[str]:
    """``devices`` text -> one torch device per worker: ``all`` (every CUDA GPU; one CPU worker without CUDA,
    unless ``strict``), ``0,1`` or ``cuda:0,cuda:1``, ``cpu`` or ``cpu:N``."""
    spec = text.strip().lower()
    if spec == "cpu":
        return ["cpu"]
    if spec.startswith("cpu:"):
        count = spec[4:]
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"{setting('devices', text)}: write cpu:N with N a positive number of CPU workers "
                             "(e.g. cpu:2).")
        return ["cpu"] * int(count)
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "all":
        if available:
            return [f"cuda:{index}" for index in range(available)]
        if strict:
            raise UsageError(words("{devices='all'} with {strict_device=True}: this machine has no CUDA GPU; use "
                                   "{devices=cpus}.", cpus=placeholder("cpu:N")))
        logger.warning(words("{devices='all'}: no CUDA GPU here, so one CPU worker runs the clips (use {devices=cpus} "
                             "for more).", cpus=placeholder("cpu:N")))
        return ["cpu"]
    devices = []
    for part in spec.split(","):
        part = part.strip().removeprefix("cuda:")
        if not part.isdigit():
            raise UsageError(f"{setting('devices', text)}: {part!r} is not a GPU index; write all, 0,1, "
                             "cuda:0,cuda:1 or cpu:N.")
        if int(part) >= available:
            raise UsageError(f"{setting('devices', text)}: GPU {part} does not exist (this machine has {available} "
                             f"CUDA device(s)); use {setting('devices', 'all')}, or cpu:N for CPU workers.")
        devices.append(f"cuda:{int(part)}")
    return devices
