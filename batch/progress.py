"""Progress of a batch, for a callback: clips and frames done so far. The default callback is a tqdm bar on
stderr, which turns itself off where stderr is no terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clips import ClipResult


@dataclass(frozen=True)
class Progress:
    """Where a batch stands; the callback gets one at the start, after each computed chunk and after each clip.

    ``clip_frames`` is the frame count of the clip that has just started in this process (``None`` where its
    container does not say, and for clips run by workers, which report frames only); ``result`` is the clip that
    has just finished."""

    clips: int  # clips to run (those skipped as done are not counted)
    done: int = 0  # clips finished, failed ones included
    failed: int = 0
    frames: int = 0  # frames computed so far, all clips
    clip_frames: int | None = None
    result: ClipResult | None = None


ProgressCallback = Callable[[Progress], Any]


class Tracker:
    """Counts a batch's progress and hands each change to ``callback`` (``None``: no one wants it); ``close``
    closes a callback that has a ``close`` method (a bar)."""

    def __init__(self, clips: int, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.state = Progress(clips)
        self._tell(self.state)

    def clip_started(self, frames: int | None) -> None:
        self._tell(replace(self.state, clip_frames=frames))

    def add_frames(self, count: int) -> None:
        self.state = replace(self.state, frames=self.state.frames + count)
        self._tell(self.state)

    def clip_done(self, result: ClipResult) -> None:
        failed = self.state.failed + (0 if result.ok else 1)
        self.state = replace(self.state, done=self.state.done + 1, failed=failed)
        self._tell(replace(self.state, result=result))

    def _tell(self, progress: Progress) -> None:
        if self.callback is not None:
            self.callback(progress)

    def close(self) -> None:
        close = getattr(self.callback, "close", None)
        if close is not None:
            close()


class ProgressBar:
    """The default progress callback: tqdm on stderr (off where stderr is no terminal). One clip: its frames,
    frames/s and time left; several: clips done of all (with time left), frames and failures so far."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown = 0  # frames (one clip) or clips the bar counts so far

    def __call__(self, progress: Progress) -> None:
        if self.bar is None:
            if progress.clips == 1 and progress.frames == 0 and progress.clip_frames is None:
                return  # one clip: its bar counts frames, so it waits for the clip's frame count
            self.bar = self._open(progress)
        count = progress.frames if progress.clips == 1 else progress.done
        self.bar.update(count - self.shown)
        self.shown = count
        if progress.clips != 1:
            self.bar.set_postfix(frames=progress.frames, failed=progress.failed, refresh=False)

    @staticmethod
    def _open(progress: Progress) -> Any:
        from tqdm import tqdm

        if progress.clips == 1:
            return tqdm(total=progress.clip_frames, unit="frame", desc="flow", dynamic_ncols=True, file=sys.stderr,
                        disable=None)  # None: tqdm turns itself off on a non-terminal
        return tqdm(total=progress.clips, unit="clip", desc="clips", dynamic_ncols=True, file=sys.stderr,
                    disable=None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
