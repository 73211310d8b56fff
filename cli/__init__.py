"""The ``scope-optical-flow`` command line: run, demo, prebuild, info, cache clear, bench.

A thin face: it parses options, prints and turns errors into exit codes. ``run`` is a call of
:func:`scope_optical_flow_tensorrt.batch.process`; the other commands build an ``OpticalFlowTensorRTPreprocessor``
(or call the engine manager) themselves. Heavy modules (torch, PyAV) load inside commands.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from .app import main as app_main

    return app_main(argv)


__all__ = ["main"]
