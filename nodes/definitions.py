"""ComfyUI node classes (the classic declarative form): ``INPUT_TYPES`` and outputs generated from the declarations
in :mod:`.inputs`, then one call into :mod:`.flow`. The typed form (:mod:`.schema`) calls these same methods."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..core.common.vocabulary import speaking
from ..core.model.specs import DEFAULT_MODEL
from ..core.visualize import FLOW_STRENGTH_RANGE, FlowNormalizer
from . import flow as work
from . import host
from .inputs import FLOW_TO_IMAGE, MAGNITUDE_MASK, OPTICAL_FLOW, NodeSpec, classic_input_types, node_vocabulary

CATEGORY = "optical flow"
RUNNING_DECAY = 0.9  # running normalization forgets a peak in about 20 frames


def _check_strength(flow_strength: float) -> float:
    low, high = FLOW_STRENGTH_RANGE
    valid = isinstance(flow_strength, (int, float)) and math.isfinite(flow_strength) and low <= flow_strength <= high
    if not valid:
        raise ValueError(f"flow_strength must be a number in [{low}, {high}], got {flow_strength!r}.")
    return float(flow_strength)


def _normalizer(normalization: str, max_flow: float) -> FlowNormalizer:
    return FlowNormalizer(normalization, max_flow=max_flow, decay=RUNNING_DECAY)


class _ClassicNode:
    """What the classic form reads from a node class, from its :class:`NodeSpec`."""

    SPEC: NodeSpec

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.SPEC
        cls.DESCRIPTION = spec.description
        cls.CATEGORY = CATEGORY
        cls.FUNCTION = spec.function
        cls.RETURN_TYPES = tuple(output.kind for output in spec.outputs)
        cls.RETURN_NAMES = tuple(output.name for output in spec.outputs)
        cls.OUTPUT_TOOLTIPS = tuple(output.tooltip for output in spec.outputs)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return classic_input_types(cls.SPEC)


class OpticalFlowRAFT(_ClassicNode):
    """Video frames in, optical-flow maps (IMAGE) and raw motion (FLOW) out."""

    SPEC = OPTICAL_FLOW

    def compute(
        self,
        images: Tensor,
        compute_width: int,
        compute_height: int,
        precision: str,
        flow_updates: int,
        flow_strength: float,
        normalization: str,
        max_flow: float,
        backend: str,
        first_frame: str,
        weights: str,
        model: str = DEFAULT_MODEL,
        preset: str = "none",
        previous_frames: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        with speaking(node_vocabulary()):
            images = work.check_images(images)
            previous = None if previous_frames is None else work.check_images(previous_frames, "previous_frames")[-1]
            chosen = work.resolve_preset(
                preset, model=model, flow_updates=flow_updates, compute_height=compute_height,
                compute_width=compute_width, normalization=normalization, first_frame=first_frame,
            )
            work.check_clip(images, previous, chosen.first_frame)
            strength = _check_strength(flow_strength)
            normalizer = _normalizer(chosen.normalization, max_flow)
            device = host.compute_device()
            settings = work.ModelSettings(
                compute_height=chosen.compute_height,
                compute_width=chosen.compute_width,
                precision=precision,
                flow_updates=chosen.flow_updates,
                backend=backend,
                weights=weights,
                model=chosen.model,
                device=str(device),
                models_dir=str(host.models_folder()),
            )
            height, width = images.shape[1:3]
            preprocessor = work.get_preprocessor(settings, frame_size=(height, width))
            raw = work.video_flow(preprocessor, images, previous, chosen.first_frame)
            window = work.visual_window(height, width)
            return work.flow_images(raw, normalizer, strength, device, window, (height, width))


class OpticalFlowToImage(_ClassicNode):
    """FLOW in, flow visualization (IMAGE) out, with its own strength and normalization."""

    SPEC = FLOW_TO_IMAGE

    def visualize(self, flow: Tensor, flow_strength: float, normalization: str, max_flow: float) -> tuple[Tensor]:
        with speaking(node_vocabulary()):
            flow = work.check_flow(flow)
            strength = _check_strength(flow_strength)
            normalizer = _normalizer(normalization, max_flow)
            window = work.visual_window(*flow.shape[-2:])
            image, _ = work.flow_images(flow, normalizer, strength, host.compute_device(), window)
            return (image,)


class OpticalFlowMagnitudeMask(_ClassicNode):
    """FLOW in, a motion mask (MASK) out: where and how fast things move."""

    SPEC = MAGNITUDE_MASK

    def mask(self, flow: Tensor, normalization: str, max_flow: float, threshold: float) -> tuple[Tensor]:
        with speaking(node_vocabulary()):
            flow = work.check_flow(flow)
            if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be in [0, 1] (0 = soft mask), got {threshold!r}.")
            normalizer = _normalizer(normalization, max_flow)
            window = work.visual_window(*flow.shape[-2:])
            return (work.magnitude_mask(flow, normalizer, float(threshold), host.compute_device(), window),)


CLASSIC_NODES: tuple[type[_ClassicNode], ...] = (OpticalFlowRAFT, OpticalFlowToImage, OpticalFlowMagnitudeMask)

NODE_CLASS_MAPPINGS: dict[str, type] = {node.SPEC.node_id: node for node in CLASSIC_NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {node.SPEC.node_id: node.SPEC.display_name for node in CLASSIC_NODES}
