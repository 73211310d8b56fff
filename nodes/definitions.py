"""ComfyUI node classes (the classic declarative form): inputs, outputs and tooltips, then one call into
:mod:`.flow`. Option lists come from the core, so a new backend or normalization shows up here by itself."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..core.backends import BACKENDS
from ..core.model.specs import DEFAULT_MODEL, MODEL_NAMES
from ..core.visualize import FLOW_STRENGTH_RANGE, NORMALIZATIONS, FlowNormalizer
from . import flow as work
from . import host

CATEGORY = "optical flow"
RUNNING_DECAY = 0.9  # running normalization forgets a peak in about 20 frames

_STRENGTH = (
    "FLOAT",
    {
        "default": 1.0, "min": FLOW_STRENGTH_RANGE[0], "max": FLOW_STRENGTH_RANGE[1], "step": 0.05,
        "tooltip": "Colour saturation multiplier: saturation = strength * |flow| / scale. 1 matches torchvision's "
        "flow_to_image in per_frame mode; 2 saturates motions at least half as fast as the scale; 0.5 pales all.",
    },
)
_NORMALIZATION = (
    list(NORMALIZATIONS),
    {
        "default": "per_frame",
        "tooltip": "What full saturation means. per_frame: each frame's fastest motion (colours may flicker). "
        "fixed: max_flow pixels in every frame (colours mean the same speed throughout). running: a running "
        "maximum that rises at once and decays by 0.9 per frame (stable colours that still adapt).",
    },
)
_MAX_FLOW = (
    "FLOAT",
    {
        "default": 20.0, "min": 0.1, "max": 1000.0, "step": 0.5,
        "tooltip": "For normalization=fixed: the motion (pixels of the output image per frame) shown at full "
        "saturation. Ignored by the other modes.",
    },
)


def _check_strength(flow_strength: float) -> float:
    low, high = FLOW_STRENGTH_RANGE
    valid = isinstance(flow_strength, (int, float)) and math.isfinite(flow_strength) and low <= flow_strength <= high
    if not valid:
        raise ValueError(f"flow_strength must be a number in [{low}, {high}], got {flow_strength!r}.")
    return float(flow_strength)


def _normalizer(normalization: str, max_flow: float) -> FlowNormalizer:
    return FlowNormalizer(normalization, max_flow=max_flow, decay=RUNNING_DECAY)


class OpticalFlowRAFT:
    """Video frames in, optical-flow maps (IMAGE) and raw motion (FLOW) out."""

    DESCRIPTION = (
        "Optical flow between consecutive frames with RAFT Small or Large (TensorRT or PyTorch), for video "
        "ControlNet / VACE conditioning. Input: a video's frames in order. Output: RGB flow maps (hue = direction, "
        "saturation = speed, white = still) at the input size, and the raw flow in pixels. Each run is a new "
        "clip; the model stays loaded while the model settings are unchanged."
    )
    CATEGORY = CATEGORY
    FUNCTION = "compute"
    RETURN_TYPES = ("IMAGE", "FLOW")
    RETURN_NAMES = ("flow_image", "flow")
    OUTPUT_TOOLTIPS = (
        "Flow visualization [N, H, W, 3] in [0, 1], same size as the input frames.",
        "Raw flow [N, 2, H, W]: x/y motion from the previous frame, in pixels of the input size.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video's frames in order ([N, H, W, C]); at least 2."}),
                "compute_width": ("INT", {
                    "default": 512, "min": 128, "max": 2048, "step": 8,
                    "tooltip": "Width the flow is computed at (multiple of 8, at least 128). Larger sees finer "
                    "motion but costs more; the output is resized back to the input size.",
                }),
                "compute_height": ("INT", {
                    "default": 512, "min": 128, "max": 2048, "step": 8,
                    "tooltip": "Height the flow is computed at (multiple of 8, at least 128).",
                }),
                "precision": (list(work.PRECISIONS), {
                    "default": "fp16",
                    "tooltip": "fp16 runs the encoders and update block in half precision on CUDA (faster); "
                    "fp32 everywhere else. Ignored on the CPU.",
                }),
                "flow_updates": ("INT", {
                    "default": 12, "min": 1, "max": 32,
                    "tooltip": "RAFT refinement iterations: fewer is faster, more is more accurate (12 is standard).",
                }),
                "flow_strength": _STRENGTH,
                "normalization": _NORMALIZATION,
                "max_flow": _MAX_FLOW,
                "backend": (list(BACKENDS), {
                    "default": "auto",
                    "tooltip": "auto: TensorRT when installed on CUDA, else PyTorch. Engines are built once and "
                    "cached in models/optical_flow.",
                }),
                "first_frame": (list(work.FIRST_FRAME_MODES), {
                    "default": "zero",
                    "tooltip": "Frame 0 has no frame before it (unless previous_frames is connected). zero: no "
                    "motion (white); copy_next: repeat frame 1's flow; drop: output one frame fewer.",
                }),
                "weights": (cls._weights_choices(), {
                    "default": work.WEIGHTS_DEFAULT,
                    "tooltip": "DEFAULT: torchvision's weights of the chosen model (downloaded once, or a file of "
                    "that model in $SCOPE_OPTICAL_FLOW_WEIGHTS); a .pth file of the chosen model from "
                    "models/optical_flow; or untrained (random) for testing a workflow without weights.",
                }),
                "model": (list(MODEL_NAMES), {
                    "default": DEFAULT_MODEL,
                    "tooltip": "raft_small: fast (real time). raft_large: more accurate (Sintel final EPE 2.72 vs "
                    "3.28 on torchvision's model cards), several times slower and more memory.",
                }),
            },
            "optional": {
                "previous_frames": ("IMAGE", {
                    "tooltip": "Frames before this clip (e.g. the previous chunk of a long video); its last "
                    "frame becomes frame 0's reference, so frame 0 shows real motion. Same size as images.",
                }),
            },
        }

    @staticmethod
    def _weights_choices() -> list[str]:
        return [work.WEIGHTS_DEFAULT, work.WEIGHTS_UNTRAINED, *host.weights_files()]

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
        images = work.check_images(images)
        previous = None if previous_frames is None else work.check_images(previous_frames, "previous_frames")[-1]
        work.check_clip(images, previous, first_frame)
        strength = _check_strength(flow_strength)
        normalizer = _normalizer(normalization, max_flow)
        device = host.compute_device()
        settings = work.ModelSettings(
            compute_height=compute_height,
            compute_width=compute_width,
            precision=precision,
            flow_updates=flow_updates,
            backend=backend,
            weights=weights,
            model=model,
            device=str(device),
            models_dir=str(host.models_folder()),
        )
        preprocessor = work.get_preprocessor(settings)
        raw = work.video_flow(preprocessor, images, previous, first_frame)
        height, width = images.shape[1:3]
        return work.flow_images(raw, normalizer, strength, device, work.visual_window(height, width), (height, width))


class OpticalFlowToImage:
    """FLOW in, flow visualization (IMAGE) out, with its own strength and normalization."""

    DESCRIPTION = (
        "Turns raw optical flow into an RGB flow map (Middlebury colour wheel: hue = direction, saturation = "
        "speed, white = still). With the same settings it reproduces the Optical Flow node's flow_image."
    )
    CATEGORY = CATEGORY
    FUNCTION = "visualize"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("flow_image",)
    OUTPUT_TOOLTIPS = ("Flow visualization [N, H, W, 3] in [0, 1], the flow's size.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "flow": ("FLOW", {"tooltip": "Raw flow [N, 2, H, W] in pixels, from Optical Flow (RAFT)."}),
                "flow_strength": _STRENGTH,
                "normalization": _NORMALIZATION,
                "max_flow": _MAX_FLOW,
            }
        }

    def visualize(self, flow: Tensor, flow_strength: float, normalization: str, max_flow: float) -> tuple[Tensor]:
        flow = work.check_flow(flow)
        strength = _check_strength(flow_strength)
        normalizer = _normalizer(normalization, max_flow)
        window = work.visual_window(*flow.shape[-2:])
        image, _ = work.flow_images(flow, normalizer, strength, host.compute_device(), window)
        return (image,)


class OpticalFlowMagnitudeMask:
    """FLOW in, a motion mask (MASK) out: where and how fast things move."""

    DESCRIPTION = (
        "A mask of motion speed from raw optical flow: |flow| divided by the normalization's scale, in [0, 1] "
        "(1 = fastest). With threshold > 0 it is binary: 1 where the scaled speed reaches the threshold. Useful "
        "to inpaint or condition only moving regions."
    )
    CATEGORY = CATEGORY
    FUNCTION = "mask"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("Motion mask [N, H, W] in [0, 1], the flow's size.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "flow": ("FLOW", {"tooltip": "Raw flow [N, 2, H, W] in pixels, from Optical Flow (RAFT)."}),
                "normalization": _NORMALIZATION,
                "max_flow": _MAX_FLOW,
                "threshold": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "0: soft mask (scaled speed). Above 0: 1 where the scaled speed is at least this, "
                    "else 0 (e.g. 0.1 with fixed max_flow=20 marks motion of 2 pixels or more).",
                }),
            }
        }

    def mask(self, flow: Tensor, normalization: str, max_flow: float, threshold: float) -> tuple[Tensor]:
        flow = work.check_flow(flow)
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (0 = soft mask), got {threshold!r}.")
        normalizer = _normalizer(normalization, max_flow)
        window = work.visual_window(*flow.shape[-2:])
        return (work.magnitude_mask(flow, normalizer, float(threshold), host.compute_device(), window),)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "OpticalFlowRAFT": OpticalFlowRAFT,
    "OpticalFlowToImage": OpticalFlowToImage,
    "OpticalFlowMagnitudeMask": OpticalFlowMagnitudeMask,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "OpticalFlowRAFT": "Optical Flow (RAFT)",
    "OpticalFlowToImage": "Flow to Image",
    "OpticalFlowMagnitudeMask": "Flow Magnitude Mask",
}
