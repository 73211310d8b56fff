"""Compiling in the background: new shapes are served at once by the uncompiled model while a worker thread
loads or compiles their kernels, then switch over.

CPU tests with the stand-in for torch.compile (tests/fake_compile.py; the real compiled path needs CUDA, where
tests/test_gpu.py runs it); the worker thread, the cache entries, the switch-over and the fallbacks are real.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from scope_optical_flow_tensorrt.core import log as core_log
from scope_optical_flow_tensorrt.core.backends.background_compile import BackgroundCompiler
from scope_optical_flow_tensorrt.core.compiled_cache import ROUTE_BACKGROUND, ROUTE_BUILT, ROUTE_LOADED

from conftest import make_frames
from fake_compile import FakeTorchCompile, make_preprocessor

WAIT_S = 120


class GatedCompile:
    """The fake torch.compile, with compiled functions that wait for ``open`` and count their calls."""

    def __init__(self, fake: FakeTorchCompile) -> None:
        self.fake = fake
        self.open = threading.Event()
        self.calls = 0

    def compile(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        compiled = self.fake.compile(fn, **options)

        def call(*args: Any) -> Any:
            assert self.open.wait(WAIT_S), "the test never opened the gate"
            self.calls += 1
            return compiled(*args)

        return call


@pytest.fixture
def gated(fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch) -> GatedCompile:
    gate = GatedCompile(fake)
    monkeypatch.setattr(torch, "compile", gate.compile)
    return gate


def test_warm_up_serves_at_once_and_switches_to_the_compiled_kernels_when_ready(
    gated: GatedCompile, fake: FakeTorchCompile, tmp_path: Path
) -> None:
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    assert flow.warmup_routes == [ROUTE_BACKGROUND]  # windows of 3 and 4 pairs: one bucket, handed to the worker
    assert backend.warmed_shapes == {} and backend.compiler.busy  # type: ignore[attr-defined]
    frames = make_frames(8, 64, 80)
    served_meanwhile = [flow(frames[:4]), flow(frames[4:])]  # while the worker waits at the gate
    assert gated.calls == 0 and not fake.compiles
    assert not flow.wait_for_compiled(timeout=0.2)  # still compiling

    gated.open.set()
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {4: ROUTE_BUILT}  # type: ignore[attr-defined]
    assert sorted(shape.split("[")[0] for shape in fake.compiles) == ["encode", "update_step"]
    assert list(tmp_path.glob("*.torchcache"))  # kept as a cache entry for the next process

    calls = gated.calls
    flow.reset()
    served_compiled = [flow(frames[:4]), flow(frames[4:])]
    assert gated.calls > calls  # the compiled parts serve now
    for compiled, uncompiled in zip(served_compiled, served_meanwhile):
        torch.testing.assert_close(compiled, uncompiled)  # the stand-in compiles to the same arithmetic


def test_a_fresh_process_loads_the_entry_in_the_background(fake: FakeTorchCompile, tmp_path: Path) -> None:
    first = make_preprocessor(tmp_path, compile_in_background=True)
    first.load(warmup=4)
    assert first.wait_for_compiled(timeout=WAIT_S)
    compiled = list(fake.compiles)

    fake.new_process()
    second = make_preprocessor(tmp_path, compile_in_background=True)
    backend = second.load(warmup=4)
    assert second.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {4: ROUTE_LOADED}  # type: ignore[attr-defined]
    assert fake.compiles == compiled and fake.loads  # loaded from the entry, nothing compiled again


def test_a_live_shape_no_warm_up_covered_is_served_at_once_and_compiled_behind(
    fake: FakeTorchCompile, tmp_path: Path
) -> None:
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=WAIT_S)
    reference = make_preprocessor(tmp_path / "eager", torch_compile=False)
    frames = make_frames(9, 64, 80)
    out = flow.compute_flow(frames)  # 8 pairs: a new bucket
    assert backend.compiler.requested(8)  # type: ignore[attr-defined]
    torch.testing.assert_close(out, reference.compute_flow(frames))
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {4: ROUTE_BUILT, 8: ROUTE_BUILT}  # type: ignore[attr-defined]


def test_a_failed_background_compile_leaves_the_uncompiled_model_serving(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(fn: Callable[..., Any], **_: Any) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            raise RuntimeError("no C compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert not backend.compiled and backend.warmed_shapes == {}  # type: ignore[attr-defined]
    failures = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(failures) == 1 and "no C compiler here" in failures[0] and "eagerly" in failures[0]
    frames = make_frames(5, 64, 80)
    reference = make_preprocessor(tmp_path / "eager", torch_compile=False)
    torch.testing.assert_close(flow.compute_flow(frames), reference.compute_flow(frames))
    assert not list(tmp_path.glob("*.torchcache"))  # nothing half-made kept


def test_nothing_compiles_in_the_background_where_nothing_compiles(tmp_path: Path) -> None:
    flow = make_preprocessor(tmp_path, compile_in_background=True)  # the CPU: eager, no torch.compile
    assert flow.wait_for_compiled(timeout=0) and not flow.loaded  # nothing asked yet: no model loaded to wait
    backend = flow.load(warmup=4)
    assert backend.compiler is None and flow.warmup_routes == []  # type: ignore[attr-defined]
    assert flow.wait_for_compiled(timeout=0)


# -- the worker ------------------------------------------------------------------------------------------


def test_worker_runs_each_shape_once_in_request_order_and_survives_a_failing_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(core_log, "_said", set())
    done: list[int] = []
    release = threading.Event()

    def task(pairs: int) -> None:
        release.wait(WAIT_S)
        if pairs == 2:
            raise ValueError("task failed")
        done.append(pairs)

    worker = BackgroundCompiler(task, torch.device("cpu"))
    for pairs in (4, 2, 4, 8, 2):
        worker.request(pairs)
    assert worker.busy and worker.requested(8) and not worker.requested(16)
    assert not worker.wait(timeout=0.1)
    release.set()
    assert worker.wait(timeout=WAIT_S) and not worker.busy
    assert done == [4, 8]
    assert any("task failed" in record.getMessage() for record in caplog.records)
    worker.request(16)  # a later request starts a new thread
    assert worker.wait(timeout=WAIT_S) and done == [4, 8, 16]


def test_a_process_that_ends_while_compiling_finishes_the_compile_first(tmp_path: Path) -> None:
    marker = tmp_path / "compiled"
    script = textwrap.dedent(f"""
        import time
        import torch
        from scope_optical_flow_tensorrt.core.backends.background_compile import BackgroundCompiler

        def task(pairs):
            time.sleep(1.0)
            open({str(marker)!r}, "w").write(str(pairs))

        BackgroundCompiler(task, torch.device("cpu")).request(4)
        print("main thread done", flush=True)
    """)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "main thread done" in done.stdout
    assert marker.read_text() == "4"  # the entry a compile writes is not lost at exit
    assert time.perf_counter() - started >= 1.0
