"""Flow as a Scope preprocessor pipeline (Scope v0.1.0-beta.3 and later: ``usage=[UsageType.PREPROCESSOR]``).

Imported only from the ``register_pipelines`` hook, when Scope is installed. The pipeline is a thin wrapper:
Scope's frame list goes to the core's :class:`OpticalFlowTensorRTPreprocessor` (one instance for the stream,
so temporal state carries across chunks) and its ``[1, 3, F, H, W]`` maps in ``[-1, 1]`` come back in Scope's
pipeline format, ``[F, H, W, 3]`` in ``[0, 1]``.

Settings follow Scope's config-field conventions: pydantic ``Field`` constraints, and ``json_schema_extra`` from
Scope's ``ui_field_config`` (Scope v0.2.0 and later render only fields that carry it, in their Settings panel).
Load parameters (preset, model, compute size, flow updates, normalization) rebuild the pipeline when changed; the
flow strength and the first frame change while streaming. ``preset = vace`` gives VACE's own flow annotator's maps
(``core.presets``: it replaces the default values of the fields it covers; fields set otherwise win); compute
size 0 x 0 is the input's own size. Messages name these fields (:data:`SCOPE_SETTINGS`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from scope.core.pipelines.base_schema import BasePipelineConfig, ModeDefaults, UsageType
from scope.core.pipelines.interface import Pipeline, Requirements
from scope.core.pipelines.process import normalize_frame_sizes

from ..core import NORMALIZATIONS, OpticalFlowTensorRTPreprocessor
from ..core.common.log import logger
from ..core.common.vocabulary import speaking
from ..core.model.compute_size import check_compute_size
from ..core.model.raft import DOWNSAMPLE
from ..core.model.specs import DEFAULT_MODEL, MODEL_NAMES
from ..core.preprocessor import FIRST_FRAME_MODES
from ..core.presets import NO_PRESET, PRESET_NAMES
from . import DISPLAY_NAME, PREPROCESSOR_ID
from .vocabulary import NATIVE_SIZE, SCOPE_SETTINGS

# Frames per call: the flow of each chunk's first frame uses the previous chunk's last frame, so the chunk size
# only trades latency against per-call overhead.
CHUNK_FRAMES = 4
MAX_COMPUTE_SIZE = 2048
# How long the constructor waits for compiled kernels (a first compile at 480x832 took 33 s on an H100).
COMPILE_WAIT_S = 120


def _ui(*, order: int, label: str, is_load_param: bool) -> dict[str, Any] | None:
    """Scope's ``ui_field_config(...)`` where this Scope has it (v0.2.0 and later), else no UI metadata."""
    try:
        from scope.core.pipelines.base_schema import ui_field_config
    except ImportError:
        return None
    return ui_field_config(order=order, label=label, is_load_param=is_load_param)


class FlowConfig(BasePipelineConfig):
    """Scope configuration for the Flow preprocessor pipeline."""

    pipeline_id = PREPROCESSOR_ID
    pipeline_name = DISPLAY_NAME
    pipeline_description = (
        "Optical flow (RAFT Small or Large, TensorRT or PyTorch) as RGB flow maps for VACE conditioning; "
        "keeps the previous chunk's last frame, so every frame after the first has real motion."
    )
    docs_url = "https://pytorch.org/vision/main/models/raft.html"
    supports_prompts = False
    usage = [UsageType.PREPROCESSOR]
    modes = {"video": ModeDefaults(default=True)}

    # Scope's own height/width (BasePipelineConfig) are the output size; the flow is computed at compute_*.
    preset: Literal[PRESET_NAMES] = Field(  # type: ignore[valid-type]
        default=NO_PRESET,
        description="vace: the maps of VACE's own flow annotator (raft_large, 20 updates, the input's own size, "
        "per-frame colours, first frame repeated); it replaces the defaults of those fields, fields set otherwise win",
        json_schema_extra=_ui(order=0, label="Preset", is_load_param=True),
    )
    model: Literal[MODEL_NAMES] = Field(  # type: ignore[valid-type]
        default=DEFAULT_MODEL,
        description="RAFT model: raft_small (real time) or raft_large (more accurate, several times slower)",
        json_schema_extra=_ui(order=1, label="Model", is_load_param=True),
    )
    compute_height: int = Field(
        default=512, ge=NATIVE_SIZE, le=MAX_COMPUTE_SIZE, multiple_of=DOWNSAMPLE,
        description="Height the flow is computed at (multiple of 8, at least 128; larger sees finer motion), or 0 "
        "with width 0: the input's own size",
        json_schema_extra=_ui(order=2, label="Flow height", is_load_param=True),
    )
    compute_width: int = Field(
        default=512, ge=NATIVE_SIZE, le=MAX_COMPUTE_SIZE, multiple_of=DOWNSAMPLE,
        description="Width the flow is computed at (multiple of 8, at least 128), or 0 with height 0: the input's "
        "own size",
        json_schema_extra=_ui(order=3, label="Flow width", is_load_param=True),
    )
    num_flow_updates: int = Field(
        default=12, ge=1, le=32,
        description="RAFT refinement iterations: fewer is faster, more is more accurate (12 is standard)",
        json_schema_extra=_ui(order=4, label="Flow updates", is_load_param=True),
    )
    flow_strength: float = Field(
        default=1.0, ge=0.0, le=2.0, description="Saturation of the flow colours",
        json_schema_extra=_ui(order=5, label="Strength", is_load_param=False),
    )
    normalization: Literal[NORMALIZATIONS] = Field(  # type: ignore[valid-type]
        default="per_frame", description="Colour scale: per frame, a fixed speed, or a running maximum",
        json_schema_extra=_ui(order=6, label="Colour scale", is_load_param=True),
    )
    first_frame: Literal[FIRST_FRAME_MODES] = Field(  # type: ignore[valid-type]
        default="zero",
        description="The stream's first frame has no frame before it: zero (no motion, white) or repeat (the next "
        "frame's map, as VACE's annotator and Scope's built-in flow do)",
        json_schema_extra=_ui(order=7, label="First frame", is_load_param=False),
    )

    @model_validator(mode="after")
    def _check_compute_size(self) -> FlowConfig:
        with speaking(SCOPE_SETTINGS):  # the core's rule, in these fields' names
            check_compute_size(*core_size(self.compute_height, self.compute_width))
        return self


def core_size(compute_height: int, compute_width: int) -> tuple[int | None, int | None]:
    """The core's ``height``/``width`` for these fields (0: ``None``, the input's own size)."""
    return (None if compute_height == NATIVE_SIZE else compute_height,
            None if compute_width == NATIVE_SIZE else compute_width)


class FlowPipeline(Pipeline):
    """Scope pipeline around one :class:`OpticalFlowTensorRTPreprocessor` (CUDA, fp16; model, compute size and
    flow updates from the config), loaded and warmed up for :data:`CHUNK_FRAMES`-frame chunks when constructed."""

    @classmethod
    def get_config_class(cls) -> type[BasePipelineConfig]:
        return FlowConfig

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        compute_height: int = 512,
        compute_width: int = 512,
        num_flow_updates: int = 12,
        flow_strength: float = 1.0,
        normalization: str = "per_frame",
        first_frame: str = "zero",
        preset: str = NO_PRESET,
        **_: Any,
    ) -> None:
        # Scope passes every config field (height, width, base_seed, ...); only the flow settings matter here.
        super().__init__()
        self.preprocessor = OpticalFlowTensorRTPreprocessor(
            *core_size(compute_height, compute_width),
            flow_strength=flow_strength, model=model, num_flow_updates=num_flow_updates,
            normalization=normalization, first_frame=first_frame, preset=preset, vocabulary=SCOPE_SETTINGS,
        )
        # Scope shows "Initializing pipeline..." while the constructor runs: load the model, capture the uncompiled
        # graphs of Scope's chunk shapes, and wait while a child process compiles them (or for nothing, where the
        # models folder has them); then load the compiled kernels here, where Scope waits anyway. Live chunks never
        # compile, load or wait. Should compiling take longer than COMPILE_WAIT_S, the stream runs on the
        # uncompiled graphs (about half the speed); the kernels are kept for the next time Flow is loaded.
        # At the input's own size (compute size 0 x 0) the model loads with the first chunk, which gives the size.
        self.preprocessor.load(warmup=CHUNK_FRAMES)
        if not self.preprocessor.wait_for_compiled(timeout=COMPILE_WAIT_S):
            logger.info("optical flow: still compiling after %d s; this stream runs on the uncompiled model, and the "
                        "compiled kernels serve from the next time Flow is loaded", COMPILE_WAIT_S)

    def prepare(self, **kwargs: Any) -> Requirements:
        return Requirements(input_size=CHUNK_FRAMES)

    def __call__(self, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``video``: list of ``[1, H, W, C]`` uint8 frames -> ``{"video": [F, H, W, 3]`` float in ``[0, 1]}``."""
        video = kwargs.get("video")
        if not video:
            raise ValueError(
                "the Flow preprocessor got no video frames: optical flow needs a video or camera input. "
                "Select a video source, or remove Flow from the preprocessors."
            )
        if kwargs.get("init_cache"):
            self.preprocessor.reset()
        if "flow_strength" in kwargs:
            self.preprocessor.flow_strength = kwargs["flow_strength"]
        if "first_frame" in kwargs:
            self.preprocessor.first_frame = kwargs["first_frame"]
        frames = torch.cat(normalize_frame_sizes(list(video)))
        maps = self.preprocessor(frames, layout="FHWC")
        return {"video": maps[0].permute(1, 2, 3, 0).add(1.0).mul_(0.5)}
