"""The compile process (``python -m scope_optical_flow_tensorrt.core.backends.compile_worker JOB``).

Started by :class:`.compile_process.CompileProcess` with a JSON job: the backend's settings, the key of its cache
entries and the window shapes (pairs) to compile. For each shape it compiles ``encode`` and ``update_step`` with
torch.compile (or finds a valid entry), keeps them as a cache entry and prints one report line. Compiled code does
not depend on weight values (torch.compile lifts parameters to graph inputs), so the model here has seeded random
weights and the entry is written under the host's key, whose weights identity is the host's.

Everything it changes (Inductor's cache folder, Dynamo's recompile limit) stays in this process. It stops when its
standard input closes (the host exited or closed it) or on SIGTERM, removing its temporary files; where the
kernel supports it, it also gets SIGTERM when the host dies.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

import torch

from ..compiled_cache import CompiledKernelCache
from ..paths import plugin_models_dir
from .base import BackendConfig
from .compile_process import report_line
from .torch_backend import TorchFlowBackend

_PR_SET_PDEATHSIG = 1
_EXIT_GRACE_S = 1.5


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m scope_optical_flow_tensorrt.core.backends.compile_worker JOB_JSON", file=sys.stderr)
        return 2
    job = json.loads(args[0])
    _stop_with_host()
    settings: dict[str, Any] = job["config"]
    config = BackendConfig(
        height=settings["height"], width=settings["width"], device=torch.device(settings["device"]),
        fp16=settings["fp16"], num_flow_updates=settings["num_flow_updates"], max_pairs=settings["max_pairs"],
        fused_lookup=settings["fused_lookup"], model=settings["model"], models_dir=settings["models_dir"],
        cuda_graphs=False, compile_in_background=False,
    )
    if config.device.type == "cuda":
        torch.cuda.set_device(config.device)  # this process's own current device (TensorRT-free, Triton uses it)
    cache = CompiledKernelCache(plugin_models_dir(config.models_dir), job["base_key"])
    backend = TorchFlowBackend(config, weights=None, compile_here=cache)
    for pairs in job["pairs"]:
        started = time.perf_counter()
        try:
            route = backend.compile_here(int(pairs))
            report: dict[str, Any] = {"pairs": pairs, "route": route}
        except Exception as error:  # reported to the host, which keeps serving the uncompiled model
            report = {"pairs": pairs, "route": "failed", "error": f"{type(error).__name__}: {str(error)[:500]}"}
        report["seconds"] = round(time.perf_counter() - started, 3)
        print(report_line(report), flush=True)
    return 0


def _stop_with_host() -> None:
    """SIGTERM (also from the kernel when the host dies) and a closed standard input end this process cleanly."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_exit_when_stdin_closes, daemon=True, name="host-watch").start()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds the compile: temporary files are removed on the way out


def _exit_when_stdin_closes() -> None:
    sys.stdin.read()  # returns at end of file: the host is gone or does not want the result any more
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(_EXIT_GRACE_S)  # the main thread did not unwind in time (e.g. inside a long native call)
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
