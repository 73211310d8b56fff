"""Threads and bounded queues for the overlapping stages of a clip: a reader thread decodes ahead, the calling
thread computes on the GPU, writer threads encode and write behind.

Every stage shares one :class:`StopSignal`: the first error in any stage (or an interrupt in the calling thread)
sets it, every other stage sees it within :data:`POLL_SECONDS` and returns, and the calling thread re-raises the
first error. Queues are bounded, so a slow stage holds the others back instead of letting memory grow. Stage
threads run in a copy of the starting thread's context, so their messages speak its vocabulary
(``core.common.vocabulary``).
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
POLL_SECONDS = 0.05
_END = object()  # end of a queue's items


class StageStopped(Exception):
    """Raised inside a stage when another stage failed or the run was interrupted."""


class StopSignal:
    """Shared by the stages of one clip: set once, by the first failure; remembers that failure."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        with self._lock:
            if self.error is None and error is not None and not isinstance(error, StageStopped):
                self.error = error
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        """Re-raise the first stage's error in the calling thread (or :class:`StageStopped` without one)."""
        if self._event.is_set():
            if self.error is not None:
                raise self.error
            raise StageStopped("stopped")


def put(items: queue.Queue, item: Any, stop: StopSignal) -> None:
    """``items.put(item)``, waiting for room but giving up as soon as ``stop`` is set."""
    while True:
        stop.raise_if_set()
        try:
            items.put(item, timeout=POLL_SECONDS)
            return
        except queue.Full:
            continue


def get(items: queue.Queue, stop: StopSignal) -> Any:
    """``items.get()``, giving up as soon as ``stop`` is set."""
    while True:
        stop.raise_if_set()
        try:
            return items.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue


def stage_thread(run: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running ``run`` in a copy of this thread's context (its vocabulary: threads start with an
    empty context)."""
    return threading.Thread(target=contextvars.copy_context().run, args=(run,), name=name, daemon=True)


class StageTimer:
    """Busy seconds of one stage (time spent in its work, not waiting on queues)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def time(self, work: Callable[[], Item]) -> Item:
        started = time.perf_counter()
        try:
            return work()
        finally:
            self.seconds += time.perf_counter() - started


class Prefetcher(Generic[Item]):
    """Iterates ``source`` in a thread of its own, up to ``depth`` items ahead of the consumer.

    Iterating the prefetcher yields the items in order; an exception raised by ``source`` is raised in the
    consumer at the position where it happened. ``timer`` counts the time spent producing items.
    """

    def __init__(self, source: Iterable[Item], depth: int, stop: StopSignal, name: str = "reader") -> None:
        self._source = source
        self._stop = stop
        self._items: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.timer = StageTimer()
        self._thread = stage_thread(self._run, f"optical-flow-{name}")

    def start(self) -> Prefetcher[Item]:
        self._thread.start()
        return self

    def _run(self) -> None:
        iterator = iter(self._source)
        try:
            while not self._stop.is_set():
                try:
                    item = self.timer.time(lambda: next(iterator))
                except StopIteration:
                    put(self._items, _END, self._stop)
                    return
                put(self._items, item, self._stop)
        except StageStopped:
            pass
        except BaseException as error:
            self._stop.set(error)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator's cleanup (an open container) runs in the thread that ran it

    def __iter__(self) -> Iterator[Item]:
        while True:
            item = get(self._items, self._stop)
            if item is _END:
                return
            yield item

    def join(self) -> None:
        self._thread.join()


class WriterThread:
    """Runs ``write(item)`` for each :meth:`submit` ted item in a thread of its own, in order, up to ``depth``
    items behind the submitter. A failing ``write`` stops every stage; :meth:`submit` and :meth:`finish` then
    raise that error in the submitting thread."""

    def __init__(self, write: Callable[[Any], None], depth: int, stop: StopSignal, name: str) -> None:
        self._write = write
        self._stop = stop
        self._items: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.timer = StageTimer()
        self.first_done_at: float | None = None  # time.time() when the first item was written
        self.last_done_at: float | None = None
        self._thread = stage_thread(self._run, f"optical-flow-{name}")

    def start(self) -> WriterThread:
        self._thread.start()
        return self

    def submit(self, item: Any) -> None:
        put(self._items, item, self._stop)

    def finish(self) -> None:
        """Wait until every submitted item is written; raises the first stage error."""
        put(self._items, _END, self._stop)
        while self._thread.is_alive():
            self._thread.join(POLL_SECONDS)
            self._stop.raise_if_set()
        self._stop.raise_if_set()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                item = get(self._items, self._stop)
                if item is _END:
                    return
                self.timer.time(lambda: self._write(item))
                self.last_done_at = time.time()
                if self.first_done_at is None:
                    self.first_done_at = self.last_done_at
        except StageStopped:
            pass
        except BaseException as error:
            self._stop.set(error)


class Stages:
    """The threads of one clip, started now: a reader (:class:`Prefetcher` over ``source``) and one
    :class:`WriterThread` per ``(name, write)`` of ``writes``, sharing one :class:`StopSignal`; queues ``depth``
    items deep. The calling thread iterates :attr:`reader` and submits to :attr:`writers`. A context manager:
    leaving it normally waits until every item is written (raising the first stage error); leaving it with an
    error stops every stage and waits for their threads."""

    def __init__(self, source: Iterable[Any], writes: list[tuple[str, Callable[[Any], None]]], depth: int) -> None:
        self.stop = StopSignal()
        self.reader: Prefetcher[Any] = Prefetcher(source, depth, self.stop).start()
        self.writers = [WriterThread(write, depth, self.stop, f"writer-{name}").start() for name, write in writes]

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if kind is None:
            try:
                for writer in self.writers:
                    writer.finish()
            except BaseException as failure:
                self._halt(failure)
                raise
        else:
            self._halt(error)
        self.reader.join()

    def _halt(self, error: BaseException | None) -> None:
        self.stop.set(error)
        self.reader.join()
        for writer in self.writers:
            writer.join()
