"""Warm-up where hosts show waiting: window shapes per chunk size, the Scope pipeline (loaded and warm once
constructed, still honouring ``init_cache``) and the ComfyUI node (logs and moves its progress bar).

Scope is not installed in CI: a minimal stand-in for the few Scope modules the pipeline imports is put in
``sys.modules`` (Scope's own pipeline test runs in test_scope_adapter where Scope is installed).
"""

from __future__ import annotations

import enum
import importlib
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import torch
import torchvision
from conftest import COMPUTE_SIZE, make_frames
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.artifacts.compiled_cache import ROUTE_BACKGROUND, ROUTE_BUILT, ROUTE_LOADED
from scope_optical_flow_tensorrt.core.warmup import chunk_sizes, window_pair_counts
from scope_optical_flow_tensorrt.nodes import flow as node_flow
from scope_optical_flow_tensorrt.nodes import host

if TYPE_CHECKING:
    from fake_compile import FakeTorchCompile

UPDATES = 2


def test_window_shapes_of_scope_cli_and_node_chunks() -> None:
    assert window_pair_counts([4], 24) == [3, 4]  # Scope: first chunk 3 pairs, then 4 (previous frame + 4)
    assert window_pair_counts([16], 24) == [15, 16]  # CLI / bench
    assert window_pair_counts([24], 24) == [23, 24]  # ComfyUI node windows of max_batch_pairs frames
    assert window_pair_counts([40], 24) == [15, 16, 24]  # longer chunks split into windows
    assert window_pair_counts([1], 24) == [1]
    assert chunk_sizes(True) == [16] and chunk_sizes(4) == [4] and chunk_sizes((4, 16)) == [4, 16]
    assert chunk_sizes(False) == []


# -- Scope ----------------------------------------------------------------------------------------------


def _fake_scope_modules() -> dict[str, types.ModuleType]:
    """The names scope_adapter/pipeline.py imports from Scope, shaped as in Scope v0.2.4."""
    pydantic = pytest.importorskip("pydantic")

    class UsageType(str, enum.Enum):
        PREPROCESSOR = "preprocessor"

    class ModeDefaults:
        def __init__(self, default: bool = False) -> None:
            self.default = default

    class BasePipelineConfig(pydantic.BaseModel):
        pipeline_id: ClassVar[str] = ""
        pipeline_name: ClassVar[str] = ""
        pipeline_description: ClassVar[str] = ""
        docs_url: ClassVar[str] = ""
        supports_prompts: ClassVar[bool] = True
        usage: ClassVar[list[Any]] = []
        modes: ClassVar[dict[str, Any]] = {}

    class Pipeline:
        pass

    class Requirements:
        def __init__(self, input_size: int) -> None:
            self.input_size = input_size

    names = ["scope", "scope.core", "scope.core.pipelines", "scope.core.pipelines.base_schema",
             "scope.core.pipelines.interface", "scope.core.pipelines.process"]
    modules = {name: types.ModuleType(name) for name in names}
    base_schema = modules["scope.core.pipelines.base_schema"]
    base_schema.BasePipelineConfig, base_schema.ModeDefaults, base_schema.UsageType = (  # type: ignore[attr-defined]
        BasePipelineConfig, ModeDefaults, UsageType)
    interface = modules["scope.core.pipelines.interface"]
    interface.Pipeline, interface.Requirements = Pipeline, Requirements  # type: ignore[attr-defined]
    modules["scope.core.pipelines.process"].normalize_frame_sizes = lambda frames: frames  # type: ignore[attr-defined]
    return modules


@pytest.fixture
def pipeline_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.ModuleType:
    """scope_adapter.pipeline imported against the stand-in Scope, its preprocessor at 128x128 on the CPU."""
    for name, module in _fake_scope_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "scope_optical_flow_tensorrt.scope_adapter.pipeline", raising=False)
    module = importlib.import_module("scope_optical_flow_tensorrt.scope_adapter.pipeline")
    monkeypatch.delitem(sys.modules, "scope_optical_flow_tensorrt.scope_adapter.pipeline")  # not kept for others

    weights = tmp_path / "raft_small_seeded.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.optical_flow.raft_small(weights=None).state_dict(), weights)
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(weights))

    class SmallPreprocessor(OpticalFlowTensorRTPreprocessor):
        """The pipeline's preprocessor at 128x128, few updates, on the CPU (the config's size and updates are
        replaced; its other settings, such as the model, pass through)."""

        def __init__(self, height: int = COMPUTE_SIZE, width: int = COMPUTE_SIZE, **options: Any) -> None:
            options["num_flow_updates"] = UPDATES
            super().__init__(COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", backend="torch", **options)

    monkeypatch.setattr(module, "OpticalFlowTensorRTPreprocessor", SmallPreprocessor)
    return module


def _chunk(frames: torch.Tensor) -> list[torch.Tensor]:
    """Scope's video argument: a list of ``[1, H, W, C]`` uint8 frames."""
    return [frame[None] for frame in (frames * 255).round().to(torch.uint8)]


def test_scope_pipeline_is_loaded_and_warm_once_constructed(
    pipeline_module: types.ModuleType, fake: FakeTorchCompile
) -> None:
    pipeline = pipeline_module.FlowPipeline(flow_strength=1.0, normalization="per_frame", height=512, base_seed=0)
    flow = pipeline.preprocessor
    # compiled (in the background, waited for) while Scope shows "Initializing"
    assert flow.loaded and flow.warmup_routes == [ROUTE_BACKGROUND]
    assert flow.load().warmed_shapes == {4: ROUTE_BUILT}  # type: ignore[attr-defined]
    compiled = list(fake.compiles)
    assert compiled and pipeline.prepare(video=True).input_size == pipeline_module.CHUNK_FRAMES == 4
    frames = make_frames(12, 64, 80)
    for start in range(0, 12, 4):  # the first live chunk (3 pairs) and later ones (4 pairs) compile nothing
        out = pipeline(video=_chunk(frames[start : start + 4]), init_cache=start == 0)["video"]
        assert out.shape == (4, 64, 80, 3) and 0.0 <= out.min() and out.max() <= 1.0
    assert fake.compiles == compiled

    fake.new_process()  # a later Scope session: the kernels come from the models folder
    again = pipeline_module.FlowPipeline()
    assert again.preprocessor.loaded and again.preprocessor.load().warmed_shapes == {4: ROUTE_LOADED}  # type: ignore[attr-defined]
    assert fake.compiles == compiled


def test_scope_pipeline_still_honours_init_cache(pipeline_module: types.ModuleType) -> None:
    pipeline = pipeline_module.FlowPipeline()
    backend = pipeline.preprocessor.load()
    frames = make_frames(8, 64, 80)
    pipeline(video=_chunk(frames[:4]), init_cache=True)
    continued = pipeline(video=_chunk(frames[4:]), init_cache=False)["video"]
    restarted = pipeline(video=_chunk(frames[4:]), init_cache=True)["video"]
    assert torch.all(restarted[0] == 1.0)  # a new sequence: the first frame has no reference (white)
    assert continued[0].std() > 0.01  # across chunks of one sequence the first frame has real motion
    torch.testing.assert_close(restarted[1:], continued[1:], atol=1e-5, rtol=0)
    assert pipeline.preprocessor.load() is backend  # reset keeps the loaded model


# -- ComfyUI node ---------------------------------------------------------------------------------------


class RecordingBar:
    bars: ClassVar[list[RecordingBar]] = []

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        RecordingBar.bars.append(self)

    def update(self, value: int) -> None:
        self.done += value


def test_node_loads_and_compiles_with_its_progress_bar_moving_and_logs_the_time(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    RecordingBar.bars = []
    monkeypatch.setattr(host, "progress_bar", RecordingBar)
    node_flow.clear_cache()
    settings = node_flow.ModelSettings(compute_height=COMPUTE_SIZE, compute_width=COMPUTE_SIZE, precision="fp32",
                                       flow_updates=UPDATES, backend="torch", weights=node_flow.WEIGHTS_UNTRAINED,
                                       model="raft_small", device="cpu", models_dir=str(tmp_path))
    try:
        flow = node_flow.get_preprocessor(settings)
        # served at once by the uncompiled model; a child process compiles the kernels
        assert flow.loaded and flow.warmup_routes == [ROUTE_BACKGROUND]
        [bar] = RecordingBar.bars
        assert bar.done == bar.total == len(window_pair_counts([flow.max_batch_pairs], flow.max_batch_pairs))
        messages = [record.getMessage() for record in caplog.records]
        assert any(message.startswith("optical flow: preparing") for message in messages)
        assert any(message.startswith("optical flow ready in") and ROUTE_BACKGROUND in message for message in messages)
        assert any("take over" in message for message in messages)
        assert flow.wait_for_compiled(timeout=120)
        assert flow.load().warmed_shapes == {flow.max_batch_pairs: ROUTE_BUILT}  # type: ignore[attr-defined]
        compiled = list(fake.compiles)
        node_flow.video_flow(flow, make_frames(flow.max_batch_pairs, 64, 80))  # a first full window: nothing new
        assert fake.compiles == compiled
    finally:
        node_flow.clear_cache()
