"""The compile process never blocks or hangs its host, and every window shape a face uses is compiled once and kept.

CPU tests with the stand-in compiler (tests/fake_compile.py; the compile process runs it too). Each defect these
tests name was found in the code before them: a child that lost its remaining shapes when its host exited (its
report hit the closed pipe, and shapes asked while it ran waited for a next child the host never started),
``wait_for_compiled(timeout)`` blocked on the folder's lock for the child's whole compile, a hung child with no
watchdog, a read-only models folder whose valid entries broke the stream, and temporary files left by a kill.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import make_frames
from fake_compile import FAKE_WORKER, GATE_TIMEOUT_S, FakeTorchCompile, make_preprocessor, wait_for_file
from scope_optical_flow_tensorrt.core.artifacts import compiled_cache, engine_cache
from scope_optical_flow_tensorrt.core.artifacts.compiled_cache import ROUTE_BUILT, ROUTE_LOADED
from scope_optical_flow_tensorrt.core.artifacts.engine_cache import TEMP_MARKER, process_alive, sweep_stale_temps
from scope_optical_flow_tensorrt.core.backends import compile_process, compile_worker
from scope_optical_flow_tensorrt.core.backends.compile_process import SHAPE_LIMIT_ENV, CompileProcess, stop_child
from scope_optical_flow_tensorrt.core.backends.torch_backend import ROUTE_FAILED

WAIT_S = 120


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.torchcache"))


def _temps(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if TEMP_MARKER in path.name] if folder.is_dir() else []


def _wait_until_gone(pid: int, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


def _host_script(models: Path, gate: Path, warmup: object, extra: str = "") -> str:
    """A host process that warms up, prints its compile child's pid, waits until the child compiles, then exits."""
    return textwrap.dedent(f"""
        import os, pathlib, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fake_compile import FakeTorchCompile, install, make_preprocessor
        from scope_optical_flow_tensorrt.core.backends import compile_process
        install(FakeTorchCompile(), setattr)
        compile_process.WORKER_COMMAND = [sys.executable, {str(FAKE_WORKER)!r}]
        flow = make_preprocessor(pathlib.Path({str(models)!r}), compile_in_background=True)
        flow.load(warmup={warmup!r})
        print("child", flow.load().compiler._process.pid, flush=True)
        while not pathlib.Path({str(gate) + ".started"!r}).exists():  # the child is compiling
            time.sleep(0.02)
        {extra}
        print("exiting", flush=True)
    """)


# -- a host that goes away -------------------------------------------------------------------------------------


def test_a_child_compiles_every_shape_its_host_asked_for_after_the_host_exits(
    gate: Path, fake: FakeTorchCompile, tmp_path: Path
) -> None:
    """Chunks of 4 and 8 frames: windows of 4 and 8 pairs, the second asked while the child compiles the first.
    The host exits at once; the child compiles both and keeps both entries (before: only the first, then the
    child died on its report line, and the second shape waited for a next child that nobody started)."""
    models = tmp_path / "models"
    host = subprocess.Popen([sys.executable, "-c", _host_script(models, gate, [4, 8])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert host.stdout is not None
    child_pid = int(host.stdout.readline().split()[1])
    assert host.stdout.readline().strip() == "exiting"
    host.wait(timeout=WAIT_S)
    assert host.returncode == 0, host.stderr.read() if host.stderr else ""
    gate.touch()
    _wait_until_gone(child_pid)
    assert len(_entries(models)) == 2
    assert sorted(line.split("[")[0] for line in fake.compiles) == ["encode", "encode", "update_step", "update_step"]
    assert _temps(models) == []


def test_a_child_whose_host_was_killed_stops_itself_when_a_shape_hangs(
    gate: Path, fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The host is killed while its child hangs (the gate never opens): the child's own watchdog ends it within its
    limit, leaving no temporary file and no lock held, so the next process compiles the entry."""
    monkeypatch.setenv(SHAPE_LIMIT_ENV, "2")
    models = tmp_path / "models"
    script = _host_script(models, gate, 4, extra="os.kill(os.getpid(), 9)")
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert host.stdout is not None
    child_pid = int(host.stdout.readline().split()[1])
    host.wait(timeout=WAIT_S)
    assert host.returncode == -signal.SIGKILL
    started = time.monotonic()
    _wait_until_gone(child_pid, timeout=30)
    assert time.monotonic() - started < 15
    assert _entries(models) == [] and _temps(models) == []
    gate.touch()
    monkeypatch.delenv(SHAPE_LIMIT_ENV)
    assert make_preprocessor(models).warm_up([4]) == [ROUTE_BUILT]  # nothing held the entry's lock


# -- the host's CPU comes first ------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX niceness")
def test_the_child_runs_below_its_host_from_its_start_and_sets_its_compile_threads_by_its_class(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The host lowers its child's priority as it starts it, so the child's imports (seconds of CPU on a real
    machine: torch, then the compiler stack) already run below the host's live calls (before: the child lowered
    its own priority only after importing torch and the package), on Linux in the SCHED_IDLE class (at nice +10
    alone, the host's own torch.cat on its intra-op threads took 27 ms instead of 0.2 ms beside the child's
    start, on an H100 machine); and the child keeps Inductor's compile worker per core in that class, few
    elsewhere."""
    state = tmp_path / "child.json"
    monkeypatch.setenv("FAKE_WORKER_STATE", str(state))
    monkeypatch.delenv(compile_worker.COMPILE_THREADS_ENV, raising=False)
    flow = make_preprocessor(tmp_path / "models", compile_in_background=True)
    flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=WAIT_S)
    child = json.loads(state.read_text())
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert child["niceness_after_imports"] == min(19, own + compile_process.CHILD_NICENESS) > own
    import torch._inductor.config as inductor_config

    per_core = inductor_config.compile_threads  # this process and its child see the same cores
    if hasattr(os, "SCHED_IDLE"):  # Linux: below every normal thread of the host
        assert child["policy_after_imports"] == os.SCHED_IDLE
        assert child["compile_threads"] == [per_core]
    else:
        assert child["compile_threads"] == [min(compile_worker.COMPILE_THREADS, per_core)]


def test_the_compile_process_limits_inductors_compile_threads_outside_the_idle_class_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inductor's default is a compile worker per core (16 on the GPU machine), each importing torch. In SCHED_IDLE
    the child keeps them (they get only cores its host leaves idle: a cold compile 2.8 s shorter on an H100
    machine, live calls beside it as fast); elsewhere it keeps COMPILE_THREADS; $TORCHINDUCTOR_COMPILE_THREADS
    decides where it is set."""
    import torch._inductor.config as inductor_config

    monkeypatch.delenv(compile_worker.COMPILE_THREADS_ENV, raising=False)
    monkeypatch.setattr(inductor_config, "compile_threads", 16)
    assert compile_worker.limit_compile_threads(idle=True) == 16 == inductor_config.compile_threads
    assert compile_worker.limit_compile_threads(idle=False) == compile_worker.COMPILE_THREADS
    assert inductor_config.compile_threads == compile_worker.COMPILE_THREADS
    monkeypatch.setattr(inductor_config, "compile_threads", 16)
    monkeypatch.setenv(compile_worker.COMPILE_THREADS_ENV, "16")
    assert compile_worker.limit_compile_threads(idle=False) == 16


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE class")
def test_a_process_knows_whether_it_runs_in_the_idle_class() -> None:
    """What the child reads to choose its compile threads: a process the host moved to SCHED_IDLE says so, one
    in the normal class does not."""
    code = ("import os, sys; from scope_optical_flow_tensorrt.core.backends.compile_process import in_idle_class; "
            "print(in_idle_class(), flush=True); sys.stdin.readline(); print(in_idle_class(), flush=True)")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "False"
    compile_process.lower_priority(child.pid)
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "True"
    assert child.wait(60) == 0


# -- never blocked -----------------------------------------------------------------------------------------------


def test_wait_for_compiled_returns_within_its_timeout_while_a_child_compiles(
    gate: Path, fake: FakeTorchCompile, tmp_path: Path
) -> None:
    """Shape 4's entry is on disk, shape 8 is compiling (held at the gate). Switching shape 4 needs no lock the
    child holds (before: the folder's lock, for the child's whole compile), and the wait honours its timeout."""
    gate.touch()
    make_preprocessor(tmp_path).warm_up([4])
    gate.unlink()
    fake.new_process()
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=[4, 8])
    wait_for_file(Path(str(gate) + ".started"))
    assert not flow.wait_for_compiled(timeout=0)  # switches shape 4 at once; 8 is still compiling
    assert backend.warmed_shapes == {4: ROUTE_LOADED}  # type: ignore[attr-defined]
    for timeout in (0.0, 0.3):
        began = time.monotonic()
        assert not flow.wait_for_compiled(timeout=timeout)
        assert time.monotonic() - began < timeout + 0.5
    gate.touch()
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {4: ROUTE_LOADED, 8: ROUTE_BUILT}  # type: ignore[attr-defined]


def test_only_a_wait_that_switched_a_shape_waits_for_the_gpu_work_it_queued(
    gate: Path, fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The switch's loads, runs and captures are finished by the wait that made them, not by the next live call;
    a wait that switched nothing leaves the stream alone (the command line asks after every chunk of a long clip,
    whose compute stage is otherwise asynchronous; before, every wait synchronized the stream)."""
    from scope_optical_flow_tensorrt.core.backends import torch_backend

    finished_on: list[torch.device] = []
    monkeypatch.setattr(torch_backend, "finish_queued_work", finished_on.append)
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    wait_for_file(Path(str(gate) + ".started"))
    for _ in range(3):
        assert not flow.wait_for_compiled(timeout=0)
    assert finished_on == []
    gate.touch()
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {4: ROUTE_BUILT}  # type: ignore[attr-defined]
    assert finished_on == [flow.device]
    for _ in range(3):
        assert flow.wait_for_compiled(timeout=0)
    assert finished_on == [flow.device]


def test_a_long_wait_imports_the_compiler_stack_while_the_child_compiles(
    gate: Path, fake: FakeTorchCompile, tmp_path: Path
) -> None:
    """A caller that waits for the child (the Scope constructor, ``wait_for_compiled()``) sets up torch.compile
    meanwhile, so the switch after the child does not pay those imports; a short wait keeps its timeout."""
    from scope_optical_flow_tensorrt.core.backends import torch_backend

    flow = make_preprocessor(tmp_path, compile_in_background=True)
    backend = flow.load(warmup=4)
    wait_for_file(Path(str(gate) + ".started"))
    assert not flow.wait_for_compiled(timeout=0.3)
    assert backend._compiled_parts is None  # type: ignore[attr-defined]
    began = time.monotonic()
    assert not flow.wait_for_compiled(timeout=torch_backend.READY_THE_COMPILER_FROM_S)
    assert time.monotonic() - began < torch_backend.READY_THE_COMPILER_FROM_S + 0.5
    assert backend._compiled_parts is not None and backend.warmed_shapes == {}  # type: ignore[attr-defined]
    gate.touch()
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert backend.warmed_shapes == {4: ROUTE_BUILT}  # type: ignore[attr-defined]


def test_a_hung_child_is_stopped_and_its_shape_served_uncompiled(
    gate: Path, fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A warm-up that waits for its compiled kernels (compile_in_background=False) while the child hangs returns
    once a watchdog has stopped the child (before: it waited as long as the child hung, here the gate's 120 s).

    Which watchdog stops it, the host's or the child's own, and whether the child reaches its gate first (in the
    SCHED_IDLE class on a loaded 2-core machine it may not, within the 1 s limit), is a race; the result is one."""
    monkeypatch.setenv(SHAPE_LIMIT_ENV, "1")
    flow = make_preprocessor(tmp_path)
    routes: list[str] = []
    warming = threading.Thread(target=lambda: routes.extend(flow.warm_up([4])))
    warming.start()
    warming.join(GATE_TIMEOUT_S / 2)  # the child, unless stopped, waits GATE_TIMEOUT_S at its gate
    assert not warming.is_alive()  # then the warm-up went on (a whole call on the uncompiled model) and returned
    assert routes == [ROUTE_FAILED]
    backend = flow.load()
    assert "no progress for 1 s" in backend.failed_shapes[4]  # type: ignore[attr-defined]
    assert backend.compiler._process is None  # type: ignore[attr-defined]
    assert flow(make_frames(4, 64, 80)).shape == (1, 3, 4, 64, 80)
    assert _entries(tmp_path) == [] and _temps(tmp_path) == []


def test_a_child_stopped_by_its_own_watchdog_is_reported_as_hung(
    gate: Path, fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the host's watchdog off, the child's own ends it (exit code EXIT_HUNG) once its shape is over the
    limit: the shape's error says it made no progress and which setting sets the limit, not just an exit code."""
    monkeypatch.setenv(SHAPE_LIMIT_ENV, "1")
    monkeypatch.setattr(CompileProcess, "_watchdog", lambda self, process: None)
    flow = make_preprocessor(tmp_path)
    assert flow.warm_up([4]) == [ROUTE_FAILED]
    error = flow.load().failed_shapes[4]  # type: ignore[attr-defined]
    assert "no progress for 1 s" in error and SHAPE_LIMIT_ENV in error and "exited with code" not in error
    assert _entries(tmp_path) == [] and _temps(tmp_path) == []


def test_valid_entries_serve_from_a_models_folder_that_cannot_be_written(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A read-only models folder (its lock file cannot be made) with a valid entry: the entry loads, calls run
    compiled; a shape with no entry stays uncompiled with one line saying why, and no child is started for it."""
    make_preprocessor(tmp_path).warm_up([4])
    fake.new_process()

    def read_only(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / engine_cache.LOCK_NAME))

    monkeypatch.setattr(engine_cache, "cache_lock", read_only)
    monkeypatch.setattr(compiled_cache, "folder_writable", lambda directory: False)
    started = CompileProcess.started_in_this_process
    flow = make_preprocessor(tmp_path)
    assert flow.warm_up([4, 8]) == [ROUTE_LOADED, ROUTE_FAILED]
    backend = flow.load()
    assert "cannot be written" in backend.failed_shapes[8]  # type: ignore[attr-defined]
    assert CompileProcess.started_in_this_process == started and backend.compiler is None  # type: ignore[attr-defined]
    frames = make_frames(9, 64, 80)
    reference = make_preprocessor(tmp_path / "eager", torch_compile=False)
    torch.testing.assert_close(flow.compute_flow(frames), reference.compute_flow(frames))
    assert flow.wait_for_compiled(timeout=0)


# -- nothing left behind ---------------------------------------------------------------------------------------


def test_temporary_files_of_processes_that_are_gone_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = tmp_path / f"raft_small_128x128_cpu-1.torchcache{TEMP_MARKER}{int(finished.stdout)}-7"
    live = tmp_path / f"raft_small_128x128_cpu-2.torchcache{TEMP_MARKER}{os.getpid()}-7"
    other = tmp_path / f"notes{TEMP_MARKER}1-1"  # not ours: never touched
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    assert sweep_stale_temps(tmp_path) == 1
    assert not dead.exists() and live.exists() and other.exists()


def test_stopping_a_child_that_is_writing_kills_it_and_removes_its_temporary_file(tmp_path: Path) -> None:
    """close() during a long write: the child cannot unwind within the grace period (a write is one system call),
    so it is killed, and its temporary file is swept (before: a 216 MB temporary file stayed)."""
    script = textwrap.dedent(f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a process stuck in one long write
        name = "raft_small_512x512_gpu-1.torchcache{TEMP_MARKER}" + str(os.getpid()) + "-1"
        open(os.path.join({str(tmp_path)!r}, name), "wb").write(b"x" * 4096)
        print("writing", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    assert _temps(tmp_path)
    began = time.monotonic()
    stop_child(child, tmp_path)
    assert time.monotonic() - began < 5 and child.poll() is not None
    assert _temps(tmp_path) == []


# -- every shape once, and kept ----------------------------------------------------------------------------------


def _scope_stream(flow: object, frames: torch.Tensor) -> None:
    """Scope's pattern: a warm-up for 4-frame chunks, then a stream of 4-frame chunks (windows of 3, then 4)."""
    flow.load(warmup=4)  # type: ignore[attr-defined]
    for start in range(0, frames.shape[0], 4):
        flow(frames[start : start + 4])  # type: ignore[operator]


def _cli_clip(flow: object, frames: torch.Tensor) -> None:
    """The command line's pattern: a warm-up for 16-frame chunks, then a clip of 37 frames in 16-frame chunks
    (windows of 15 and 16 pairs, and 5 for the last, partial chunk)."""
    flow.load(warmup=16)  # type: ignore[attr-defined]
    for start in range(0, frames.shape[0], 16):
        flow.compute_flow(frames[start : start + 16])  # type: ignore[attr-defined]


@pytest.mark.parametrize("face", ["scope", "cli"])
def test_every_shape_a_face_uses_is_kept_and_a_second_process_compiles_nothing(
    fake: FakeTorchCompile, tmp_path: Path, face: str
) -> None:
    drive, frames, shapes = {"scope": (_scope_stream, make_frames(12, 64, 80), {4}),
                             "cli": (_cli_clip, make_frames(37, 64, 80), {16, 8})}[face]
    first = make_preprocessor(tmp_path, compile_in_background=True)
    drive(first, frames)
    first.load().compiler.wait(WAIT_S)  # type: ignore[attr-defined]  # (a host that exits here: the child goes on)
    assert len(_entries(tmp_path)) == len(shapes)
    compiled = list(fake.compiles)

    fake.new_process()
    started = CompileProcess.started_in_this_process
    second = make_preprocessor(tmp_path, compile_in_background=True)
    drive(second, frames)
    assert second.wait_for_compiled(timeout=WAIT_S)
    assert CompileProcess.started_in_this_process == started  # every entry was on disk: no compile process
    assert set(second.load().warmed_shapes) == shapes  # type: ignore[attr-defined]
    assert fake.compiles == compiled


def test_a_failed_shape_is_tried_again_in_a_later_process_not_in_a_loop(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_COMPILE_FAIL", "1")
    started = CompileProcess.started_in_this_process
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=WAIT_S)
    frames = make_frames(8, 64, 80)
    for _ in range(3):
        flow(frames[:4])
        flow.wait_for_compiled(timeout=WAIT_S)
    assert CompileProcess.started_in_this_process == started + 1  # asked once in this process
    assert 4 in flow.load().failed_shapes  # type: ignore[attr-defined]

    monkeypatch.delenv("FAKE_COMPILE_FAIL")
    fake.new_process()
    later = make_preprocessor(tmp_path, compile_in_background=True)
    later.load(warmup=4)
    assert later.wait_for_compiled(timeout=WAIT_S)
    assert CompileProcess.started_in_this_process == started + 2
    assert later.load().warmed_shapes == {4: ROUTE_BUILT}  # type: ignore[attr-defined]


# -- how the host loads --------------------------------------------------------------------------------------------


def test_the_host_loads_compiled_kernels_with_inductor_in_its_own_thread(
    fake: FakeTorchCompile, tmp_path: Path
) -> None:
    """A host's process loads our kernels with Inductor's compile_threads at 1 (no pool of compile workers, a
    process per core, taking the CPU from live calls), and its own setting is back afterwards."""
    import torch._inductor.config as inductor_config

    make_preprocessor(tmp_path).warm_up([4])
    fake.new_process()
    fake.compile_threads_seen.clear()
    host_setting = inductor_config.compile_threads
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=WAIT_S)
    assert fake.compile_threads_seen and set(fake.compile_threads_seen) == {1}
    assert inductor_config.compile_threads == host_setting


def test_the_command_line_switches_to_entries_on_disk_only_where_it_pays(
    fake: FakeTorchCompile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The command line never switches when it loads the model (seconds before its first frame); from the second
    chunk on it switches shapes whose entries are ready where the work left repays it: a short clip is served
    uncompiled from start to end, longer work switches after its second chunk, and both give the same flow."""
    from scope_optical_flow_tensorrt.batch import clips, load_model
    from scope_optical_flow_tensorrt.batch.clips import ClipJob, WriteSettings, process_clip

    assert not clips.worth_switching(2400, 1 / 816)  # 3 s of work: a 6.5 s switch never pays
    assert clips.worth_switching(24_000, 1 / 816)
    assert clips.worth_switching(None, 1 / 816)  # an unknown length counts as long
    make_preprocessor(tmp_path).warm_up([4])
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(make_frames(12, 64, 80)):
        Image.fromarray(frame.mul(255).round().byte().numpy()).save(folder / f"{index:03d}.png")
    maps = {}
    for name, cost in (("short", clips.SWITCH_COST_S), ("long", 0.0)):
        fake.new_process()
        monkeypatch.setattr(clips, "SWITCH_COST_S", cost)
        monkeypatch.setattr(clips, "_frames_in_process", [0])
        flow = make_preprocessor(tmp_path, compile_in_background=True)
        load_model(flow, warmup=4)
        assert flow.load().warmed_shapes == {}  # type: ignore[attr-defined]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="scope_optical_flow_tensorrt.batch"):
            process_clip(flow, ClipJob((str(folder),), flow_npy=tmp_path / f"{name}.npy"), WriteSettings(chunk=4))
        expected = {} if name == "short" else {4: ROUTE_LOADED}
        assert flow.load().warmed_shapes == expected  # type: ignore[attr-defined]
        said = f"{folder}: the uncompiled graphs serve this clip (4 frames left)" in caplog.text  # the log says which
        assert said == (name == "short")
        maps[name] = np.load(tmp_path / f"{name}.npy")
    assert maps["short"].shape == (12, 2, 64, 80)
    np.testing.assert_allclose(maps["short"], maps["long"], atol=1e-5)


def test_a_slow_first_chunk_does_not_make_the_command_line_switch(
    fake: FakeTorchCompile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunk pays one-time costs (an encoder's set-up made an mp4 run's first chunk 0.24 s against 0.01 s
    for PNG on an H100), so the rate that decides a switch is measured after it: a slow first chunk on a short clip
    does not trigger a switch that the steady rate would not repay."""
    from scope_optical_flow_tensorrt.batch import clips, load_model
    from scope_optical_flow_tensorrt.batch.clips import ClipJob, WriteSettings, process_clip

    make_preprocessor(tmp_path).warm_up([4])
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(make_frames(12, 64, 80)):
        Image.fromarray(frame.mul(255).round().byte().numpy()).save(folder / f"{index:03d}.png")
    fake.new_process()
    monkeypatch.setattr(clips, "_frames_in_process", [0])
    flow = make_preprocessor(tmp_path, compile_in_background=True)
    load_model(flow, warmup=4)
    seconds: list[float] = []
    compute_flow = flow.compute_flow

    def slow_first_call(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        if not seconds:
            time.sleep(6.0)  # 1.5 s a frame in the first chunk: 12 frames * 1.5 / 2 = 9 s > the switch's 3 s
        result = compute_flow(*args, **kwargs)
        seconds.append(time.perf_counter() - began)
        return result

    monkeypatch.setattr(flow, "compute_flow", slow_first_call)
    # A switch that costs 3 s: the steady chunks (0.1-0.2 s here, 1.1 s beside a busy loop on 2 cores) never repay it.
    switch_cost_s = 3.0
    monkeypatch.setattr(clips, "SWITCH_COST_S", switch_cost_s)
    process_clip(flow, ClipJob((str(folder),), flow_npy=tmp_path / "flow.npy"), WriteSettings(chunk=4))
    assert len(seconds) == 3
    assert 12 * max(seconds[1:]) / 4 / 2 < switch_cost_s, "the steady rate itself would repay the switch: no test"
    assert flow.load().warmed_shapes == {}  # type: ignore[attr-defined]


def test_a_warm_up_leaves_the_stream_where_it_was(fake: FakeTorchCompile, tmp_path: Path) -> None:
    """The warm-up runs whole calls (input conversion, visualization) on still frames; the stream and its running
    colour scale continue as if it had not happened."""
    frames = make_frames(8, 64, 80)
    warmed = make_preprocessor(tmp_path, normalization="running", compile_in_background=True)
    plain = make_preprocessor(tmp_path / "plain", normalization="running", torch_compile=False)
    first = warmed(frames[:4]), plain(frames[:4])
    warmed.warm_up([4])
    second = warmed(frames[4:]), plain(frames[4:])
    for ours, reference in (first, second):
        torch.testing.assert_close(ours, reference)
