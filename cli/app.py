"""The ``scope-optical-flow`` command group and its error handling (one line on stderr, stable exit codes)."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence

import click

from .bench import bench_command
from .demo import demo_command
from .engines import cache_group, info_command, prebuild_command
from ..batch import EXIT_FAILURE, EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE, CliError, timeline
from .run import run_command
from .state import PROG_NAME, configure_logging, set_quiet, set_verbose, settings

EPILOG = (
    "Exit codes: 0 success, 1 failure, 2 bad options, 3 input missing/unreadable/without frames, "
    "4 output exists or cannot be written. Errors are one line on stderr; --verbose adds the traceback."
)


def _common_options(quiet_keeps: str = "") -> list[click.Option]:
    """``--verbose`` and ``--quiet``; ``quiet_keeps`` names what a command still prints with ``--quiet``."""
    return [
        click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True, callback=set_verbose,
                     help="Log details and show tracebacks on errors."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True, callback=set_quiet,
                     help="No progress bar, warnings or summary lines: errors only"
                          + (f" (and {quiet_keeps})." if quiet_keeps else ".")),
    ]


QUIET_KEEPS = {"demo": "the notice that the weights are untrained"}


class OrderedGroup(click.Group):
    """Lists commands in the order they were added (the common ones first), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(name=PROG_NAME, cls=OrderedGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scope-optical-flow-tensorrt", prog_name=PROG_NAME)
def cli() -> None:
    """Optical-flow maps (RAFT Small or Large; TensorRT or PyTorch) for videos and image sequences.

    Start with `scope-optical-flow demo`: it needs no input.
    """
    configure_logging()


for _command in (run_command, demo_command, prebuild_command, info_command, cache_group, bench_command):
    _command.params.extend(_common_options(QUIET_KEEPS.get(_command.name or "", "")))
    _command.context_settings.setdefault("help_option_names", ["-h", "--help"])
    cli.add_command(_command)
cli.params.extend(_common_options())
for _sub in cache_group.commands.values():
    _sub.params.extend(_common_options())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m scope_optical_flow_tensorrt``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    timeline["cli_main"] = time.time()
    settings.verbose = settings.quiet = False
    try:
        result = cli.main(args=args, prog_name=PROG_NAME, standalone_mode=False)
    except click.exceptions.Abort:
        return _fail("interrupted.", 130)
    except KeyboardInterrupt:
        return _fail("interrupted.", 130)
    except click.UsageError as error:
        return _fail(f"{error.format_message()} (see '{_command_path(error)} --help')", EXIT_USAGE)
    except click.ClickException as error:
        return _fail(error.format_message(), error.exit_code)
    except CliError as error:
        return _fail(str(error), error.exit_code)
    except FileNotFoundError as error:
        return _fail(str(error), EXIT_INPUT)
    except PermissionError as error:
        return _fail(str(error), EXIT_OUTPUT)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as error:
        return _fail(f"{str(error) or type(error).__name__}", EXIT_FAILURE)
    return result if isinstance(result, int) else 0


def _command_path(error: click.UsageError) -> str:
    return error.ctx.command_path if error.ctx is not None else PROG_NAME


def _fail(message: str, code: int) -> int:
    if settings.verbose and sys.exc_info()[0] is not None:
        traceback.print_exc()
    one_line = " ".join(message.split())
    click.echo(f"{PROG_NAME}: error: {one_line}", err=True)
    return code
