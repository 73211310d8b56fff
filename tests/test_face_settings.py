"""Every face states what runs: each face's declared settings (the Python API's keywords, the command line's flags,
the ComfyUI nodes' inputs and fixed settings, Scope's fields), with and without VACE's settings, against the
settings the preprocessor runs and the ready line it logs in the face's words. CPU, untrained weights."""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any

import pytest
import torch

from conftest import make_frames
from scope_optical_flow_tensorrt.core import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.common.vocabulary import SIZE, Vocabulary
from scope_optical_flow_tensorrt.core.presets import PRESETS

VACE = PRESETS["vace"]
# What every face runs unless told otherwise (the core's defaults).
DEFAULTS = {"model": "raft_small", "num_flow_updates": 12, "height": 512, "width": 512, "normalization": "per_frame",
            "first_frame": "zero", "flow_strength": 1.0}


def ready_lines(caplog: pytest.LogCaptureFixture, prefix: str = "optical flow ready: ") -> list[str]:
    return [record.getMessage()[len(prefix):] for record in caplog.records if record.getMessage().startswith(prefix)]


def check_states(flow: OpticalFlowTensorRTPreprocessor, line: str, expected: dict[str, Any],
                 vocabulary: Vocabulary) -> None:
    """``flow`` runs ``expected`` (core option keys; ``height``/``width`` ``None``: the input's own size), and
    ``line`` states each value as ``vocabulary`` spells it (or in plain words where the face lacks the option)."""
    running = dict(flow.running_settings())
    size = (expected["height"], expected["width"])
    assert running[SIZE] == size
    for key in ("model", "num_flow_updates", "normalization", "first_frame", "flow_strength"):
        assert running[key] == expected[key], key
        assert vocabulary.describe(key, expected[key]) in line, (key, line)
    if vocabulary.has(SIZE):
        assert vocabulary.setting(SIZE, size) in line, line
    else:
        assert (f"compute size {size[0]}x{size[1]}" if size[0] else "compute size (the input's own size") in line
    assert ("precision fp32" if not vocabulary.has("fp16") else vocabulary.setting("fp16", False)) in line
    assert "None" not in line or vocabulary.has(SIZE) and vocabulary.value("height", None) is None


@pytest.mark.parametrize("vace", [False, True], ids=["plain", "vace"])
def test_python_api(vace: bool, caplog: pytest.LogCaptureFixture) -> None:
    options = {"num_flow_updates": 2, "normalization": "running", "first_frame": "repeat", "flow_strength": 1.5}
    flow = OpticalFlowTensorRTPreprocessor(128, 136, device="cpu", weights=None, preset="vace" if vace else None,
                                           **options)
    flow(make_frames(2, 130, 150))
    # With the preset, the options set to other than their defaults win, the rest are VACE's (core.presets).
    expected = {**DEFAULTS, **(VACE if vace else {}), **options, "height": 128, "width": 136}
    check_states(flow, ready_lines(caplog)[-1], expected, flow.vocabulary)


@pytest.mark.parametrize("vace", [False, True], ids=["plain", "vace"])
def test_command_line(vace: bool, tmp_path, capfd: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from scope_optical_flow_tensorrt.cli import main
    from scope_optical_flow_tensorrt.cli.options import cli_vocabulary

    frames = (make_frames(2, 130, 150) * 255).round().to(torch.uint8).numpy()
    (tmp_path / "frames").mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "frames" / f"f{index}.png")
    given = ["--updates", "12", "--first-frame", "zero", "--strength", "0.5"]  # 12 and zero: the defaults, typed
    preset = ["--preset", "vace"] if vace else ["--size", "128x136"]
    code = main(["-v", "run", str(tmp_path / "frames"), "--flow-npy", str(tmp_path / "flow.npy"), "--device", "cpu",
                 "--weights", "untrained", *given, *preset])
    err = capfd.readouterr().err
    assert code == 0, err
    [line] = [line.split("optical flow ready: ", 1)[1] for line in err.splitlines() if "optical flow ready: " in line]
    # Flags typed on the command line win over the preset whatever their value; the rest are the preset's.
    expected = {**DEFAULTS, **(VACE if vace else {"height": 128, "width": 136}), "num_flow_updates": 12,
                "first_frame": "zero", "flow_strength": 0.5}
    vocabulary = cli_vocabulary()
    for key in ("model", "num_flow_updates", "normalization", "first_frame", "flow_strength"):
        assert vocabulary.describe(key, expected[key]) in line, (key, line)
    assert vocabulary.setting(SIZE, (expected["height"], expected["width"])) in line and "--fp32" in line


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> Any:
    from test_nodes import load_pack

    pack = load_pack()
    work = importlib.import_module(f"{pack.__name__}.nodes.flow")
    monkeypatch.setattr(work.host, "compute_device", lambda: torch.device("cpu"))
    work.clear_cache()
    yield pack
    work.clear_cache()


@pytest.mark.parametrize("vace", [False, True], ids=["raft-node", "vace-node"])
def test_comfyui_nodes(vace: bool, nodes: Any, caplog: pytest.LogCaptureFixture) -> None:
    from test_nodes import defaults

    inputs_module = importlib.import_module(f"{nodes.__name__}.nodes.inputs")
    work = importlib.import_module(f"{nodes.__name__}.nodes.flow")
    node = nodes.NODE_CLASS_MAPPINGS["OpticalFlowVACE" if vace else "OpticalFlowRAFT"]
    widgets = {**defaults(node), "weights": "untrained (random)", "precision": "fp16"}
    if not vace:
        widgets.update(compute_height=128, compute_width=136, flow_updates=2, normalization="fixed", max_flow=4.0,
                       first_frame="repeat", flow_strength=0.5)
    getattr(node(), node.FUNCTION)(images=make_frames(2, 130, 150), **widgets)
    preprocessor = next(iter(work._cache.values()))
    spec = node.SPEC
    # Declared: the node's widgets for the options it has inputs for, its fixed settings for the others.
    declared = dict(spec.fixed)
    for item in spec.inputs:
        if item.option in DEFAULTS or item.option in ("height", "width"):
            declared[item.option] = widgets[item.name]
    expected = {**declared}
    if not vace:
        assert preprocessor.max_flow == 4.0
    for line in (ready_lines(caplog)[-1], ready_lines(caplog, "optical flow runs: ")[-1]):
        check_states(preprocessor, line, expected, inputs_module.node_vocabulary(spec))


def scope_pipelines(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``scope_adapter.pipeline`` against Scope (installed) or the stand-in of test_scope_adapter (v0.2.4's API)."""
    import importlib.util

    if importlib.util.find_spec("scope") is None:
        from test_scope_adapter import stand_in_scope

        for name, module in stand_in_scope(ui="modulatable").items():
            monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "scope_optical_flow_tensorrt.scope_adapter.pipeline", raising=False)
    import scope_optical_flow_tensorrt.scope_adapter.pipeline as module

    on_cpu = functools.partial(OpticalFlowTensorRTPreprocessor, device="cpu", weights=None)
    monkeypatch.setattr(module, "OpticalFlowTensorRTPreprocessor", on_cpu)
    return module


@pytest.mark.parametrize("vace", [False, True], ids=["flow", "flow-vace"])
def test_scope_pipelines(vace: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    module = scope_pipelines(monkeypatch)
    try:
        pipeline_class = module.FlowVacePipeline if vace else module.FlowPipeline
        fields = {} if vace else {"compute_height": 128, "compute_width": 136, "num_flow_updates": 2,
                                  "normalization": "running", "first_frame": "repeat", "flow_strength": 0.5}
        config = pipeline_class.get_config_class()(**fields)
        pipeline = pipeline_class(**config.model_dump())  # as Scope builds it
        frames = (make_frames(2, 130, 150) * 255).round().to(torch.uint8)
        pipeline(video=[frame[None] for frame in frames], init_cache=True)
        values = config.model_dump()
        declared = VACE if vace else {"model": values["model"], "num_flow_updates": values["num_flow_updates"],
                                      "height": values["compute_height"], "width": values["compute_width"],
                                      "normalization": values["normalization"], "first_frame": values["first_frame"]}
        expected = {**DEFAULTS, **declared, "flow_strength": 1.0 if vace else values["flow_strength"]}
        check_states(pipeline.preprocessor, ready_lines(caplog)[-1], expected, pipeline.preprocessor.vocabulary)
    finally:
        sys.modules.pop("scope_optical_flow_tensorrt.scope_adapter.pipeline", None)
