"""Flow as Scope preprocessor pipelines (Scope v0.1.0-beta.3 and later: ``usage=[UsageType.PREPROCESSOR]``).

Imported only from the ``register_pipelines`` hook, when Scope is installed. Each pipeline is a thin wrapper:
Scope's frame list goes to the core's :class:`OpticalFlowTensorRTPreprocessor` (one instance for the stream,
so temporal state carries across chunks) and its ``[1, 3, F, H, W]`` maps in ``[-1, 1]`` come back in Scope's
pipeline format, ``[F, H, W, 3]`` in ``[0, 1]``.

Two pipelines, so that no field shows a value other than the one running:

- **Flow** (:class:`FlowPipeline`): every setting is a field, and the field is what runs. Settings follow
  Scope's config-field conventions: pydantic ``Field`` constraints, and ``json_schema_extra`` from Scope's
  ``ui_field_config`` (Scope v0.2.0 and later render only fields that carry it, in their Settings panel). Load
  parameters (model, compute size, flow updates, normalization) rebuild the pipeline when changed; the flow
  strength (modulatable to the beat where Scope can), ``max_flow`` and the first frame change while streaming.
  Scope's Settings panel draws integer fields as sliders that step by 1, so every compute size it offers loads:
  a size that is not a multiple of 8 (or below 128) runs at the next one up, and 0 in either field is the input's
  own size; the log says so (:func:`compute_size`). Messages name these fields (:data:`SCOPE_SETTINGS`).
- **Flow (VACE)** (:class:`FlowVacePipeline`): the maps of VACE's own flow annotator (``core.presets``: RAFT
  Large, 20 updates, the input's own size, per-frame colours, the first map repeated), with no settings to
  contradict them.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from pydantic import Field
from scope.core.pipelines.base_schema import BasePipelineConfig, ModeDefaults, UsageType
from scope.core.pipelines.interface import Pipeline, Requirements
from scope.core.pipelines.process import normalize_frame_sizes

from ..core import NORMALIZATIONS, OpticalFlowTensorRTPreprocessor
from ..core.common.log import logger
from ..core.model.raft import DOWNSAMPLE, MIN_SIZE
from ..core.model.specs import DEFAULT_MODEL, MODEL_CHOICE, MODEL_NAMES
from ..core.preprocessor import FIRST_FRAME_MODES
from ..core.visualize import FLOW_STRENGTH_RANGE
from . import DISPLAY_NAME, PREPROCESSOR_ID, VACE_DISPLAY_NAME, VACE_PREPROCESSOR_ID
from .vocabulary import NATIVE_SIZE, SCOPE_NO_SETTINGS, SCOPE_SETTINGS

# Frames per call: the flow of each chunk's first frame uses the previous chunk's last frame, so the chunk size
# only trades latency against per-call overhead.
CHUNK_FRAMES = 4
MAX_COMPUTE_SIZE = 2048
# How long the constructor waits for compiled kernels (a first compile at 480x832 took 33 s on an H100).
COMPILE_WAIT_S = 120


def _ui(*, order: int, label: str, is_load_param: bool, modulatable: bool = False) -> dict[str, Any] | None:
    """Scope's ``ui_field_config(...)`` where this Scope has it (v0.2.0 and later), else no UI metadata;
    ``modulatable`` (the beat-synced modulation engine may drive the field) where its ``ui_field_config`` takes it."""
    try:
        from scope.core.pipelines.base_schema import ui_field_config
    except ImportError:
        return None
    extra: dict[str, Any] = {}
    if modulatable and "modulatable" in inspect.signature(ui_field_config).parameters:
        extra["modulatable"] = True
    return ui_field_config(order=order, label=label, is_load_param=is_load_param, **extra)


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
    model: Literal[MODEL_NAMES] = Field(  # type: ignore[valid-type]
        default=DEFAULT_MODEL,
        description=f"RAFT model: {MODEL_CHOICE}",
        json_schema_extra=_ui(order=1, label="Model", is_load_param=True),
    )
    compute_height: int = Field(
        default=512, ge=NATIVE_SIZE, le=MAX_COMPUTE_SIZE,
        description="Height the flow is computed at (larger sees finer motion; runs at the next multiple of 8, "
        "at least 128), or 0: the input's own size",
        json_schema_extra=_ui(order=2, label="Flow height", is_load_param=True),
    )
    compute_width: int = Field(
        default=512, ge=NATIVE_SIZE, le=MAX_COMPUTE_SIZE,
        description="Width the flow is computed at (runs at the next multiple of 8, at least 128), or 0: the "
        "input's own size",
        json_schema_extra=_ui(order=3, label="Flow width", is_load_param=True),
    )
    num_flow_updates: int = Field(
        default=12, ge=1, le=32,
        description="RAFT refinement iterations: fewer is faster, more is more accurate (12 is standard)",
        json_schema_extra=_ui(order=4, label="Flow updates", is_load_param=True),
    )
    flow_strength: float = Field(
        default=1.0, ge=FLOW_STRENGTH_RANGE[0], le=FLOW_STRENGTH_RANGE[1], description="Saturation of the flow colours",
        json_schema_extra=_ui(order=5, label="Strength", is_load_param=False, modulatable=True),
    )
    normalization: Literal[NORMALIZATIONS] = Field(  # type: ignore[valid-type]
        default="per_frame", description="Colour scale: per frame, a fixed speed (max_flow), or a running maximum",
        json_schema_extra=_ui(order=6, label="Colour scale", is_load_param=True),
    )
    max_flow: float = Field(
        default=20.0, ge=0.5, le=200.0,
        description="With the fixed colour scale: the motion (pixels of the compute size per frame) shown at full "
        "saturation",
        json_schema_extra=_ui(order=7, label="Fixed scale (px)", is_load_param=False),
    )
    first_frame: Literal[FIRST_FRAME_MODES] = Field(  # type: ignore[valid-type]
        default="zero",
        description="The stream's first frame has no frame before it: zero (no motion, white) or repeat (the next "
        "frame's map, as VACE's annotator and Scope's built-in flow do)",
        json_schema_extra=_ui(order=8, label="First frame", is_load_param=False),
    )


class FlowVaceConfig(BasePipelineConfig):
    """Scope configuration for the Flow (VACE) preprocessor pipeline: no flow settings (they are VACE's)."""

    pipeline_id = VACE_PREPROCESSOR_ID
    pipeline_name = VACE_DISPLAY_NAME
    pipeline_description = (
        "The flow maps of VACE's own flow annotator, for VACE's flow conditioning: RAFT Large with 20 updates at the "
        "input's own size, each map scaled by its frame's fastest motion, the first map repeated. For other "
        "settings use Flow."
    )
    docs_url = FlowConfig.docs_url
    supports_prompts = False
    usage = [UsageType.PREPROCESSOR]
    modes = {"video": ModeDefaults(default=True)}


def compute_size(compute_height: int, compute_width: int) -> tuple[int | None, int | None, str | None]:
    """The core's ``height``/``width`` for Scope's fields, and what was changed to get them (``None``: nothing).

    Every value Scope's sliders offer loads: 0 in either field is the input's own size (``None``); other values
    are rounded up to a multiple of 8 and to at least 128, as RAFT needs (the way the input's own size is padded).
    """
    if NATIVE_SIZE in (compute_height, compute_width):
        if compute_height == compute_width:
            return None, None, None
        zero, other = (("compute_height", "compute_width") if compute_height == NATIVE_SIZE
                       else ("compute_width", "compute_height"))
        return None, None, (f"{zero} = 0 computes at the input's own size; {other} is not used then (set both to "
                            "0, or both to a size)")
    sizes = [max(MIN_SIZE, -(-value // DOWNSAMPLE) * DOWNSAMPLE) for value in (compute_height, compute_width)]
    changed = [f"{name} = {value} runs as {size}" for name, value, size in
               zip(("compute_height", "compute_width"), (compute_height, compute_width), sizes) if size != value]
    note = (f"{' and '.join(changed)} (flow is computed at multiples of {DOWNSAMPLE}, at least {MIN_SIZE})"
            if changed else None)
    return sizes[0], sizes[1], note


class FlowPipeline(Pipeline):
    """Scope pipeline around one :class:`OpticalFlowTensorRTPreprocessor` (CUDA, fp16; every setting from the
    config's fields), loaded and warmed up for :data:`CHUNK_FRAMES`-frame chunks when constructed."""

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
        max_flow: float = 20.0,
        first_frame: str = "zero",
        **_: Any,
    ) -> None:
        # Scope passes every config field (height, width, base_seed, ...); only the flow settings matter here.
        super().__init__()
        self.preprocessor = self._build(
            model=model, compute_height=compute_height, compute_width=compute_width,
            num_flow_updates=num_flow_updates, flow_strength=flow_strength, normalization=normalization,
            max_flow=max_flow, first_frame=first_frame,
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

    # The fields Scope may send with a chunk (is_load_param=False), as the preprocessor's attributes.
    LIVE_FIELDS: tuple[str, ...] = ("flow_strength", "max_flow", "first_frame")

    def _build(self, *, compute_height: int, compute_width: int, **settings: Any) -> OpticalFlowTensorRTPreprocessor:
        """The preprocessor for the config's fields (a compute size Scope's sliders offer that RAFT cannot run is
        rounded up, and the log says so: :func:`compute_size`)."""
        height, width, note = compute_size(compute_height, compute_width)
        if note is not None:
            logger.warning("optical flow: %s.", note)
        return OpticalFlowTensorRTPreprocessor(height, width, vocabulary=SCOPE_SETTINGS, **settings)

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
        for name in self.LIVE_FIELDS:
            if name in kwargs:
                setattr(self.preprocessor, name, kwargs[name])
        frames = torch.cat(normalize_frame_sizes(list(video)))
        maps = self.preprocessor(frames, layout="FHWC")
        return {"video": maps[0].permute(1, 2, 3, 0).add(1.0).mul_(0.5)}


class FlowVacePipeline(FlowPipeline):
    """Scope pipeline for VACE's own flow annotator's maps (``preset="vace"``): no settings, so nothing to send live."""

    LIVE_FIELDS = ()

    @classmethod
    def get_config_class(cls) -> type[BasePipelineConfig]:
        return FlowVaceConfig

    def _build(self, **settings: Any) -> OpticalFlowTensorRTPreprocessor:
        return OpticalFlowTensorRTPreprocessor(preset="vace", vocabulary=SCOPE_NO_SETTINGS)
