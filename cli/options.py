"""Options shared by several commands (they mirror the Python API's arguments) and building the preprocessor."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

UNTRAINED = "untrained"
NATIVE = "native"  # --size native: the input's own size (the API's height=None, width=None)
FLOW_PRESETS = ("none", "vace")  # core.presets.PRESET_NAMES (not imported here: it imports torch)
FIRST_FRAME_CHOICES = ("zero", "repeat")  # core.preprocessor.FIRST_FRAME_MODES


# ``run``'s names of ``batch.process``'s own arguments (INPUT is its positional argument).
BATCH_NAMES = {
    "inputs": "INPUT", "output": "-o", "flow_npy": "--flow-npy", "flow_flo": "--flow-flo", "manifest": "--manifest",
    "overwrite": "--overwrite", "devices": "--devices", "ray_address": "--ray", "chunk": "--chunk",
    "decoder": "--decoder", "codec": "--codec", "fps": "--fps", "x264_preset": "--x264-preset",
    "flow_size": "--flow-size", "report": "--report",
}


@functools.cache
def cli_vocabulary() -> Any:
    """How the core's and the batch's messages name options on the command line (``core.vocabulary``):
    ``--device cpu``, ``--strict-device``, ``--weights untrained``, ``--overwrite``... Checked against the
    commands' options by the tests."""
    from ..core.common.vocabulary import SIZE, Vocabulary

    return Vocabulary(
        face="command line",
        style="flag",
        names={
            "model": "--model", SIZE: "--size", "height": "--size (height)", "width": "--size (width)",
            "fp16": "--fp16", "num_flow_updates": "--updates", "backend": "--backend", "device": "--device",
            "strict_device": "--strict-device", "cuda_graphs": "--cuda-graphs", "weights": "--weights",
            "models_dir": "--models-dir", "flow_strength": "--strength", "normalization": "--normalization",
            "max_flow": "--max-flow", "decay": "--decay", "first_frame": "--first-frame", "preset": "--preset",
            "max_batch_pairs": "--max-batch-pairs", "tensorrt_targets": "--tensorrt-targets",
            **BATCH_NAMES,
        },
        values={"weights": {None: UNTRAINED}, SIZE: {(None, None): NATIVE},
                "tensorrt_targets": {("8.6", "8.9", "12.0"): "sm86,sm89,sm120"}},
        settings={("fp16", True): "--fp16", ("fp16", False): "--fp32", ("cuda_graphs", False): "--no-cuda-graphs"},
    )


def cli_words() -> Any:
    """A context in which the core's and the batch's messages name command-line flags (for calls outside the
    preprocessor, which speaks the vocabulary it was built with: ``batch.process`` and what it starts speak the
    context's, as do ``batch.StagedOutputs``' messages)."""
    from ..core.common.vocabulary import speaking

    return speaking(cli_vocabulary())


def parse_size(text: str) -> tuple[int, int] | tuple[None, None]:
    """``"512"`` or ``"480x640"`` (height x width) -> ``(height, width)``; ``"native"`` -> ``(None, None)``."""
    if text.strip().lower() == NATIVE:
        return None, None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×,]\s*(\d+))?\s*", text)
    if match is None:
        raise click.BadParameter(
            f"{text!r} is not a size; write HEIGHTxWIDTH (e.g. 512x512), one number, or {NATIVE} (the input's "
            "own size)."
        )
    height = int(match.group(1))
    width = int(match.group(2)) if match.group(2) else height
    return height, width


class SizeType(click.ParamType):
    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
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


# core.model.specs.MODEL_CHOICE (not imported here: it imports torch; a test checks they are the same).
MODEL_CHOICE = "raft_small (fast, real time) or raft_large (more accurate, about twice the time per frame)"
MODEL_HELP = f"RAFT model: {MODEL_CHOICE}."
X264_PRESETS_HINT = "the libx264 preset of video outputs is --x264-preset"


class PresetType(click.Choice):
    """``--preset``: a flow preset; a libx264 preset name (what ``--preset`` meant before) gets a pointer to
    ``--x264-preset``."""

    def __init__(self) -> None:
        super().__init__(FLOW_PRESETS)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..batch import X264_PRESETS

        if value in X264_PRESETS:
            self.fail(f"{value!r} is a libx264 preset: --preset picks a flow preset ({', '.join(FLOW_PRESETS)}); "
                      f"{X264_PRESETS_HINT} (--x264-preset {value}).", param, ctx)
        return super().convert(value, param, ctx)


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


def frame_size(size: tuple[int, int] | tuple[None, None], fallback: tuple[int, int]) -> tuple[int, int]:
    """The size of frames a command makes itself (demo, bench): ``--size``, or ``fallback`` at native."""
    height, width = size
    return (height, width) if height is not None and width is not None else fallback


def model_options(default_size: str, default_weights: str = "DEFAULT", weights_help: str = WEIGHTS_HELP) -> Callable:
    """Decorator adding the options every flow-computing command shares."""
    options = [
        model_option(),
        click.option("--preset", "preset", type=PresetType(), default="none", show_default=True,
                     help="vace: VACE's own flow annotator (--model raft_large, --updates 20, --size native, "
                          "--normalization per_frame, --first-frame repeat). Those of these options given on the "
                          "command line win."),
        click.option("--size", "size", type=SizeType(), default=default_size, show_default=True,
                     help="Compute resolution HEIGHTxWIDTH (multiples of 8, at least 128), or native: the input's "
                          "own size, padded to a multiple of 8 (never resized)."),
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
        return _with_preset_applied(function)

    return decorate


# The command-line parameters --preset covers, and the core options each one sets.
PRESET_PARAMETERS: dict[str, tuple[str, ...]] = {
    "raft_model": ("model",), "size": ("height", "width"), "num_flow_updates": ("num_flow_updates",),
    "normalization": ("normalization",), "first_frame": ("first_frame",),
}


def _with_preset_applied(function: Callable) -> Callable:
    """The command ``function`` called with ``--preset``'s values in place of the options it covers that were not
    given on the command line (``core.presets``: given options win whatever their value, so ``--preset vace
    --updates 12`` runs 12 updates); the command then sees no preset."""

    @functools.wraps(function)
    def command(**parameters: Any) -> Any:
        if parameters.get("preset", "none") != "none":
            parameters = apply_cli_preset(parameters, click.get_current_context())
        return function(**parameters)

    return command


def apply_cli_preset(parameters: dict[str, Any], ctx: click.Context) -> dict[str, Any]:
    """``parameters`` of a command with its ``--preset`` applied (and ``preset`` then ``"none"``)."""
    from click.core import ParameterSource

    from ..core.presets import apply_preset

    defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    present = [name for name in PRESET_PARAMETERS if name in parameters]
    given = {key for name in present if ctx.get_parameter_source(name) not in defaults for key in PRESET_PARAMETERS[name]}
    options = {key: value for name in present
               for key, value in zip(PRESET_PARAMETERS[name],
                                     parameters[name] if name == "size" else (parameters[name],))}
    with cli_words():
        chosen = apply_preset(parameters["preset"], options, given)
    applied = {name: (tuple(chosen[key] for key in PRESET_PARAMETERS[name]) if name == "size"
                      else chosen[PRESET_PARAMETERS[name][0]]) for name in present}
    return {**parameters, **applied, "preset": "none"}


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
        click.option("--first-frame", "first_frame", type=click.Choice(FIRST_FRAME_CHOICES), default="zero",
                     show_default=True,
                     help="Frame 0 has no frame before it: zero (no motion, white) or repeat (frame 1's map, as "
                          "VACE's annotator does)."),
    ]):
        function = option(function)
    return function


def preprocessor_options(
    *,
    size: tuple[int, int] | tuple[None, None],
    weights: str | None,
    flow_strength: float = 1.0,
    normalization: str = "per_frame",
    max_flow: float = 20.0,
    decay: float = 0.9,
    first_frame: str = "zero",
    preset: str = "none",
    max_batch_pairs: int | None = None,
    **model: Any,
) -> dict[str, Any]:
    """The preprocessor's keyword arguments (``OpticalFlowTensorRTPreprocessor``, ``batch.process``) from option
    values, speaking the command line's vocabulary."""
    height, width = size
    return dict(
        height=height,
        width=width,
        first_frame=first_frame,
        preset=preset,
        vocabulary=cli_vocabulary(),
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
