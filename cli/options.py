"""Options shared by several commands (they mirror the Python API's arguments) and building the preprocessor."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import UsageError

UNTRAINED = "untrained"


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` or ``"480x640"`` (height x width) -> ``(height, width)``."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×,]\s*(\d+))?\s*", text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a size; write HEIGHTxWIDTH (e.g. 512x512) or one number.")
    height = int(match.group(1))
    width = int(match.group(2)) if match.group(2) else height
    return height, width


class SizeType(click.ParamType):
    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_size(str(value))
        except click.BadParameter as error:
            self.fail(error.message, param, ctx)


class BackendType(click.ParamType):
    """A backend name; the choices (``core.backends.BACKENDS``) are looked up only for ``--help``, and the core
    checks the value, so commands that fail early never import torch."""

    name = "backend"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # click <8.2 passes no ctx
        return "[" + "|".join(_backends()) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return str(value)


class ModelType(click.ParamType):
    """A RAFT model name; like :class:`BackendType`, the choices (``core.models.MODEL_NAMES``) are looked up only
    for ``--help`` and the core checks the value."""

    name = "model"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # click <8.2 passes no ctx
        from ..core.model.specs import MODEL_NAMES

        return "[" + "|".join(MODEL_NAMES) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return str(value)


MODEL_HELP = "RAFT model: raft_small (fast) or raft_large (more accurate, several times slower)."


def model_option() -> Callable:
    """``--model``, stored as ``raft_model`` (``model`` names the option dict in several commands)."""
    return click.option("--model", "raft_model", type=ModelType(), default="raft_small", show_default=True,
                        help=MODEL_HELP)


def _backends() -> tuple[str, ...]:
    from ..core.backends import BACKENDS

    return BACKENDS


def weights_spec(text: str) -> str | None:
    """``--weights`` text -> the API's ``weights=`` (``"untrained"`` becomes ``None``)."""
    return None if text.strip().lower() == UNTRAINED else text


WEIGHTS_HELP = (
    "Weights of the --model: DEFAULT (torchvision's download/cache, or a file of that model in "
    "$SCOPE_OPTICAL_FLOW_WEIGHTS), a torchvision weights name (raft_small: C_T_V1, C_T_V2; raft_large: C_T_V1, "
    "C_T_V2, C_T_SKHT_V1, C_T_SKHT_V2, C_T_SKHT_K_V1, C_T_SKHT_K_V2), a path to a .pth file, or 'untrained' "
    "(random, for smoke tests)."
)


def model_options(default_size: str, default_weights: str = "DEFAULT", weights_help: str = WEIGHTS_HELP) -> Callable:
    """Decorator adding the options every flow-computing command shares."""
    options = [
        model_option(),
        click.option("--size", "size", type=SizeType(), default=default_size, show_default=True,
                     help="Compute resolution HEIGHTxWIDTH (multiples of 8, at least 128)."),
        click.option("--fp16/--fp32", "fp16", default=True, show_default=True,
                     help="Half precision on CUDA (ignored on the CPU)."),
        click.option("--updates", "num_flow_updates", type=click.IntRange(min=1), default=12, show_default=True,
                     help="RAFT refinement iterations (fewer: faster, coarser)."),
        click.option("--backend", type=BackendType(), default="auto", show_default=True,
                     help="Inference backend; auto picks TensorRT when available on CUDA."),
        click.option("--device", default="cuda", show_default=True,
                     help="cuda, cuda:N or cpu; cuda falls back to the CPU with a warning."),
        click.option("--strict-device", is_flag=True, help="Fail instead of falling back to the CPU."),
        click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=True, show_default=True,
                     help="Replay the PyTorch model from CUDA graphs on CUDA."),
        click.option("--weights", default=default_weights, show_default=True, help=weights_help),
        click.option("--models-dir", type=click.Path(path_type=Path), default=None,
                     help="Folder for ONNX graphs and engines [default: <models root>/optical-flow-tensorrt]."),
    ]

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def display_options(function: Callable) -> Callable:
    """Decorator adding the visualization options (flow_strength, normalization)."""
    for option in reversed([
        click.option("--strength", "flow_strength", type=click.FloatRange(0.0, 2.0), default=1.0, show_default=True,
                     help="Saturation multiplier in [0, 2]."),
        click.option("--normalization", type=click.Choice(["per_frame", "fixed", "running"]), default="per_frame",
                     show_default=True, help="How flow magnitude maps to saturation (see the README)."),
        click.option("--max-flow", type=click.FloatRange(min=0.0, min_open=True), default=20.0, show_default=True,
                     help="Pixels of motion at full saturation with --normalization fixed."),
        click.option("--decay", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.9, show_default=True,
                     help="Per-frame decay of the running maximum with --normalization running."),
    ]):
        function = option(function)
    return function


def build_preprocessor(
    *,
    size: tuple[int, int],
    weights: str | None,
    flow_strength: float = 1.0,
    normalization: str = "per_frame",
    max_flow: float = 20.0,
    decay: float = 0.9,
    max_batch_pairs: int | None = None,
    **model: Any,
) -> Any:
    """An ``OpticalFlowTensorRTPreprocessor`` from option values; the core's ValueError/TypeError become
    usage errors (exit code 2) with the core's message."""
    from ..core import OpticalFlowTensorRTPreprocessor

    height, width = size
    try:
        return OpticalFlowTensorRTPreprocessor(
            height,
            width,
            model=model.get("raft_model", "raft_small"),
            device=model["device"],
            fp16=model["fp16"],
            flow_strength=flow_strength,
            num_flow_updates=model["num_flow_updates"],
            normalization=normalization,
            max_flow=max_flow,
            decay=decay,
            backend=model["backend"],
            weights=weights,
            strict_device=model["strict_device"],
            max_batch_pairs=max_batch_pairs,
            models_dir=model["models_dir"],
            cuda_graphs=model["cuda_graphs"],
            torch_compile=model.get("torch_compile", True),
        )
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error


def load_model(flow: Any, warmup: int | bool = False) -> None:
    """Load weights/engine now, so a bad ``--weights`` fails before any input is read or output written;
    ``warmup`` (frames per call) also compiles, or loads the compiled kernels of, the shapes such calls use."""
    try:
        flow.load(warmup=warmup)
    except FileNotFoundError as error:
        raise UsageError(f"--weights: {error}") from error
    except ValueError as error:
        raise UsageError(f"--weights: {error}") from error
