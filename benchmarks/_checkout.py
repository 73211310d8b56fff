"""Make ``import scope_optical_flow_tensorrt`` load this checkout, for the benchmark scripts and their workers.

Benchmarks run from a checkout on GPU machines where the package is not installed and the folder may have any
name. The package is reached through a folder on ``sys.path`` holding a link named after it (the checkout's
parent when the folder already has that name); ``PYTHONPATH`` carries it to spawned worker processes.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "scope_optical_flow_tensorrt"


def use_this_checkout() -> None:
    """Import the package from this checkout under its name, also in spawned workers (they inherit sys.path)."""
    if ROOT.name == PACKAGE:
        link_dir = ROOT.parent
    else:
        # One folder per checkout: two checkouts benchmarked at once must not re-point each other's link.
        checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
        user = os.getuid() if hasattr(os, "getuid") else 0
        link_dir = Path(tempfile.gettempdir()) / f"{PACKAGE}-bench-{user}-{checkout}"
        link_dir.mkdir(exist_ok=True)
        link = link_dir / PACKAGE
        if link.is_symlink() and link.resolve() != ROOT:
            link.unlink()
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(link_dir))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(link_dir), os.environ.get("PYTHONPATH")]))
