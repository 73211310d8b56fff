"""Command-line set-up shared by the probe scripts that run each variant in a fresh child process of themselves."""

from __future__ import annotations

import argparse
from pathlib import Path

from _checkout import use_this_checkout  # noqa: E402  (same folder)


def parse_probe_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Add ``--out`` (the parent's JSON) and the child's hidden ``--child``/``--models-dir``/``--json`` to the
    probe's own ``parser``, parse, and make this checkout the imported package (in children too)."""
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (required)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_this_checkout()
    if args.child is None and args.out is None:
        parser.error("--out is required")
    return args
