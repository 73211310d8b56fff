"""The preprocessor of a batch: built from the core's keyword arguments, loaded before any output is written, and
kept, one per process, for every clip that process runs."""

from __future__ import annotations

from typing import Any

from .errors import EXIT_USAGE, InputError, ModelError, UsageError


def build_preprocessor(**options: Any) -> Any:
    """``OpticalFlowTensorRTPreprocessor(**options)``; the core's ValueError/TypeError (a bad option value) become
    usage errors (exit code 2) with the core's message. Construction loads nothing."""
    from ..core import OpticalFlowTensorRTPreprocessor

    try:
        return OpticalFlowTensorRTPreprocessor(**options)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error


def load_model(flow: Any, warmup: int | bool = False, size: tuple[int, int] | None = None) -> None:
    """Load weights/engine now, so a bad ``weights`` fails before any input is read or output written;
    ``warmup`` (frames per call) also captures the shapes such calls use and asks for their compiled kernels (the
    compile process makes those not on disk); switching to them is the compute loop's call, where it pays.
    At the input's own size the model is built for the input frames' ``size``; without it, at the first input.
    Frames too small for the input's own size are bad input (:class:`InputError`, exit code 3); any other failure
    is a :class:`ModelError`: a missing or unusable weights file, or a size that cannot fit the device's memory,
    is a bad option (exit code 2). The core's messages already name the option (``--weights`` on the command
    line), so they are passed on as they are."""
    from ..core.common.errors import FrameError
    from ..core.memory import TooLargeForMemory

    try:
        # Compiled kernels (entries on disk, or compiled by the child that warm-up starts) are not switched to
        # here: switching costs seconds of this process's time (Dynamo's trace and Inductor's kernels, 3-5 s
        # warm on an H100) and pays only on long work, which the compute loop judges after each chunk from the
        # measured rate (clips.worth_switching). A 2,400-frame clip is done in 3 s uncompiled; switching first
        # made its first frame 8-10 s late and its whole run slower (benchmarks/NOTES.md). Loading on a thread
        # while the uncompiled model served took this process's Python lock (814 -> 254 frames/s).
        flow.load(warmup=warmup, size=size)
    except TooLargeForMemory as error:  # the size (or the input's own size) cannot fit: the message names the fix
        raise ModelError(str(error), EXIT_USAGE) from error
    except FrameError as error:
        raise InputError(str(error)) from error
    except (FileNotFoundError, ValueError) as error:
        raise ModelError(str(error), EXIT_USAGE) from error
    except Exception as error:
        raise ModelError(str(error) or type(error).__name__) from error


_worker: dict[str, Any] = {}


def worker_preprocessor(options: dict[str, Any], warmup: int | bool = False) -> Any:
    """This process's preprocessor for ``options`` (``build_preprocessor``'s arguments), built and loaded on
    first use and kept for every later clip (a new one only if the options change). A worker started ahead
    of its clips passes ``warmup`` (frames per call) to compile or load the kernels of those shapes now."""
    key = repr(sorted(options.items()))
    if _worker.get("key") != key:
        _worker.clear()
        flow = build_preprocessor(**options)
        load_model(flow, warmup=warmup)
        _worker.update(key=key, flow=flow)
    return _worker["flow"]
