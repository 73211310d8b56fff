"""Sizes are checked against the device's memory before any is taken (core.memory): a size that cannot fit fails
at once with the size and the fix, in each face's words, and leaves the stream as it was."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import make_frames
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core import memory
from scope_optical_flow_tensorrt.core.memory import TooLargeForMemory, format_bytes
from test_bad_input import GOOD, make_preprocessor
from test_cli import moving_frames, run_main, write_images  # noqa: F401 (run_main: a fixture)


class OversizedContext:
    """Scope's context asking for maps of 10^6 x 10^6 pixels."""

    def __init__(self, frames: torch.Tensor) -> None:
        self.video_frames = frames.permute(3, 0, 1, 2)[None]  # [1, C, F, H, W]
        self.target_height = self.target_width = 10**6


def test_oversized_context_fails_before_memory_is_taken_and_leaves_the_stream_intact() -> None:
    pre = make_preprocessor(normalization="running")  # running scales: state the failed call must not move
    before = pre(GOOD[:2])
    started = time.perf_counter()
    with pytest.raises(TooLargeForMemory, match=r"3 frame\(s\) of 72x64 .* with output maps of 1000000x1000000 need "
                                                 r"at least \d+\.\d TB .*target_height x target_width"):
        pre(OversizedContext(GOOD))
    assert time.perf_counter() - started < 5
    after = pre(GOOD[2:3])
    reference = make_preprocessor(normalization="running")(GOOD)
    torch.testing.assert_close(torch.cat([before, after], dim=2), reference, atol=1e-4, rtol=0)


def test_input_too_large_for_its_own_size_fails_fast() -> None:
    frames = torch.zeros(1, 3, 2, 8192, 8192, dtype=torch.uint8)  # 400 MB of input; ~4.4 TB of correlation
    pre = make_preprocessor(height=None, width=None)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"the input's own size, 8192x8192 .* needs at least 4\.4 TB for one frame "
                                         r"pair's correlation volume.*fixed size instead, e\.g\. height=512, width=512"):
        pre(frames)
    assert time.perf_counter() - started < 10 and not pre.loaded  # nothing built, nothing allocated


def test_loading_a_compute_size_that_cannot_fit_names_the_size_and_the_fix() -> None:
    pre = OpticalFlowTensorRTPreprocessor(16384, 16384, device="cpu", weights=None, num_flow_updates=2)
    with pytest.raises(TooLargeForMemory, match=r"computing flow at 16384x16384 .* needs at least 70\.4 TB .* has "
                                                r"\d+\.\d [GMT]B free\. Compute at a smaller size, e\.g\. height=512, "
                                                r"width=512\."):
        pre.load()
    assert not pre.loaded


def test_cli_size_too_large_is_a_clear_usage_error(run_main, tmp_path: Path) -> None:  # noqa: F811
    write_images(tmp_path / "frames", moving_frames(2, 64, 64))
    options = ["--updates", "2", "--weights", "untrained", "--device", "cpu"]
    code, _, err = run_main("run", tmp_path / "frames", "-o", tmp_path / "flow.mp4", "--size", "16384x16384",
                            *options)
    assert code == 2, err
    assert "computing flow at 16384x16384" in err and "e.g. --size 512x512" in err
    assert "allocate" not in err and not (tmp_path / "flow.mp4").exists()


def test_frames_times_size_is_checked_against_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    pre = make_preprocessor(normalization="running")
    before = pre(GOOD[:2])
    monkeypatch.setattr(memory, "CHECK_FROM_BYTES", 0)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 300_000)  # one pair fits, the call does not
    with pytest.raises(TooLargeForMemory, match=r"1 frame\(s\) of 72x64 \(width x height\) need at least 458\.8 kB "
                                                r"in one call, but this machine's memory has 300\.0 kB free\. Pass fewer "
                                                r"or smaller frames per call"):
        pre(GOOD[2:3])
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: nothing is refused
    after = pre(GOOD[2:3])
    reference = make_preprocessor(normalization="running")(GOOD)
    torch.testing.assert_close(torch.cat([before, after], dim=2), reference, atol=1e-4, rtol=0)


def test_usual_calls_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call needing less than CHECK_FROM_BYTES asks nothing of the device (no query on a live call)."""

    def refuse(device: torch.device) -> int:
        raise AssertionError("a small call queried the device's memory")

    monkeypatch.setattr(memory, "available_bytes", refuse)
    make_preprocessor()(make_frames(3, 64, 72))


def test_bytes_are_written_for_people() -> None:
    assert [format_bytes(n) for n in (512, 2_500_000, 48 * 10**12, 7 * 10**16)] == [
        "512 bytes", "2.5 MB", "48.0 TB", "70000.0 TB"]


def test_a_clip_too_large_at_its_own_size_fails_alone(run_main, tmp_path: Path,  # noqa: F811
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """At the input's own size each clip sets the size: one that cannot fit is that clip's usage error (the fix
    named), and the batch goes on to the next clip instead of stopping."""
    write_images(tmp_path / "small", moving_frames(3, 128, 128))
    write_images(tmp_path / "large", moving_frames(3, 512, 512))
    fits = memory.correlation_bytes(128, 128)  # the small clip's correlation volume fits, the large one's does not
    monkeypatch.setattr(memory, "CHECK_FROM_BYTES", 0)
    monkeypatch.setattr(memory, "available_bytes", lambda device: fits * 40)
    code, _, err = run_main("run", tmp_path / "large", tmp_path / "small", "-o", tmp_path / "out" / "{name}.mp4",
                            "--size", "native", "--updates", "2", "--weights", "untrained", "--device", "cpu",
                            "--report", tmp_path / "report.json")
    assert code == 1, err  # a batch with failed clips (each named with its own error); the others written
    assert "1 of 2 clip(s) failed" in err
    # the clip's own error is the core's message (a usage error), not a crash's type name
    assert f"{tmp_path / 'large'}: computing flow at the input's own size, 512x512" in err
    assert "e.g. --size 512x512" in err
    clips = {Path(clip["input"][0]).name: clip for clip in json.loads((tmp_path / "report.json").read_text())["clips"]}
    assert clips["large"]["error"].startswith("computing flow at the input's own size") and clips["small"]["ok"]
    assert not (tmp_path / "out" / "large.mp4").exists()
    assert (tmp_path / "out" / "small.mp4").stat().st_size > 0
