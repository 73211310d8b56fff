"""Compiling in a child process, so that the host's process never runs our torch.compile.

Scope and ComfyUI run the preprocessor inside their own process, beside models they compile themselves. A compile
in the host's process holds its GIL for long stretches, changes process-wide compiler state and records the host's
own compiled code in our cache entries. So the PyTorch backend's kernels are compiled by a child process
(:mod:`.compile_worker`), which writes them as cache entries (:mod:`..compiled_cache`: atomic, under the folder's
lock) and reports each window shape on its standard output. The host only reads those lines, on a daemon thread
that waits on a pipe (it holds no GIL while it waits), and loads an entry when its caller asks
(:meth:`TorchFlowBackend.wait_for_compiled`).

One child at a time per backend, for the shapes asked so far; shapes asked while it runs go to the next child.
A child ends when its shapes are done, so it holds no GPU memory after that. The host never waits for a child
when it exits: the child runs in a session of its own (Ctrl-C in the host's terminal does not reach it), finishes
its shapes and exits, so that the next process finds their entries (a command-line run shorter than the compile
still leaves them for the next run). ``close()`` stops it at once instead. Either way a cache entry is only ever
written whole (temporary file, then rename, under the folder's lock).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from typing import Any

from ..common.log import logger

# How a child is started. Tests replace it with a script that installs their stand-in compiler first.
WORKER_COMMAND: list[str] = [sys.executable, "-m", "scope_optical_flow_tensorrt.core.backends.compile_worker"]
# A child's report lines start with this (anything else it prints, e.g. compiler warnings, goes to the log).
REPORT_PREFIX = "@@optical-flow-compile "
# The route a report gives a shape whose kernels could not be made (the error says why).
REPORT_FAILED = "failed"
# How long a child may take to exit once asked, before it is killed.
STOP_GRACE_S = 1.0
_STDERR_TAIL_LINES = 40


def report_line(report: dict[str, Any]) -> str:
    """The line a child prints for one finished shape (``report``: ``pairs``, ``route``, ``seconds``, ``error``)."""
    return REPORT_PREFIX + json.dumps(report)


class CompileProcess:
    """Compiles the window shapes asked of it in child processes started with ``job`` (what the worker needs).

    ``reports`` maps each finished shape (pairs) to the child's report: ``route`` is
    ``core.compiled_cache.ROUTE_BUILT``/``ROUTE_LOADED`` when its cache entry is ready, :data:`REPORT_FAILED` with an
    ``error`` otherwise.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self._job = job
        self._requested: set[int] = set()
        self._queue: deque[int] = deque()
        self.reports: dict[int, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._closed = False

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
            stop_child(process)

    # -- internals ----------------------------------------------------------------------------------

    def _start_locked(self) -> None:
        shapes = list(self._queue)
        self._queue.clear()
        job = {**self._job, "pairs": shapes}
        try:
            process = subprocess.Popen(
                [*WORKER_COMMAND, json.dumps(job)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
            )
        except OSError as error:
            for pairs in shapes:
                self.reports[pairs] = {"pairs": pairs, "route": REPORT_FAILED, "error": f"could not start: {error}"}
            self._changed.notify_all()
            return
        self._process = process
        logger.info("compiling windows of %s pairs in a child process (pid %d)", shapes, process.pid)
        tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        threading.Thread(target=_collect, args=(process.stderr, tail), daemon=True,
                         name="optical-flow-compile-log").start()
        threading.Thread(target=self._watch, args=(process, shapes, tail), daemon=True,
                         name="optical-flow-compile-watch").start()

    def _watch(self, process: subprocess.Popen[str], shapes: list[int], tail: deque[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:  # blocks on the pipe (no GIL held) until the child writes or exits
            if not line.startswith(REPORT_PREFIX):
                logger.debug("compile process: %s", line.rstrip())
                continue
            report = json.loads(line[len(REPORT_PREFIX):])
            with self._changed:
                self.reports[int(report["pairs"])] = report
                self._changed.notify_all()
        returncode = process.wait()
        with self._changed:
            missing = [pairs for pairs in shapes if pairs not in self.reports]
            if missing and not self._closed:
                error = f"the compile process exited with code {returncode}: " + " | ".join(list(tail)[-5:])
                for pairs in missing:
                    self.reports[pairs] = {"pairs": pairs, "route": REPORT_FAILED, "error": error}
            self._process = None
            if self._queue and not self._closed:
                self._start_locked()
            self._changed.notify_all()


def _collect(stream: Any, tail: deque[str]) -> None:
    for line in stream:
        tail.append(line.rstrip())


def stop_child(process: subprocess.Popen[str]) -> None:
    """Stop a child now (SIGTERM: it removes its temporary files), killing it after :data:`STOP_GRACE_S`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
