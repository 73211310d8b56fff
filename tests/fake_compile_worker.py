"""The compile process with the stand-in compiler (tests point ``compile_process.WORKER_COMMAND`` here).

Runs ``core.backends.compile_worker`` after installing :mod:`fake_compile`'s stand-ins in this process; what it
compiles is appended to ``$FAKE_COMPILE_LOG`` so the test can count compiles across processes. With
``$FAKE_WORKER_STATE`` (a path) it writes there, as JSON, its niceness and scheduling policy once its imports
(torch, the package) are done and Inductor's ``compile_threads`` once ``compile_worker`` has set up.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_compile import FakeTorchCompile, install  # noqa: E402
from scope_optical_flow_tensorrt.core.backends import compile_worker  # noqa: E402


def main() -> int:
    log = os.environ.get("FAKE_COMPILE_LOG")
    state = os.environ.get("FAKE_WORKER_STATE")
    niceness_after_imports = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None
    policy_after_imports = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    fake = FakeTorchCompile(Path(log) if log else None)
    install(fake, setattr)
    returncode = compile_worker.main()
    if state:
        Path(state).write_text(json.dumps({"niceness_after_imports": niceness_after_imports,
                                           "policy_after_imports": policy_after_imports,
                                           "compile_threads": fake.compile_threads_seen[-1:]}))
    return returncode


if __name__ == "__main__":
    sys.exit(main())
