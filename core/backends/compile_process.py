"""Compiling in a child process, so that the host's process never runs our torch.compile.

Scope and ComfyUI run the preprocessor inside their own process, beside models they compile themselves. A compile
in the host's process holds its GIL for long stretches, changes process-wide compiler state and records the host's
own compiled code in our cache entries. So the PyTorch backend's kernels are compiled by a child process
(:mod:`.compile_worker`), which writes them as cache entries (:mod:`..compiled_cache`: atomic, under the entry's
lock) and reports each window shape on its standard output. The host only reads those lines, on a daemon thread
that waits on a pipe (it holds no GIL while it waits), and loads an entry when its caller asks
(:meth:`TorchFlowBackend.wait_for_compiled`).

One child at a time per backend, for the shapes asked so far; a shape asked while it runs is handed to it on its
standard input (so the shapes a host met before it exited all get compiled), or to the next child if it has
stopped reading. A child ends when its shapes are done, so it holds no GPU memory after that. The host never
waits for a child when it exits: the child runs in a session of its own (Ctrl-C in the host's terminal does not
reach it), finishes its shapes, writing every entry whatever happened to the pipe it reports on, and exits, so
that the next process finds their entries (a command-line run shorter than the compile still leaves them for the
next run).
``close()`` stops it at once instead. Either way a cache entry is only ever written whole (temporary file, then
rename, under the entry's lock), and temporary files of a stopped or killed child are swept away.

A child that stops making progress (a shape not finished within :func:`shape_limit_s` of its start) is stopped,
by the host's watchdog and by its own, and its shapes are served uncompiled; a later process tries them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..artifacts.engine_cache import sweep_stale_temps
from ..common.log import logger

# How a child is started. Tests replace it with a script that installs their stand-in compiler first.
WORKER_COMMAND: list[str] = [sys.executable, "-m", "scope_optical_flow_tensorrt.core.backends.compile_worker"]
# A child's report lines start with this (anything else it prints, e.g. compiler warnings, goes to the log).
REPORT_PREFIX = "@@optical-flow-compile "
# The route a report gives a shape whose kernels could not be made (the error says why).
REPORT_FAILED = "failed"
# The route of a report that a shape has begun (its time limit starts then).
REPORT_STARTED = "started"
# How long a child may take to exit once asked, before it is killed.
STOP_GRACE_S = 1.0
# The longest one shape may compile before its child counts as hung (a first RAFT Large compile at a large size
# on a busy machine takes minutes); $SCOPE_OPTICAL_FLOW_COMPILE_LIMIT_S sets another.
SHAPE_LIMIT_S = 600.0
SHAPE_LIMIT_ENV = "SCOPE_OPTICAL_FLOW_COMPILE_LIMIT_S"
# A child's start (importing torch, creating its CUDA context) before it reports its first shape, on top of the limit.
STARTUP_ALLOWANCE_S = 180.0
# The exit code of a child whose own watchdog ended it (a shape over its limit, the host gone or not yet aware).
EXIT_HUNG = 75
# The child's CPU priority, set by the host as it starts it (its imports of torch and of the compiler stack take
# seconds of CPU), so the host's threads get the CPU first; Inductor's compile workers inherit it. On Linux the
# child also runs in the SCHED_IDLE class: at nice +10 alone, a caller's own torch.cat of four CPU frames (torch's
# intra-op threads) took 27 ms instead of 0.2 ms beside the child's start (benchmarks/NOTES.md). On Windows the
# child is started at below-normal priority instead.
CHILD_NICENESS = 10
_WATCHDOG_POLL_S = 0.25
_STDERR_TAIL_LINES = 40


def shape_limit_s() -> float:
    """Seconds one shape may take to compile (:data:`SHAPE_LIMIT_S` or ``$SCOPE_OPTICAL_FLOW_COMPILE_LIMIT_S``)."""
    text = os.environ.get(SHAPE_LIMIT_ENV)
    try:
        value = float(text) if text else SHAPE_LIMIT_S
    except ValueError:
        value = SHAPE_LIMIT_S
    return value if value > 0 else SHAPE_LIMIT_S


def report_line(report: dict[str, Any]) -> str:
    """The line a child prints for one finished shape (``report``: ``pairs``, ``route``, ``seconds``, ``error``)."""
    return REPORT_PREFIX + json.dumps(report)


class CompileProcess:
    """Compiles the window shapes asked of it in child processes started with ``job`` (what the worker needs).

    ``reports`` maps each finished shape (pairs) to the child's report: ``route`` is
    ``core.compiled_cache.ROUTE_BUILT``/``ROUTE_LOADED`` when its cache entry is ready, :data:`REPORT_FAILED` with an
    ``error`` otherwise.
    """

    started_in_this_process = 0  # children started by every instance in this process (benchmarks, tests)

    def __init__(self, job: dict[str, Any]) -> None:
        self._job = {"shape_limit_s": shape_limit_s(), **job}
        self._folder = Path(job["config"]["models_dir"]) if "config" in job else None
        self._requested: set[int] = set()
        self._queue: deque[int] = deque()
        self.reports: dict[int, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._closed = False
        self._given: list[int] = []  # the shapes the running child was given (its job and its input)
        self._progress_at = 0.0  # when the running child last reported (its start, a shape begun or finished)
        self._started_at = 0.0  # when the running child was started
        self._hung = False  # the watchdog stopped the running child
        self._reported = False  # the running child has reported (so it has started up)

    @property
    def busy(self) -> bool:
        """Whether shapes are waiting or being compiled."""
        with self._changed:
            return self._process is not None or bool(self._queue)

    def requested(self, pairs: int) -> bool:
        with self._changed:
            return pairs in self._requested

    def request(self, pairs: int, again: bool = False) -> None:
        """Compile ``pairs`` (once; later requests of the same shape do nothing unless ``again``, e.g. when its
        entry turned out unreadable)."""
        with self._changed:
            if (pairs in self._requested and not again) or self._closed:
                return
            self._requested.add(pairs)
            self.reports.pop(pairs, None)
            if self._process is not None and self._hand_over(self._process, pairs):
                return
            self._queue.append(pairs)
            if self._process is None:
                self._start_locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every requested shape has a report (or ``timeout`` seconds pass); whether it did."""
        with self._changed:
            return self._changed.wait_for(lambda: self._process is None and not self._queue, timeout)

    def close(self) -> None:
        """Stop the running child (it removes its temporary files) and start no other."""
        with self._changed:
            self._closed = True
            self._queue.clear()
            process = self._process
        if process is not None:
            stop_child(process, self._folder)

    # -- internals ----------------------------------------------------------------------------------

    def _hand_over(self, process: subprocess.Popen[str], pairs: int) -> bool:
        """Give the running child one more shape on its standard input; whether it could be written."""
        try:
            assert process.stdin is not None
            process.stdin.write(f"{pairs}\n")
            process.stdin.flush()
        except (OSError, ValueError):  # it has exited or closed its input: the next child takes the shape
            return False
        self._given.append(pairs)
        logger.info("handed windows of %d pairs to the running compile process (pid %d)", pairs, process.pid)
        return True

    def _start_locked(self) -> None:
        shapes = list(self._queue)
        self._queue.clear()
        job = {**self._job, "pairs": shapes}
        try:
            process = subprocess.Popen(
                [*WORKER_COMMAND, json.dumps(job)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
                creationflags=getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0),
            )
            lower_priority(process.pid)
        except OSError as error:
            for pairs in shapes:
                self.reports[pairs] = {"pairs": pairs, "route": REPORT_FAILED, "error": f"could not start: {error}"}
            self._changed.notify_all()
            return
        self._process = process
        self._given = list(shapes)
        self._started_at = self._progress_at = time.monotonic()
        self._reported = False
        self._hung = False
        CompileProcess.started_in_this_process += 1
        logger.info("compiling windows of %s pairs in a child process (pid %d)", shapes, process.pid)
        tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        threading.Thread(target=_collect, args=(process.stderr, tail), daemon=True,
                         name="compile-process-log").start()
        threading.Thread(target=self._watch, args=(process, tail), daemon=True,
                         name="compile-process-watch").start()
        threading.Thread(target=self._watchdog, args=(process,), daemon=True,
                         name="compile-process-watchdog").start()

    def _watch(self, process: subprocess.Popen[str], tail: deque[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:  # blocks on the pipe (no GIL held) until the child writes or exits
            if not line.startswith(REPORT_PREFIX):
                logger.debug("compile process: %s", line.rstrip())
                continue
            report = json.loads(line[len(REPORT_PREFIX):])
            with self._changed:
                if not self._reported:
                    logger.info("the compile process (pid %d) started up in %.1f s", process.pid,
                                time.monotonic() - self._started_at)
                self._progress_at = time.monotonic()
                self._reported = True
                if report.get("route") != REPORT_STARTED:
                    self.reports[int(report["pairs"])] = report
                    logger.info("the compile process made windows of %s pairs ready in %s s (%s)", report["pairs"],
                                report.get("seconds"), report["route"])
                self._changed.notify_all()
        returncode = process.wait()
        with self._changed:
            missing = [pairs for pairs in self._given if pairs not in self.reports]
            if missing and returncode == 0 and not self._closed:
                # handed over after the child had stopped reading its input: the next child takes them
                self._queue.extend(pairs for pairs in missing if pairs not in self._queue)
            elif missing and not self._closed:
                if self._hung or returncode == EXIT_HUNG:  # stopped by the host's watchdog or by its own
                    error = (f"the compile process made no progress for {self._job['shape_limit_s']:.0f} s and was "
                             f"stopped (${SHAPE_LIMIT_ENV} sets that limit); a later process tries again")
                else:
                    error = f"the compile process exited with code {returncode}: " + " | ".join(list(tail)[-5:])
                for pairs in missing:
                    self.reports[pairs] = {"pairs": pairs, "route": REPORT_FAILED, "error": error}
            self._process = None
            if self._queue and not self._closed:
                self._start_locked()
            self._changed.notify_all()

    def _watchdog(self, process: subprocess.Popen[str]) -> None:
        """Stop ``process`` once it has gone :func:`shape_limit_s` without a report (it hangs)."""
        shape_limit = float(self._job["shape_limit_s"])
        while process.poll() is None:
            with self._changed:
                stalled = time.monotonic() - self._progress_at
                limit = shape_limit + (0.0 if self._reported else STARTUP_ALLOWANCE_S)
            if stalled > limit:
                logger.warning("the compile process (pid %d) made no progress for %.0f s; stopping it (the "
                               "uncompiled model keeps serving)", process.pid, stalled)
                with self._changed:
                    self._hung = True
                stop_child(process, self._folder)
                return
            try:
                process.wait(min(_WATCHDOG_POLL_S, max(0.01, limit - stalled)))
            except subprocess.TimeoutExpired:
                pass


def lower_priority(pid: int) -> None:
    """Give process ``pid`` (a child just started) :data:`CHILD_NICENESS` more than this process has, and on Linux
    the ``SCHED_IDLE`` scheduling class (lowering a child's priority needs no privilege). A child that has already
    exited, or a system that refuses, is left as it is."""
    if hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + CHILD_NICENESS))
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def in_idle_class() -> bool:
    """Whether this process runs in Linux's ``SCHED_IDLE`` class (a compile child the host has lowered)."""
    if not (hasattr(os, "sched_getscheduler") and hasattr(os, "SCHED_IDLE")):
        return False
    try:
        return os.sched_getscheduler(0) == os.SCHED_IDLE
    except OSError:
        return False


def _collect(stream: Any, tail: deque[str]) -> None:
    for line in stream:
        tail.append(line.rstrip())


def stop_child(process: subprocess.Popen[str], folder: Path | None = None) -> None:
    """Stop a child now (SIGTERM: it removes its temporary files), killing it after :data:`STOP_GRACE_S` (e.g. in
    the middle of writing a large entry); then sweep ``folder`` of the temporary files it could not remove."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if folder is not None:
        sweep_stale_temps(folder)
