"""The ``scope-optical-flow`` command line: run, demo, prebuild, info, cache clear, bench.

A thin face over the core: every command builds an ``OpticalFlowTensorRTPreprocessor`` (or calls the engine
manager) and only adds reading, writing and reporting. Heavy modules (torch, PyAV) load inside commands.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from .app import main as app_main

    return app_main(argv)


__all__ = ["main"]
