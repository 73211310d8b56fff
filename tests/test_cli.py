"""The scope-optical-flow command line: every subcommand in a subprocess on tiny inputs, outputs checked
(frame count, size, range, agreement with the core), atomic writes, and each bad-input path's exit code and
message. CPU, 128x128 compute, untrained weights, 1-2 flow updates."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
from fractions import Fraction
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("click")
pytest.importorskip("tqdm")
pytest.importorskip("PIL")
from PIL import Image
from scope_optical_flow_tensorrt.cli import main
from scope_optical_flow_tensorrt.cli.demo import PAN, SPIN_DEGREES, measure_motion, synthetic_clip
from scope_optical_flow_tensorrt.batch.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE
from scope_optical_flow_tensorrt.batch.inputs import open_input
from scope_optical_flow_tensorrt.batch.outputs import npy_header, read_flo
from scope_optical_flow_tensorrt.cli.state import StderrHandler
from scope_optical_flow_tensorrt.core import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.resize import resize_flow

from conftest import make_frames

FAST = ["--size", "128x128", "--updates", "2", "--weights", "untrained", "--device", "cpu"]


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m scope_optical_flow_tensorrt ARGS`` in a subprocess (inherits the test's models dir)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scope_optical_flow_tensorrt", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False,
    )


@pytest.fixture
def run_main(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Call ``main(argv)`` in this process (fast error paths); returns (exit code, stdout, stderr).

    Worker processes that ``main`` may start (``--devices``) inherit OMP_NUM_THREADS=1.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def call(*args: str | Path) -> tuple[int, str, str]:
        code = main([str(arg) for arg in args])
        out, err = capfd.readouterr()
        return code, out, err

    yield call
    logger = logging.getLogger("scope_optical_flow_tensorrt")
    for handler in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
        logger.removeHandler(handler)


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[F, H, W, 3]`` uint8 of a smooth random texture drifting 2 px right and 1 px down per frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((3, height // 8 + num_frames + 2, width // 8 + num_frames + 2), dtype=np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], scale_factor=8, mode="bilinear")[0]
    tops = [num_frames - i for i in range(num_frames)]
    frames = [big[:, top : top + height, 2 * top : 2 * top + width] for top in tops]
    return (torch.stack(frames).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def write_video(path: Path, frames: np.ndarray, fps: int = 12, codec: str = "libx264") -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def read_video(path: Path) -> tuple[np.ndarray, Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, stream.average_rate


def write_images(folder: Path, frames: np.ndarray, names: str = "img_{}.png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(folder / names.format(index))
        Image.fromarray(frame).save(paths[-1])
    return paths


def core_flow(frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw flow ``[F, 2, h, w]`` and visualization ``[F, H, W, 3]`` uint8 from the core, in one call."""
    flow = OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", weights=None, num_flow_updates=2)
    raw = flow.compute_flow(torch.from_numpy(frames), layout="FHWC")
    maps = flow.flow_to_image(raw, size=frames.shape[1:3])[0]
    images = ((maps + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0)
    return raw[0], images


def no_leftovers(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected


# -- run ----------------------------------------------------------------------------------------------------


def test_run_video_to_video_npy_and_flo(tmp_path: Path) -> None:
    frames = moving_frames(6, 96, 112)
    write_video(tmp_path / "in.mp4", frames, fps=12)
    result = cli("run", tmp_path / "in.mp4", "-o", tmp_path / "flow.mp4", "--flow-npy", tmp_path / "flow.npy",
                 "--flow-flo", tmp_path / "flo", "--chunk", "4", *FAST)
    assert result.returncode == 0, result.stderr
    assert "6 frames (96x112)" in result.stdout  # height x width, as --size
    assert "UNTRAINED" in result.stderr  # the core's warning reaches the user
    video, rate = read_video(tmp_path / "flow.mp4")
    assert video.shape == (6, 96, 112, 3) and rate == 12
    assert video[0].min() >= 245  # frame 0 has no reference: zero flow is white
    assert video[1:].min() < 200  # later frames show motion
    flow = np.load(tmp_path / "flow.npy")
    assert flow.shape == (6, 2, 96, 112) and flow.dtype == np.float32 and np.isfinite(flow).all()
    assert np.abs(flow[0]).max() == 0 and np.abs(flow[1:]).max() > 0
    flo_files = sorted((tmp_path / "flo").iterdir())
    assert [p.name for p in flo_files] == [f"flow_{i:06d}.flo" for i in range(6)]
    for index, path in enumerate(flo_files):
        np.testing.assert_array_equal(read_flo(path), flow[index])
    no_leftovers(tmp_path, {"in.mp4", "flow.mp4", "flow.npy", "flo"})


def test_run_image_folder_matches_core_across_chunks(tmp_path: Path) -> None:
    frames = moving_frames(5, 80, 96, seed=1)
    write_images(tmp_path / "frames", frames, names="frame_{}.png")
    # Chunks of 2: the state carried across chunks must give the same result as the core in one call.
    result = cli("run", tmp_path / "frames", "-o", tmp_path / "pngs", "--flow-npy", tmp_path / "flow.npy",
                 "--chunk", "2", *FAST)
    assert result.returncode == 0, result.stderr
    raw, images = core_flow(frames)
    expected_flow = resize_flow(raw, 80, 96).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "flow.npy"), expected_flow, atol=1e-3)
    pngs = sorted((tmp_path / "pngs").iterdir())
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(5)]
    written = np.stack([np.asarray(Image.open(p)) for p in pngs])
    assert written.shape == (5, 80, 96, 3) and written.dtype == np.uint8
    assert np.abs(written.astype(int) - images.numpy().astype(int)).max() <= 1


def test_run_glob_to_per_frame_npy_at_compute_size(tmp_path: Path) -> None:
    frames = moving_frames(4, 64, 64, seed=2)
    write_images(tmp_path / "frames", frames, names="f{}.png")
    (tmp_path / "frames" / "notes.txt").write_text("not a frame")
    result = cli("run", str(tmp_path / "frames" / "f*.png"), "--flow-npy", tmp_path / "flows",
                 "--flow-size", "compute", *FAST)
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "flows").iterdir())
    assert [p.name for p in files] == [f"flow_{i:06d}.npy" for i in range(4)]
    arrays = [np.load(p) for p in files]
    assert all(a.shape == (2, 128, 128) and a.dtype == np.float32 for a in arrays)
    np.testing.assert_allclose(np.stack(arrays), core_flow(frames)[0].numpy(), atol=1e-3)


def test_failure_midway_leaves_no_output(tmp_path: Path) -> None:
    frames = moving_frames(6, 64, 64, seed=3)
    paths = write_images(tmp_path / "frames", frames, names="f{}.png")
    paths[4].write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path / "out").mkdir()
    result = cli("run", tmp_path / "frames", "-o", tmp_path / "out" / "flow.mp4", "--flow-npy",
                 tmp_path / "out" / "flow.npy", "--flow-flo", tmp_path / "out" / "flo", "--chunk", "2", *FAST)
    assert result.returncode == EXIT_INPUT
    assert "f4.png" in result.stderr and "Traceback" not in result.stderr
    assert list((tmp_path / "out").iterdir()) == []  # no output, no temporary leftovers


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path, run_main) -> None:
    write_images(tmp_path / "frames", moving_frames(3, 64, 64))
    (tmp_path / "out.mp4").write_bytes(b"precious")
    code, _, err = run_main("run", tmp_path / "frames", "-o", tmp_path / "out.mp4", *FAST)
    assert code == EXIT_OUTPUT and "--overwrite" in err
    assert (tmp_path / "out.mp4").read_bytes() == b"precious"
    code, _, err = run_main("run", tmp_path / "frames", "-o", tmp_path / "out.mp4", "--overwrite", *FAST)
    assert code == 0, err
    assert read_video(tmp_path / "out.mp4")[0].shape == (3, 64, 64, 3)
    no_leftovers(tmp_path, {"frames", "out.mp4"})


# -- bad input ----------------------------------------------------------------------------------------------


def test_error_is_one_line_without_traceback_unless_verbose(tmp_path: Path) -> None:
    result = cli("run", tmp_path / "missing.mp4", "-o", tmp_path / "out.mp4", *FAST)
    assert result.returncode == EXIT_INPUT
    assert result.stderr.strip().splitlines() == [
        (f"scope-optical-flow: error: input not found: {tmp_path / 'missing.mp4'} (give a video file, a folder of "
         "images or a glob like 'frames/*.png').")
    ]
    verbose = cli("-v", "run", tmp_path / "missing.mp4", "-o", tmp_path / "out.mp4", *FAST)
    assert verbose.returncode == EXIT_INPUT and "Traceback" in verbose.stderr


def _video_without_frames(path: Path) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(12))
        stream.width, stream.height = 64, 64
        if not hasattr(container, "start_encoding"):
            pytest.skip("this PyAV cannot write a video without frames")
        container.start_encoding()


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing", EXIT_INPUT, "input not found"),
        ("empty folder", EXIT_INPUT, "no images"),
        ("glob without matches", EXIT_INPUT, "matches no image files"),
        ("not a video", EXIT_INPUT, "is not a readable video"),
        ("video without frames", EXIT_INPUT, "has no frames"),
        ("frames of two sizes", EXIT_INPUT, "all frames must have one size"),
        ("output under a file", EXIT_OUTPUT, "cannot create the output folder"),
        ("no output", EXIT_USAGE, "nothing to write"),
        ("image file as output", EXIT_USAGE, "give a folder for PNG frames"),
        ("bad size", EXIT_USAGE, "multiple of 8"),
        ("unparsable size", EXIT_USAGE, "HEIGHTxWIDTH"),
        ("strength out of range", EXIT_USAGE, "--strength"),
        ("unknown backend", EXIT_USAGE, "--backend cuda is not supported"),
        ("missing weights file", EXIT_USAGE, "weights file not found"),
        ("bad device", EXIT_USAGE, "not a valid torch device"),
    ],
)
def test_bad_input(tmp_path: Path, run_main, case: str, code: int, message: str) -> None:
    frames = tmp_path / "frames"
    write_images(frames, moving_frames(2, 64, 64))
    output = ["-o", tmp_path / "out.mp4"]
    args: list[str | Path] = ["run", frames, *output, *FAST]
    if case == "missing":
        args[1] = tmp_path / "nope.mp4"
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        args[1] = tmp_path / "empty"
    elif case == "glob without matches":
        args[1] = str(tmp_path / "frames" / "*.jpg")
    elif case == "not a video":
        (tmp_path / "fake.mp4").write_text("not a video")
        args[1] = tmp_path / "fake.mp4"
    elif case == "video without frames":
        _video_without_frames(tmp_path / "empty.avi")
        args[1] = tmp_path / "empty.avi"
    elif case == "frames of two sizes":
        Image.fromarray(moving_frames(1, 64, 72)[0]).save(frames / "img_9.png")
    elif case == "output under a file":
        (tmp_path / "file").write_text("x")
        args[3] = tmp_path / "file" / "out.mp4"
    elif case == "image file as output":
        args[3] = tmp_path / "out.png"
    elif case == "no output":
        args = ["run", frames, *FAST]
    else:
        extra = {"bad size": ["--size", "100"], "unparsable size": ["--size", "big"],
                 "strength out of range": ["--strength", "3"], "unknown backend": ["--backend", "cuda"],
                 "missing weights file": ["--weights", str(tmp_path / "none.pth")],
                 "bad device": ["--device", "gpu7"]}[case]
        args += extra
    result, _, err = run_main(*args)
    assert result == code, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("scope-optical-flow: error: ") and message in lines[-1], err
    assert "Traceback" not in err
    no_leftovers(tmp_path, {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")})
    assert not (tmp_path / "out.mp4").exists()


# -- demo ---------------------------------------------------------------------------------------------------


def test_demo_runs_offline_end_to_end(tmp_path: Path, run_main) -> None:
    result = cli("demo", "--size", "128", "--frames", "4", "--updates", "2", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "optical-flow-demo"  # the default output folder
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["true"] == {"pan_u": PAN[0], "pan_v": PAN[1],
                                                          "spin_degrees": SPIN_DEGREES}
    assert set(summary["measured"]) == {"pan_u", "pan_v", "spin_degrees"}
    assert "measured" in result.stdout and "pan (u, v)" in result.stdout and "rotation" in result.stdout
    if not summary["pretrained"]:
        assert "UNTRAINED" in result.stderr
    video, _ = read_video(folder / "demo.mp4")
    assert video.shape == (4, 128, 256, 3)  # input | flow
    assert Image.open(folder / "strip.png").size[1] == 2 * 128 + 4
    legend = np.asarray(Image.open(folder / "legend.png"))
    assert legend.ndim == 3 and legend.std() > 20  # a coloured wheel, not a blank image
    # Running again replaces the earlier demo; a folder that is not a demo is refused.
    fast = ["--size", "128", "--frames", "3", "--updates", "1", "--device", "cpu", "--weights", "untrained"]
    code, _, err = run_main("demo", "-o", folder, *fast)
    assert code == 0, err
    assert json.loads((folder / "summary.json").read_text())["frames"] == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    code, _, err = run_main("demo", "-o", tmp_path / "mine", *fast)
    assert code == EXIT_OUTPUT and "--overwrite" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.txt"]


def test_demo_with_a_weights_file_reports_a_verdict(tmp_path: Path, run_main, monkeypatch) -> None:
    from torchvision.models.optical_flow import raft_small

    weights = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)  # stands in for a pretrained file
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(weights))
    code, out, err = run_main("demo", "-o", tmp_path / "demo", "--size", "128", "--frames", "3", "--updates", "1",
                              "--device", "cpu")
    assert code == 0, err
    assert "UNTRAINED" not in err and f"file {weights}" in out
    assert "Measured motion matches" in out or "Measured motion does NOT match" in out
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["pretrained"] is True


def test_synthetic_clip_has_the_stated_motion() -> None:
    clip = synthetic_clip(3, 128, 128)
    frames = clip.frames.float()
    # Background: frame t+1 is frame t moved by PAN (integer pixels), exactly, away from the disk.
    du, dv = int(PAN[0]), int(PAN[1])
    shifted = torch.zeros_like(frames[1])
    shifted[dv:, du:] = frames[0][:-dv, :-du]
    mask = clip.pan_mask
    assert (shifted[mask] - frames[1][mask]).abs().max() == 0
    # Disk: frame 1 is frame 0 turned counter-clockwise (on screen) by SPIN_DEGREES; the other sense is far off.
    height, width = frames.shape[1:3]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5 - height / 2, torch.arange(width) + 0.5 - width / 2,
                            indexing="ij")

    def turned(degrees: float) -> torch.Tensor:
        a = math.radians(degrees)
        grid = torch.stack([xs * math.cos(a) - ys * math.sin(a), xs * math.sin(a) + ys * math.cos(a)], -1)
        grid = (grid + torch.tensor([width / 2, height / 2])) / torch.tensor([width / 2, height / 2]) - 1
        image = frames[0].permute(2, 0, 1)[None]
        return torch.nn.functional.grid_sample(image, grid[None], align_corners=False)[0].permute(1, 2, 0)

    inner = clip.spin_mask
    right = (turned(SPIN_DEGREES)[inner] - frames[1][inner]).abs().mean()
    wrong = (turned(-SPIN_DEGREES)[inner] - frames[1][inner]).abs().mean()
    assert right < 0.5 * wrong
    # The measurement recovers the truth from an exact flow field.
    a = math.radians(SPIN_DEGREES)
    turn_u = xs * math.cos(a) + ys * math.sin(a) - xs  # where a point of the disk goes in one frame
    turn_v = -xs * math.sin(a) + ys * math.cos(a) - ys
    field = torch.stack([torch.where(inner, turn_u, PAN[0]), torch.where(inner, turn_v, PAN[1])])
    exact = torch.stack([torch.zeros_like(field), field, field])
    measured = measure_motion(exact, clip)
    assert measured["pan_u"] == pytest.approx(PAN[0]) and measured["pan_v"] == pytest.approx(PAN[1])
    assert measured["spin_degrees"] == pytest.approx(SPIN_DEGREES, abs=1e-3)


# -- bench, info, prebuild, cache -------------------------------------------------------------------------


def test_bench_json(tmp_path: Path) -> None:
    result = cli("bench", "--size", "128", "--chunk", "3", "--warmup", "0", "--runs", "2", "--updates", "1",
                 "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"] == "cpu" and report["chunk"] == 3 and report["size"] == "128x128"
    assert report["frames_per_s"] > 0 and report["ms_per_chunk_min"] <= report["ms_per_chunk_max"]
    assert report["frames_per_s"] == pytest.approx(3 / (report["ms_per_chunk_mean"] / 1e3), rel=0.01)


def test_info_prebuild_and_cache_clear(tmp_path: Path, _isolated_models_dir: Path, run_main) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    code, out, err = run_main("info", "--json")
    assert code == 0, err
    assert json.loads(out)["engines"] == []
    built = cli("prebuild", "--onnx-only", "--size", "128x128", "--updates", "1", "--weights", "untrained")
    assert built.returncode == 0, built.stderr
    onnx_path = Path(built.stdout.strip().split(": ", 1)[1])
    assert onnx_path.is_file() and onnx_path.suffix == ".onnx"
    info = cli("info", "--json")
    assert info.returncode == 0, info.stderr
    report = json.loads(info.stdout)
    assert report["packages"]["torch"] == metadata.version("torch")
    assert report["models_dir"] == str(_isolated_models_dir / "optical-flow-tensorrt")
    assert "torch" in report["backends"]
    assert {"source", "path", "present", "status"} <= set(report["weights"])
    listed = report["engines"]
    assert [Path(entry["path"]) for entry in listed] == [onnx_path]
    assert listed[0]["kind"] == "onnx" and listed[0]["size_bytes"] == onnx_path.stat().st_size
    code, out, _ = run_main("info")
    assert code == 0 and onnx_path.name in out and "height=128" in out
    cleared = cli("cache", "clear")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert not onnx_path.exists()
    code, out, _ = run_main("info", "--json")
    assert json.loads(out)["engines"] == []


def test_prebuild_without_tensorrt_explains(run_main) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    code, _, err = run_main("prebuild", "--size", "128", "--weights", "untrained")
    assert code == 1
    assert "TensorRT" in err and "--onnx-only" in err and "Traceback" not in err
    if importlib.util.find_spec("tensorrt_rtx") is None:
        assert "pip install" in err
    else:  # no GPU here, but TensorRT for RTX builds portable engines: the message says how
        assert "needs a CUDA GPU (--device cuda" in err and "--tensorrt-targets sm86,sm89,sm120" in err


# -- small units ----------------------------------------------------------------------------------------------


def test_image_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    frames = moving_frames(11, 32, 32)
    write_images(tmp_path, frames, names="shot{}.png")
    source = open_input(str(tmp_path))
    assert [p.name for p in source.files] == [f"shot{i}.png" for i in range(11)]
    chunks = list(source.chunks(4))
    assert [c.shape[0] for c in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), frames)


def test_several_image_arguments_form_one_sequence(tmp_path: Path, run_main) -> None:
    frames = moving_frames(3, 64, 64)
    paths = write_images(tmp_path / "frames", frames, names="f{}.png")
    code, _, err = run_main("run", *reversed(paths), "--flow-npy", tmp_path / "flow.npy", "--flow-size", "compute",
                            *FAST)
    assert code == 0, err
    # Taken in name order whatever the argument order: the result equals the core on f0, f1, f2.
    np.testing.assert_allclose(np.load(tmp_path / "flow.npy"), core_flow(frames)[0].numpy(), atol=1e-3)
    code, _, err = run_main("run", paths[0], tmp_path / "frames", "-o", tmp_path / "x.mp4", *FAST)
    assert code == EXIT_INPUT and "must all be image files" in err


def test_npy_header_is_read_by_numpy(tmp_path: Path) -> None:
    data = np.arange(2 * 2 * 3 * 5, dtype="<f4").reshape(2, 2, 3, 5)
    path = tmp_path / "a.npy"
    path.write_bytes(npy_header(data.shape, "<f4", 128) + data.tobytes())
    np.testing.assert_array_equal(np.load(path), data)
    with pytest.raises(ValueError):
        npy_header((10**60, 2, 3, 5), "<f4", 128)


# -- GPU ------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_run_bench_and_demo_on_cuda(tmp_path: Path) -> None:
    cuda = ["--device", "cuda", "--strict-device", "--weights", "untrained", "--size", "128", "--updates", "2"]
    write_video(tmp_path / "in.mp4", moving_frames(6, 96, 112))
    result = cli("run", tmp_path / "in.mp4", "-o", tmp_path / "flow.mp4", "--flow-npy", tmp_path / "flow.npy",
                 "--chunk", "4", *cuda)
    assert result.returncode == 0, result.stderr
    assert read_video(tmp_path / "flow.mp4")[0].shape == (6, 96, 112, 3)
    flow = np.load(tmp_path / "flow.npy")
    assert flow.shape == (6, 2, 96, 112) and np.isfinite(flow).all() and np.abs(flow[0]).max() == 0
    bench = cli("bench", "--chunk", "4", "--warmup", "1", "--runs", "2", "--json", *cuda)
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["device"] != "cpu" and report["peak_gpu_memory_mib"] > 0 and report["frames_per_s"] > 0
    demo = cli("demo", "-o", tmp_path / "demo", "--device", "cuda", "--strict-device")
    assert demo.returncode == 0, demo.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["frames"] == 12


# -- the model choice -------------------------------------------------------------------------------------------


def test_model_choice_through_run_bench_demo_and_info(tmp_path: Path, run_main, monkeypatch) -> None:
    from torchvision.models.optical_flow import raft_large

    frames = moving_frames(3, 64, 80, seed=3)
    write_images(tmp_path / "frames", frames, names="f{}.png")
    code, _, err = run_main("run", tmp_path / "frames", "--flow-npy", tmp_path / "large.npy", "--model", "raft_large",
                            *FAST)
    assert code == 0, err
    core = OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", weights=None, num_flow_updates=2,
                                           model="raft_large")
    expected = resize_flow(core.compute_flow(torch.from_numpy(frames), layout="FHWC")[0], 64, 80).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "large.npy"), expected, atol=1e-3)
    assert np.abs(expected - resize_flow(core_flow(frames)[0], 64, 80).numpy()).max() > 1e-3  # not RAFT Small
    code, out, err = run_main("bench", "--model", "raft_large", "--size", "128", "--chunk", "2", "--warmup", "0",
                              "--runs", "1", "--updates", "1", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "raft_large" and "RAFT Large" in json.loads(out)["weights"]
    code, out, err = run_main("demo", "-o", tmp_path / "demo", "--model", "raft_large", "--size", "128", "--frames",
                              "3", "--updates", "1", "--device", "cpu", "--weights", "untrained")
    assert code == 0, err
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["model"] == "raft_large"
    # info: the model and the weights it would load (torchvision's, or a file of that model in the variable).
    code, out, err = run_main("info", "--model", "raft_large", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == "raft_large" and "raft_large_C_T_SKHT_V2" in report["weights"]["status"]
    large_file = tmp_path / "raft-things.pth"
    torch.save(raft_large(weights=None).state_dict(), large_file)
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(large_file))
    code, out, _ = run_main("info", "--model", "raft_large")
    assert code == 0 and "model       raft_large" in out
    assert f"RAFT Large weights from $SCOPE_OPTICAL_FLOW_WEIGHTS: {large_file}" in out
    code, out, _ = run_main("info", "--json")  # RAFT Small: the variable lists no RAFT Small file
    assert json.loads(out)["model"] == "raft_small" and json.loads(out)["weights"]["source"] == "torchvision"


def test_model_choice_through_prebuild_and_unknown_models(tmp_path: Path, run_main) -> None:
    pytest.importorskip("onnx")
    code, out, err = run_main("prebuild", "--onnx-only", "--model", "raft_large", "--size", "128x128", "--updates",
                              "1", "--weights", "untrained", "--models-dir", tmp_path)
    assert code == 0, err
    onnx_path = Path(out.strip().split(": ", 1)[1])
    # fp16 is prebuild's default: the fp16 graph, the one an fp16 engine is built from
    assert onnx_path.parent == tmp_path and onnx_path.name.startswith("raft_large_128x128_fp16-")
    for command in (["run", tmp_path, "--flow-npy", tmp_path / "x.npy"], ["prebuild", "--size", "128"],
                    ["bench"], ["info"]):
        code, _, err = run_main(*command, "--model", "raft_huge")
        assert code == EXIT_USAGE, (command, err)
        assert "--model raft_huge is not supported; use one of raft_small, raft_large" in err, command


# -- the command line's words, VACE's preset --------------------------------------------------------------------


def _png_frames(folder: Path, count: int = 3, height: int = 130, width: int = 150) -> Path:
    folder.mkdir()
    frames = (make_frames(count, height, width) * 255).round().to(torch.uint8).numpy()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"f{index}.png")
    return folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback's wording needs a machine without CUDA")
def test_messages_name_cli_flags(tmp_path: Path, run_main) -> None:
    frames = _png_frames(tmp_path / "frames")
    code, _, err = run_main("run", frames, "-o", tmp_path / "out", "--strict-device")
    assert code == 1 and "--device cuda was requested with --strict-device" in err and "use --device cpu" in err
    assert "strict_device=True" not in err and "device='cpu'" not in err
    result = cli("run", frames, "-o", tmp_path / "maps", "--weights", "untrained", "--updates", "1")
    assert result.returncode == 0, result.stderr
    assert "Pass --device cpu to silence this, or --strict-device to make it an error." in result.stderr
    assert "That is --weights untrained; use --weights DEFAULT or a local .pth file" in result.stderr
    assert "weights=None" not in result.stderr and "device='cpu'" not in result.stderr
    code, _, err = run_main("run", frames, "-o", tmp_path / "x", "--device", "cpu", "--size", "100")
    assert code == EXIT_USAGE and "--size (height) 100 must be a multiple of 8" in err


def test_unreadable_video_without_library_noise(tmp_path: Path, run_main) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n")
    code, _, err = run_main("run", fake, "-o", tmp_path / "out.mp4", "--device", "cpu")
    assert code == EXIT_INPUT and f"{fake} is not a readable video (Invalid data found" in err
    assert "Errno" not in err and "1094995529" not in err


def test_preset_flag_and_the_x264_preset(tmp_path: Path, run_main) -> None:
    code, _, err = run_main("run", tmp_path, "-o", tmp_path / "out.mp4", "--preset", "veryfast")
    assert code == EXIT_USAGE and "'veryfast' is a libx264 preset" in err and "--x264-preset veryfast" in err
    frames = _png_frames(tmp_path / "frames")
    result = cli("run", frames, "--flow-npy", tmp_path / "flow.npy", "--device", "cpu", "--weights", "untrained",
                 "--preset", "vace", "--updates", "2", "-q")
    assert result.returncode == 0, result.stderr
    flow = np.load(tmp_path / "flow.npy")
    assert flow.shape == (3, 2, 130, 150)  # computed at the frames' own size, padding cropped off
    np.testing.assert_array_equal(flow[0], flow[1])  # the first map repeated
    api = OpticalFlowTensorRTPreprocessor(preset="vace", device="cpu", weights=None, num_flow_updates=2)
    frames_tensor = torch.from_numpy(np.stack([np.asarray(Image.open(frames / f"f{i}.png")) for i in range(3)]))
    np.testing.assert_allclose(flow, api.compute_flow(frames_tensor, layout="FHWC")[0].numpy(), atol=1e-4)


def test_cli_vocabulary_names_existing_flags() -> None:
    import click

    from scope_optical_flow_tensorrt.cli.app import cli as group
    from scope_optical_flow_tensorrt.cli.options import MODEL_CHOICE, cli_vocabulary
    from scope_optical_flow_tensorrt.core.model.specs import MODEL_CHOICE as CORE_MODEL_CHOICE

    assert MODEL_CHOICE == CORE_MODEL_CHOICE  # one sentence for the model choice in every face
    flags = {flag for command in group.commands.values() for param in command.params
             for flag in [*param.opts, *param.secondary_opts]}
    flags |= {param.metavar.rstrip(".") for command in group.commands.values() for param in command.params
              if isinstance(param, click.Argument) and param.metavar}  # run's INPUT
    named = {name.split(" ")[0] for name in cli_vocabulary().names.values()}
    named |= set(cli_vocabulary().settings.values())
    assert named <= flags, named - flags


# -- messages: each once, in the command line's words, with consistent exit codes ----------------------------


def test_weights_errors_name_the_flag_once(tmp_path: Path, run_main) -> None:
    frames = _png_frames(tmp_path / "frames")
    code, _, err = run_main("run", frames, "-o", tmp_path / "out", "--device", "cpu", "--weights", "nope.pth")
    assert code == EXIT_USAGE and "RAFT weights file not found: nope.pth (from --weights)." in err
    assert err.count("--weights") == 1
    code, _, err = run_main("run", frames, "-o", tmp_path / "out", "--device", "cpu", "--weights", "C_T_SKHT_V2")
    assert code == EXIT_USAGE and err.count("--weights") == 1
    assert "--weights C_T_SKHT_V2 is neither a Raft_Small_Weights name" in err
    assert "It is a Raft_Large_Weights name: add --model raft_large." in err
    code, _, err = run_main("prebuild", "--onnx-only", "--size", "128", "--weights", "nope.pth")
    assert code == EXIT_USAGE and "(from --weights)" in err  # the same answer from every command


def test_bad_input_exits_3_and_says_why(tmp_path: Path, run_main) -> None:
    one = tmp_path / "one"
    write_images(one, moving_frames(1, 64, 64))
    code, _, err = run_main("run", one, "-o", tmp_path / "out.mp4", *FAST)
    assert code == EXIT_INPUT and "has one frame" in err and "no motion to measure" in err
    small = tmp_path / "small"
    write_images(small, moving_frames(2, 64, 64))
    code, _, err = run_main("run", small, "-o", tmp_path / "out.mp4", "--size", "native", "--updates", "1",
                            "--weights", "untrained", "--device", "cpu")
    assert code == EXIT_INPUT and "the frames are 64x64 (height x width), too small" in err and "--size 128x128" in err
    assert not (tmp_path / "out.mp4").exists()
    mixed = tmp_path / "mixed"
    write_images(mixed, moving_frames(2, 64, 64))
    Image.fromarray(moving_frames(1, 64, 72)[0]).save(mixed / "img_9.png")
    code, _, err = run_main("run", mixed, "-o", tmp_path / "out.mp4", *FAST)
    assert code == EXIT_INPUT and "is 64x72 (height x width, as --size) but earlier frames are 64x64" in err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_an_output_folder_that_takes_no_files_says_so(tmp_path: Path, run_main) -> None:
    frames = _png_frames(tmp_path / "frames")
    code, _, err = run_main("run", frames, "-o", "/proc/o.mp4", *FAST)
    assert code == EXIT_OUTPUT and "cannot write /proc/o.mp4 in /proc: the folder exists but takes no new files" in err


def test_help_texts_say_each_thing_once(run_main) -> None:
    code, out, _ = run_main("bench", "--help")
    assert code == 0 and out.count("[default: untrained]") == 1
    assert "untrained-weights notice" not in out and "the weights are untrained" not in out
    code, out, _ = run_main("demo", "--help")
    assert "the notice that the weights are untrained" in " ".join(out.split())
    code, out, _ = run_main("run", "--help")
    assert "about twice the time per frame" in " ".join(out.split()) and "several times" not in out


def test_info_does_not_contradict_itself(run_main) -> None:
    code, out, _ = run_main("info")
    assert code == 0 and "tensorrt installed:" not in out and "TensorRT flavours:" in out
