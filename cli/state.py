"""Process-wide output settings (verbose, quiet), logging to stderr and result lines."""

from __future__ import annotations

import logging
import sys

import click

PROG_NAME = "scope-optical-flow"


class Settings:
    verbose = False
    quiet = False


settings = Settings()


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
