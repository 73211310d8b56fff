"""The batch's messages in the words of the face in use: ``overwrite=True`` from Python, ``--overwrite`` from the
command line, wherever the message is made (this process, a clip's writer thread, a worker process)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("av")
from scope_optical_flow_tensorrt.batch import EXIT_OUTPUT, EXIT_USAGE, UsageError, process
from scope_optical_flow_tensorrt.batch.plan import parse_devices
from test_cli import FAST, moving_frames, run_main, write_images, write_video  # noqa: F401  (run_main: fixture)

MODEL = {"height": 128, "width": 128, "num_flow_updates": 2, "weights": None, "device": "cpu"}


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    write_images(tmp_path / "frames", moving_frames(3, 64, 64))
    return tmp_path / "frames"


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    (tmp_path / "clips").mkdir()
    for index in range(2):
        write_video(tmp_path / "clips" / f"c{index}.mp4", moving_frames(3, 48, 64, seed=index))
    return tmp_path / "clips"


def no_flags(message: str | None, tmp_path: Path) -> bool:
    return message is not None and "--" not in message.replace(str(tmp_path), "")


def test_an_existing_output_names_the_keyword_in_python(frames: Path, clips: Path, tmp_path: Path) -> None:
    (tmp_path / "flow.mp4").write_bytes(b"precious")
    report = process(frames, output=tmp_path / "flow.mp4", progress=False, **MODEL)
    error = report.failed[0].error
    assert error == f"output {tmp_path / 'flow.mp4'} already exists; pass overwrite=True to replace it."
    assert no_flags(error, tmp_path)
    # A collection with only some outputs of a clip refuses it, in the same words.
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "c0.mp4").write_bytes(b"precious")
    report = process(clips, output=tmp_path / "maps", flow_npy=tmp_path / "npy", progress=False, **MODEL)
    [refused] = report.failed
    assert "delete them or pass overwrite=True to redo this clip." in (refused.error or "")
    assert no_flags(refused.error, tmp_path)


def test_an_existing_output_names_the_flag_on_the_command_line(frames: Path, tmp_path: Path, run_main) -> None:
    (tmp_path / "flow.mp4").write_bytes(b"precious")
    code, _, err = run_main("run", frames, "-o", tmp_path / "flow.mp4", *FAST)
    assert code == EXIT_OUTPUT and "already exists; pass --overwrite to replace it." in err, err
    assert "overwrite=True" not in err


def test_usage_errors_name_keywords_in_python(frames: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^give devices \(this machine\) or ray_address \(a cluster\), not both\.$"):
        process(frames, output=tmp_path / "flow.mp4", devices="cpu", ray_address="local", **MODEL)
    with pytest.raises(UsageError, match=r"^nothing to write: give output, flow_npy and/or flow_flo\.$"):
        process(frames, **MODEL)
    with pytest.raises(UsageError, match=r"^missing inputs: .*, or manifest=FILE\.$"):
        process([], output=tmp_path / "flow.mp4", **MODEL)
    with pytest.raises(UsageError, match=r"^output='.*\.png': an image file .* \(e\.g\. output='.*/'\)"):
        process(frames, output=tmp_path / "flow.png", **MODEL)
    with pytest.raises(UsageError, match=r"^devices='cpu:x': write cpu:N"):
        process(frames, output=tmp_path / "flow.mp4", devices="cpu:x", **MODEL)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match=r"^devices='all' with strict_device=True: .*; use devices=cpu:N\.$"):
            parse_devices("all", strict=True)


def test_usage_errors_name_flags_on_the_command_line(frames: Path, tmp_path: Path, run_main) -> None:
    code, _, err = run_main("run", frames, "-o", tmp_path / "flow.mp4", "--devices", "cpu", "--ray", "local", *FAST)
    assert code == EXIT_USAGE and "error: give --devices (this machine) or --ray (a cluster), not both." in err, err
    code, _, err = run_main("run", frames, *FAST)
    assert code == EXIT_USAGE and "nothing to write: give -o, --flow-npy and/or --flow-flo." in err, err
    code, _, err = run_main("run", "-o", tmp_path / "flow.mp4", *FAST)
    assert code == EXIT_USAGE and "or --manifest FILE." in err and "missing INPUT" in err, err
    code, _, err = run_main("run", frames, frames, "-o", tmp_path / "out.mp4", *FAST)
    assert code == EXIT_USAGE and f"-o {tmp_path / 'out.mp4'} names one file" in err, err
    assert f"(-o '{tmp_path / '{stem}.mp4'}')" in err  # quoted for the shell


def test_a_writer_threads_message_speaks_the_callers_words(frames: Path, tmp_path: Path, run_main) -> None:
    """The video encoder opens in the clip's writer thread: it speaks the vocabulary of the thread that started it."""
    report = process(frames, output=tmp_path / "api.mp4", codec="nope", progress=False, **MODEL)
    assert "pick another with codec (e.g. libx264, mpeg4)" in (report.failed[0].error or "")
    code, _, err = run_main("run", frames, "-o", tmp_path / "cli.mp4", "--codec", "nope", *FAST)
    assert code == EXIT_OUTPUT and "pick another with --codec (e.g. libx264, mpeg4)" in err, err


def test_a_worker_process_speaks_the_callers_words(clips: Path, tmp_path: Path, run_main) -> None:
    """Clips run in a pool worker (spawned: it shares no context with this process) and its writer threads."""
    report = process(clips, output=tmp_path / "api", codec="nope", devices="cpu", progress=False, **MODEL)
    assert len(report.failed) == 2 and all(result.worker.startswith("cpu pid ") for result in report.failed)
    for result in report.failed:
        assert "pick another with codec (e.g." in (result.error or "") and no_flags(result.error, tmp_path)
    code, _, err = run_main("run", clips, "-o", tmp_path / "cli", "--codec", "nope", "--devices", "cpu", *FAST)
    assert code != 0 and err.count("pick another with --codec (e.g.") == 2, err
