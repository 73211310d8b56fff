"""ONNX export of RAFT Small: checker, onnxruntime parity with the PyTorch backend, and a static check that
the graph stays within what TensorRT 10's ONNX parser supports. GPU/TensorRT tests skip without them."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.engine_manager import export_onnx_cached, prebuild_engine
from scope_optical_flow_tensorrt.core.onnx_export import ONNX_OPSET, check_onnx, export_raft_onnx
from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.weights import load_raft_small

from conftest import COMPUTE_SIZE, make_frames

UPDATES = 2
FLOW_TOLERANCE = 1e-3  # pixels; measured ~1.5e-5 (fp32, CPU)
IMAGE_TOLERANCE = 1e-3  # on the [-1, 1] scale; measured ~1e-5

# TensorRT 10 ONNX parser: operators marked supported ("Y") in onnx-tensorrt's operator matrix, release 10.1
# (TensorRT 10.0 supports opsets 9 to 20). Source:
# https://github.com/onnx/onnx-tensorrt/blob/96e781103cfc4adf4a6bb557e94bac8e693f6f4c/docs/operators.md
TENSORRT10_OPSETS = range(9, 21)
TENSORRT10_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid
HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Same source, "Restrictions" column. GridSample: 4-D input (TensorRT's grid sample layer: linear/nearest/cubic
# interpolation, zeros/border/reflection padding). Resize: these modes only, no antialiasing, "stretch" policy.
GRID_SAMPLE_MODES = {"bilinear", "linear"}  # "linear" is GridSample-20's name for bilinear
GRID_SAMPLE_PADDING = {"zeros", "border", "reflection"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# Operators whose `axes` TensorRT requires as an initializer / constant.
CONSTANT_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_file(models_dir: Path) -> Path:
    return export_onnx_cached(COMPUTE_SIZE, COMPUTE_SIZE, num_flow_updates=UPDATES, weights=None, models_dir=models_dir)


@pytest.fixture(scope="module")
def graph(onnx_file: Path) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(onnx.load(str(onnx_file)))


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    values = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}


def constant_names(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    names |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return names


def test_export_is_cached_with_seed_name_and_passes_checker(onnx_file: Path, models_dir: Path) -> None:
    assert onnx_file.parent == models_dir
    assert onnx_file.name.startswith(f"raft_small_{COMPUTE_SIZE}x{COMPUTE_SIZE}") and onnx_file.suffix == ".onnx"
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model, full_check=True)
    check_onnx(onnx_file, COMPUTE_SIZE, COMPUTE_SIZE)
    (frames,), (flow,) = model.graph.input, model.graph.output
    assert (frames.name, flow.name) == ("frames", "flow")
    dims = frames.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, COMPUTE_SIZE, COMPUTE_SIZE]
    assert frames.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert flow.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # A second request reuses the file (same path, not rewritten).
    mtime = onnx_file.stat().st_mtime_ns
    again = export_onnx_cached(COMPUTE_SIZE, COMPUTE_SIZE, num_flow_updates=UPDATES, weights=None, models_dir=models_dir)
    assert again == onnx_file and onnx_file.stat().st_mtime_ns == mtime


def test_operators_are_supported_by_tensorrt10(graph: onnx.ModelProto) -> None:
    opsets = {entry.domain: entry.version for entry in graph.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == ONNX_OPSET
    assert ONNX_OPSET in TENSORRT10_OPSETS and ONNX_OPSET >= 16  # GridSample needs opset 16
    used = {node.op_type for node in graph.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node), "custom-domain ops need plugins"
    unsupported = sorted(used - TENSORRT10_SUPPORTED_OPS)
    assert not unsupported, f"operators TensorRT 10's ONNX parser does not support: {unsupported}"
    assert {"GridSample", "Resize", "MatMul", "Conv"} <= used  # the graph really is RAFT


def test_gridsample_and_resize_attributes_within_tensorrt_limits(graph: onnx.ModelProto) -> None:
    ranks = {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in [*graph.graph.value_info, *graph.graph.input, *graph.graph.output]
        if value.type.tensor_type.HasField("shape")
    }
    grid_samples = [node for node in graph.graph.node if node.op_type == "GridSample"]
    assert len(grid_samples) == 4 * UPDATES  # 4 pyramid levels per flow update
    for node in grid_samples:
        attrs = attributes(node)
        assert attrs.get("mode", "bilinear") in GRID_SAMPLE_MODES
        assert attrs.get("padding_mode", "zeros") in GRID_SAMPLE_PADDING
        assert attrs.get("align_corners") == 1  # torchvision's RAFT samples with align_corners=True
        assert ranks.get(node.input[0]) == 4 and ranks.get(node.input[1]) == 4
    resizes = [node for node in graph.graph.node if node.op_type == "Resize"]
    assert len(resizes) == 1  # the final 8x flow upsampling
    for node in resizes:
        attrs = attributes(node)
        assert attrs.get("mode", "nearest") in RESIZE_MODES
        assert attrs.get("coordinate_transformation_mode", "half_pixel") in RESIZE_COORDINATE_MODES
        assert attrs.get("nearest_mode", "round_prefer_floor") in RESIZE_NEAREST_MODES
        assert attrs.get("antialias", 0) == 0
        assert attrs.get("keep_aspect_ratio_policy", "stretch") == "stretch"
        assert attrs.get("mode") == "linear" and attrs.get("coordinate_transformation_mode") == "align_corners"


def test_axes_inputs_are_constants(graph: onnx.ModelProto) -> None:
    constants = constant_names(graph)
    for node in graph.graph.node:
        position = CONSTANT_AXES_INPUT.get(node.op_type)
        if position is not None and len(node.input) > position and node.input[position]:
            assert node.input[position] in constants, f"{node.op_type} {node.name}: axes must be constant for TensorRT"


def test_no_double_or_int64_float_math(graph: onnx.ModelProto) -> None:
    doubles = [init.name for init in graph.graph.initializer if init.data_type == onnx.TensorProto.DOUBLE]
    assert not doubles
    weights = [numpy_helper.to_array(init) for init in graph.graph.initializer if init.dims and len(init.dims) == 4]
    assert weights and all(w.dtype.name == "float32" for w in weights)  # fp32 graph; TensorRT applies fp16


def test_onnxruntime_backend_matches_torch_backend_through_preprocessor(
    models_dir: Path, onnx_file: Path, caplog: pytest.LogCaptureFixture, record_property
) -> None:
    frames = make_frames(num_frames=5, height=COMPUTE_SIZE, width=COMPUTE_SIZE, seed=3)
    options = dict(height=COMPUTE_SIZE, width=COMPUTE_SIZE, device="cpu", num_flow_updates=UPDATES, weights=None,
                   models_dir=models_dir, max_batch_pairs=3)  # 4 pairs: windows of 3 and 1 (dynamic frame axis)
    reference = OpticalFlowTensorRTPreprocessor(backend="torch", **options)
    candidate = OpticalFlowTensorRTPreprocessor(backend="onnxruntime", **options)
    with caplog.at_level(logging.INFO, logger="scope_optical_flow_tensorrt"):
        flow_ref = reference.compute_flow(frames)
        flow_ort = candidate.compute_flow(frames)
    assert candidate.load().onnx_path == onnx_file  # the very file TensorRT would build from, not a re-export
    assert candidate.weights_info == reference.weights_info
    assert flow_ort.shape == flow_ref.shape == (1, 5, 2, COMPUTE_SIZE, COMPUTE_SIZE)
    assert flow_ref[:, 1:].abs().max() > 0.1  # real motion, not all zeros
    flow_diff = (flow_ort - flow_ref).abs().max().item()
    record_property("onnxruntime_vs_torch_flow_max_abs_px", flow_diff)
    print(f"onnxruntime vs torch: max abs flow difference {flow_diff:.3g} px")
    assert flow_diff < FLOW_TOLERANCE

    reference.reset()
    candidate.reset()
    image_ref, image_ort = reference(frames), candidate(frames)
    image_diff = (image_ort - image_ref).abs().max().item()
    record_property("onnxruntime_vs_torch_image_max_abs", image_diff)
    assert image_ort.shape == image_ref.shape == (1, 3, 5, COMPUTE_SIZE, COMPUTE_SIZE)
    assert image_diff < IMAGE_TOLERANCE


def test_torchscript_exporter_fallback_matches_model(tmp_path: Path) -> None:
    """The exporter used where onnxscript is missing gives the same numbers, for any frame count."""
    onnxruntime = pytest.importorskip("onnxruntime")
    raft, _ = load_raft_small(None)
    model = RaftSequenceFlow(raft, UPDATES).eval()
    path = tmp_path / "raft.onnx"
    assert export_raft_onnx(model, path, COMPUTE_SIZE, COMPUTE_SIZE, exporter="torchscript") == "torchscript"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    for num_frames in (2, 4):
        frames = torch.rand(num_frames, 3, COMPUTE_SIZE, COMPUTE_SIZE, generator=torch.Generator().manual_seed(num_frames))
        with torch.no_grad():
            expected = model(frames)
        (result,) = session.run(["flow"], {"frames": frames.numpy()})
        assert result.shape == (num_frames - 1, 2, COMPUTE_SIZE, COMPUTE_SIZE)
        assert (torch.from_numpy(result) - expected).abs().max().item() < FLOW_TOLERANCE


def test_export_rejects_half_precision_module_and_bad_exporter(tmp_path: Path) -> None:
    raft, _ = load_raft_small(None)
    with pytest.raises(ValueError, match="fp32"):
        export_raft_onnx(RaftSequenceFlow(raft, 1, compute_dtype=torch.float16), tmp_path / "x.onnx", 128, 128)
    with pytest.raises(ValueError, match="exporter"):
        export_raft_onnx(RaftSequenceFlow(raft, 1), tmp_path / "x.onnx", 128, 128, exporter="tflite")
    with pytest.raises(ValueError, match="multiple of 8"):
        export_onnx_cached(130, 128, num_flow_updates=1, weights=None, models_dir=tmp_path)
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.gpu
def test_onnxruntime_backend_on_cuda_device_matches_torch(models_dir: Path) -> None:
    """CUDA tensors in and out (CUDA execution provider if onnxruntime has one, else its CPU provider)."""
    frames = make_frames(num_frames=4, height=COMPUTE_SIZE, width=COMPUTE_SIZE, seed=5)
    options = dict(height=COMPUTE_SIZE, width=COMPUTE_SIZE, device="cuda", fp16=False, num_flow_updates=UPDATES,
                   weights=None, models_dir=models_dir, max_batch_pairs=2)
    reference = OpticalFlowTensorRTPreprocessor(backend="torch", torch_compile=False, cuda_graphs=False, **options)
    flow_ref = reference.compute_flow(frames)
    flow_ort = OpticalFlowTensorRTPreprocessor(backend="onnxruntime", **options).compute_flow(frames)
    assert flow_ort.device.type == "cuda"
    # cuDNN runs fp32 convolutions with TF32 by default, so the CUDA reference is a little less exact
    assert (flow_ort - flow_ref).abs().max().item() < 0.02


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_backend_matches_torch_backend(models_dir: Path, fp16: bool) -> None:
    """TensorRT (built through prebuild_engine, then found by the preprocessor) against fp32 PyTorch."""
    path = prebuild_engine(COMPUTE_SIZE, COMPUTE_SIZE, fp16=fp16, num_flow_updates=UPDATES, max_pairs=3,
                           weights=None, models_dir=models_dir)
    assert path.is_file() and path.suffix == ".trt"
    frames = make_frames(num_frames=6, height=COMPUTE_SIZE, width=COMPUTE_SIZE, seed=7)
    options = dict(height=COMPUTE_SIZE, width=COMPUTE_SIZE, device="cuda", num_flow_updates=UPDATES, weights=None,
                   models_dir=models_dir, max_batch_pairs=3)
    flow_ref = OpticalFlowTensorRTPreprocessor(backend="torch", fp16=False, **options).compute_flow(frames)
    trt = OpticalFlowTensorRTPreprocessor(backend="tensorrt", fp16=fp16, **options)
    flow_trt = trt.compute_flow(frames)
    assert trt.load().engine_path == path  # prebuilt engine reused, not rebuilt
    assert trt.weights_info is not None and trt.weights_info.identity == "random-seed0"
    difference = (flow_trt - flow_ref).abs()
    print(f"tensorrt fp16={fp16} vs torch fp32: flow difference max {difference.max().item():.3g} px, "
          f"mean {difference.mean().item():.3g} px")
    if fp16:  # same bar as the PyTorch fp16 path in test_gpu.py
        assert difference.mean() < 0.02 * flow_ref.abs().mean() + 0.05
    else:  # torch's reference convolutions may use TF32 (cuDNN default); the engine is built without TF32
        assert difference.max().item() < 0.05
