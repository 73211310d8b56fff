"""Process-wide output settings (verbose, quiet), logging to stderr, progress bars and result lines."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

PROG_NAME = "scope-optical-flow"


class Settings:
    verbose = False
    quiet = False


settings = Settings()
# Moments of this process's start-up, time.time() by name ("cli_main", "preprocessor_built"), for --report/--verbose.
timeline: dict[str, float] = {}


def set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Eager option callback: ``--verbose`` anywhere on the line turns on tracebacks and info logs."""
    if value:
        settings.verbose = True
        configure_logging()


def set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        settings.quiet = True
        configure_logging()


def configure_logging() -> None:
    """The package's log (fallback warnings, untrained weights, backend choice) goes to stderr, one line each."""
    logger = logging.getLogger("scope_optical_flow_tensorrt")
    if not any(isinstance(handler, StderrHandler) for handler in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(f"{PROG_NAME}: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if settings.verbose else logging.ERROR if settings.quiet else logging.WARNING)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be swapped, e.g. by tqdm)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def say(message: str) -> None:
    """A result line on stdout (suppressed by --quiet)."""
    if not settings.quiet:
        click.echo(message)


def notice(message: str) -> None:
    """A line for the user on stderr (even with --quiet: used for things they must not miss)."""
    click.echo(message, err=True)


def progress_bar(total: int | None, **kwargs: Any) -> Any:
    """tqdm on stderr: frames done, frames/s and time left; off with --quiet or when stderr is no terminal."""
    from tqdm import tqdm

    disable = True if settings.quiet else None  # None: tqdm turns itself off on a non-terminal
    return tqdm(total=total, disable=disable, dynamic_ncols=True, file=sys.stderr, **kwargs)


def process_started_at() -> float:
    """``time.time()`` at which this process started (from ``/proc`` on Linux; else when the CLI was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()
