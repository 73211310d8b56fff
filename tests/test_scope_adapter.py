"""The Daydream Scope plugin through a real pluggy PluginManager("scope") and the installed entry point.

The hook specification below is declared the way Scope declares it (``ScopeHookSpec`` with
``pluggy.HookspecMarker("scope")``); Scope itself is not needed. Functional runs use a no-argument subclass of
the registered class at a small compute size, with seeded weights from ``$SCOPE_OPTICAL_FLOW_WEIGHTS``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
import pytest
import torch
import torchvision
from conftest import COMPUTE_SIZE, make_frames
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core import preprocessor as core_preprocessor
from scope_optical_flow_tensorrt.core.common import log as core_log

ENTRY_POINT_MODULE = "scope_optical_flow_tensorrt.scope_adapter"
UPDATES = 2
SCOPE_INSTALLED = importlib.util.find_spec("scope") is not None

hookspec = pluggy.HookspecMarker("scope")


class ScopeHookSpec:
    """As in Scope builds with the VACE preprocessor registry (January 2026)."""

    @hookspec
    def register_pipelines(self, register):  # type: ignore[no-untyped-def]
        """register(PipelineClass)"""

    @hookspec
    def register_preprocessors(self, register):  # type: ignore[no-untyped-def]
        """register(id, name, PreprocessorClass)"""


class NewerScopeHookSpec:
    """As in Scope v0.2.4: no preprocessor hook; pipelines and nodes only."""

    @hookspec
    def register_pipelines(self, register):  # type: ignore[no-untyped-def]
        """register(PipelineClass)"""

    @hookspec
    def register_nodes(self, register):  # type: ignore[no-untyped-def]
        """register(NodeClass)"""


@dataclass
class Context:
    """Shaped like Scope's ``PreprocessorContext``."""

    video_frames: Any = None
    ctrl_input: Any = None
    target_height: int = 512
    target_width: int = 512
    num_frames: int = 12


def plugin_manager(spec: type) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("scope")
    pm.add_hookspecs(spec)
    pm.load_setuptools_entrypoints("scope")
    return pm


def registered_preprocessors(pm: pluggy.PluginManager) -> list[tuple[str, str, type]]:
    calls: list[tuple[str, str, type]] = []

    def register(preprocessor_id: str, name: str, preprocessor_class: type) -> None:
        calls.append((preprocessor_id, name, preprocessor_class))

    pm.hook.register_preprocessors(register=register)
    return calls


def scope_context(frames_fhwc: torch.Tensor, target: tuple[int, int] | None = None) -> Context:
    """Scope's conversion: uint8-origin ``[F, H, W, C]`` -> ``[1, C, F, H, W]`` float in [0, 1], on the CPU."""
    video = frames_fhwc.permute(3, 0, 1, 2).unsqueeze(0).float() / 255.0
    height, width = target if target is not None else frames_fhwc.shape[1:3]
    return Context(video_frames=video, target_height=height, target_width=width, num_frames=frames_fhwc.shape[0])


def uint8_frames(num_frames: int, height: int = 64, width: int = 80, seed: int = 0) -> torch.Tensor:
    return (make_frames(num_frames, height, width, seed=seed) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def seeded_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "raft_small_seeded.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.optical_flow.raft_small(weights=None).state_dict(), path)
    return path


@pytest.fixture
def registered_class(seeded_weights: Path, monkeypatch: pytest.MonkeyPatch) -> type:
    """The class the plugin registers with Scope as Flow, loaded through the installed entry point."""
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(seeded_weights))
    registered = [cls for preprocessor_id, _, cls in registered_preprocessors(plugin_manager(ScopeHookSpec))
                  if preprocessor_id == "flow"]
    if not registered and not any(point.value == ENTRY_POINT_MODULE for point in entry_points(group="scope")):
        pytest.skip("the package is not installed (pip install -e .): Scope finds plugins by their entry point")
    [cls] = registered
    return cls


@pytest.fixture
def small_class(registered_class: type) -> type:
    """A no-argument subclass of the registered class: 128x128 compute, few updates, on the CPU (deterministic
    and fast everywhere; the default device is covered by the GPU tests)."""

    class SmallFlow(registered_class):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(height=COMPUTE_SIZE, width=COMPUTE_SIZE, num_flow_updates=UPDATES, device="cpu")

    return SmallFlow


# -- discovery and registration -----------------------------------------------------------------------


def test_entry_point_is_installed_in_group_scope() -> None:
    [entry] = [ep for ep in entry_points(group="scope") if ep.value == ENTRY_POINT_MODULE]
    assert entry.name == "optical_flow_tensorrt"


def test_plugin_manager_loads_us_through_the_entry_point() -> None:
    pm = plugin_manager(ScopeHookSpec)
    plugin = pm.get_plugin("optical_flow_tensorrt")
    assert plugin is not None and plugin.__name__ == ENTRY_POINT_MODULE
    pm.check_pending()  # every hook we implement matches a declared spec
    assert [impl.plugin_name for impl in pm.hook.register_preprocessors.get_hookimpls()] == ["optical_flow_tensorrt"]


def test_register_preprocessors_registers_flow_with_the_core_class() -> None:
    calls = registered_preprocessors(plugin_manager(ScopeHookSpec))
    [(preprocessor_id, name, registered), (vace_id, vace_name, vace)] = calls
    assert (preprocessor_id, name) == ("flow", "Flow") and issubclass(registered, OpticalFlowTensorRTPreprocessor)
    # This form has no settings: its messages name none (not the API's device='cpu').
    assert registered(device="cpu").vocabulary.names == {}
    # VACE's annotator's maps are an entry of their own, built with no arguments like every registry entry.
    assert (vace_id, vace_name) == ("flow-vace", "Flow (VACE)") and issubclass(vace, OpticalFlowTensorRTPreprocessor)
    flow = vace(device="cpu")
    assert (flow.model, flow.num_flow_updates, flow.native_size, flow.first_frame) == ("raft_large", 20, True,
                                                                                       "repeat")


@pytest.mark.skipif(SCOPE_INSTALLED, reason="Scope is installed: covered by test_pipeline_hook_with_scope")
def test_pipeline_hook_registers_nothing_without_scope() -> None:
    registered: list[type] = []
    plugin_manager(ScopeHookSpec).hook.register_pipelines(register=registered.append)
    assert registered == []


def test_plugin_validates_against_newer_scope_hookspecs() -> None:
    pm = plugin_manager(NewerScopeHookSpec)
    assert pm.get_plugin("optical_flow_tensorrt") is not None
    pm.check_pending()  # register_preprocessors has no spec there; it is an optional hook, so this passes


def test_importing_the_adapter_imports_neither_torch_nor_the_core() -> None:
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        f"[ep] = [ep for ep in entry_points(group='scope') if ep.value == {ENTRY_POINT_MODULE!r}]\n"
        "module = ep.load()\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') "
        "or m.startswith('scope_optical_flow_tensorrt.core'))\n"
        "assert callable(module.register_preprocessors), 'no hook'\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_adapter_uses_scopes_marker_when_scope_loaded_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from scope_optical_flow_tensorrt import scope_adapter

    scope_marker = pluggy.HookimplMarker("scope")
    fake_hookspecs = type(sys)("scope.core.plugins.hookspecs")
    fake_hookspecs.hookimpl = scope_marker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "scope.core.plugins.hookspecs", fake_hookspecs)
    assert scope_adapter._scope_hookimpl() is scope_marker
    monkeypatch.delitem(sys.modules, "scope.core.plugins.hookspecs")
    fallback = scope_adapter._scope_hookimpl()
    assert fallback is not scope_marker and fallback.project_name == "scope"


# -- the registered class, as Scope builds and calls it -----------------------------------------------


def test_no_argument_construction_has_gpu_defaults_and_is_lazy(
    registered_class: type, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(core_log, "_said", set())  # so the once-per-process CUDA warning shows here
    instance = registered_class()
    assert (instance.height, instance.width, instance.fp16, instance.flow_strength) == (512, 512, True, 1.0)
    assert instance.weights_spec == "DEFAULT" and not instance.loaded
    if torch.cuda.is_available():
        assert instance.device.type == "cuda"
    else:
        assert instance.device.type == "cpu"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("CUDA is not available" in message for message in warnings), warnings
        # Scope's registry form has no device setting: the warning tells the user of nothing to set.
        assert not any("device=" in message or "strict_device" in message for message in warnings), warnings


def test_scope_context_gives_target_size_maps_in_range(small_class: type) -> None:
    instance = small_class()
    frames = uint8_frames(4)
    out = instance(scope_context(frames, target=(96, 160)))
    assert instance.loaded
    assert out.shape == (1, 3, 4, 96, 160) and out.dtype == torch.float32
    assert out.device == instance.device
    assert -1.0 <= out.min().item() and out.max().item() <= 1.0
    assert torch.all(out[:, :, 0] == 1.0)  # first frame of a stream: no reference, white
    assert out[:, :, 1:].std() > 0.05  # later frames show (random-weights) flow, not a blank


def test_bare_tensor_as_older_scope_passed_it(small_class: type) -> None:
    frames = uint8_frames(3)
    ctx = scope_context(frames)
    via_context = small_class()(ctx)
    via_tensor = small_class()(ctx.video_frames)
    assert via_tensor.shape == (1, 3, 3, 64, 80)
    torch.testing.assert_close(via_tensor, via_context)


def test_uint8_origin_context_matches_uint8_frames(small_class: type) -> None:
    frames = uint8_frames(3)
    from_context = small_class()(scope_context(frames))
    from_uint8 = small_class()(frames)  # [F, H, W, C] uint8, the camera's own format
    torch.testing.assert_close(from_context, from_uint8, atol=1e-5, rtol=0)


def test_chunks_continue_one_stream(small_class: type) -> None:
    frames = uint8_frames(12)
    target = (72, 88)
    streamed = small_class()
    chunks, start = [], 0
    for size in (4, 3, 5):
        chunks.append(streamed(scope_context(frames[start : start + size], target)))
        start += size
    whole = small_class()(scope_context(frames, target))
    torch.testing.assert_close(torch.cat(chunks, dim=2), whole, atol=1e-5, rtol=0)
    for chunk in chunks[1:]:  # each chunk's first map compares with the previous chunk's last frame
        assert chunk[:, :, 0].std() > 0.05


def test_cpu_frames_move_to_the_device_once_per_chunk(small_class: type, monkeypatch: pytest.MonkeyPatch) -> None:
    moves: list[tuple[tuple[int, ...], torch.device, torch.device]] = []
    original = core_preprocessor.to_unit_float

    def spy(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
        moves.append((tuple(frames.shape), frames.device, device))
        return original(frames, device)

    monkeypatch.setattr(core_preprocessor, "to_unit_float", spy)
    instance = small_class()
    frames = uint8_frames(7)
    instance(scope_context(frames[:4]))
    instance(scope_context(frames[4:]))
    # One transfer per chunk, of the whole chunk [B, F, C, H, W], from the CPU to the compute device.
    assert moves == [
        ((1, 4, 3, 64, 80), torch.device("cpu"), instance.device),
        ((1, 3, 3, 64, 80), torch.device("cpu"), instance.device),
    ]


# -- failure modes --------------------------------------------------------------------------------------


def test_no_video_frames_is_a_clear_error(small_class: type) -> None:
    with pytest.raises(ValueError, match=r"video_frames is None.*Select a video source"):
        small_class()(Context(video_frames=None))


@pytest.mark.parametrize(
    ("video", "error", "message"),
    [
        (torch.rand(1, 2, 3, 64, 80), ValueError, r"2 channels.*expected 3 \(RGB\)"),
        (torch.rand(1, 3, 3, 1, 1), ValueError, r"too small.*at least 2x2"),
        (torch.rand(3, 64, 80), ValueError, r"4-D.*5-D"),
        (torch.rand(1, 3, 0, 64, 80), ValueError, r"zero frames"),
        (torch.rand(1, 3, 3, 64, 80) * 255, ValueError, r"\[0, 1\].*divide by 255"),
        (torch.rand(1, 3, 3, 64, 80).numpy(), TypeError, r"torch.Tensor.*torch.from_numpy"),
    ],
    ids=["two-channels", "one-pixel", "3-d", "no-frames", "0-255-floats", "numpy"],
)
def test_bad_frames_are_clear_errors(small_class: type, video: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        small_class()(Context(video_frames=video, target_height=64, target_width=80))


@pytest.mark.parametrize("target", [(0, 80), (64.0, 80), (64, None)])
def test_bad_target_size(small_class: type, target: tuple[Any, Any]) -> None:
    ctx = Context(video_frames=torch.rand(1, 3, 2, 64, 80), target_height=target[0], target_width=target[1])
    if target[1] is None:  # no target: conditioning comes back at the input size
        assert small_class()(ctx).shape == (1, 3, 2, 64, 80)
        return
    with pytest.raises(ValueError, match=r"context.target_height must be a positive integer"):
        small_class()(ctx)


def test_bad_chunk_does_not_break_the_stream(small_class: type) -> None:
    frames = uint8_frames(6)
    streamed = small_class()
    first = streamed(scope_context(frames[:3]))
    with pytest.raises(ValueError):
        streamed(Context(video_frames=None))
    with pytest.raises(ValueError):
        streamed(Context(video_frames=torch.rand(1, 2, 3, 64, 80)))
    second = streamed(scope_context(frames[3:]))
    whole = small_class()(scope_context(frames))
    torch.testing.assert_close(torch.cat([first, second], dim=2), whole, atol=1e-5, rtol=0)


def test_frame_size_change_starts_a_new_sequence(small_class: type) -> None:
    instance = small_class()
    instance(scope_context(uint8_frames(3)))
    out = instance(scope_context(uint8_frames(3, height=48, width=64), target=(64, 80)))
    assert out.shape == (1, 3, 3, 64, 80)
    assert torch.all(out[:, :, 0] == 1.0)  # no reference across a size change: white, not a bogus flow


# -- newer Scope: the preprocessor pipeline (runs only where Scope with preprocessor pipelines is installed) --


@pytest.mark.skipif(not SCOPE_INSTALLED, reason="Daydream Scope is not installed")
def test_pipeline_hook_with_scope(seeded_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scope_optical_flow_tensorrt.scope_adapter import scope_has_preprocessor_pipelines

    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(seeded_weights))
    registered: list[type] = []
    plugin_manager(ScopeHookSpec).hook.register_pipelines(register=registered.append)
    if not scope_has_preprocessor_pipelines():
        assert registered == []
        return
    [pipeline_class, vace_class] = registered
    assert (vace_class.get_config_class().pipeline_id, vace_class.get_config_class().pipeline_name) == (
        "flow-vace", "Flow (VACE)")
    config = pipeline_class.get_config_class()
    assert (config.pipeline_id, config.pipeline_name) == ("flow", "Flow")
    assert [usage.value for usage in config.usage] == ["preprocessor"]
    defaults = {name: field.default for name, field in config.model_fields.items() if field.default is not None}
    pipeline = pipeline_class(**defaults)  # as Scope's PipelineManager builds plugin pipelines
    assert (pipeline.preprocessor.height, pipeline.preprocessor.fp16) == (512, True)
    pipeline.preprocessor = OpticalFlowTensorRTPreprocessor(  # small compute on the CPU for speed
        height=COMPUTE_SIZE, width=COMPUTE_SIZE, num_flow_updates=UPDATES, device="cpu"
    )
    frames = uint8_frames(6)
    chunk_size = pipeline.prepare(video=True).input_size
    outputs = [
        pipeline(video=[frame[None] for frame in frames[i : i + chunk_size]], init_cache=i == 0)["video"]
        for i in range(0, 6, chunk_size)
    ]
    streamed = torch.cat(outputs)
    assert streamed.shape == (6, 64, 80, 3) and 0.0 <= streamed.min() and streamed.max() <= 1.0
    whole = OpticalFlowTensorRTPreprocessor(
        height=COMPUTE_SIZE, width=COMPUTE_SIZE, num_flow_updates=UPDATES, device="cpu"
    )(frames)
    torch.testing.assert_close(streamed, (whole[0].permute(1, 2, 3, 0) + 1) / 2, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no video frames"):
        pipeline(video=[])


# -- GPU ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_defaults_through_the_plugin(registered_class: type, monkeypatch: pytest.MonkeyPatch) -> None:
    moves: list[tuple[torch.device, torch.device]] = []
    original = core_preprocessor.to_unit_float

    def spy(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
        moves.append((frames.device, device))
        return original(frames, device)

    monkeypatch.setattr(core_preprocessor, "to_unit_float", spy)
    instance = registered_class()  # what Scope does: cls(), then instance(ctx) per chunk
    assert instance.device.type == "cuda" and instance.fp16 and (instance.height, instance.width) == (512, 512)
    frames = uint8_frames(12, 240, 320)
    chunks = [instance(scope_context(frames[i : i + 4], target=(320, 576))) for i in range(0, 12, 4)]
    assert moves == [(torch.device("cpu"), instance.device)] * 3  # one CPU-to-GPU transfer per chunk
    for chunk in chunks:
        assert chunk.shape == (1, 3, 4, 320, 576) and chunk.device.type == "cuda"
        assert -1.0 <= chunk.min().item() and chunk.max().item() <= 1.0
    assert chunks[0][:, :, 0].min().item() > 0.99  # the stream's first frame: white
    for chunk in chunks[1:]:
        assert chunk[:, :, 0].std() > 0.05  # later chunks' first frames have a reference
    whole = registered_class()(scope_context(frames, target=(320, 576)))
    # fp16 kernels may differ with the number of pairs per call, so compare loosely here (exactly on the CPU).
    assert (torch.cat(chunks, dim=2) - whole).abs().mean().item() < 0.05


# -- the pipeline's settings, against a stand-in for Scope v0.2.x's pipeline API ------------------------------


def stand_in_scope(ui: str | None) -> dict[str, Any]:
    """Modules standing in for the parts of Scope (v0.2.x) that ``scope_adapter.pipeline`` imports, written here
    from Scope's documented interface: a pydantic ``BasePipelineConfig`` (whose ``height``/``width`` are the
    output size), ``ModeDefaults``, ``UsageType.PREPROCESSOR``, ``ui_field_config`` (v0.2.0 and later: puts a
    ``ui`` object into the field's JSON schema; ``ui="modulatable"``: with v0.2.4's ``modulatable`` argument,
    ``"plain"``: without it, ``None``: no ``ui_field_config``), ``Pipeline``, ``Requirements`` and ``normalize_frame_sizes``."""
    import enum
    import types
    from typing import ClassVar

    from pydantic import BaseModel

    base_schema = types.ModuleType("scope.core.pipelines.base_schema")

    class UsageType(str, enum.Enum):
        PREPROCESSOR = "preprocessor"

    class ModeDefaults(BaseModel):
        default: bool = False

    class BasePipelineConfig(BaseModel):
        pipeline_id: ClassVar[str] = "base"
        pipeline_name: ClassVar[str] = "Base"
        pipeline_description: ClassVar[str] = ""
        docs_url: ClassVar[str | None] = None
        supports_prompts: ClassVar[bool] = True
        usage: ClassVar[list[UsageType]] = []
        modes: ClassVar[dict[str, ModeDefaults]] = {}
        height: int = 512
        width: int = 512

    base_schema.UsageType, base_schema.ModeDefaults = UsageType, ModeDefaults
    base_schema.BasePipelineConfig = BasePipelineConfig
    if ui == "modulatable":
        def ui_field_config(*, order: int | None = None, is_load_param: bool = False, label: str | None = None,
                            modulatable: bool = False) -> dict[str, Any]:
            extra = {"modulatable": True} if modulatable else {}
            return {"ui": {"category": "configuration", "is_load_param": is_load_param, "order": order,
                           "label": label, **extra}}

        base_schema.ui_field_config = ui_field_config
    elif ui == "plain":
        def plain_ui_field_config(*, order: int | None = None, is_load_param: bool = False,
                                  label: str | None = None) -> dict[str, Any]:
            return {"ui": {"category": "configuration", "is_load_param": is_load_param, "order": order,
                           "label": label}}

        base_schema.ui_field_config = plain_ui_field_config
    interface = types.ModuleType("scope.core.pipelines.interface")

    class Pipeline:
        pass

    @dataclass
    class Requirements:
        input_size: int

    interface.Pipeline, interface.Requirements = Pipeline, Requirements
    process = types.ModuleType("scope.core.pipelines.process")
    process.normalize_frame_sizes = lambda frames: frames
    modules = {name: types.ModuleType(name) for name in ("scope", "scope.core", "scope.core.pipelines")}
    modules.update({module.__name__: module for module in (base_schema, interface, process)})
    return modules


@pytest.fixture(params=["modulatable", "plain", None], ids=["scope-0.2.4", "scope-0.2.0", "scope-0.1"])
def pipeline_module(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``scope_adapter.pipeline`` imported against the stand-in Scope, with or without ``ui_field_config``."""
    if SCOPE_INSTALLED:
        pytest.skip("Daydream Scope is installed: test_pipeline_hook_with_scope covers the real one")
    pytest.importorskip("pydantic")  # Scope's config classes are pydantic models
    for name, module in stand_in_scope(ui=request.param).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "scope_optical_flow_tensorrt.scope_adapter.pipeline", raising=False)
    import scope_optical_flow_tensorrt.scope_adapter.pipeline as module

    yield module
    sys.modules.pop("scope_optical_flow_tensorrt.scope_adapter.pipeline", None)


def test_pipeline_config_fields_follow_scope_conventions(pipeline_module: Any) -> None:
    from pydantic import ValidationError

    config = pipeline_module.FlowConfig
    schema = config.model_json_schema()["properties"]
    assert schema["model"]["enum"] == ["raft_small", "raft_large"] and schema["model"]["default"] == "raft_small"
    for name in ("compute_height", "compute_width"):
        # Scope draws these as sliders stepping by 1 (it reads no step): any value in the range must load.
        assert (schema[name]["minimum"], schema[name]["maximum"], schema[name]["default"]) == (0, 2048, 512)
        assert "multipleOf" not in schema[name]
    assert (schema["num_flow_updates"]["minimum"], schema["num_flow_updates"]["default"]) == (1, 12)
    assert schema["max_flow"]["default"] == 20.0 and schema["max_flow"]["minimum"] > 0
    assert "height" in schema and "preset" not in schema  # Scope's own output size stays; VACE has a pipeline
    ui_field_config = getattr(sys.modules["scope.core.pipelines.base_schema"], "ui_field_config", None)
    has_ui = ui_field_config is not None
    modulates = has_ui and "modulatable" in inspect.signature(ui_field_config).parameters
    assert schema["first_frame"]["enum"] == ["zero", "repeat"] and schema["first_frame"]["default"] == "zero"
    live = ("flow_strength", "max_flow", "first_frame")
    for name in ("model", "compute_height", "compute_width", "num_flow_updates", "flow_strength", "normalization",
                 "max_flow", "first_frame"):
        assert schema[name]["description"]
        if has_ui:  # rendered in Scope's Settings panel; load params rebuild the pipeline
            assert schema[name]["ui"]["is_load_param"] is (name not in live), name
            # the beat-synced modulation drives the strength where Scope can (v0.2.4); older ones load it anyway
            assert schema[name]["ui"].get("modulatable", False) is (modulates and name == "flow_strength"), name
        else:
            assert "ui" not in schema[name]
    assert pipeline_module.FlowPipeline.LIVE_FIELDS == live
    for bad in ({"model": "raft_huge"}, {"compute_height": -8}, {"compute_width": 4096}, {"num_flow_updates": 0},
                {"first_frame": "copy_next"}, {"max_flow": 0}):
        with pytest.raises(ValidationError):
            config(**bad)
    for odd in ({"compute_height": 130}, {"compute_width": 1}, {"compute_height": 0}):
        config(**odd)  # values the sliders offer validate; the pipeline rounds them (test below)
    assert pipeline_module.FlowVaceConfig.model_json_schema()["properties"].keys() <= schema.keys() - {
        "model", "compute_height", "compute_width", "num_flow_updates", "flow_strength", "normalization", "max_flow",
        "first_frame"}


def test_every_compute_size_the_sliders_offer_loads(pipeline_module: Any) -> None:
    compute_size = pipeline_module.compute_size
    assert compute_size(512, 512) == (512, 512, None) and compute_size(0, 0) == (None, None, None)
    height, width, note = compute_size(130, 1)
    assert (height, width) == (136, 128)
    assert note == ("compute_height = 130 runs as 136 and compute_width = 1 runs as 128 (flow is computed at "
                    "multiples of 8, at least 128)")
    height, width, note = compute_size(0, 512)
    assert (height, width) == (None, None) and "compute_height = 0 computes at the input's own size" in note
    for value in range(0, 2049, 7):  # every one builds a preprocessor
        OpticalFlowTensorRTPreprocessor(*compute_size(value, 2048 - value)[:2], device="cpu")


@pytest.mark.parametrize("pipeline_module", ["modulatable"], indirect=True, ids=["scope-0.2.4"])
def test_pipeline_runs_the_configured_model(
    pipeline_module: Any, tmp_path: Path, seeded_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    large_weights = tmp_path / "raft_large_seeded.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.optical_flow.raft_large(weights=None).state_dict(), large_weights)
    # One variable for both models: each uses the file that holds its weights.
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", f"{seeded_weights}:{large_weights}")
    on_cpu = functools.partial(OpticalFlowTensorRTPreprocessor, device="cpu")
    monkeypatch.setattr(pipeline_module, "OpticalFlowTensorRTPreprocessor", on_cpu)
    [pipeline_class, vace_class] = [cls for cls in _registered_pipelines()]
    assert (pipeline_class, vace_class) == (pipeline_module.FlowPipeline, pipeline_module.FlowVacePipeline)
    settings = {"model": "raft_large", "compute_height": COMPUTE_SIZE, "compute_width": 136, "num_flow_updates": 1}
    config = pipeline_class.get_config_class()(**settings)
    pipeline = pipeline_class(**config.model_dump())  # as Scope's PipelineManager builds plugin pipelines
    flow = pipeline.preprocessor
    assert (flow.model, flow.height, flow.width, flow.num_flow_updates) == ("raft_large", COMPUTE_SIZE, 136, 1)
    frames = uint8_frames(5)
    chunk = pipeline.prepare(video=True).input_size
    outputs = [pipeline(video=[frame[None] for frame in frames[i : i + chunk]], init_cache=i == 0)["video"]
               for i in range(0, 5, chunk)]
    assert flow.weights_info is not None and flow.weights_info.description == f"file {large_weights}"
    whole = OpticalFlowTensorRTPreprocessor(COMPUTE_SIZE, 136, device="cpu", model="raft_large",
                                            num_flow_updates=1)(frames)
    torch.testing.assert_close(torch.cat(outputs), (whole[0].permute(1, 2, 3, 0) + 1) / 2, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pipeline_module", ["modulatable"], indirect=True, ids=["scope-0.2.4"])
def test_flow_vace_pipeline_and_messages_in_scope_words(
    pipeline_module: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import functools

    from scope_optical_flow_tensorrt.core.common import log as core_log

    on_cpu = functools.partial(OpticalFlowTensorRTPreprocessor, device="cpu", weights=None)
    monkeypatch.setattr(pipeline_module, "OpticalFlowTensorRTPreprocessor", on_cpu)
    core_log._said.discard("random-weights-raft_large")  # said again here, in Scope's words
    pipeline_class = pipeline_module.FlowVacePipeline
    config = pipeline_class.get_config_class()()
    pipeline = pipeline_class(**config.model_dump())  # as Scope builds it: every field of its config
    flow = pipeline.preprocessor
    assert (flow.model, flow.num_flow_updates, flow.native_size, flow.first_frame) == ("raft_large", 20, True,
                                                                                       "repeat")
    frames = uint8_frames(3, 128, 136)
    maps = pipeline(video=[frame[None] for frame in frames], init_cache=True, flow_strength=2.0)["video"]
    assert maps.shape == (3, 128, 136, 3) and flow.compute_size == (128, 136)
    assert flow.flow_strength == 1.0  # no such field here: nothing live changes VACE's maps
    torch.testing.assert_close(maps[0], maps[1])  # the first map repeated
    ready = [record.getMessage() for record in caplog.records if "optical flow ready" in record.getMessage()]
    # No fields: the settings in plain words, none as a field, and no precision flag Scope lacks.
    assert ready and "model raft_large" in ready[-1] and "flow updates 20" in ready[-1]
    assert "first frame repeat" in ready[-1] and "padded to 128x136" in ready[-1]
    assert "fp16 False" not in ready[-1] and "precision fp32 (fp16 applies on CUDA only)" in ready[-1]
    # Scope has no weights field: the untrained-weights notice names none (the API's weights=None least of all).
    notices = [record.getMessage() for record in caplog.records if "UNTRAINED" in record.getMessage()]
    assert notices and "flow maps will not show real motion." in notices[-1]
    assert "weights" not in notices[-1].split("UNTRAINED random weights")[1]


@pytest.mark.parametrize("pipeline_module", ["modulatable"], indirect=True, ids=["scope-0.2.4"])
def test_flow_pipeline_fields_are_what_runs_at_load_and_live(
    pipeline_module: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import functools

    on_cpu = functools.partial(OpticalFlowTensorRTPreprocessor, device="cpu", weights=None)
    monkeypatch.setattr(pipeline_module, "OpticalFlowTensorRTPreprocessor", on_cpu)
    config = pipeline_module.FlowConfig(compute_height=130, compute_width=0, first_frame="zero", num_flow_updates=1,
                                        normalization="fixed", max_flow=5.0)
    caplog.set_level(logging.INFO, logger="scope_optical_flow_tensorrt")
    pipeline = pipeline_module.FlowPipeline(**config.model_dump())
    flow = pipeline.preprocessor
    assert flow.first_frame == "zero" and flow.native_size and flow.max_flow == 5.0  # zero means zero at load
    assert any("compute_height = 0" in r.getMessage() or "compute_width = 0 computes at the input's own size"
               in r.getMessage() for r in caplog.records)
    frames = uint8_frames(3, 128, 136)
    maps = pipeline(video=[frame[None] for frame in frames], init_cache=True)["video"]
    assert maps[0].min() == 1.0  # zero: the first map white
    live = pipeline(video=[frame[None] for frame in frames], init_cache=True, first_frame="repeat", max_flow=2.0,
                    flow_strength=0.5)["video"]
    assert (flow.first_frame, flow.max_flow, flow.flow_strength) == ("repeat", 2.0, 0.5)
    torch.testing.assert_close(live[0], live[1])  # repeat: the same meaning live as at load
    with pytest.raises(ValueError, match=r"first_frame = copy is not supported; use one of zero, repeat"):
        pipeline(video=[frame[None] for frame in frames], first_frame="copy")
    ready = [record.getMessage() for record in caplog.records if "optical flow ready" in record.getMessage()]
    assert "compute_height = 0, compute_width = 0 (the input's own size, padded to 128x136)" in ready[-1]
    assert "num_flow_updates = 1" in ready[-1] and "normalization = fixed, max_flow = 5.0" in ready[-1]
    assert "fp16" not in ready[-1].replace("(fp16 applies", "") and "None" not in ready[-1]


def _registered_pipelines() -> list[type]:
    registered: list[type] = []
    plugin_manager(ScopeHookSpec).hook.register_pipelines(register=registered.append)
    return registered
