"""Both node forms in a real ComfyUI: loaded by ComfyUI's own loader, the example workflow validated and executed
by its executor, on the CPU (examples/run_in_comfyui.py).

Skipped unless ``COMFYUI_PATH`` points at a ComfyUI checkout; ``COMFYUI_PYTHON`` may name a Python that has
ComfyUI's requirements (default: this one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMFYUI = os.environ.get("COMFYUI_PATH")

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run")


def run_example(*arguments: str) -> dict:
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    completed = subprocess.run(
        [python, str(REPO / "examples" / "run_in_comfyui.py"), str(COMFYUI), *arguments],
        capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("form", ["typed", "classic"])
def test_example_workflow_runs_in_comfyui(form: str) -> None:
    result = run_example("--form", form)
    assert set(result["typed_nodes"].values()) == {form == "typed"}
    assert sum(name.endswith(".png") for name in result["outputs"]) == 6  # one flow map per frame (repeat)
    assert any(name.endswith(".mp4") for name in result["outputs"])
    # The settings the log states are the widgets' values, in the node's words.
    [line] = [line for line in result["settings_lines"] if line.startswith("optical flow runs:")]
    inputs = result["inputs"]
    for name in ("compute_height", "compute_width", "flow_updates", "normalization", "first_frame", "model"):
        assert f"{name} = {inputs[name]}" in line, (name, line)


@pytest.mark.parametrize("form", ["typed", "classic"])
def test_a_first_frame_saved_by_an_earlier_version_still_validates(form: str) -> None:
    result = run_example("--form", form, "--first-frame", "copy_next")
    assert sum(name.endswith(".png") for name in result["outputs"]) == 6
    assert "first_frame = repeat" in result["settings_lines"][-1]


def test_vace_annotator_node_runs_in_comfyui() -> None:
    result = run_example("--form", "typed", "--vace")
    assert result["node"] == "OpticalFlowVACE" and sum(name.endswith(".png") for name in result["outputs"]) == 6
    line = result["settings_lines"][-1]
    assert "model raft_large" in line and "flow updates 20" in line and "normalization per_frame" in line
    assert "first frame repeat" in line and "the input's own size" in line
