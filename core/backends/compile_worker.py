"""The compile process (``python -m scope_optical_flow_tensorrt.core.backends.compile_worker JOB``).

Started by :class:`.compile_process.CompileProcess` with a JSON job: the backend's settings, the key of its cache
entries, the window shapes (pairs) to compile and how long one may take. For each shape it compiles ``encode`` and
``update_step`` with torch.compile (or finds a valid entry), keeps them as a cache entry and prints one report line.
Compiled code does not depend on weight values (torch.compile lifts parameters to graph inputs), so the model here
has seeded random weights and the entry is written under the host's key, whose weights identity is the host's.

Everything it changes (Dynamo's recompile limit, Inductor's temporary cache and compile threads) stays in this
process. It runs at a lower CPU priority than its host (set by the host as it starts it: its live calls come first),
with Inductor's compile workers (one per core in Linux's ``SCHED_IDLE`` class, :data:`COMPILE_THREADS` elsewhere),
and in a session of its own: when the host exits,
even by Ctrl-C or a kill, it finishes its shapes, writing every entry even though nobody reads its reports any
more, and exits, so the next process finds the entries. SIGTERM (the host's ``close()``) stops it at once,
removing its temporary files; a shape that takes longer than the job's limit ends it (its own watchdog, for when
no host is left to stop it).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch

from ..artifacts.compiled_cache import CompiledKernelCache
from ..artifacts.engine_cache import TEMP_MARKER, sweep_stale_temps
from ..common.paths import plugin_models_dir
from .base import BackendConfig
from .compile_process import EXIT_HUNG, REPORT_FAILED, REPORT_STARTED, SHAPE_LIMIT_S, in_idle_class, report_line
from .torch_backend import TorchFlowBackend

# Inductor's compile workers in a child that is not in Linux's SCHED_IDLE class (Windows, macOS, a system that
# refused it), unless $TORCHINDUCTOR_COMPILE_THREADS says otherwise. Inductor's default is one per core: at nice +10
# alone, 2 workers compiled in 18.9 s against 16.9 s and the host's worst second of live calls beside them was 10.9
# against 12.0 ms. In SCHED_IDLE the workers get only cores the host leaves idle, so the child keeps the default:
# a cold constructor took 22.8 s against 25.6 s with 2, and live calls beside it 8.09-8.15 ms against 8.10-8.13
# (benchmarks/NOTES.md, "Compile threads in SCHED_IDLE").
COMPILE_THREADS = 2
COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"
_INPUT_GRACE_S = 0.1  # how long a child that has done its shapes waits for one more on its input


class Reporter:
    """Report lines to the host; once the host is gone (its pipe closed) they are dropped, and the shapes go on."""

    def __init__(self) -> None:
        self.host_gone = False

    def send(self, report: dict[str, Any]) -> None:
        if self.host_gone:
            return
        try:
            print(report_line(report), flush=True)
        except (BrokenPipeError, OSError):
            self.host_gone = True
            _silence_standard_streams()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m scope_optical_flow_tensorrt.core.backends.compile_worker JOB_JSON", file=sys.stderr)
        return 2
    job = json.loads(args[0])
    _stop_on_sigterm()
    limit_compile_threads()
    settings: dict[str, Any] = job["config"]
    config = BackendConfig(
        height=settings["height"], width=settings["width"], device=torch.device(settings["device"]),
        fp16=settings["fp16"], num_flow_updates=settings["num_flow_updates"], max_pairs=settings["max_pairs"],
        fused_lookup=settings["fused_lookup"], model=settings["model"], models_dir=settings["models_dir"],
        cuda_graphs=False, compile_in_background=False,
    )
    folder = plugin_models_dir(config.models_dir)
    sweep_stale_temps(folder)
    watchdog = Watchdog(float(job.get("shape_limit_s", SHAPE_LIMIT_S)), folder)
    reporter = Reporter()
    if config.device.type == "cuda":
        torch.cuda.set_device(config.device)  # this process's own current device (TensorRT-free, Triton uses it)
    cache = CompiledKernelCache(folder, job["base_key"])
    backend = TorchFlowBackend(config, weights=None, compile_here=cache)
    for pairs in shapes_to_compile(job["pairs"]):
        started = time.perf_counter()
        watchdog.begin()
        reporter.send({"pairs": pairs, "route": REPORT_STARTED})
        try:
            route = backend.compile_here(int(pairs))
            report: dict[str, Any] = {"pairs": pairs, "route": route}
        except Exception as error:  # reported to the host, which keeps serving the uncompiled model
            report = {"pairs": pairs, "route": REPORT_FAILED, "error": f"{type(error).__name__}: {str(error)[:500]}"}
        watchdog.end()
        report["seconds"] = round(time.perf_counter() - started, 3)
        reporter.send(report)
    return 0


def shapes_to_compile(first: list[int]) -> Iterator[int]:
    """The job's shapes, then those the host hands over on this process's input while it compiles (read until
    none is waiting: a shape handed over after that goes to the host's next child)."""
    handed_over: queue.Queue[int] = queue.Queue()

    def read_input() -> None:
        for line in sys.stdin:
            if line.strip().isdigit():
                handed_over.put(int(line))

    threading.Thread(target=read_input, daemon=True, name="optical-flow-compile-input").start()
    done: set[int] = set()
    pending = list(first)
    while True:
        while not pending:
            try:
                pending.append(handed_over.get(timeout=_INPUT_GRACE_S))
            except queue.Empty:
                return
        pairs = pending.pop(0)
        if pairs not in done:
            done.add(pairs)
            yield pairs


class Watchdog:
    """Ends this process when one shape takes longer than ``limit_s`` (removing its temporary files first)."""

    def __init__(self, limit_s: float, folder: Path) -> None:
        self.limit_s = limit_s
        self.folder = folder
        self._began: float | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True, name="optical-flow-compile-watchdog").start()

    def begin(self) -> None:
        with self._lock:
            self._began = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self._began = None

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit_s / 4))
            with self._lock:
                overdue = self._began is not None and time.monotonic() - self._began > self.limit_s
            if overdue:
                _remove_own_temps(self.folder)
                os._exit(EXIT_HUNG)


def _remove_own_temps(folder: Path) -> None:
    marker = f"{TEMP_MARKER}{os.getpid()}-"
    for child in folder.glob(f"*{marker}*"):
        child.unlink(missing_ok=True)


def _silence_standard_streams() -> None:
    """The host is gone: what would have gone to its pipes (compiler warnings, the last report) goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass


def limit_compile_threads(idle: bool | None = None) -> int | None:
    """Have Inductor compile with :data:`COMPILE_THREADS` workers unless this process runs in ``SCHED_IDLE``
    (``idle``; read from the process when ``None``), where Inductor keeps its default of one per core;
    ``$TORCHINDUCTOR_COMPILE_THREADS``, which Inductor reads itself, decides where it is set. Returns the count in
    force (``None`` where Inductor decides it later)."""
    import torch._inductor.config as inductor_config

    if idle is None:
        idle = in_idle_class()
    if not os.environ.get(COMPILE_THREADS_ENV) and not idle:
        current = inductor_config.compile_threads  # one per core (None where Inductor decides it later)
        inductor_config.compile_threads = COMPILE_THREADS if current is None else min(COMPILE_THREADS, current)
    return inductor_config.compile_threads


def _stop_on_sigterm() -> None:
    """SIGTERM (the host's ``close()``) unwinds the compile, so its temporary files are removed on the way out."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
