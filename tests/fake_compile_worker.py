"""The compile process with the stand-in compiler (tests point ``compile_process.WORKER_COMMAND`` here).

Runs ``core.backends.compile_worker`` after installing :mod:`fake_compile`'s stand-ins in this process; what it
compiles is appended to ``$FAKE_COMPILE_LOG`` so the test can count compiles across processes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_compile import FakeTorchCompile, install  # noqa: E402
from scope_optical_flow_tensorrt.core.backends import compile_worker  # noqa: E402


def main() -> int:
    log = os.environ.get("FAKE_COMPILE_LOG")
    install(FakeTorchCompile(Path(log) if log else None), setattr)
    return compile_worker.main()


if __name__ == "__main__":
    sys.exit(main())
