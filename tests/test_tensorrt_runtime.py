"""The TensorRT backend's runtime glue against a fake ``tensorrt`` module (no TensorRT or GPU needed).

The fake engine reads the bound input address and writes the bound output address (host memory here: the
test runs the backend on CPU tensors, with ``torch.cuda.device``/``current_stream`` stubbed), computing flow
with the real PyTorch model. This checks what the backend does with TensorRT's API: names and modes checked
once, ``set_input_shape`` and output (re)allocation only when the frame count changes, addresses bound,
``execute_async_v3`` given torch's stream handle, results not aliasing the reused output buffer, and the
engine found in the cache on the next construction. Real TensorRT runs are in test_onnx_export.py (marked).

The engine build runs polygraphy's real loaders against a strict stand-in of TensorRT's builder API in a
TensorRT 10 and a TensorRT 11 mode (the latter without the weak-typing API TensorRT 11 removed), checking the
network is strongly typed and no precision flag or per-layer precision call is made.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import hashlib
import importlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from scope_optical_flow_tensorrt.core.artifacts import engine_manager
from scope_optical_flow_tensorrt.core.artifacts.trt_build import BuildTarget
from scope_optical_flow_tensorrt.core.backends import BackendConfig, create_backend, tensorrt_backend
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.model.weights import load_raft_small

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


# -- engine build: polygraphy's real loaders against a stand-in TensorRT 10 or 11 builder surface -----------

# TensorRT 11 removed weak typing ("Migrating from TensorRT 10.x to 11.x", "Removed Python APIs"): these
# BuilderFlag members, IBuilderConfig's calibrator/quantization API, the EXPLICIT_BATCH creation flag and
# ILayer's precision API are absent from the TensorRT 11 stand-in, so touching them raises AttributeError.
WEAK_TYPING_FLAGS = {"FP16": 0, "INT8": 1, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
                     "DIRECT_IO": 11, "FP8": 15, "BF16": 17}
COMMON_FLAGS = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14,
                "ERROR_ON_TIMING_CACHE_MISS": 16, "DISABLE_COMPILATION_CACHE": 18, "STRIP_PLAN": 19,
                "WEIGHT_STREAMING": 21}
LAYER_TYPES = ("CONVOLUTION", "MATRIX_MULTIPLY", "POOLING", "GRID_SAMPLE", "CAST", "SHAPE")


def standin_tensorrt(major: int, record: dict) -> types.ModuleType:
    """A strict stand-in for TensorRT's builder API (``major`` 10 or 11); what the build does lands in ``record``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.99.0"
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", COMMON_FLAGS | (WEAK_TYPING_FLAGS if major == 10 else {}))
    creation = {"STRONGLY_TYPED": 1} | ({"EXPLICIT_BATCH": 0} if major == 10 else {})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    trt.TacticSource = enum.IntEnum("TacticSource", {"EDGE_MASK_CONVOLUTIONS": 3, "JIT_CONVOLUTIONS": 4})
    trt.PreviewFeature = enum.IntEnum("PreviewFeature", {"PROFILE_SHARING_0806": 0})
    trt.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.EngineCapability = enum.IntEnum("EngineCapability", {"STANDARD": 0})
    trt.LayerType = enum.IntEnum("LayerType", {name: index for index, name in enumerate(LAYER_TYPES)})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1})
    trt.float32, trt.float16 = trt.DataType.FLOAT, trt.DataType.HALF
    if major == 10:
        trt.QuantizationFlag = enum.IntEnum("QuantizationFlag", {"CALIBRATE_BEFORE_FUSION": 0})

    class ILogger:
        Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})

        def __init__(self) -> None:
            pass

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = ILogger.Severity

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Tensor:
        __slots__ = ("name", "shape", "dtype", "is_shape_tensor")

        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape, self.dtype, self.is_shape_tensor = name, shape, trt.float32, False

    class Layer:
        __slots__ = ("name", "type")
        num_outputs = 1

        def __init__(self, name: str, kind: str) -> None:
            self.name, self.type = name, trt.LayerType[kind]

    class WeaklyTypedLayer(Layer):  # TensorRT 10 still has the weak-typing calls (disallowed when strongly typed)
        __slots__ = ()

        @property
        def precision_is_set(self) -> bool:
            return False

        @property
        def precision(self) -> object:
            return trt.float32

        @precision.setter
        def precision(self, value: object) -> None:
            record["per_layer_precision"].append(self.name)

        def set_output_type(self, index: int, dtype: object) -> None:
            record["per_layer_precision"].append(self.name)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.layers: list[Layer] = []
            self.inputs: list[Tensor] = []

        def get_flag(self, flag: enum.IntEnum) -> bool:
            return bool(self.flags & (1 << int(flag)))

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, index: int) -> Layer:
            return self.layers[index]

        def __len__(self) -> int:
            return len(self.layers)

        def __getitem__(self, index: int) -> Layer:
            return self.layers[index]

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network, self.num_errors, self.flags = network, 0, 0

        def parse_from_file(self, path: str) -> bool:
            record["parsed"] = path
            layer_class = WeaklyTypedLayer if major == 10 else Layer
            self.network.inputs = [Tensor("frames", (-1, 3, 256, 320))]
            self.network.layers = [layer_class(f"layer{index}", kind) for index, kind in enumerate(LAYER_TYPES[:5])]
            return True

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, min: tuple, opt: tuple, max: tuple) -> None:
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

        def __bool__(self) -> bool:
            return bool(self.shapes)

    class BuilderConfig:
        # __slots__: setting an attribute TensorRT does not have (e.g. int8_calibrator on 11) raises too
        __slots__ = ("flags", "pools", "profiles", "timing_cache", "profiling_verbosity", "progress_monitor",
                     "DLA_core", "default_device_type", "engine_capability") + (
                        ("int8_calibrator",) if major == 10 else ())

        def __init__(self) -> None:
            self.flags = {trt.BuilderFlag.TF32}  # TensorRT's default
            self.pools: dict = {}
            self.profiles: list = []
            self.timing_cache = None
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self.progress_monitor = None
            self.DLA_core, self.default_device_type = -1, trt.DeviceType.GPU
            self.engine_capability = trt.EngineCapability.STANDARD
            if major == 10:
                self.int8_calibrator = None

        def set_flag(self, flag: enum.IntEnum) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: enum.IntEnum) -> None:
            self.flags.discard(flag)

        def get_flag(self, flag: enum.IntEnum) -> bool:
            return flag in self.flags

        def set_memory_pool_limit(self, pool: enum.IntEnum, size: int) -> None:
            self.pools[pool] = size

        def get_memory_pool_limit(self, pool: enum.IntEnum) -> int:
            return self.pools.get(pool, 0)

        def get_tactic_sources(self) -> int:
            return 0

        def get_preview_feature(self, feature: enum.IntEnum) -> bool:
            return False

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, data: bytes) -> object:
            return object()

        def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
            self.timing_cache = cache
            return True

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)

        def create_network(self, flags: int = 0) -> Network:
            record["network_flags"] = flags
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            record["config"], record["network"] = config, network
            monitor = config.progress_monitor
            monitor.phase_start("Building engine", None, 2)
            assert monitor.step_complete("Building engine", 0) is True
            monitor.phase_finish("Building engine")
            return b"PLAN"

    trt.ILogger, trt.Logger, trt.IProgressMonitor = ILogger, Logger, IProgressMonitor
    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    return trt


@pytest.fixture
def standin_builder(monkeypatch: pytest.MonkeyPatch):
    """Install a stand-in TensorRT of the requested major version where trt_build and polygraphy import it."""
    # by module path: the package's `config` attribute is polygraphy's global config, not this module
    polygraphy_loader, polygraphy_config, polygraphy_util = (
        importlib.import_module(f"polygraphy.backend.trt.{name}") for name in ("loader", "config", "util")
    )
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())

    def install(major: int) -> dict:
        record: dict = {"per_layer_precision": []}
        trt = standin_tensorrt(major, record)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        for module in (polygraphy_loader, polygraphy_config, polygraphy_util):  # polygraphy's lazy `trt` handles
            monkeypatch.setattr(module, "trt", trt)
        monkeypatch.setattr(polygraphy_util, "TRT_LOGGER", None)  # rebuilt from the stand-in's ILogger
        record["trt"] = trt
        return record

    return install


@pytest.mark.parametrize("major", [10, 11])
def test_engine_build_is_strongly_typed_without_precision_flags(standin_builder, tmp_path: Path, major: int) -> None:
    """build_engine_bytes through polygraphy's real loaders: a strongly typed network, one batch profile
    (min 2, opt = max = max_frames), the workspace limit and a progress monitor; no precision builder flag and
    no per-layer precision call, for the fp16 graph as for the fp32 one, on TensorRT 10 and 11 alike."""
    from scope_optical_flow_tensorrt.core.artifacts import trt_build

    for fp16 in (True, False):
        record = standin_builder(major)
        trt = record["trt"]
        graph = labelled_graph(tmp_path / "g.onnx", "fp16" if fp16 else "fp32")  # parsed by the stand-in
        plan = trt_build.build_engine_bytes(graph, height=256, width=320, fp16=fp16, max_frames=9,
                                            workspace_bytes=123, device=torch.device("cpu"))
        assert plan == b"PLAN" and record["parsed"] == str(graph)
        assert record["network"].get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        config = record["config"]
        assert config.flags == set()  # no FP16/BF16/INT8/precision-constraint flag; TF32 cleared by polygraphy
        assert config.pools == {trt.MemoryPoolType.WORKSPACE: 123}
        (profile,) = config.profiles
        assert profile.shapes == {"frames": ((2, 3, 256, 320), (9, 3, 256, 320), (9, 3, 256, 320))}
        assert record["per_layer_precision"] == []


def test_engine_build_refuses_a_graph_of_the_other_precision(standin_builder, tmp_path: Path) -> None:
    from scope_optical_flow_tensorrt.core.artifacts import trt_build

    record = standin_builder(11)
    for path, fp16, label in ((labelled_graph(tmp_path / "a.onnx", "fp32"), True, "an fp32 graph"),
                              (labelled_graph(tmp_path / "b.onnx", None), False, "an unlabelled graph")):
        with pytest.raises(RuntimeError, match=f"{label}, but an fp(16|32) engine was requested"):
            trt_build.build_engine_bytes(path, height=128, width=128, fp16=fp16, max_frames=2, workspace_bytes=1,
                                         device=torch.device("cpu"))
    assert "parsed" not in record  # refused before TensorRT saw it


def labelled_graph(path: Path, precision: str | None) -> Path:
    """A tiny ONNX file carrying the precision label core.onnx_export writes (the stand-in never reads its nodes)."""
    import onnx
    from scope_optical_flow_tensorrt.core.artifacts.onnx_export import PRECISION_METADATA_KEY

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    if precision is not None:
        onnx.helper.set_model_props(model, {PRECISION_METADATA_KEY: precision})
    onnx.save(model, str(path))
    return path


def test_tensorrt11_standin_lacks_weak_typing_and_rejects_the_old_build(standin_builder) -> None:
    """The TensorRT 11 stand-in really lacks what TensorRT 11 removed: the old recipe (polygraphy's
    CreateConfig(fp16=True, precision_constraints="prefer"), per-layer pinning) fails against it."""
    from polygraphy.backend.trt import CreateConfig
    from polygraphy.exception import PolygraphyException

    record = standin_builder(11)
    trt = record["trt"]
    for name in ("FP16", "BF16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"):
        with pytest.raises(AttributeError):
            getattr(trt.BuilderFlag, name)
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(0)
    trt.OnnxParser(network, trt.Logger()).parse_from_file("g.onnx")
    layer = network.get_layer(1)
    with pytest.raises(AttributeError):
        layer.precision = trt.float32
    with pytest.raises(AttributeError):
        layer.set_output_type(0, trt.float32)
    with pytest.raises(AttributeError):
        builder.create_builder_config().int8_calibrator = None
    with pytest.raises(PolygraphyException, match="fp16"):
        CreateConfig(fp16=True)(builder, network)
    with pytest.raises(PolygraphyException, match="prefer_precision_constraints"):
        CreateConfig(precision_constraints="prefer")(builder, network)


def test_tensorrt11_needs_a_polygraphy_that_avoids_removed_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    import polygraphy
    from scope_optical_flow_tensorrt.core.artifacts import trt_build

    monkeypatch.setattr(polygraphy, "__version__", "0.49.27")  # reads the removed int8_calibrator / precision API
    trt_build.check_polygraphy("10.13.3")  # fine on TensorRT 10
    with pytest.raises(RuntimeError, match=r"polygraphy >= 0\.50\.3.*pip install -U polygraphy"):
        trt_build.check_polygraphy("11.4.0")
    monkeypatch.setattr(polygraphy, "__version__", "0.53.6")
    trt_build.check_polygraphy("11.4.0")


# -- TensorRT for RTX's runtime path (needs a GPU TensorRT for RTX supports: stand-in here) -------------------


class FakeRuntimeCache:
    def __init__(self, loaded: list[bytes]) -> None:
        self.loaded, self.blob = loaded, b""

    def deserialize(self, blob: bytes) -> bool:
        self.loaded.append(bytes(blob))
        self.blob = bytes(blob)
        return True

    def serialize(self) -> bytes:
        return self.blob + b"+kernels"


class FakeRuntimeConfig:
    def __init__(self, loaded: list[bytes]) -> None:
        self.loaded = loaded
        self.dynamic_shapes_kernel_specialization_strategy = "LAZY"
        self.cuda_graph_strategy = "DISABLED"
        self.cache: FakeRuntimeCache | None = None

    def create_runtime_cache(self) -> FakeRuntimeCache:
        return FakeRuntimeCache(self.loaded)

    def set_runtime_cache(self, cache: FakeRuntimeCache) -> None:
        self.cache = cache

    def get_runtime_cache(self) -> FakeRuntimeCache | None:
        return self.cache


def test_tensorrt_rtx_context_uses_eager_specialization_graphs_and_a_kept_runtime_cache(
    fake_trt_setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With TensorRT for RTX the context gets a runtime config (eager kernel specialization, so warm-up pays;
    whole-graph CUDA capture when cuda_graphs is on) and its runtime cache is kept beside the engine after the
    first call at a frame count, then loaded by the next process."""
    setup = fake_trt_setup
    loaded: list[bytes] = []
    configs: list[FakeRuntimeConfig] = []
    rtx = types.ModuleType("tensorrt_rtx")
    vars(rtx).update({name: value for name, value in vars(sys.modules["tensorrt"]).items() if not name.startswith("__")})
    rtx.__version__ = "1.99.0-fake"
    rtx.DynamicShapesKernelSpecializationStrategy = types.SimpleNamespace(LAZY="LAZY", EAGER="EAGER", NONE="NONE")
    rtx.CudaGraphStrategy = types.SimpleNamespace(DISABLED="DISABLED", WHOLE_GRAPH_CAPTURE="WHOLE_GRAPH_CAPTURE")

    def create_runtime_config(engine: FakeEngine) -> FakeRuntimeConfig:
        configs.append(FakeRuntimeConfig(loaded))
        return configs[-1]

    def create_execution_context(engine: FakeEngine, config: FakeRuntimeConfig | None = None) -> FakeContext:
        assert config is configs[-1], "the context must be created with the runtime config"
        engine.contexts.append(FakeContext(engine))
        return engine.contexts[-1]

    monkeypatch.setattr(FakeEngine, "create_runtime_config", create_runtime_config, raising=False)
    monkeypatch.setattr(FakeEngine, "create_execution_context", create_execution_context)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    target = BuildTarget("Fake RTX 4090", "8.9", "1.99.0-fake", 1 << 30, "tensorrt_rtx", ("8.9",))
    monkeypatch.setattr(tensorrt_backend, "build_target", lambda device: target)
    synchronized: list[int] = []
    stream = types.SimpleNamespace(cuda_stream=STREAM_HANDLE, synchronize=lambda: synchronized.append(1))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)

    backend = create_backend("tensorrt", setup.config, None)
    assert configs[0].dynamic_shapes_kernel_specialization_strategy == "EAGER"
    assert configs[0].cuda_graph_strategy == "WHOLE_GRAPH_CAPTURE" and loaded == []
    frames = torch.rand(3, 3, SIZE, SIZE)
    backend.flow(frames)
    backend.flow(frames)  # same frame count: nothing saved again, no second synchronization
    cache_file = backend.engine_path.with_suffix(".rtcache")
    assert cache_file.read_bytes() == b"+kernels" and len(synchronized) == 1
    sidecar = json.loads(cache_file.with_name(cache_file.name + ".json").read_text())
    assert sidecar["key"]["engine_file"] == backend.engine_path.name and sidecar["key"]["gpu_name"] == "Fake RTX 4090"

    create_backend("tensorrt", setup.config, None)  # the next process loads it
    assert loaded == [b"+kernels"]
    cache_file.write_bytes(b"corrupt")  # a damaged cache is ignored (not handed to TensorRT), the engine still loads
    create_backend("tensorrt", setup.config, None)
    assert loaded == [b"+kernels"]
    no_graphs = create_backend("tensorrt", dataclasses.replace(setup.config, cuda_graphs=False), None)
    assert configs[-1].cuda_graph_strategy == "DISABLED" and no_graphs.engine_path == backend.engine_path
