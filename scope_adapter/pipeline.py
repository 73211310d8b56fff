"""Flow as a Scope preprocessor pipeline (Scope v0.1.0-beta.3 and later: ``usage=[UsageType.PREPROCESSOR]``).

Imported only from the ``register_pipelines`` hook, when Scope is installed. The pipeline is a thin wrapper:
Scope's frame list goes to the core's :class:`OpticalFlowTensorRTPreprocessor` (one instance for the stream,
so temporal state carries across chunks) and its ``[1, 3, F, H, W]`` maps in ``[-1, 1]`` come back in Scope's
pipeline format, ``[F, H, W, 3]`` in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from scope.core.pipelines.base_schema import BasePipelineConfig, ModeDefaults, UsageType
from scope.core.pipelines.interface import Pipeline, Requirements
from scope.core.pipelines.process import normalize_frame_sizes

from ..core import NORMALIZATIONS, OpticalFlowTensorRTPreprocessor
from . import DISPLAY_NAME, PREPROCESSOR_ID

# Frames per call: the flow of each chunk's first frame uses the previous chunk's last frame, so the chunk size
# only trades latency against per-call overhead.
CHUNK_FRAMES = 4


class FlowConfig(BasePipelineConfig):
    """Scope configuration for the Flow preprocessor pipeline."""

    pipeline_id = PREPROCESSOR_ID
    pipeline_name = DISPLAY_NAME
    pipeline_description = (
        "Optical flow (RAFT Small, TensorRT or PyTorch) as RGB flow maps for VACE conditioning; "
        "keeps the previous chunk's last frame, so every frame after the first has real motion."
    )
    docs_url = "https://pytorch.org/vision/main/models/raft.html"
    supports_prompts = False
    usage = [UsageType.PREPROCESSOR]
    modes = {"video": ModeDefaults(default=True)}

    flow_strength: float = Field(default=1.0, ge=0.0, le=2.0, description="Saturation of the flow colours")
    normalization: Literal[NORMALIZATIONS] = Field(  # type: ignore[valid-type]
        default="per_frame", description="Colour scale: per frame, a fixed speed, or a running maximum"
    )


class FlowPipeline(Pipeline):
    """Scope pipeline around one :class:`OpticalFlowTensorRTPreprocessor` (CUDA, fp16, 512x512 compute), loaded
    and warmed up for :data:`CHUNK_FRAMES`-frame chunks when constructed."""

    @classmethod
    def get_config_class(cls) -> type[BasePipelineConfig]:
        return FlowConfig

    def __init__(self, flow_strength: float = 1.0, normalization: str = "per_frame", **_: Any) -> None:
        # Scope passes every config field (height, width, base_seed, ...); only the flow settings matter here.
        super().__init__()
        self.preprocessor = OpticalFlowTensorRTPreprocessor(flow_strength=flow_strength, normalization=normalization)
        # Scope shows "Initializing pipeline..." while the constructor runs: load the model and compile (or load
        # the compiled kernels from the models folder) for Scope's chunk shapes now, not on the first live chunk.
        self.preprocessor.load(warmup=CHUNK_FRAMES)

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
        frames = torch.cat(normalize_frame_sizes(list(video)))
        maps = self.preprocessor(frames, layout="FHWC")
        return {"video": maps[0].permute(1, 2, 3, 0).add(1.0).mul_(0.5)}
