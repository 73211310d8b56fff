"""Scale-out ``run``: many clips (folder of videos, manifest) in one process, in two CPU worker processes
(``--devices cpu:2``) and on a local Ray instance; resume, per-clip failures, output naming, devices, and the
Ray Data callable class. CPU, 128x128 compute, untrained weights, 2 flow updates, 3-4 frame clips."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("click")
pytest.importorskip("tqdm")
pytest.importorskip("PIL")
from PIL import Image
from scope_optical_flow_tensorrt.batch import api
from scope_optical_flow_tensorrt.cli import main
from scope_optical_flow_tensorrt.cli.options import cli_words
from scope_optical_flow_tensorrt.batch.plan import parse_devices, plan_jobs
from scope_optical_flow_tensorrt.batch.clips import ClipJob, WriteSettings
from scope_optical_flow_tensorrt.batch.dispatch import clip_size, largest_first
from scope_optical_flow_tensorrt.batch.pool import WorkerPool
from scope_optical_flow_tensorrt.batch.errors import EXIT_FAILURE, EXIT_INPUT, EXIT_USAGE, CliError
from scope_optical_flow_tensorrt.batch import FlowMapBatches  # the public path of the Ray Data class
from scope_optical_flow_tensorrt.core import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.resize import resize_flow
from test_cli import moving_frames, read_video, run_main, write_video  # noqa: F401  (run_main: shared fixture)

FAST = ["--size", "128x128", "--updates", "2", "--weights", "untrained", "--device", "cpu"]
CLIP_FRAMES = (4, 3, 4)


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """A folder of three tiny videos (the last two of one size: a missed reset would show) and a text file."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for index, (frames, size) in enumerate(zip(CLIP_FRAMES, [(64, 80), (48, 64), (48, 64)])):
        write_video(folder / f"clip{index}.mp4", moving_frames(frames, *size, seed=index))
    (folder / "notes.txt").write_text("not a clip")
    return folder


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.load(path) for path in sorted(folder.glob("*.npy"))}


def pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.iterdir())])


def mtimes(*folders: Path) -> dict[str, int]:
    return {f"{p.parent.name}/{p.name}": p.stat().st_mtime_ns for folder in folders for p in folder.iterdir()}


def expected_flow(video: Path) -> np.ndarray:
    """The core on the whole decoded clip in one call, at the input size."""
    frames, _ = read_video(video)
    flow = OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", weights=None, num_flow_updates=2)
    raw = flow.compute_flow(torch.from_numpy(frames), layout="FHWC")[0]
    return resize_flow(raw, *frames.shape[1:3]).numpy()


# -- local workers --------------------------------------------------------------------------------------------


def test_two_cpu_workers_match_one_process_and_resume(tmp_path: Path, clips: Path, run_main) -> None:
    # PNG folders (lossless) from a {stem} template, so the visualizations can be compared exactly.
    code, out, err = run_main("run", clips, "-o", tmp_path / "one" / "{stem}", "--flow-npy", tmp_path / "one_npy",
                              "--chunk", "2", *FAST)
    assert code == 0, err
    assert "3 clip(s) done, 0 skipped" in out
    single = outputs(tmp_path / "one_npy")
    assert sorted(single) == ["clip0.npy", "clip1.npy", "clip2.npy"]
    for name, frames in zip(sorted(single), CLIP_FRAMES):  # chunks of 2 continue each clip's stream
        assert single[name].shape[0] == frames
        np.testing.assert_allclose(single[name], expected_flow(clips / name.replace(".npy", ".mp4")), atol=1e-3)

    args = ["run", clips, "-o", tmp_path / "multi" / "{stem}", "--flow-npy", tmp_path / "multi_npy", "--chunk", "2",
            "--devices", "cpu:2", *FAST]
    code, out, err = run_main(*args)
    assert code == 0, err
    assert "3 clip(s) done" in out and "on cpu, cpu" in out
    multi = outputs(tmp_path / "multi_npy")
    assert sorted(multi) == sorted(single)
    for name in single:
        np.testing.assert_allclose(multi[name], single[name], atol=1e-5)
        stem = name.removesuffix(".npy")
        one, two = pngs(tmp_path / "one" / stem), pngs(tmp_path / "multi" / stem)
        assert one.shape == (single[name].shape[0], *single[name].shape[2:], 3)
        # Worker processes may run other CPU thread counts, so float rounding can move a pixel by one level.
        difference = np.abs(one.astype(np.int16) - two.astype(np.int16))
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    assert not [p for p in (tmp_path / "multi").iterdir() if p.name.startswith(".")]  # no temporary leftovers

    # Resume: finished clips are skipped (untouched); a clip without outputs is redone.
    before = mtimes(tmp_path / "multi", tmp_path / "multi_npy")
    code, out, err = run_main(*args)
    assert code == 0, err
    assert "0 clip(s) done, 3 skipped" in out
    assert mtimes(tmp_path / "multi", tmp_path / "multi_npy") == before
    shutil.rmtree(tmp_path / "multi" / "clip1")
    (tmp_path / "multi_npy" / "clip1.npy").unlink()
    code, out, err = run_main(*args)
    assert code == 0, err
    assert "1 clip(s) done, 2 skipped" in out
    after = mtimes(tmp_path / "multi", tmp_path / "multi_npy")
    assert {key for key in after if after[key] != before.get(key)} == {"multi/clip1", "multi_npy/clip1.npy"}
    np.testing.assert_allclose(np.load(tmp_path / "multi_npy" / "clip1.npy"), single["clip1.npy"], atol=1e-5)

    # A clip with only some of its outputs is not guessed at: refused, named, others untouched.
    (tmp_path / "multi_npy" / "clip2.npy").unlink()
    code, out, err = run_main(*args)
    assert code == EXIT_FAILURE
    assert "failed: " in err and str(tmp_path / "multi" / "clip2") in err and "--overwrite" in err
    assert not (tmp_path / "multi_npy" / "clip2.npy").exists()


# -- dispatch order and worker start-up ------------------------------------------------------------------------

SIZED_CLIPS = {"a.mp4": 3, "b.mp4": 6, "c.mp4": 4, "d.mp4": 6}  # name order is not size order; b and d tie


@pytest.fixture
def sized_clips(tmp_path: Path) -> Path:
    folder = tmp_path / "sized"
    folder.mkdir()
    for index, (name, frames) in enumerate(SIZED_CLIPS.items()):
        write_video(folder / name, moving_frames(frames, 48, 64, seed=index))
    return folder


def test_largest_first_by_frames_else_by_bytes(tmp_path: Path, sized_clips: Path) -> None:
    jobs = [ClipJob((str(sized_clips / name),), flow_npy=tmp_path / f"{name}.npy") for name in SIZED_CLIPS]
    assert [clip_size(job).frames for job in jobs] == list(SIZED_CLIPS.values())
    # Largest first; the tie (b, d) keeps the listed order.
    assert [Path(job.inputs[0]).name for job in largest_first(jobs)] == ["b.mp4", "d.mp4", "c.mp4", "a.mp4"]
    frames = tmp_path / "frames"  # an image folder counts its files as frames
    frames.mkdir()
    for index, image in enumerate(moving_frames(5, 48, 64)):
        Image.fromarray(image).save(frames / f"{index}.png")
    with_images = [*jobs, ClipJob((str(frames),), flow_npy=tmp_path / "frames.npy")]
    assert [job.inputs[0] for job in largest_first(with_images)][:3] == [
        str(sized_clips / "b.mp4"), str(sized_clips / "d.mp4"), str(frames)]
    # One clip of unknown length (it cannot be opened): every clip is ordered by bytes on disk instead.
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 10)
    with_broken = [*jobs, ClipJob((str(broken),), flow_npy=tmp_path / "broken.npy")]
    assert clip_size(with_broken[-1]).frames is None and clip_size(with_broken[-1]).bytes == 10
    by_bytes = sorted(with_broken, key=lambda job: -Path(job.inputs[0]).stat().st_size)
    assert largest_first(with_broken) == by_bytes and by_bytes[-1].inputs[0] == str(broken)


def test_one_worker_runs_the_largest_clips_first(tmp_path: Path, sized_clips: Path, run_main) -> None:
    code, out, err = run_main("run", sized_clips, "--flow-npy", tmp_path / "npy", "--devices", "cpu",
                              "--report", tmp_path / "report.json", *FAST)
    assert code == 0, err
    clips = json.loads((tmp_path / "report.json").read_text())["clips"]
    started = [Path(clip["input"][0]).name for clip in sorted(clips, key=lambda clip: clip["started_at"])]
    assert started == ["b.mp4", "d.mp4", "c.mp4", "a.mp4"]  # one worker: the dispatch order
    assert [np.load(tmp_path / "npy" / f"{Path(name).stem}.npy").shape[0] for name in SIZED_CLIPS] == list(
        SIZED_CLIPS.values())


def test_workers_start_before_the_clips_are_planned(tmp_path: Path, sized_clips: Path, run_main,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    workers_while_planning: list[int] = []

    def planning(jobs: list[ClipJob]) -> list[ClipJob]:
        workers_while_planning.append(len(multiprocessing.active_children()))
        return largest_first(jobs)

    monkeypatch.setattr(api, "largest_first", planning)
    code, out, err = run_main("run", sized_clips, "--flow-npy", tmp_path / "npy", "--devices", "cpu:2",
                              "--report", tmp_path / "report.json", *FAST)
    assert code == 0, err
    assert workers_while_planning == [2]  # both worker processes existed before the clips were ordered
    ready = json.loads((tmp_path / "report.json").read_text())["worker_ready_s"]
    assert len(ready) == 2 and all(key.startswith("cpu pid ") and 0 < value < 120 for key, value in ready.items())


def test_worker_pool_loads_the_model_before_any_clip_and_stops_early(tmp_path: Path) -> None:
    model = {"height": 128, "width": 128, "weights": None, "device": "cpu", "fp16": False, "num_flow_updates": 2,
             "backend": "auto", "strict_device": False, "models_dir": None, "cuda_graphs": False}
    with WorkerPool(["cpu"], WriteSettings(chunk=2), model) as pool:
        assert len(multiprocessing.active_children()) == 1  # spawned at once, not when clips come
        deadline = time.monotonic() + 120
        while not pool.ready_seconds() and time.monotonic() < deadline and multiprocessing.active_children():
            time.sleep(0.1)
        assert len(pool.ready_seconds()) == 1  # loaded (and warmed up) with no clip submitted
    # A pool left before its workers are loaded stops them before they load the model.
    with WorkerPool(["cpu"], WriteSettings(chunk=2), model) as pool:
        pass
    assert pool.ready_seconds() == {} and not multiprocessing.active_children()


def test_corrupt_clip_is_reported_and_the_others_written(tmp_path: Path, run_main) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "good a.mp4", moving_frames(3, 64, 64, seed=4))
    write_video(folder / "good_b.mp4", moving_frames(4, 64, 64, seed=5))
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated, not a real video")
    manifest = tmp_path / "clips.csv"
    manifest.write_text(
        "# clips for the test\n"
        "input,output,flow_npy\n"
        '"in/good a.mp4",flow/a.mp4,\n'
        "in/broken.mp4,flow/broken.mp4,raw/broken.npy\n"
        "in/good_b.mp4,,\n"  # blank cells: the command line's templates apply
    )
    code, out, err = run_main("run", "--manifest", manifest, "--flow-npy", tmp_path / "raw" / "{stem}.npy",
                              "--devices", "cpu:2", *FAST)
    assert code == EXIT_FAILURE
    assert "2 clip(s) done, 0 skipped (outputs exist), 1 failed" in out
    failures = [line for line in err.splitlines() if "failed: " in line]
    assert len(failures) == 1 and "broken.mp4" in failures[0] and "is not a readable video" in failures[0]
    assert "1 of 3 clip(s) failed" in err and "Traceback" not in err
    assert read_video(tmp_path / "flow" / "a.mp4")[0].shape == (3, 64, 64, 3)
    assert np.load(tmp_path / "raw" / "good a.npy").shape == (3, 2, 64, 64)  # template for the blank cell
    assert np.load(tmp_path / "raw" / "good_b.npy").shape == (4, 2, 64, 64)
    assert sorted(p.name for p in (tmp_path / "flow").iterdir()) == ["a.mp4"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["good a.npy", "good_b.npy"]


# -- Ray --------------------------------------------------------------------------------------------------------


def test_ray_workers_on_a_local_instance_match_one_process(tmp_path: Path, clips: Path, run_main) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install ray, or the [ray] extra)")
    code, _, err = run_main("run", clips, "--flow-npy", tmp_path / "one", *FAST)
    assert code == 0, err
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, out, err = run_main("run", clips, "--flow-npy", tmp_path / "ray", "-o", tmp_path / "ray_mp4" / "{name}",
                                  "--ray", "auto", *FAST)
    finally:
        ray.shutdown()
    assert code == 0, err
    assert "3 clip(s) done" in out and "on Ray cluster, 2 CPU worker(s)" in out
    single, distributed = outputs(tmp_path / "one"), outputs(tmp_path / "ray")
    assert sorted(distributed) == sorted(single) == ["clip0.npy", "clip1.npy", "clip2.npy"]
    for name in single:
        np.testing.assert_allclose(distributed[name], single[name], atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "ray_mp4").iterdir()) == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]


def test_flow_map_batches_keep_each_clips_state() -> None:
    clip_a = moving_frames(5, 64, 64, seed=6)
    clip_b = moving_frames(3, 48, 64, seed=7)
    mapper = FlowMapBatches(128, 128, device="cpu", weights=None, num_flow_updates=2, raw_flow=True)
    reference = OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", weights=None, num_flow_updates=2)

    def whole(frames: np.ndarray) -> np.ndarray:
        reference.reset()
        raw = reference.compute_flow(torch.from_numpy(frames), layout="FHWC")[0]
        return resize_flow(raw, *frames.shape[1:3]).numpy()

    def batch(clip: str, frames: np.ndarray, numbers: list[int]) -> dict[str, np.ndarray]:
        return {"clip": np.array([clip] * len(numbers)), "frame": np.array(numbers),
                "image": frames[numbers]}

    # Clip a in two batches (rows shuffled inside the first), clip b in between: a's state is kept by the actor.
    first = mapper(batch("a", clip_a, [2, 0, 1]))
    middle = mapper(batch("b", clip_b, [0, 1, 2]))
    last = mapper(batch("a", clip_a, [3, 4]))
    flow_a = np.concatenate([first["flow"][[1, 2, 0]], last["flow"]])
    np.testing.assert_allclose(flow_a, whole(clip_a), atol=1e-4)
    np.testing.assert_allclose(middle["flow"], whole(clip_b), atol=1e-4)
    maps = first["flow_map"]
    assert maps.shape == (3, 64, 64, 3) and maps.dtype == np.uint8
    assert maps[1].min() >= 245  # row 1 is frame 0: no reference, white
    np.testing.assert_array_equal(first["frame"], [2, 0, 1])  # rows come back in their own order

    fresh = FlowMapBatches(128, 128, device="cpu", weights=None, num_flow_updates=2)
    with pytest.raises(ValueError, match="has not seen frame 2.*groupby"):
        fresh(batch("a", clip_a, [3, 4]))
    with pytest.raises(ValueError, match="consecutive"):
        fresh(batch("a", clip_a, [0, 2]))


# -- planning, devices, errors --------------------------------------------------------------------------------


def test_outputs_of_a_collection(tmp_path: Path, clips: Path) -> None:
    plan = plan_jobs((str(clips),), None, tmp_path / "out", tmp_path / "raw.d", tmp_path / "flo")
    assert plan.collection and [job.inputs for job in plan.jobs] == [(str(clips / f"clip{i}.mp4"),) for i in range(3)]
    job = plan.jobs[1]
    assert (job.output, job.flow_npy, job.flow_flo) == (tmp_path / "out" / "clip1.mp4",
                                                       tmp_path / "raw.d" / "clip1.npy", tmp_path / "flo" / "clip1")
    templated = plan_jobs((str(clips / "*.mp4"),), None, tmp_path / "{stem}_flow" / "frames", None, None)
    assert templated.collection and templated.jobs[0].output == tmp_path / "clip0_flow" / "frames"
    videos = [str(clips / "clip2.mp4"), str(clips / "clip10.mp4")]
    (clips / "clip10.mp4").write_bytes((clips / "clip0.mp4").read_bytes())
    assert [job.inputs[0] for job in plan_jobs(tuple(videos[::-1]), None, tmp_path, None, None).jobs] == videos
    assert not plan_jobs((str(clips / "clip0.mp4"),), None, tmp_path / "x.mp4", None, None).collection
    manifest = tmp_path / "m.csv"
    manifest.write_text('input,flow_npy\n"a, b.mp4",\nframes/shot1/*.png,\nframes/shot2/,own.npy\n')
    rows = plan_jobs((), manifest, None, tmp_path / "raw" / "{stem}.npy", None).jobs
    assert [job.inputs[0] for job in rows] == [str(tmp_path / name) for name in ("a, b.mp4", "frames/shot1/*.png",
                                                                                "frames/shot2")]
    assert [job.flow_npy for job in rows] == [tmp_path / "raw" / "a, b.npy", tmp_path / "raw" / "shot1.npy",
                                              tmp_path / "own.npy"]


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("one file for many clips", EXIT_USAGE, "names one file but there are"),
        ("unknown placeholder", EXIT_USAGE, "{stem}"),
        ("two clips, one output", EXIT_USAGE, "would both write"),
        ("manifest without header", EXIT_INPUT, "header"),
        ("manifest row without output", EXIT_USAGE, "no output for"),
        ("missing manifest", EXIT_INPUT, "cannot read manifest"),
        ("input and manifest", EXIT_USAGE, "not both"),
        ("devices and ray", EXIT_USAGE, "not both"),
        ("bad devices", EXIT_USAGE, "not a GPU index"),
        ("bad cpu count", EXIT_USAGE, "cpu:N"),
        ("bad weights", EXIT_USAGE, "weights file not found"),
        ("bad weights in workers", EXIT_USAGE, "could not load the model"),
    ],
)
def test_bad_batch_input(tmp_path: Path, clips: Path, run_main, case: str, code: int, message: str) -> None:
    manifest = tmp_path / "m.csv"
    args: list[str | Path] = ["run", clips, "-o", tmp_path / "out", *FAST]
    if case == "one file for many clips":
        args[3] = tmp_path / "out.mp4"
    elif case == "unknown placeholder":
        args[3] = tmp_path / "{clip}.mp4"
    elif case == "two clips, one output":
        manifest.write_text(f"input,output\n{clips}/clip0.mp4,same.mp4\n{clips}/clip1.mp4,same.mp4\n")
        args = ["run", "--manifest", manifest, *FAST]
    elif case == "manifest without header":
        manifest.write_text(f"{clips}/clip0.mp4,a.mp4\n")
        args = ["run", "--manifest", manifest, *FAST]
    elif case == "manifest row without output":
        manifest.write_text(f"input,output\n{clips}/clip0.mp4,a.mp4\n{clips}/clip1.mp4,\n")
        args = ["run", "--manifest", manifest, *FAST]
    elif case == "missing manifest":
        args = ["run", "--manifest", manifest, *FAST]
    elif case == "input and manifest":
        manifest.write_text(f"input,output\n{clips}/clip0.mp4,a.mp4\n")
        args += ["--manifest", manifest]
    elif case == "devices and ray":
        args += ["--devices", "cpu:2", "--ray", "auto"]
    elif case == "bad devices":
        args += ["--devices", "first"]
    elif case == "bad cpu count":
        args += ["--devices", "cpu:0"]
    elif case == "bad weights":
        args += ["--weights", str(tmp_path / "none.pth")]
    elif case == "bad weights in workers":  # stops the run (every clip would fail alike), not one failure per clip
        args += ["--weights", str(tmp_path / "none.pth"), "--devices", "cpu:2"]
    result, _, err = run_main(*args)
    assert result == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("scope-optical-flow: error: ") and message in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_parse_devices() -> None:
    assert parse_devices("cpu") == ["cpu"]
    assert parse_devices(" CPU:3 ") == ["cpu", "cpu", "cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        assert parse_devices("all") == [f"cuda:{i}" for i in range(count)]
        assert parse_devices("cuda:0,0") == ["cuda:0", "cuda:0"]
    else:
        assert parse_devices("all") == ["cpu"]
        with pytest.raises(CliError, match=r"^devices='all' with strict_device=True: .* use devices=cpu:N\.$"):
            parse_devices("all", strict=True)
        with cli_words(), pytest.raises(CliError, match=r"^--devices all with --strict-device: .* use --devices cpu:N"):
            parse_devices("all", strict=True)
    with pytest.raises(CliError, match=f"GPU {count} does not exist"):
        parse_devices(f"0,{count}" if count else "0")


# -- GPU ------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_every_gpu_matches_one_process_on_cuda(tmp_path: Path, clips: Path, run_main) -> None:
    cuda = ["--size", "128x128", "--updates", "2", "--weights", "untrained", "--device", "cuda", "--strict-device",
            "--fp32"]
    code, out, err = run_main("run", clips, "--flow-npy", tmp_path / "one", *cuda)
    assert code == 0, err
    code, out, err = run_main("run", clips, "--flow-npy", tmp_path / "all", "--devices", "all", *cuda)
    assert code == 0, err
    count = torch.cuda.device_count()
    assert "3 clip(s) done" in out and ", ".join(f"cuda:{i}" for i in range(min(count, 3))) in out
    single, spread = outputs(tmp_path / "one"), outputs(tmp_path / "all")
    assert sorted(spread) == sorted(single) == ["clip0.npy", "clip1.npy", "clip2.npy"]
    for name in single:  # fp32 on GPUs of one model; TF32/cuDNN choices may differ slightly between processes
        np.testing.assert_allclose(spread[name], single[name], atol=5e-2)


def test_pool_workers_see_only_their_gpu_as_cuda_0() -> None:
    """Each --devices worker is shown only its GPU (so all compile for, and share the kernels of, cuda:0)."""
    from scope_optical_flow_tensorrt.batch.pool import worker_visible_devices

    assert worker_visible_devices("cuda:1", None) == ("1", "cuda:0")
    assert worker_visible_devices("cuda:0", "") == (None, "cuda:0")  # the user hid every GPU: nothing to map
    assert worker_visible_devices("cuda:1", "2,3") == ("3", "cuda:0")  # N counts the GPUs the user made visible
    assert worker_visible_devices("cuda:1", "GPU-ab12, GPU-cd34") == ("GPU-cd34", "cuda:0")
    assert worker_visible_devices("cuda:5", "2,3") == (None, "cuda:5")  # out of range: CUDA's own error
    assert worker_visible_devices("cpu", "0,1") == (None, "cpu")
