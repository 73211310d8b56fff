"""Outputs are never clobbered unasked (batch/outputs.py): a destination is claimed when it is staged, so a second
run to the same path fails with exit code 4 instead of silently replacing the first one's result; an output that
is one of the inputs is refused even with --overwrite; and workers of --devices die with their parent."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scope_optical_flow_tensorrt.batch import EXIT_OUTPUT, OutputError, StagedOutputs
from scope_optical_flow_tensorrt.cli.options import cli_words
from test_cli import FAST, core_flow, moving_frames, run_main, write_images, write_video  # noqa: F401 (run_main)
from test_scale_out import clips  # noqa: F401 (a fixture)

from scope_optical_flow_tensorrt.core.resize import resize_flow


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting until {what}")
        time.sleep(0.1)


def test_a_staged_output_is_claimed_until_it_is_moved_into_place(tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    with StagedOutputs(overwrite=False) as first:
        first.add(out, folder=False).write_bytes(b"first")
        for overwrite in (False, True):  # two writers to one path at once: never, --overwrite or not
            with pytest.raises(OutputError, match=r"out\.npy is being written by another run .*wait for that run"):
                StagedOutputs(overwrite=overwrite).add(out, folder=False)
    assert out.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]
    with pytest.raises(OutputError, match=r"already exists; pass overwrite=True to replace it\.$"):
        StagedOutputs(overwrite=False).add(out, folder=False)
    with cli_words(), pytest.raises(OutputError, match=r"already exists; pass --overwrite to replace it\.$"):
        StagedOutputs(overwrite=False).add(out, folder=False)


def test_an_output_made_meanwhile_by_another_program_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    with pytest.raises(OutputError, match=r"appeared while this run wrote it .* it was kept"):
        with StagedOutputs(overwrite=False) as staged:
            staged.add(out, folder=False).write_bytes(b"ours")
            out.write_bytes(b"theirs")  # not one of our runs: no claim stops it
    assert out.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]


def _hold_claim(out: str, claimed: object, release: object) -> None:
    with StagedOutputs(overwrite=False) as staged:
        staged.add(Path(out), folder=False).write_bytes(b"the other run")
        claimed.set()  # type: ignore[attr-defined]
        release.wait(60)  # type: ignore[attr-defined]


def test_a_run_to_an_output_another_process_is_writing_fails_with_exit_code_4(tmp_path: Path, run_main) -> None:  # noqa: F811
    write_images(tmp_path / "frames", moving_frames(3, 64, 64))
    out = tmp_path / "out.npy"
    context = multiprocessing.get_context("fork")
    claimed, release = context.Event(), context.Event()
    other = context.Process(target=_hold_claim, args=(str(out), claimed, release))
    other.start()
    try:
        assert claimed.wait(60)
        for extra in ([], ["--overwrite"]):
            code, _, err = run_main("run", tmp_path / "frames", "--flow-npy", out, *extra, *FAST)
            assert code == EXIT_OUTPUT and "is being written by another run" in err, err
    finally:
        release.set()
        other.join(60)
    assert other.exitcode == 0 and out.read_bytes() == b"the other run"


def test_two_concurrent_runs_to_one_output_never_both_succeed(tmp_path: Path, run_main) -> None:  # noqa: F811
    """The issue's case: ``run a -o out.mp4 --flow-npy out.npy`` and ``run b -o out.mp4 ...`` at once, neither with
    --overwrite. The first keeps its result; the second fails with exit code 4."""
    first_frames, second_frames = moving_frames(24, 64, 64, seed=1), moving_frames(3, 64, 64, seed=2)
    write_images(tmp_path / "a", first_frames)
    write_images(tmp_path / "b", second_frames)
    outputs = ["-o", tmp_path / "out.mp4", "--flow-npy", tmp_path / "out.npy"]
    first = subprocess.Popen(
        [sys.executable, "-m", "scope_optical_flow_tensorrt", "run", str(tmp_path / "a"), *map(str, outputs),
         "--chunk", "1", *FAST], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until(lambda: (tmp_path / ".out.npy.claim").exists() or first.poll() is not None, 120,
                   "the first run claims its outputs")
        code, _, err = run_main("run", tmp_path / "b", *outputs, *FAST)
    finally:
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert code == EXIT_OUTPUT, err
    assert "being written by another run" in err or "already exists" in err  # whichever moment it came
    expected = resize_flow(core_flow(first_frames)[0], 64, 64).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-3)  # the first run's result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out.mp4", "out.npy"]  # no claim files left


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path: Path, run_main) -> None:  # noqa: F811
    write_video(tmp_path / "a.mp4", moving_frames(3, 64, 64))
    original = (tmp_path / "a.mp4").read_bytes()
    (tmp_path / "link.mp4").symlink_to(tmp_path / "a.mp4")
    for output in ("a.mp4", "link.mp4"):
        code, _, err = run_main("run", tmp_path / "a.mp4", "-o", tmp_path / output, "-y", *FAST)
        assert code == EXIT_OUTPUT and "is an input of this run" in err and "never replaces an input" in err, err
    assert (tmp_path / "a.mp4").read_bytes() == original

    frames = write_images(tmp_path / "shots" / "frames", moving_frames(3, 64, 64))
    for output, verb in ((tmp_path / "shots" / "frames", "is"), (tmp_path / "shots", "holds")):
        code, _, err = run_main("run", tmp_path / "shots" / "frames", "-o", output, "--overwrite", *FAST)
        assert code == EXIT_OUTPUT and f"{verb} an input of this run" in err, err
    assert all(path.is_file() for path in frames)
    code, _, err = run_main("run", frames[0], frames[1], "--flow-npy", frames[1], "-y", *FAST)
    assert code == EXIT_OUTPUT and "is an input of this run" in err, err


def session_members(session: int) -> dict[int, str]:
    """Live processes (zombies excluded) of a session, with their command lines (Linux /proc)."""
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members[int(entry.name)] = command
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists processes through /proc")
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_a_multi_worker_run_leaves_no_process_behind(
    tmp_path: Path, clips: Path, signal_number: int  # noqa: F811
) -> None:
    run = subprocess.Popen(
        [sys.executable, "-m", "scope_optical_flow_tensorrt", "run", str(clips), "--flow-npy", str(tmp_path / "npy"),
         "--devices", "cpu:2", *FAST], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    session = run.pid  # the run leads a session of its own: its workers and their helpers are in it too

    def workers() -> list[int]:
        return [pid for pid, command in session_members(session).items() if "spawn_main" in command]

    try:
        wait_until(lambda: len(workers()) == 2 or run.poll() is not None, 120, "both workers have started")
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(1.0)  # the workers are now importing torch or loading the model
        os.kill(run.pid, signal_number)
        run.wait(30)
        wait_until(lambda: not session_members(session), 30, "every process of the run has exited")
    finally:
        for pid in session_members(session):  # never leave anything running, even when the test fails
            os.kill(pid, signal.SIGKILL)
