"""Export :class:`RaftSequenceFlow` to ONNX: the graph that onnxruntime runs and TensorRT builds engines from.

The graph takes ``frames [T, 3, H, W]`` float32 in ``[0, 1]`` (T dynamic, at least 2; H, W fixed per file) and
returns ``flow [T - 1, 2, H, W]`` float32 in pixels, exactly like ``RaftSequenceFlow.forward``. The engine
manager exports the model with the regrouped update block (:class:`.fast_update.FastUpdateBlock`: padded
channels, fused gates, the context's gate terms computed once per call), so TensorRT gets its smaller
convolutions too, and with the model's correlation pyramid (one MatMul per level, with pooled features).

Precision lives in the graph, because TensorRT builds strongly typed networks (TensorRT 11 has nothing
else; 10 has the same creation flag): every tensor keeps the type the graph gives it. Two graphs exist:

- ``"fp32"``: everything in float32;
- ``"fp16"``: the model's own half-precision path (``compute_dtype=float16``, ``corr_dtype=float32``)
  exported as is: encoders, update block and heads in float16; the correlation volume (MatMul), its
  pyramid (AveragePool), the lookup (GridSample) and the coordinates in float32, with explicit ``Cast``
  nodes where the two meet; the ``frames`` input and ``flow`` output stay float32, so the engine's
  bindings are the same for both graphs. The precision is also recorded in the file's metadata
  (:data:`PRECISION_METADATA_KEY`).

Opset 18: GridSample needs opset >= 16; 18 is the native opset of torch's ``torch.export``-based exporter (no
version conversion) and within the range of TensorRT 10 (opsets 9 to 20) and 11 (9 to a newer maximum). At
opset 18 GridSample is still GridSample-16 (``mode="bilinear"``), which TensorRT 10 and 11 parse.

Exporter: the ``torch.export``-based exporter (``dynamo=True``) when ``onnxscript`` imports, else the
TorchScript exporter (``dynamo=False``); both exist in torch 2.4 up to at least 2.14 and give graphs that
match PyTorch to ~1e-5 pixels. Graphs are checked with ``onnx.checker`` and constant-folded with polygraphy
when ``onnx_graphsurgeon`` (which polygraphy's folding needs) is installed. Both exporters' graphs build with
TensorRT for RTX 1.7 since the correlation's 1/sqrt(C) scale is applied after f1's transpose (applied before
it, Myelin failed on the pyramid's MatMuls in both graphs; see benchmarks/NOTES.md), so the faster
``torch.export`` exporter stays the default.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..common.log import logger
from ..model.raft import RaftSequenceFlow

if TYPE_CHECKING:
    import onnx

ONNX_OPSET = 18
INPUT_NAME = "frames"
OUTPUT_NAME = "flow"
EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "torchscript")
PRECISION_METADATA_KEY = "scope_optical_flow.precision"
# Goes into the ONNX cache key: graphs exported by an older recipe are re-exported, never reused. v2: precision
# in the graph (v1: fp32 only, precision left to TensorRT's builder flags); v3: the update block regrouped
# (core/fast_update.py: padded channels, fused gates, the context's gate terms once per call) and the correlation
# pyramid from pooled features (one MatMul per level).
EXPORT_RECIPE = "typed-graph-v3"
_DTYPE_PRECISION = {torch.float32: "fp32", torch.float16: "fp16"}
# Frames in the example input: 3 rather than 2 keeps torch.export from reading the axis as a special value.
EXAMPLE_FRAMES = 3


def resolve_exporter(exporter: str = "auto") -> str:
    """``"auto"`` -> ``"dynamo"`` when ``onnxscript`` is installed (torch's exporter needs it), else ``"torchscript"``."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is not supported; use one of {', '.join(EXPORTERS)}.")
    if exporter != "auto":
        return exporter
    return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"


def graph_precision(model: RaftSequenceFlow) -> str:
    """``"fp32"`` or ``"fp16"``: the graph ``model`` exports to; ``ValueError`` for any other precision mix."""
    precision = _DTYPE_PRECISION.get(model.compute_dtype)
    if precision is None or model.corr_dtype != torch.float32:
        raise ValueError(
            f"ONNX export needs compute_dtype float32 or float16 with corr_dtype float32 (the correlation stays "
            f"fp32 in both graphs), got compute_dtype={model.compute_dtype}, corr_dtype={model.corr_dtype}."
        )
    return precision


def export_raft_onnx(
    model: RaftSequenceFlow,
    path: str | os.PathLike[str],
    height: int,
    width: int,
    *,
    exporter: str = "auto",
    opset: int = ONNX_OPSET,
) -> str:
    """Write ``model`` (CPU or GPU) as a checked ONNX file at ``path``; returns the exporter used.

    ``model.compute_dtype`` picks the graph: float32 gives the fp32 graph, float16 the fp16 one (its
    ``corr_dtype`` must be float32; see the module docstring). The file is written in place (callers wanting
    atomicity pass a temporary path and rename it).
    """
    precision = graph_precision(model)
    used = resolve_exporter(exporter)
    device = next(model.parameters()).device
    # a private generator: exporting must not move the host's random stream
    example = torch.rand(EXAMPLE_FRAMES, 3, height, width, device=device,
                         generator=torch.Generator(device=device).manual_seed(0))
    target = Path(path)
    model = model.eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Both exporters warn about things that do not apply here (TorchScript exporter deprecation; RAFT's
        # InstanceNorm has no running stats, so "train=True" export is the same computation).
        warnings.simplefilter("ignore")
        if used == "dynamo":
            num_frames = torch.export.Dim("num_frames", min=2)
            torch.onnx.export(
                model,
                (example,),
                str(target),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"frames": {0: num_frames}},
                external_data=False,
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                (example,),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "num_frames"}, OUTPUT_NAME: {0: "num_pairs"}},
                do_constant_folding=True,
            )
    fold_constants(target)
    _set_metadata(target, {PRECISION_METADATA_KEY: precision})
    check_onnx(target, height, width, precision)
    return used


def fold_constants(path: Path) -> bool:
    """Constant-fold and clean up the graph in place with polygraphy; ``False`` if ``onnx_graphsurgeon`` is absent."""
    if importlib.util.find_spec("onnx_graphsurgeon") is None or importlib.util.find_spec("onnxruntime") is None:
        logger.debug("onnx_graphsurgeon or onnxruntime missing: ONNX graph left unfolded (TensorRT folds it too)")
        return False
    import onnx
    from polygraphy.backend.onnx import fold_constants as polygraphy_fold_constants
    from polygraphy.logger import G_LOGGER

    model = onnx.load(str(path))
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        folded = polygraphy_fold_constants(model, num_passes=2, error_ok=True)
    onnx.save(folded, str(path))
    return True


def _set_metadata(path: Path, entries: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {prop.key: prop.value for prop in model.metadata_props}
    onnx.helper.set_model_props(model, {**existing, **entries})
    onnx.save(model, str(path))


def read_precision(path: str | os.PathLike[str]) -> str | None:
    """The precision recorded in an exported graph's metadata (``None`` for graphs without it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}.get(PRECISION_METADATA_KEY)


def check_onnx(path: str | os.PathLike[str], height: int, width: int, precision: str | None = None) -> None:
    """``onnx.checker`` (full, with shape inference) plus the input/output contract; raises ``ValueError``.

    With ``precision``, also that the recorded precision and the convolution weights' type agree with it.
    """
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ValueError(f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got {inputs} -> {outputs}.")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    static = [dim.dim_value for dim in dims[1:]]
    if len(dims) != 4 or not dims[0].dim_param or static != [3, height, width]:
        shape = [dim.dim_param or dim.dim_value for dim in dims]
        raise ValueError(f"{path}: input must be [num_frames, 3, {height}, {width}] with a dynamic first axis, got {shape}.")
    io_types = {value.type.tensor_type.elem_type for value in (*model.graph.input, *model.graph.output)}
    if io_types != {onnx.TensorProto.FLOAT}:
        raise ValueError(f"{path}: {INPUT_NAME!r} and {OUTPUT_NAME!r} must be float32 in every graph.")
    if precision is not None:
        recorded = {prop.key: prop.value for prop in model.metadata_props}.get(PRECISION_METADATA_KEY)
        expected = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
        found = conv_weight_types(model)
        if recorded != precision or found != {expected}:
            raise ValueError(
                f"{path}: expected an {precision} graph, but it records precision {recorded!r} and its "
                f"convolution weights have the ONNX types {sorted(found)} (1 = float32, 10 = float16)."
            )


def conv_weight_types(model: onnx.ModelProto) -> set[int]:
    """ONNX element types of the ``Conv`` weights (initializers or ``Constant`` nodes; -1 where neither)."""
    types = {init.name: init.data_type for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return {types.get(node.input[1], -1) for node in model.graph.node if node.op_type == "Conv"}
