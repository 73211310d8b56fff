"""Errors that tell a face what kind of problem it is, so each face can answer in its own way (the command line's
exit codes: 2 for a bad option, 3 for bad input)."""

from __future__ import annotations


class FrameError(ValueError):
    """The frames themselves cannot be used (too small for RAFT, NaN, out of range, wrong shape), whatever the
    options: bad input, not a bad option. A ``ValueError``, so callers that catch those keep working."""
