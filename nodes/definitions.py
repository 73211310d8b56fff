"""ComfyUI node classes (the classic declarative form): ``INPUT_TYPES`` and outputs generated from the declarations
in :mod:`.inputs`, then one call into :mod:`.flow`. The typed form (:mod:`.schema`) calls these same methods."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..core.common.vocabulary import speaking
from ..core.model.compute_size import check_compute_size
from ..core.model.specs import DEFAULT_MODEL
from ..core.visualize import FLOW_STRENGTH_RANGE, FlowNormalizer
from . import flow as work
from . import host
from .inputs import (
    FLOW_TO_IMAGE,
    MAGNITUDE_MASK,
    MAX_FLOW,
    NATIVE_SIZE,
    OPTICAL_FLOW,
    OPTICAL_FLOW_VACE,
    NodeSpec,
    classic_input_types,
    node_vocabulary,
)

CATEGORY = "optical flow"


def _check_strength(flow_strength: float) -> float:
    low, high = FLOW_STRENGTH_RANGE
    valid = isinstance(flow_strength, (int, float)) and math.isfinite(flow_strength) and low <= flow_strength <= high
    if not valid:
        raise ValueError(f"flow_strength must be a number in [{low}, {high}], got {flow_strength!r}.")
    return float(flow_strength)


def _normalizer(normalization: str, max_flow: float) -> FlowNormalizer:
    return FlowNormalizer(normalization, max_flow=max_flow, decay=work.RUNNING_DECAY)


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


def _flow_node(
    spec: NodeSpec,
    images: Tensor,
    previous_frames: Tensor | None,
    *,
    model: str,
    flow_updates: int,
    compute_height: int,
    compute_width: int,
    precision: str,
    backend: str,
    weights: str,
    maps: work.MapSettings,
) -> tuple[Tensor, Tensor]:
    """What both flow nodes run: the inputs checked, then the clip's maps and flow (:func:`.flow.flow_maps`)."""
    images = work.check_images(images)
    previous = None if previous_frames is None else work.check_images(previous_frames, "previous_frames")[-1]
    native = compute_height == NATIVE_SIZE and compute_width == NATIVE_SIZE
    check_compute_size(None if compute_height == NATIVE_SIZE else compute_height,  # 0 and 0 go together
                       None if compute_width == NATIVE_SIZE else compute_width)
    settings = work.ModelSettings(
        compute_height=NATIVE_SIZE if native else compute_height,
        compute_width=NATIVE_SIZE if native else compute_width,
        precision=precision,
        flow_updates=flow_updates,
        backend=backend,
        weights=weights,
        model=model,
        device=str(host.compute_device()),
        models_dir=str(host.models_folder()),
    )
    return work.flow_maps(spec, settings, maps, images, previous)


class OpticalFlowRAFT(_ClassicNode):
    """Video frames in, optical-flow maps (IMAGE) and raw motion (FLOW) out."""

    SPEC = OPTICAL_FLOW

    @classmethod
    def VALIDATE_INPUTS(cls, first_frame: str) -> bool | str:
        """ComfyUI's check of ``first_frame``, which also accepts values saved by earlier versions (``copy_next``,
        now ``repeat``) so saved workflows still run."""
        with speaking(node_vocabulary(OPTICAL_FLOW)):  # cls may be the typed form's class
            try:
                work.node_first_frame(first_frame)
            except ValueError as error:
                return str(error)
        return True

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
        previous_frames: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        with speaking(node_vocabulary(self.SPEC)):
            maps = work.MapSettings(_check_strength(flow_strength), normalization, max_flow,
                                    work.node_first_frame(first_frame))
            _normalizer(normalization, max_flow)  # checked before any model loads
            return _flow_node(
                self.SPEC, images, previous_frames, model=model, flow_updates=flow_updates,
                compute_height=compute_height, compute_width=compute_width, precision=precision, backend=backend,
                weights=weights, maps=maps,
            )


class OpticalFlowVACE(_ClassicNode):
    """Video frames in, the maps (IMAGE) and raw motion (FLOW) of VACE's own flow annotator out: the settings
    VACE's annotator uses are fixed (``SPEC.fixed``, ``core.presets``), the others are inputs."""

    SPEC = OPTICAL_FLOW_VACE

    def compute_vace(
        self,
        images: Tensor,
        precision: str,
        backend: str,
        weights: str,
        previous_frames: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        fixed = self.SPEC.fixed
        native = fixed["height"] is None
        with speaking(node_vocabulary(self.SPEC)):
            maps = work.MapSettings(fixed["flow_strength"], fixed["normalization"], MAX_FLOW.default,
                                    fixed["first_frame"])
            return _flow_node(
                self.SPEC, images, previous_frames, model=fixed["model"], flow_updates=fixed["num_flow_updates"],
                compute_height=NATIVE_SIZE if native else fixed["height"],
                compute_width=NATIVE_SIZE if native else fixed["width"],
                precision=precision, backend=backend, weights=weights, maps=maps,
            )


class OpticalFlowToImage(_ClassicNode):
    """FLOW in, flow visualization (IMAGE) out, with its own strength and normalization."""

    SPEC = FLOW_TO_IMAGE

    def visualize(self, flow: Tensor, flow_strength: float, normalization: str, max_flow: float) -> tuple[Tensor]:
        with speaking(node_vocabulary(self.SPEC)):
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
        with speaking(node_vocabulary(self.SPEC)):
            flow = work.check_flow(flow)
            if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be in [0, 1] (0 = soft mask), got {threshold!r}.")
            normalizer = _normalizer(normalization, max_flow)
            window = work.visual_window(*flow.shape[-2:])
            return (work.magnitude_mask(flow, normalizer, float(threshold), host.compute_device(), window),)


CLASSIC_NODES: tuple[type[_ClassicNode], ...] = (
    OpticalFlowRAFT, OpticalFlowVACE, OpticalFlowToImage, OpticalFlowMagnitudeMask,
)

NODE_CLASS_MAPPINGS: dict[str, type] = {node.SPEC.node_id: node for node in CLASSIC_NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {node.SPEC.node_id: node.SPEC.display_name for node in CLASSIC_NODES}
