"""The batch engine as a library (``batch.process``): the same files as the command line's ``run`` for each of its
CPU cases, one result per clip, progress through a callback, failures as results, the Ray Data class and the Ray
task as Ray runs them; and the layers' imports (``cli/`` -> ``batch/`` -> ``core/``), read from the source."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("av")
from scope_optical_flow_tensorrt import batch
from scope_optical_flow_tensorrt.batch import (
    EXIT_INPUT,
    FlowMapBatches,
    Progress,
    UsageError,
    WriteSettings,
    clip_task,
    process,
)
from scope_optical_flow_tensorrt.batch.clips import ClipJob
from test_cli import FAST, moving_frames, run_main, write_images, write_video  # noqa: F401  (run_main: fixture)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "scope_optical_flow_tensorrt"
# The preprocessor's keywords for the command line's FAST flags.
MODEL = {"height": 128, "width": 128, "num_flow_updates": 2, "weights": None, "device": "cpu"}


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A video, two folders of frames, a folder of three videos and a manifest naming two of them."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "clip.mp4", moving_frames(6, 96, 112), fps=12)
    write_images(folder / "frames", moving_frames(5, 64, 64, seed=3), names="f{}.png")
    write_images(folder / "large", moving_frames(3, 130, 150, seed=4))  # at its own size: at least 128 a side
    (folder / "clips").mkdir()
    for index, frames in enumerate((4, 3, 5)):
        write_video(folder / "clips" / f"c{index}.mp4", moving_frames(frames, 48, 64, seed=index))
    (folder / "clips.csv").write_text("# two of them\ninput,output\nclips/c0.mp4,\nclips/c2.mp4,\n")
    return folder


# Each case: the command line's arguments after INPUT, and process()'s keywords, for inputs in `i` and outputs in `o`.
Case = Callable[[Path, Path], tuple[list[Any], dict[str, Any]]]
CASES: dict[str, Case] = {
    "video to a video, one npy and flo files": lambda i, o: (
        [i / "clip.mp4", "-o", o / "flow.mp4", "--flow-npy", o / "flow.npy", "--flow-flo", o / "flo"],
        {"inputs": i / "clip.mp4", "output": o / "flow.mp4", "flow_npy": o / "flow.npy", "flow_flo": o / "flo"}),
    "frames to PNGs in chunks of 2": lambda i, o: (
        [i / "frames", "-o", o / "pngs", "--flow-npy", o / "flow.npy", "--chunk", "2"],
        {"inputs": i / "frames", "output": o / "pngs", "flow_npy": o / "flow.npy", "chunk": 2}),
    "a glob to per-frame npy at the compute size": lambda i, o: (
        [str(i / "frames" / "f*.png"), "--flow-npy", o / "flows", "--flow-size", "compute"],
        {"inputs": str(i / "frames" / "f*.png"), "flow_npy": o / "flows", "flow_size": "compute"}),
    "several image files, running colours": lambda i, o: (
        [*sorted((i / "frames").glob("*.png")), "-o", o / "maps", "--normalization", "running"],
        {"inputs": sorted((i / "frames").glob("*.png")), "output": o / "maps", "normalization": "running"}),
    "a folder of videos to templates": lambda i, o: (
        [i / "clips", "-o", o / "{stem}", "--flow-npy", o / "npy", "--chunk", "2"],
        {"inputs": i / "clips", "output": o / "{stem}", "flow_npy": o / "npy", "chunk": 2}),
    "a manifest with a template for blank cells": lambda i, o: (
        ["--manifest", i / "clips.csv", "-o", o / "maps", "--flow-npy", o / "raw" / "{stem}.npy"],
        {"manifest": i / "clips.csv", "output": o / "maps", "flow_npy": o / "raw" / "{stem}.npy"}),
    "the vace preset at the input's own size": lambda i, o: (
        [i / "large", "--flow-npy", o / "flow.npy", "--preset", "vace"],
        {"inputs": i / "large", "flow_npy": o / "flow.npy", "preset": "vace", "height": None, "width": None}),
    "one worker process": lambda i, o: (
        [i / "clips", "--flow-npy", o / "npy", "--devices", "cpu"],
        {"inputs": i / "clips", "flow_npy": o / "npy", "devices": "cpu"}),
}


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_process_writes_the_same_files_as_run(case: str, inputs: Path, tmp_path: Path, run_main) -> None:
    if case == "the vace preset at the input's own size":  # the command line's FAST sets a size: native here
        fast = ["--updates", "2", "--weights", "untrained", "--device", "cpu"]
    else:
        fast = FAST
    command, _ = CASES[case](inputs, tmp_path / "cli")
    code, _, err = run_main("run", *command, *fast)
    assert code == 0, err
    _, keywords = CASES[case](inputs, tmp_path / "api")
    report = process(**{**MODEL, **keywords}, progress=False)
    assert report.results and not report.failed
    written = files(tmp_path / "cli")
    assert written and files(tmp_path / "api") == written


def test_process_gives_one_result_per_clip(inputs: Path, tmp_path: Path) -> None:
    report = process([inputs / "clip.mp4", inputs / "frames"], output=tmp_path / "flow" / "{stem}.mp4",
                     devices="all", progress=False, **MODEL)
    assert [(Path(result.job.inputs[0]).name, result.ok, result.frames) for result in report.results] == [
        ("clip.mp4", True, 6), ("frames", True, 5)]
    assert sorted(p.name for p in (tmp_path / "flow").iterdir()) == ["clip.mp4", "frames.mp4"]
    assert report.collection and report.frames == 11 and not report.skipped
    again = process([inputs / "clip.mp4", inputs / "frames"], output=tmp_path / "flow" / "{stem}.mp4",
                    progress=False, **MODEL)
    assert not again.results and [job.name for job in again.skipped] == [str(inputs / "clip.mp4"),
                                                                          str(inputs / "frames")]


def test_progress_reaches_a_callback(inputs: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []
    report = process(inputs / "clips", flow_npy=tmp_path / "npy", chunk=2, progress=seen.append, **MODEL)
    assert seen[0] == Progress(clips=3)
    assert [p.clip_frames for p in seen if p.clip_frames is not None] == [4, 3, 5]  # each clip as it starts
    assert [p.result.job.name for p in seen if p.result is not None] == [r.job.name for r in report.results]
    frames = [p.frames for p in seen]
    assert frames == sorted(frames) and frames[-1] == 12
    assert (seen[-1].clips, seen[-1].done, seen[-1].failed) == (3, 3, 0)


def test_failures_are_results_and_bad_options_raise(inputs: Path, tmp_path: Path) -> None:
    report = process([inputs / "clip.mp4", inputs / "missing.mp4"], flow_npy=tmp_path / "npy", progress=False,
                     **MODEL)
    assert [result.ok for result in report.results] == [True, False]
    failed = report.failed[0]
    assert failed.exit_code == EXIT_INPUT and "input not found" in (failed.error or "")
    assert isinstance(failed.exception, batch.InputError)  # it ran in this process: the exception itself
    assert (tmp_path / "npy" / "clip.npy").exists() and not (tmp_path / "npy" / "missing.npy").exists()
    with pytest.raises(UsageError, match="multiple of 8"):
        process(inputs / "clip.mp4", output=tmp_path / "x.mp4", **{**MODEL, "height": 100})
    with pytest.raises(UsageError, match="nothing to write"):
        process(inputs / "clip.mp4", **MODEL)
    # One clip named directly: its output must not exist yet (no resume), as with run.
    (tmp_path / "taken.mp4").write_bytes(b"precious")
    refused = process(inputs / "clip.mp4", output=tmp_path / "taken.mp4", progress=False, **MODEL)
    assert not refused.collection and "already exists" in (refused.failed[0].error or "")
    assert (tmp_path / "taken.mp4").read_bytes() == b"precious"


def test_ray_data_class_and_clip_task_run_on_ray(inputs: Path, tmp_path: Path) -> None:
    """``FlowMapBatches`` as the actor Ray Data makes of it (``__call__`` per batch), ``clip_task`` as a task."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install ray, or the [ray] extra)")
    frames = moving_frames(4, 64, 64, seed=8)
    rows = {"clip": np.array(["a"] * 4), "frame": np.arange(4), "image": frames}
    local = FlowMapBatches(128, 128, device="cpu", weights=None, num_flow_updates=2, raw_flow=True)(rows)
    job = ClipJob((str(inputs / "clip.mp4"),), flow_npy=tmp_path / "task.npy")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(FlowMapBatches).remote(128, 128, device="cpu", weights=None, num_flow_updates=2,
                                                  raw_flow=True)
        remote = ray.get(actor.__call__.remote(rows))
        result = ray.get(ray.remote(clip_task).remote(job, WriteSettings(), MODEL))
    finally:
        ray.shutdown()
    # The actor may run other CPU thread counts, so float rounding can move a pixel by one level.
    difference = np.abs(remote["flow_map"].astype(np.int16) - local["flow_map"].astype(np.int16))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    np.testing.assert_allclose(remote["flow"], local["flow"], atol=1e-4)
    assert result.ok and result.frames == 6 and np.load(tmp_path / "task.npy").shape == (6, 2, 96, 112)


# -- layers: cli/ -> batch/ -> core/ ------------------------------------------------------------------------------


def imports(folder: str) -> list[tuple[str, str, str | None]]:
    """``(file, module, name)`` for every import in ``folder``'s source files (relative imports resolved to
    absolute module names; ``name`` is None for ``import module``), read with ``ast``, functions' bodies too."""
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        package = [PACKAGE, *path.relative_to(REPO).parent.parts]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                found += [(path.name, module, alias.name) for alias in node.names]
    return found


def test_cli_imports_from_batch_only_what_it_reexports() -> None:
    taken = [(file, module, name) for file, module, name in imports("cli") if module.startswith(f"{PACKAGE}.batch")]
    assert taken  # run is a call of batch.process
    inside = [(file, module, name) for file, module, name in taken if module != f"{PACKAGE}.batch" or name is None]
    assert not inside, f"cli/ reaches into batch/'s modules: {inside}"
    missing = sorted({name for _, _, name in taken} - set(batch.__all__))
    assert not missing, f"cli/ imports names batch/__init__ does not re-export: {missing}"
    assert all(hasattr(batch, name) for name in batch.__all__)


def test_batch_never_imports_cli_and_core_imports_neither() -> None:
    upward = [(file, module) for file, module, _ in imports("batch") if module.startswith(f"{PACKAGE}.cli")]
    assert not upward, f"batch/ imports the command line: {upward}"
    core = [(file, module) for file, module, _ in imports("core")
            if module.startswith((f"{PACKAGE}.cli", f"{PACKAGE}.batch"))]
    assert not core, f"core/ imports a face: {core}"


def test_no_import_cycles_between_the_modules_of_batch_and_cli() -> None:
    graph: dict[str, set[str]] = {}
    for folder in ("batch", "cli"):
        for file, module, name in imports(folder):
            source = f"{PACKAGE}.{folder}.{file.removesuffix('.py')}".removesuffix(".__init__")
            targets = {module, f"{module}.{name}"} if name else {module}
            graph.setdefault(source, set()).update(t for t in targets if t.startswith(f"{PACKAGE}.{folder}"))
    for modules in graph.values():  # a package's modules may use the package's face; the face is not a cycle
        modules.discard(f"{PACKAGE}.batch")
        modules.discard(f"{PACKAGE}.cli")
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*path, module, target])}"
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
