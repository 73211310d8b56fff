"""Export :class:`RaftSequenceFlow` to ONNX: the graph that onnxruntime runs and TensorRT builds engines from.

The graph takes ``frames [T, 3, H, W]`` float32 in ``[0, 1]`` (T dynamic, at least 2; H, W fixed per file) and
returns ``flow [T - 1, 2, H, W]`` float32 in pixels, exactly like ``RaftSequenceFlow.forward``.

Opset 18: GridSample needs opset >= 16; 18 is the native opset of torch's ``torch.export``-based exporter (no
version conversion) and within TensorRT 10's supported range (opsets 9 to 20). At opset 18 GridSample is
still GridSample-16 (``mode="bilinear"``), which every TensorRT 10 release parses.

Exporter: the ``torch.export``-based exporter (``dynamo=True``) when ``onnxscript`` imports, else the
TorchScript exporter (``dynamo=False``); both exist in torch 2.4 up to at least 2.14 and give graphs that
match PyTorch to ~1e-5 pixels. Graphs are checked with ``onnx.checker`` and constant-folded with polygraphy
when ``onnx_graphsurgeon`` (which polygraphy's folding needs) is installed.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from .log import logger
from .raft import RaftSequenceFlow

ONNX_OPSET = 18
INPUT_NAME = "frames"
OUTPUT_NAME = "flow"
EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "torchscript")
# Frames in the example input: 3 rather than 2 keeps torch.export from reading the axis as a special value.
EXAMPLE_FRAMES = 3


def resolve_exporter(exporter: str = "auto") -> str:
    """``"auto"`` -> ``"dynamo"`` when ``onnxscript`` is installed (torch's exporter needs it), else ``"torchscript"``."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is not supported; use one of {', '.join(EXPORTERS)}.")
    if exporter != "auto":
        return exporter
    return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"


def export_raft_onnx(
    model: RaftSequenceFlow,
    path: str | os.PathLike[str],
    height: int,
    width: int,
    *,
    exporter: str = "auto",
    opset: int = ONNX_OPSET,
) -> str:
    """Write ``model`` (fp32, CPU or GPU) as a checked ONNX file at ``path``; returns the exporter used.

    The file is written in place (callers wanting atomicity pass a temporary path and rename it).
    """
    if model.compute_dtype != torch.float32 or model.corr_dtype != torch.float32:
        raise ValueError(
            "ONNX export needs an fp32 RaftSequenceFlow (compute_dtype=torch.float32); TensorRT applies fp16 "
            "itself when the engine is built with fp16=True."
        )
    used = resolve_exporter(exporter)
    device = next(model.parameters()).device
    example = torch.rand(EXAMPLE_FRAMES, 3, height, width, device=device)
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
    check_onnx(target, height, width)
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


def check_onnx(path: str | os.PathLike[str], height: int, width: int) -> None:
    """``onnx.checker`` (full, with shape inference) plus the input/output contract; raises ``ValueError``."""
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
