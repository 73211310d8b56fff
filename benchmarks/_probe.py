"""Set-up shared by the probe scripts that run each variant in a fresh child process of themselves."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def probe_header(size: int) -> dict[str, Any]:
    """What every probe's JSON records first: the device (and cores), torch, Python, the size, the weights, the
    commit (``$BENCH_COMMIT``)."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": f"{device} ({os.cpu_count()} cores)", "torch": torch.__version__,
            "python": sys.version.split()[0], "size": f"{size}x{size}", "weights": "seeded random",
            "commit": os.environ.get("BENCH_COMMIT")}


def run_variant(script: str, variant: str, models: Path, out: Path, *options: str) -> dict[str, Any]:
    """Run ``variant`` in a fresh process of the probe ``script`` on the models folder ``models``; its JSON (written
    to ``out``), or ``{"variant", "error"}`` with the tail of its standard error when it failed."""
    command = [sys.executable, str(Path(script).resolve()), "--child", variant, "--models-dir", str(models),
               "--json", str(out), *options]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        return {"variant": variant, "error": completed.stderr[-2000:]}
    return json.loads(out.read_text())
