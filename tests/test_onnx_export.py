"""ONNX export of RAFT Small, fp32 and fp16 graphs: checker, onnxruntime parity with PyTorch, the fp16 graph's
tensor types (correlation and lookup fp32, convolutions fp16), and a static check that both graphs stay within
what TensorRT's ONNX parser supports, per operator and type. GPU/TensorRT tests skip without them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy
import onnx
import pytest
import torch
from conftest import COMPUTE_SIZE, make_frames
from onnx import numpy_helper
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.artifacts import engine_manager
from scope_optical_flow_tensorrt.core.artifacts.engine_manager import export_onnx_cached, prebuild_engine
from scope_optical_flow_tensorrt.core.artifacts.onnx_export import (
    ONNX_OPSET,
    check_onnx,
    conv_weight_types,
    export_raft_onnx,
    read_precision,
)
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.model.weights import load_raft_small

UPDATES = 2
FLOW_TOLERANCE = 1e-3  # pixels; measured ~1.5e-5 (fp32, CPU)
IMAGE_TOLERANCE = 1e-3  # on the [-1, 1] scale; measured ~1e-5
FP16_FLOW_TOLERANCE = 0.05  # pixels, fp16 graph against PyTorch's fp16 path; measured ~1.2e-2 (CPU)
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

# TensorRT 10 ONNX parser: operators marked supported ("Y") in onnx-tensorrt's operator matrix, release 10.1
# (TensorRT 10.0 supports opsets 9 to 20; TensorRT 11's parser from 9 to a newer maximum, 25 in 11.5, per
# NVIDIA's "ONNX Opset Guide" and the 11.5 release notes, so 9 to 20 suits both). Source:
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
# Same source, "Supported Types" column, for the operators our graphs use (a strongly typed network keeps every
# tensor's ONNX type, so each node's types must be ones TensorRT implements). ConstantOfShape's row reads "INF64",
# a typo for INT64.
_T = {"FP32": FLOAT, "FP16": FLOAT16, "BF16": onnx.TensorProto.BFLOAT16, "INT32": onnx.TensorProto.INT32,
      "INT64": onnx.TensorProto.INT64, "BOOL": onnx.TensorProto.BOOL, "UINT8": onnx.TensorProto.UINT8}
_FLOATS, _NUMBERS, _ANY = "FP32 FP16 BF16", "FP32 FP16 BF16 INT32 INT64", "FP32 FP16 BF16 INT32 INT64 BOOL"
TENSORRT10_SUPPORTED_TYPES = {op: {_T[name] for name in names.split()} for op, names in {
    "Add": _NUMBERS, "AveragePool": _FLOATS, "Cast": _ANY + " UINT8", "Concat": _ANY, "Constant": _ANY,
    "ConstantOfShape": _ANY, "Conv": _FLOATS, "Div": _NUMBERS, "Equal": _NUMBERS, "Expand": _ANY,
    "Gather": _ANY, "GridSample": "FP32 FP16", "Identity": _ANY, "InstanceNormalization": _FLOATS,
    "MatMul": _FLOATS, "Mul": _NUMBERS, "Pad": _NUMBERS, "Pow": _FLOATS, "Range": _NUMBERS, "Reciprocal": _FLOATS,
    "Relu": _NUMBERS, "Reshape": _ANY, "Resize": _FLOATS, "Shape": _ANY, "Sigmoid": _FLOATS, "Slice": _ANY,
    "Split": _ANY, "Squeeze": _ANY, "Sub": _NUMBERS, "Tanh": _FLOATS, "Transpose": _ANY, "Unsqueeze": _ANY,
    "Where": _ANY,
}.items()}
# The listed types are those of the computed data: Equal's output is BOOL by definition, and Resize's inputs
# after the first (roi, scales, sizes) are parameters.
EXEMPT_OUTPUTS = {"Equal"}
DATA_INPUTS = {"Resize": 1}
# Same source, "Restrictions" column. GridSample: 4-D input (TensorRT's grid sample layer: linear/nearest/cubic
# interpolation, zeros/border/reflection padding). Resize: these modes only, no antialiasing, "stretch" policy.
# Pad (the update block's padded channels), Slice, Squeeze, Unsqueeze: `axes` a constant.
GRID_SAMPLE_MODES = {"bilinear", "linear"}  # "linear" is GridSample-20's name for bilinear
GRID_SAMPLE_PADDING = {"zeros", "border", "reflection"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# Operators whose `axes` TensorRT requires as an initializer / constant.
CONSTANT_AXES_INPUT = {"Pad": 3, "Slice": 3, "Squeeze": 1, "Unsqueeze": 1}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_file(models_dir: Path) -> Path:
    return export_onnx_cached(COMPUTE_SIZE, COMPUTE_SIZE, num_flow_updates=UPDATES, weights=None, models_dir=models_dir)


@pytest.fixture(scope="module")
def onnx_file_fp16(models_dir: Path) -> Path:
    return export_onnx_cached(COMPUTE_SIZE, COMPUTE_SIZE, num_flow_updates=UPDATES, weights=None,
                              models_dir=models_dir, fp16=True)


@pytest.fixture(scope="module")
def graph(onnx_file: Path) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(onnx.load(str(onnx_file)))


@pytest.fixture(scope="module")
def graph_fp16(onnx_file_fp16: Path) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(onnx.load(str(onnx_file_fp16)), strict_mode=True)


@pytest.fixture(scope="module")
def graph_fp16_torchscript(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    """The fp16 graph from the TorchScript exporter (used where onnxscript is missing): other operators, more casts."""
    raft, _ = load_raft_small(None)
    model = RaftSequenceFlow(raft, UPDATES, compute_dtype=torch.float16, corr_dtype=torch.float32)
    path = tmp_path_factory.mktemp("torchscript") / "raft_fp16.onnx"
    export_raft_onnx(model, path, COMPUTE_SIZE, COMPUTE_SIZE, exporter="torchscript")
    return onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)


@pytest.fixture(scope="module", params=["fp32", "fp16", "fp16-torchscript"])
def any_graph(request: pytest.FixtureRequest) -> onnx.ModelProto:
    names = {"fp32": "graph", "fp16": "graph_fp16", "fp16-torchscript": "graph_fp16_torchscript"}
    return request.getfixturevalue(names[request.param])


@pytest.fixture(scope="module", params=["exporter-default", "torchscript"])
def any_fp16_graph(request: pytest.FixtureRequest) -> onnx.ModelProto:
    return request.getfixturevalue("graph_fp16" if request.param == "exporter-default" else "graph_fp16_torchscript")


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every named tensor (inputs, outputs, inferred intermediates, constants)."""
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


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


def test_operators_are_supported_by_tensorrt(any_graph: onnx.ModelProto) -> None:
    graph = any_graph
    opsets = {entry.domain: entry.version for entry in graph.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == ONNX_OPSET
    assert ONNX_OPSET in TENSORRT10_OPSETS and ONNX_OPSET >= 16  # GridSample needs opset 16
    used = {node.op_type for node in graph.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node), "custom-domain ops need plugins"
    unsupported = sorted(used - TENSORRT10_SUPPORTED_OPS)
    assert not unsupported, f"operators TensorRT's ONNX parser does not support: {unsupported}"
    assert {"GridSample", "Resize", "MatMul", "Conv"} <= used  # the graph really is RAFT


def test_every_node_uses_types_tensorrt_implements(any_graph: onnx.ModelProto) -> None:
    """Strongly typed, TensorRT keeps each tensor's type: every node's inputs and outputs must be of a type the
    parser supports for that operator (e.g. GridSample: FP32 or FP16, MatMul/Conv: floating point)."""
    types = tensor_types(any_graph)
    missing = sorted({node.op_type for node in any_graph.graph.node} - set(TENSORRT10_SUPPORTED_TYPES))
    assert not missing, f"add these operators' rows from onnx-tensorrt's operators.md: {missing}"
    problems = []
    for node in any_graph.graph.node:
        supported = TENSORRT10_SUPPORTED_TYPES[node.op_type]
        ends = [("input", name) for name in node.input[: DATA_INPUTS.get(node.op_type)]]
        ends += [] if node.op_type in EXEMPT_OUTPUTS else [("output", name) for name in node.output]
        for end, name in ends:
            if not name:
                continue
            assert name in types, f"{node.op_type} {node.name}: no type inferred for {name}"
            if types[name] not in supported:
                type_name = onnx.TensorProto.DataType.Name(types[name])
                problems.append(f"{node.op_type} {node.name} {end} {name}: {type_name}")
    assert not problems, "types TensorRT does not implement for these operators:\n" + "\n".join(problems)


def test_fp16_graph_keeps_correlation_and_lookup_in_fp32(any_fp16_graph: onnx.ModelProto) -> None:
    """Walk the fp16 graph's tensor types: convolutions (encoders, update block, heads) run in fp16; the
    correlation MatMuls (one per pyramid level, the second operand's features pooled in fp32) and everything
    after them (GridSample lookup) are fp32 until an explicit Cast to fp16 hands the looked-up values to the
    update block; the frames input and flow output stay fp32."""
    types = tensor_types(any_fp16_graph)
    nodes = list(any_fp16_graph.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def by_type(op_type: str) -> list[onnx.NodeProto]:
        return [node for node in nodes if node.op_type == op_type]

    assert types["frames"] == types["flow"] == FLOAT

    for node in by_type("Conv") + by_type("InstanceNormalization"):
        assert {types[name] for name in node.input if name} | {types[node.output[0]]} == {FLOAT16}, node.name
    assert len(by_type("Conv")) > 50  # all of RAFT Small's convolutions, none of them fp32

    matmuls = by_type("MatMul")
    assert len(matmuls) == 4  # the correlation pyramid's levels
    for node in matmuls + by_type("AveragePool") + by_type("GridSample") + by_type("Resize"):
        float_io = [name for name in [*node.input, *node.output] if name and types[name] in (FLOAT, FLOAT16)]
        assert {types[name] for name in float_io} == {FLOAT}, f"{node.op_type} {node.name} is not fp32"

    # Its operands come from the fp16 feature maps through explicit Casts to fp32.
    producers = {out: node for node in nodes for out in node.output}

    def upstream_cast(name: str) -> onnx.NodeProto:
        node = producers[name]
        while node.op_type != "Cast":
            node = producers[next(i for i in node.input if i and types[i] in (FLOAT, FLOAT16))]
        return node

    for operand in [name for matmul in matmuls for name in matmul.input]:
        cast = upstream_cast(operand)
        assert attributes(cast)["to"] == FLOAT and types[cast.input[0]] == FLOAT16

    # Forward from the correlation: every float tensor reached is fp32, every GridSample is reached, and the
    # walk leaves only through Casts to fp16 (never straight into a Conv).
    seen, frontier, exits, lookups = set(), [name for matmul in matmuls for name in matmul.output], [], 0
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        if types.get(name) == FLOAT16:
            raise AssertionError(f"fp16 tensor {name} inside the correlation/lookup subgraph")
        for node in consumers.get(name, []):
            if node.op_type == "Cast":
                exits.append(node)
                continue
            assert node.op_type != "Conv", f"correlation values reach Conv {node.name} without a Cast"
            lookups += node.op_type == "GridSample"
            frontier.extend(out for out in node.output if types.get(out) in (FLOAT, FLOAT16))
    assert lookups == 4 * UPDATES  # the 4 pyramid levels, looked up in each flow update
    assert exits and all(attributes(cast)["to"] == FLOAT16 for cast in exits)


def test_gridsample_and_resize_attributes_within_tensorrt_limits(any_graph: onnx.ModelProto) -> None:
    graph = any_graph
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


def test_axes_inputs_are_constants(any_graph: onnx.ModelProto) -> None:
    constants = constant_names(any_graph)
    for node in any_graph.graph.node:
        position = CONSTANT_AXES_INPUT.get(node.op_type)
        if position is not None and len(node.input) > position and node.input[position]:
            assert node.input[position] in constants, f"{node.op_type} {node.name}: axes must be constant for TensorRT"


def test_no_double_math_and_weights_of_the_graph_precision(graph: onnx.ModelProto, graph_fp16: onnx.ModelProto) -> None:
    for model in (graph, graph_fp16):
        doubles = [init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.DOUBLE]
        assert not doubles
    assert conv_weight_types(graph) == {FLOAT} and conv_weight_types(graph_fp16) == {FLOAT16}
    weights = [numpy_helper.to_array(init) for init in graph.graph.initializer if init.dims and len(init.dims) == 4]
    assert weights and all(w.dtype.name == "float32" for w in weights)  # the fp32 graph is fp32 throughout


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
    # fp16=True (the default) on the CPU: the fp32 graph, the very file TensorRT would build from, not a re-export
    assert candidate.fp16 and candidate.load().onnx_path == onnx_file and not candidate.load().fp16
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


def test_fp16_graph_matches_torch_fp16_path(onnx_file_fp16: Path, record_property) -> None:
    """The fp16 graph through onnxruntime's CPU provider against RaftSequenceFlow's own fp16 path (CPU).
    onnxruntime's CPU provider computes float16 operators in float32 between casts, so
    both sit within fp16 rounding of each other, not bit-exact."""
    onnxruntime = pytest.importorskip("onnxruntime")
    raft, _ = load_raft_small(None)
    model = RaftSequenceFlow(raft, UPDATES, compute_dtype=torch.float16, corr_dtype=torch.float32).eval()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(onnx_file_fp16), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    assert read_precision(onnx_file_fp16) == "fp16"
    check_onnx(onnx_file_fp16, COMPUTE_SIZE, COMPUTE_SIZE, "fp16")  # recorded precision and weight types agree
    frames = make_frames(num_frames=3, height=COMPUTE_SIZE, width=COMPUTE_SIZE, seed=3)
    frames = frames.permute(0, 3, 1, 2).contiguous()  # [T, H, W, 3] -> [T, 3, H, W]
    with torch.no_grad():  # PyTorch's fp16 convolutions are slow on the CPU: one small call
        expected = model(frames)
    (result,) = session.run(["flow"], {"frames": frames.numpy()})
    assert result.dtype == numpy.float32 and result.shape == (2, 2, COMPUTE_SIZE, COMPUTE_SIZE)
    assert expected.abs().max() > 0.1  # real motion, not all zeros
    worst = (torch.from_numpy(result) - expected).abs().max().item()
    record_property("onnx_fp16_vs_torch_fp16_flow_max_abs_px", worst)
    print(f"fp16 graph (onnxruntime CPU) vs torch fp16: max abs flow difference {worst:.3g} px")
    assert worst < FP16_FLOW_TOLERANCE


def test_export_rejects_unsupported_precision_and_bad_exporter(tmp_path: Path) -> None:
    raft, _ = load_raft_small(None)
    with pytest.raises(ValueError, match="corr_dtype float32"):  # the correlation stays fp32 in every graph
        export_raft_onnx(RaftSequenceFlow(raft, 1, compute_dtype=torch.float16, corr_dtype=torch.float16),
                         tmp_path / "x.onnx", 128, 128)
    with pytest.raises(ValueError, match="float32 or float16"):
        export_raft_onnx(RaftSequenceFlow(raft, 1, compute_dtype=torch.bfloat16), tmp_path / "x.onnx", 128, 128)
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
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_fp16_graph_exports_here_and_matches_cuda_fp16_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: str
) -> None:
    """On the GPU machine's torch: the engine cache exports the fp16 graph with each exporter available (the
    TorchScript one traces on CUDA there), and onnxruntime's run of it (CPU provider) matches RaftSequenceFlow's
    fp16 path on CUDA (the arithmetic an fp16 engine is built to reproduce)."""
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(engine_manager, "resolve_exporter", lambda name="auto": exporter)
    path = export_onnx_cached(COMPUTE_SIZE, COMPUTE_SIZE, num_flow_updates=UPDATES, weights=None,
                              models_dir=tmp_path, fp16=True)
    assert json.loads(path.with_name(path.name + ".json").read_text())["info"]["exporter"] == exporter
    check_onnx(path, COMPUTE_SIZE, COMPUTE_SIZE, "fp16")
    model = RaftSequenceFlow(load_raft_small(None)[0], UPDATES, compute_dtype=torch.float16).eval()
    frames = make_frames(num_frames=4, height=COMPUTE_SIZE, width=COMPUTE_SIZE, seed=11).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = model.cuda()(frames.cuda()).float().cpu()
        reference = RaftSequenceFlow(load_raft_small(None)[0], UPDATES).eval()(frames)  # fp32, CPU
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    (result,) = session.run(["flow"], {"frames": frames.contiguous().numpy()})
    difference = (torch.from_numpy(result) - expected).abs()
    print(f"{exporter}: fp16 graph (onnxruntime CPU) vs torch fp16 on CUDA: max {difference.max().item():.3g} px, "
          f"mean {difference.mean().item():.3g} px; torch CUDA fp16 vs CPU fp32 max "
          f"{(expected - reference).abs().max().item():.3g} px")
    assert difference.mean() < 0.02 * reference.abs().mean() + 0.05  # the fp16 bar of test_gpu.py
    assert difference.max() < 0.5


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
