"""The README runs as written: its Python API snippet and every ``scope-optical-flow`` command in its fenced
``bash`` blocks (all but the installs and the test run), read from README.md itself so the two cannot drift.

Offline, the weights are replaced as the README says: ``SCOPE_OPTICAL_FLOW_WEIGHTS`` lists a RAFT Small and a
RAFT Large file (seeded random weights here). Each command runs in a folder of its own holding the inputs the
README's commands name (``clip.mp4``, ``frames/``, ``shots/``, ``clips/``, the README's manifest and its clips),
each a few tiny frames: the compute size is the command's own (512x512 for most), which sets the time. Commands
that need what a CPU machine lacks (a GPU, two GPUs, a Ray cluster) are listed in :data:`NEEDS` with why; every
other command runs, so a command added to the README is tested without touching this file.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import REPO_ROOT

av = pytest.importorskip("av")
from PIL import Image  # noqa: E402
from test_cli import run_main  # noqa: E402,F401 (a fixture: main() in this process)

README = (REPO_ROOT / "README.md").read_text()
PROGRAM = "scope-optical-flow"
HAS_CUDA = torch.cuda.is_available()
# Commands that need what this machine may lack: a fragment of the command -> (runs here?, why not).
NEEDS: dict[str, tuple[bool, str]] = {
    "--tensorrt-targets": (importlib.util.find_spec("tensorrt_rtx") is not None, "needs tensorrt-rtx installed"),
    "prebuild --torch": (HAS_CUDA, "compiles for a CUDA GPU"),
    "prebuild --size 512x512 --size": (HAS_CUDA, "builds TensorRT engines for this machine's GPU"),
    "bench": (HAS_CUDA, "times this machine's GPU (on a CPU: 13 calls of 16 frames at 512x512, a quarter hour)"),
    "--devices 0,1": (torch.cuda.device_count() >= 2, "needs two GPUs"),
    "--ray auto": (False, "needs a running Ray cluster (ray start --head)"),
}


def fenced_blocks(language: str) -> list[str]:
    """The README's fenced code blocks of ``language`` (also those indented under a list item)."""
    pattern = re.compile(rf"^( *)```{language}\n(.*?)^\1```", re.S | re.M)
    return [re.sub(rf"^{match.group(1)}", "", match.group(2), flags=re.M) for match in pattern.finditer(README)]


def readme_commands() -> list[str]:
    """Every ``scope-optical-flow ...`` command of the bash blocks, in order, once each, without comments."""
    commands: list[str] = []
    for block in fenced_blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == PROGRAM and shlex.join(words) not in commands:
                    commands.append(shlex.join(words))
    return commands


COMMANDS = readme_commands()


def marks(command: str) -> list[pytest.MarkDecorator]:
    found = [(fragment, need) for fragment, need in NEEDS.items() if fragment in command]
    extra = [pytest.mark.tensorrt_rtx] if "--tensorrt-targets" in command else []
    return extra + [pytest.mark.skipif(not runs, reason=why) for _, (runs, why) in found]


def test_the_readme_has_its_commands() -> None:
    assert len(COMMANDS) >= 15
    assert f"{PROGRAM} prebuild --size 512x512 --tensorrt-targets sm86,sm89,sm120" in COMMANDS
    assert all(any(fragment in command for command in COMMANDS) for fragment in NEEDS), "NEEDS lists a gone command"


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``SCOPE_OPTICAL_FLOW_WEIGHTS`` as the README says offline: a RAFT Small and a RAFT Large file (seeded)."""
    folder = tmp_path_factory.mktemp("weights")
    paths = []
    for name, builder in (("raft_small.pth", torchvision.models.optical_flow.raft_small),
                          ("raft-things.pth", torchvision.models.optical_flow.raft_large)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.save(builder(weights=None).state_dict(), folder / name)
        paths.append(str(folder / name))
    return ":".join(paths)


@pytest.fixture
def offline(weights_files: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", weights_files)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # worker processes share this machine's cores
    monkeypatch.chdir(tmp_path)
    return tmp_path


def drifting(count: int, height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height + 2 * count, width + 2 * count, 3), dtype=np.uint8)
    return np.stack([texture[2 * i : 2 * i + height, i : i + width] for i in range(count)])


def write_video(path: Path, count: int = 2, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(12))
        frames = drifting(count, seed=seed)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def write_images(folder: Path, suffix: str, count: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(drifting(count)):
        Image.fromarray(frame).save(folder / f"frame_{index}{suffix}")


def lay_out_inputs(folder: Path) -> None:
    """Every input the README's commands name, two frames each."""
    write_video(folder / "clip.mp4")
    write_images(folder / "frames", ".png")
    write_images(folder / "shots", ".jpg")
    write_video(folder / "shots" / "a.mp4", seed=1)
    write_video(folder / "clips" / "one.mp4", seed=2)
    write_video(folder / "clips" / "two.mp4", seed=3)
    [manifest] = fenced_blocks("csv")  # the README's own manifest, and the clips it lists
    (folder / "clips.csv").write_text(manifest)
    write_video(folder / "videos" / "a.mp4", seed=4)
    write_video(folder / "videos" / "b, take 2.mov", seed=5)
    write_images(folder / "frames" / "c", ".png")


@pytest.mark.parametrize("command", [pytest.param(command, marks=marks(command)) for command in COMMANDS])
def test_readme_command_runs_as_written(command: str, offline: Path, run_main) -> None:  # noqa: F811
    lay_out_inputs(offline)
    code, out, err = run_main(*shlex.split(command)[1:])
    assert code == 0, f"{command}\n{err}"
    assert f"{PROGRAM}: error" not in err and f"{PROGRAM}: failed" not in err, err
    assert not re.search(r"\b[1-9]\d* failed", out), out
    if "--tensorrt-targets" in command:  # the engines-without-a-GPU command, at its defaults (24 pairs per call)
        assert "512x512: " in out and "_portable-" in out and "compute capabilities 8.6, 8.9, 12.0" in out
        engine = Path(out.split("512x512: ", 1)[1].split(" (", 1)[0])
        key = json.loads(engine.with_name(engine.name + ".json").read_text())["key"]
        assert key["profile_frames"] == [2, 25, 25] and key["precision"] == "fp16" and key["model"] == "raft_small"


def test_readme_api_snippet_runs_as_written(offline: Path) -> None:
    [snippet] = [block for block in fenced_blocks("python") if "OpticalFlowTensorRTPreprocessor(" in block]
    names: dict[str, object] = {}
    exec(compile(snippet, "README.md (Python API)", "exec"), names)  # noqa: S102
    assert names["maps"].shape == (1, 3, 4, 480, 640) and names["more"].shape == (1, 3, 4, 480, 640)
    assert names["more"].min() >= -1 and names["more"].max() <= 1
