"""The compile process (``python -m scope_optical_flow_tensorrt.core.backends.compile_worker JOB``).

Started by :class:`.compile_process.CompileProcess` with a JSON job: the backend's settings, the key of its cache
entries and the window shapes (pairs) to compile. For each shape it compiles ``encode`` and ``update_step`` with
torch.compile (or finds a valid entry), keeps them as a cache entry and prints one report line. Compiled code does
not depend on weight values (torch.compile lifts parameters to graph inputs), so the model here has seeded random
weights and the entry is written under the host's key, whose weights identity is the host's.

Everything it changes (Dynamo's recompile limit, Inductor's temporary cache) stays in this process. It runs in a
session of its own: when the host exits, even by Ctrl-C, it finishes its shapes and exits, so the next process
finds the entries. SIGTERM (the host's ``close()``) stops it at once, removing its temporary files.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import torch

from ..artifacts.compiled_cache import CompiledKernelCache
from ..common.paths import plugin_models_dir
from .base import BackendConfig
from .compile_process import REPORT_FAILED, report_line
from .torch_backend import TorchFlowBackend


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m scope_optical_flow_tensorrt.core.backends.compile_worker JOB_JSON", file=sys.stderr)
        return 2
    job = json.loads(args[0])
    _stop_on_sigterm()
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
            report = {"pairs": pairs, "route": REPORT_FAILED, "error": f"{type(error).__name__}: {str(error)[:500]}"}
        report["seconds"] = round(time.perf_counter() - started, 3)
        print(report_line(report), flush=True)
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM (the host's ``close()``) unwinds the compile, so its temporary files are removed on the way out."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
