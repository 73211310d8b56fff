"""The TensorRT backend's runtime glue against a fake ``tensorrt`` module (no TensorRT or GPU needed).

The fake engine reads the bound input address and writes the bound output address (host memory here: the
test runs the backend on CPU tensors, with ``torch.cuda.device``/``current_stream`` stubbed), computing flow
with the real PyTorch model. This checks what the backend does with TensorRT's API: names and modes checked
once, ``set_input_shape`` and output (re)allocation only when the frame count changes, addresses bound,
``execute_async_v3`` given torch's stream handle, results not aliasing the reused output buffer, and the
engine found in the cache on the next construction. Real TensorRT runs are in test_onnx_export.py (marked).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from scope_optical_flow_tensorrt.core import engine_manager
from scope_optical_flow_tensorrt.core.backends import BackendConfig, create_backend
from scope_optical_flow_tensorrt.core.backends import tensorrt_backend
from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.trt_build import BuildTarget
from scope_optical_flow_tensorrt.core.weights import load_raft_small

SIZE = 128
UPDATES = 1
STREAM_HANDLE = 0xC0FFEE


def host_tensor(address: int, shape: tuple[int, ...]) -> torch.Tensor:
    count = 1
    for dim in shape:
        count *= dim
    buffer = (ctypes.c_float * count).from_address(address)
    return torch.frombuffer(buffer, dtype=torch.float32).view(shape)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: list[tuple[int, ...]] = []
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        assert name == "frames"
        if not 2 <= shape[0] <= self.engine.max_frames:
            return False
        self.shapes.append(tuple(shape))
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert name == "flow" and self.shapes, "output shape asked before the input shape was set"
        frames = self.shapes[-1][0]
        return (frames - 1, 2, SIZE, SIZE)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.streams.append(stream_handle)
        shape = self.shapes[-1]
        frames = host_tensor(self.addresses["frames"], shape).clone()
        with torch.no_grad():
            flow = self.engine.model(frames)
        host_tensor(self.addresses["flow"], tuple(flow.shape)).copy_(flow)
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, model: RaftSequenceFlow, max_frames: int) -> None:
        self.model = model
        self.max_frames = max_frames
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, index: int) -> str:
        return ("frames", "flow")[index]

    def get_tensor_mode(self, name: str) -> str:
        return {"frames": "INPUT", "flow": "OUTPUT"}[name]

    def get_tensor_dtype(self, name: str) -> str:
        return "FLOAT"

    def create_execution_context(self) -> FakeContext:
        context = FakeContext(self)
        self.contexts.append(context)
        return context


def fake_tensorrt(model: RaftSequenceFlow, max_frames: int, deserialized: list[bytes]) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.99.0-fake"
    module.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    module.float32 = "FLOAT"

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            deserialized.append(data)
            return FakeEngine(model, max_frames) if data.startswith(b"FAKE-ENGINE") else None

    module.ILogger = ILogger
    module.Runtime = Runtime
    return module


@pytest.fixture
def fake_trt_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    raft, _ = load_raft_small(None)
    model = RaftSequenceFlow(raft, UPDATES).eval()
    max_pairs = 3
    deserialized: list[bytes] = []
    builds: list[engine_manager.EngineSpec] = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(model, max_pairs + 1, deserialized))
    monkeypatch.setattr(engine_manager, "resolve_exporter", lambda exporter="auto": "torchscript")
    target = BuildTarget("Fake GPU/1", "9.0", "10.99.0-fake", 1 << 30)
    monkeypatch.setattr(tensorrt_backend, "build_target", lambda device: target)

    def fake_build(onnx: Path, destination: Path, spec: engine_manager.EngineSpec, target: BuildTarget) -> None:
        builds.append(spec)
        destination.write_bytes(b"FAKE-ENGINE " + onnx.name.encode())

    monkeypatch.setattr(engine_manager, "write_engine_with_tensorrt", fake_build)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=STREAM_HANDLE))
    config = BackendConfig(height=SIZE, width=SIZE, device=torch.device("cpu"), fp16=True,
                           num_flow_updates=UPDATES, max_pairs=max_pairs, models_dir=tmp_path)
    return types.SimpleNamespace(model=model, config=config, builds=builds, deserialized=deserialized, dir=tmp_path)


def test_tensorrt_backend_binds_runs_and_reuses_buffers(fake_trt_setup) -> None:
    setup = fake_trt_setup
    backend = create_backend("tensorrt", setup.config, None)
    assert backend.name == "tensorrt" and backend.max_pairs == 3
    assert backend.weights_info.identity == "random-seed0"
    assert len(setup.builds) == 1 and backend.engine_path.suffix == ".trt"
    assert "Fake_GPU_1" in backend.engine_path.name
    context = backend.context

    frames = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = setup.model(frames)
    first = backend.flow(frames)
    assert first.shape == (3, 2, SIZE, SIZE)
    assert torch.allclose(first, expected, atol=1e-5)
    output_buffer = backend._output
    second = backend.flow(frames[:4].clone())  # same frame count: no new shape, same output buffer
    assert len(context.shapes) == 1 and backend._output is output_buffer
    assert first.data_ptr() != second.data_ptr() != output_buffer.data_ptr()  # results never alias the buffer
    assert torch.equal(first, second)

    short = backend.flow(frames[:2])  # fewer frames: new input shape, new output buffer
    assert short.shape == (1, 2, SIZE, SIZE) and context.shapes == [(4, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    assert torch.allclose(short, expected[:1], atol=1e-5)
    assert torch.allclose(first, expected, atol=1e-5)  # earlier result untouched by later calls
    assert context.streams == [STREAM_HANDLE] * 3
    assert len(backend.engine.contexts) == 1  # one execution context

    with pytest.raises(ValueError, match="2 to 4 frames"):
        backend.flow(torch.rand(5, 3, SIZE, SIZE))


def test_tensorrt_backend_reuses_cached_engine_and_rebuilds_unreadable_one(fake_trt_setup) -> None:
    setup = fake_trt_setup
    first = create_backend("tensorrt", setup.config, None)
    second = create_backend("tensorrt", setup.config, None)
    assert second.engine_path == first.engine_path and len(setup.builds) == 1

    # A plan TensorRT cannot deserialize (e.g. written by another TensorRT build) but whose sidecar matches:
    path = first.engine_path
    sidecar = path.with_name(path.name + ".json")
    bad = b"GARBAGE-PLAN"
    data = json.loads(sidecar.read_text())
    data.update(size_bytes=len(bad), sha256=hashlib.sha256(bad).hexdigest())
    path.write_bytes(bad)
    sidecar.write_text(json.dumps(data))
    third = create_backend("tensorrt", setup.config, None)
    assert len(setup.builds) == 2 and third.engine_path == path
    assert path.read_bytes().startswith(b"FAKE-ENGINE")
    assert setup.deserialized.count(bad) == 1


def test_engine_build_assembles_polygraphy_loaders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """build_engine_bytes: one batch profile (min 2, opt = max = max_frames), fp16 with the correlation pinned
    to fp32, workspace limit and a progress monitor, all handed to polygraphy's loaders."""
    import polygraphy.backend.trt as polygraphy_trt

    from scope_optical_flow_tensorrt.core import trt_build

    trt = types.ModuleType("tensorrt")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.LayerType = types.SimpleNamespace(MATRIX_MULTIPLY="matmul", POOLING="pool", GRID_SAMPLE="grid", CONVOLUTION="conv")
    trt.float32 = "FLOAT"

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    trt.IProgressMonitor = IProgressMonitor
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    seen: dict[str, object] = {}

    class Layer:
        def __init__(self, kind: str) -> None:
            self.type, self.num_outputs, self.precision, self.output_types = kind, 1, None, {}

        def set_output_type(self, index: int, dtype: str) -> None:
            self.output_types[index] = dtype

    layers = [Layer(kind) for kind in ("conv", "matmul", "pool", "grid", "conv")]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=lambda index: layers[index])

    monkeypatch.setattr(polygraphy_trt, "network_from_onnx_path", lambda path: seen.setdefault("onnx", path) and "net")

    def postprocess(net: object, func, name=None) -> str:
        func(network=network)
        return "postprocessed"

    def create_config(**kwargs: object) -> dict:
        seen["config"] = kwargs
        return kwargs

    def engine_bytes(net: object, config: object) -> bytes:
        seen["network"] = net
        monitor = config["progress_monitor"]
        monitor.phase_start("Building", None, 2)
        assert monitor.step_complete("Building", 0) is True
        monitor.phase_finish("Building")
        return b"PLAN"

    monkeypatch.setattr(polygraphy_trt, "PostprocessNetwork", postprocess)
    monkeypatch.setattr(polygraphy_trt, "CreateConfig", create_config)
    monkeypatch.setattr(polygraphy_trt, "engine_bytes_from_network", engine_bytes)

    plan = trt_build.build_engine_bytes(tmp_path / "g.onnx", height=256, width=320, fp16=True, max_frames=9,
                                        workspace_bytes=123, device=torch.device("cpu"))
    assert plan == b"PLAN" and seen["onnx"] == str(tmp_path / "g.onnx") and seen["network"] == "postprocessed"
    config = seen["config"]
    assert config["fp16"] is True and config["precision_constraints"] == "prefer"
    assert config["memory_pool_limits"] == {"WORKSPACE": 123}
    (profile,) = config["profiles"]
    shapes = profile["frames"]
    assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ((2, 3, 256, 320), (9, 3, 256, 320), (9, 3, 256, 320))
    assert [layer.precision for layer in layers] == [None, "FLOAT", "FLOAT", "FLOAT", None]

    seen.clear()
    trt_build.build_engine_bytes(tmp_path / "g.onnx", height=128, width=128, fp16=False, max_frames=2,
                                 workspace_bytes=1, device=torch.device("cpu"))
    assert seen["network"] == "net" and seen["config"]["fp16"] is False  # fp32: no pinning step
