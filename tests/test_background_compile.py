"""Compiling in a child process: new shapes are served at once by the uncompiled model, a child process compiles
their kernels and keeps them as cache entries, and a waiting caller switches to them; the host's process is left
as it was.

CPU tests with the stand-in for torch.compile (tests/fake_compile.py; the compile process runs it too, through
tests/fake_compile_worker.py; the real compiled path needs CUDA, where tests/test_gpu.py runs it). The child
process, the cache entries, the switch-over and the fallbacks are real.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_frames
from fake_compile import FAKE_WORKER, FakeTorchCompile, make_preprocessor
from fake_compile import wait_for_file as _wait_for
from scope_optical_flow_tensorrt.core.artifacts.compiled_cache import ROUTE_BACKGROUND, ROUTE_BUILT, ROUTE_LOADED
from scope_optical_flow_tensorrt.core.backends.torch_backend import ROUTE_FAILED

WAIT_S = 120


def test_warm_up_serves_at_once_and_a_waiting_caller_switches_to_the_compiled_kernels(
    gate: Path, fake: FakeTorchCompile, tmp_path: Path
) -> None:
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    assert flow.warmup_routes == [ROUTE_BACKGROUND]  # windows of 3 and 4 pairs: one bucket, handed to the child
    assert backend.warmed_shapes == {} and backend.compiler.busy  # type: ignore[attr-defined]
    frames = make_frames(8, 64, 80)
    served_meanwhile = [flow(frames[:4]), flow(frames[4:])]  # while the child waits at the gate
    assert fake.compiles == []
    assert not flow.wait_for_compiled(timeout=0.2)  # still compiling

    gate.touch()
    _wait_for_child(backend)
    flow.reset()
    flow(frames[:4])
    assert backend.warmed_shapes == {}  # type: ignore[attr-defined]  # a live call never switches
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {4: ROUTE_BUILT}  # type: ignore[attr-defined]
    assert sorted(shape.split("[")[0] for shape in fake.compiles) == ["encode", "update_step"]
    assert fake.compiles_here == [] and len(fake.loads) == 1  # compiled by the child, only loaded here
    assert list(tmp_path.glob("*.torchcache"))  # kept as a cache entry for the next process

    flow.reset()
    served_compiled = [flow(frames[:4]), flow(frames[4:])]
    for compiled, uncompiled in zip(served_compiled, served_meanwhile):
        torch.testing.assert_close(compiled, uncompiled)  # the stand-in compiles to the same arithmetic


def _wait_for_child(backend: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while backend.compiler.busy:
        assert time.monotonic() < deadline, "the compile process never finished"
        time.sleep(0.05)


def test_a_fresh_process_starts_no_child_where_the_entry_exists(fake: FakeTorchCompile, tmp_path: Path) -> None:
    first = make_preprocessor(tmp_path, compile_in_background=True)
    first.load(warmup=4)
    assert first.wait_for_compiled(timeout=WAIT_S)
    compiled = list(fake.compiles)

    fake.new_process()
    second = make_preprocessor(tmp_path, compile_in_background=True)
    backend = second.load(warmup=4)
    assert backend.compiler is None  # type: ignore[attr-defined]  # the entry was valid: nothing to compile
    assert second.wait_for_compiled(timeout=0)
    assert backend.warmed_shapes == {4: ROUTE_LOADED}  # type: ignore[attr-defined]
    assert fake.compiles == compiled  # loaded from the entry, nothing compiled again


def test_a_live_shape_no_warm_up_covered_is_served_at_once_and_compiled_by_the_child(
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


def test_a_failed_compile_leaves_the_uncompiled_model_serving(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_COMPILE_FAIL", "1")
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {} and 4 in backend.failed_shapes  # type: ignore[attr-defined]
    failures = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(failures) == 1 and "no C compiler found" in failures[0] and "uncompiled" in failures[0]
    frames = make_frames(5, 64, 80)
    reference = make_preprocessor(tmp_path / "eager", torch_compile=False)
    torch.testing.assert_close(flow.compute_flow(frames), reference.compute_flow(frames))
    assert not list(tmp_path.glob("*.torchcache"))  # nothing half-made kept


def test_a_child_that_dies_is_reported_and_the_uncompiled_model_serves(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from scope_optical_flow_tensorrt.core.backends import compile_process

    monkeypatch.setattr(compile_process, "WORKER_COMMAND", [sys.executable, "-c", "import sys; sys.exit(3)"])
    flow = make_preprocessor(tmp_path)
    assert flow.warm_up([4]) == [ROUTE_FAILED]
    assert any("exited with code 3" in r.getMessage() for r in caplog.records)
    assert flow(make_frames(4, 64, 80)).shape == (1, 3, 4, 64, 80)


def test_nothing_compiles_where_nothing_compiles(tmp_path: Path) -> None:
    flow = make_preprocessor(tmp_path, compile_in_background=True)  # the CPU: eager, no torch.compile
    assert flow.wait_for_compiled(timeout=0) and not flow.loaded  # nothing asked yet: no model loaded to wait
    backend = flow.load(warmup=4)
    assert backend.compiler is None and flow.warmup_routes == []  # type: ignore[attr-defined]
    assert flow.wait_for_compiled(timeout=0)


# -- a good guest ------------------------------------------------------------------------------------------


def _process_state() -> dict[str, Any]:
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    root = logging.getLogger()
    return {
        "env": dict(os.environ),
        "dynamo": {k: repr(v) for k, v in dynamo_config.get_config_copy().items()},
        "inductor": {k: repr(v) for k, v in inductor_config.get_config_copy().items()},
        "flags": (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                  torch.get_float32_matmul_precision(), torch.get_num_threads(), sys.getswitchinterval()),
        "logging": (root.level, list(root.handlers), logging.getLogger("scope_optical_flow_tensorrt").level),
    }


def test_environment_and_configuration_are_the_same_after_construct_load_calls_and_close(
    fake: FakeTorchCompile, tmp_path: Path
) -> None:
    before = _process_state()
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    flow.load(warmup=4)
    flow(make_frames(4, 64, 80))
    assert flow.wait_for_compiled(timeout=WAIT_S) and flow.load().warmed_shapes  # type: ignore[attr-defined]
    flow(make_frames(4, 64, 80))
    flow.close()
    after = _process_state()
    for part in before:
        assert after[part] == before[part], part


def test_entries_hold_only_our_kernels_whatever_the_host_compiled_before(
    fake: FakeTorchCompile, tmp_path: Path
) -> None:
    make_preprocessor(tmp_path / "alone").warm_up([4])
    host_model = torch.compile(lambda x: torch.sin(x) + 1)  # the host compiles a model of its own first
    host_model(torch.zeros(3, 7))
    make_preprocessor(tmp_path / "hosted").warm_up([4])
    [alone] = (tmp_path / "alone").glob("*.torchcache")
    [hosted] = (tmp_path / "hosted").glob("*.torchcache")
    assert json.loads(hosted.read_bytes()) == json.loads(alone.read_bytes())  # the stand-in's artifacts: shape names
    assert not any("lambda" in shape for shape in json.loads(hosted.read_bytes()))


def test_a_host_that_exits_mid_compile_returns_at_once_and_leaves_no_partial_entry(
    gate: Path, fake: FakeTorchCompile, tmp_path: Path
) -> None:
    """The host process exits while the child is compiling: it returns within 2 s (it never waits for the child);
    the child finishes in the background and writes a whole entry, or nothing."""
    models = tmp_path / "models"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fake_compile import FakeTorchCompile, install, make_preprocessor
        from scope_optical_flow_tensorrt.core.backends import compile_process
        install(FakeTorchCompile(), setattr)
        compile_process.WORKER_COMMAND = [sys.executable, {str(FAKE_WORKER)!r}]
        flow = make_preprocessor(__import__("pathlib").Path({str(models)!r}), compile_in_background=True)
        flow.load(warmup=4)
        print("child", flow.load().compiler._process.pid, flush=True)
        import pathlib, time
        while not pathlib.Path({str(gate) + ".started"!r}).exists():  # the child is compiling
            time.sleep(0.02)
        print("exiting", flush=True)
    """)
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert host.stdout is not None
    child_pid = int(host.stdout.readline().split()[1])
    assert host.stdout.readline().strip() == "exiting"
    exiting_at = time.perf_counter()
    host.wait(timeout=WAIT_S)
    assert host.returncode == 0, host.stderr.read() if host.stderr else ""
    assert time.perf_counter() - exiting_at < 2.0
    assert list(models.glob("*.torchcache")) == [] and not any(".tmp-" in p.name for p in models.iterdir())
    gate.touch()  # the child goes on and finishes: a whole entry with its sidecar
    deadline = time.monotonic() + WAIT_S
    while _alive(child_pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [entry] = models.glob("*.torchcache")
    assert entry.with_name(entry.name + ".json").is_file()
    assert not any(".tmp-" in p.name for p in models.iterdir())


def test_close_stops_the_child_at_once_and_leaves_no_partial_entry(
    gate: Path, fake: FakeTorchCompile, tmp_path: Path
) -> None:
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    _wait_for(Path(str(gate) + ".started"))
    process = backend.compiler._process  # type: ignore[attr-defined]
    started = time.perf_counter()
    flow.close()
    assert time.perf_counter() - started < 2.0 and process.poll() is not None
    assert list(tmp_path.glob("*.torchcache")) == [] and not any(".tmp-" in p.name for p in tmp_path.iterdir())
    assert flow(make_frames(3, 64, 80)).shape == (1, 3, 3, 64, 80)  # a later call loads the model again


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent, which has exited too) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
