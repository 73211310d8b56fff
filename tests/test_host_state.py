"""The host's state stays its own: building and calling a preprocessor never moves the host's random stream, two
threads building untrained models at once both get the seeded weights, and a TensorRT-for-RTX build leaves the
environment and polygraphy's module state as it found them."""

from __future__ import annotations

import contextlib
import enum
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import COMPUTE_SIZE, make_frames
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.artifacts import trt_build
from scope_optical_flow_tensorrt.core.model.weights import RANDOM_WEIGHTS_SEED, load_raft
from test_tensorrt_runtime import labelled_graph, standin_tensorrt
from torchvision.models.optical_flow import Raft_Small_Weights, raft_small

FRAMES = make_frames(3, 64, 72)


def preprocessor(weights: object) -> OpticalFlowTensorRTPreprocessor:
    return OpticalFlowTensorRTPreprocessor(COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", weights=weights,  # type: ignore[arg-type]
                                           num_flow_updates=2, backend="torch")


def seeded_reference() -> dict[str, torch.Tensor]:
    """torchvision's RAFT Small as ``torch.manual_seed(RANDOM_WEIGHTS_SEED)`` makes it (what weights=None means)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return raft_small(weights=None).state_dict()


@pytest.fixture
def default_weights_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's DEFAULT RAFT Small file in torch's hub cache (seeded values; no download here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(seeded_reference(), checkpoints / Path(Raft_Small_Weights.DEFAULT.url).name)


@pytest.mark.parametrize("weights", ["DEFAULT", None, "file"])
def test_building_and_calling_leave_the_hosts_random_stream_alone(
    weights: object, default_weights_cached: None, tmp_path: Path
) -> None:
    if weights == "file":
        weights = tmp_path / "raft_small.pth"
        torch.save(seeded_reference(), weights)
    torch.manual_seed(1234)
    expected = torch.rand(8)
    torch.manual_seed(1234)
    flow = preprocessor(weights)
    flow.load()
    flow(FRAMES)
    assert torch.equal(torch.rand(8), expected)  # the host's next draws are the ones it would have had


def test_untrained_weights_are_the_seeded_ones_and_made_without_the_global_stream() -> None:
    reference = seeded_reference()
    torch.manual_seed(99)
    expected = torch.rand(4)
    torch.manual_seed(99)
    model, info = load_raft("raft_small", None)
    assert torch.equal(torch.rand(4), expected) and info.identity == f"random-seed{RANDOM_WEIGHTS_SEED}"
    assert all(torch.equal(value, reference[name]) for name, value in model.state_dict().items())


def test_two_threads_building_untrained_preprocessors_get_the_seeded_weights_and_move_no_other_stream() -> None:
    expected_flow = preprocessor(None)(FRAMES)
    for trial in range(3):
        start = threading.Barrier(3)
        built: list[OpticalFlowTensorRTPreprocessor] = []
        errors: list[BaseException] = []

        def build() -> None:
            try:
                start.wait()
                flow = preprocessor(None)
                flow.load()
                built.append(flow)
            except BaseException as error:  # reported below, in the test's thread
                errors.append(error)

        builders = [threading.Thread(target=build) for _ in range(2)]
        for thread in builders:
            thread.start()
        torch.manual_seed(trial)  # this thread's stream: draws while the others build
        start.wait()
        drawn = [torch.rand(1)]  # at least one draw: on a loaded machine the builds may end before the loop starts
        while any(thread.is_alive() for thread in builders):
            drawn.append(torch.rand(1))
        for thread in builders:
            thread.join()
        assert not errors, errors
        torch.manual_seed(trial)
        assert torch.equal(torch.cat(drawn), torch.cat([torch.rand(1) for _ in drawn]))  # not moved by the builds
        for flow in built:
            assert torch.equal(flow(FRAMES), expected_flow)  # the seeded weights, in both threads


def rtx_standin(record: dict) -> Any:
    """The stand-in TensorRT builder of test_tensorrt_runtime as ``tensorrt_rtx``: compute-capability targets."""
    rtx = standin_tensorrt(11, record)
    rtx.__name__, rtx.__version__ = "tensorrt_rtx", "1.99.0"
    rtx.ComputeCapability = enum.IntEnum("ComputeCapability", {"CURRENT": 0, "SM75": 1, "SM86": 2, "SM89": 3})
    plain = type(rtx.Builder(rtx.Logger()).create_builder_config())

    class RtxBuilderConfig(plain):  # type: ignore[misc, valid-type]
        __slots__ = ("num_compute_capabilities", "compute_capabilities")

        def set_compute_capability(self, capability: Any, index: int) -> None:
            if not hasattr(self, "compute_capabilities"):
                self.compute_capabilities = {}
            self.compute_capabilities[index] = capability

    rtx.Builder.create_builder_config = lambda self: RtxBuilderConfig()
    return rtx


POLYGRAPHY_HANDLES = ("polygraphy.util.util", "polygraphy.backend.trt.util", "polygraphy.backend.trt.loader",
                      "polygraphy.backend.trt.config", "polygraphy.backend.tensorrt_rtx.config",
                      "polygraphy.datatype.tensorrt")


def polygraphy_state() -> tuple[Any, ...]:
    from polygraphy import config as polygraphy_config

    modules = [importlib.import_module(name) for name in POLYGRAPHY_HANDLES]
    return (polygraphy_config.USE_TENSORRT_RTX, *(module.trt for module in modules),
            importlib.import_module("polygraphy.backend.trt.util").TRT_LOGGER)


def test_tensorrt_rtx_build_leaves_the_environment_and_polygraphy_as_it_found_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record: dict = {"per_layer_precision": []}
    rtx = rtx_standin(record)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    environment, polygraphy_before = dict(os.environ), polygraphy_state()
    plan = trt_build.build_engine_bytes(labelled_graph(tmp_path / "g.onnx", "fp16"), height=128, width=128, fp16=True,
                                        max_frames=3, workspace_bytes=1 << 20, device=None, flavour="tensorrt_rtx",
                                        compute_targets=("8.9",))
    assert plan == b"PLAN" and record["network"].get_flag(rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert record["config"].compute_capabilities == {0: rtx.ComputeCapability.SM89}  # built for TensorRT for RTX
    assert dict(os.environ) == environment  # no POLYGRAPHY_USE_TENSORRT_RTX left behind
    assert polygraphy_state() == polygraphy_before  # polygraphy's flavour and handles are the host's again
