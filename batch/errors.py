"""Exit codes and the error types the command line turns into one line on stderr."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # anything else: model/engine failure, runtime error
EXIT_USAGE = 2  # bad options or arguments (also click's own usage errors)
EXIT_INPUT = 3  # input missing, unreadable, or without frames
EXIT_OUTPUT = 4  # output exists (without --overwrite) or cannot be written


class CliError(Exception):
    """An error with a message meant for the user and the exit code a script can test."""

    exit_code = EXIT_FAILURE


class UsageError(CliError):
    exit_code = EXIT_USAGE


class InputError(CliError):
    exit_code = EXIT_INPUT


class OutputError(CliError):
    exit_code = EXIT_OUTPUT


class ModelError(CliError):
    """The model could not be built or loaded: every clip would fail the same way, so a batch stops at the first
    (``exit_code``: that of the error behind it; bad weights are bad options)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
