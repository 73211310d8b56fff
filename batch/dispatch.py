"""The order in which a batch hands its clips to workers: the largest first.

Workers take the next clip when they finish one, so a run ends when its last clip ends. Handing out the
longest clips first leaves the short ones for the end, where they fill the gaps between workers instead of
one worker finishing a long clip alone while the others wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .clips import ClipJob
from .errors import CliError
from .inputs import open_inputs


@dataclass(frozen=True)
class ClipSize:
    """What a clip's size is known as before it is decoded: frames (container metadata or image count;
    ``None`` when unknown) and bytes of its input files."""

    frames: int | None
    bytes: int


def clip_size(job: ClipJob) -> ClipSize:
    """A clip's frame count (without decoding it) and input size on disk; a clip that cannot be opened gets
    ``frames=None`` (its worker reports the error when it runs it)."""
    try:
        source = open_inputs(list(job.inputs))
    except (CliError, OSError):
        return ClipSize(None, _bytes([Path(spec).expanduser() for spec in job.inputs]))
    files = source.files if source.files is not None else [Path(source.path)]
    return ClipSize(source.num_frames, _bytes(files))


def largest_first(jobs: list[ClipJob]) -> list[ClipJob]:
    """``jobs`` with the largest first: by frame count when every clip's is known, else by bytes on disk
    (frames and bytes do not compare). Clips of equal size keep their order."""
    sizes = [clip_size(job) for job in jobs]
    by_frames = all(size.frames is not None for size in sizes)
    keys = [(size.frames if by_frames else size.bytes) or 0 for size in sizes]
    order = sorted(range(len(jobs)), key=lambda index: -keys[index])  # stable
    return [jobs[index] for index in order]


def _bytes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:  # missing or unreadable: the clip fails in its worker with the reason
            pass
    return total
