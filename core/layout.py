"""Input normalization: every accepted frame layout becomes ``[B, F, 3, H, W]`` float in ``[0, 1]``.

Accepted layouts (RGB; 1 channel is treated as grey and replicated, 4 channels as RGBA with alpha dropped):

- ``"BCFHW"``: 5-D ``[B, C, F, H, W]`` (Scope's ``video_frames``).
- ``"CFHW"``: 4-D ``[C, F, H, W]``, one video.
- ``"FHWC"``: 4-D ``[F, H, W, C]``, one video (ComfyUI ``IMAGE``, decoded video frames).
- ``"FCHW"``: 4-D ``[F, C, H, W]``, one video (torchvision style); only when asked for with ``layout=``.

A 5-D tensor is always ``BCFHW``. A 4-D tensor is ambiguous; without ``layout=`` the rule is:
channels-last (``FHWC``) if the last axis is 3, else channels-first (``CFHW``) if the first axis is 3,
else ``FHWC`` if the last axis is 1 or 4, else ``CFHW`` if the first axis is 1 or 4. Anything else is an
error asking for ``layout=``. (So ``[4, H, W, 3]``, four RGB frames, is read as ``FHWC``.)

dtype decides the value range, never the values: ``uint8`` is ``[0, 255]``; floating types are ``[0, 1]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, repeat

from .common.errors import FrameError

Layout = Literal["BCFHW", "CFHW", "FHWC", "FCHW"]
LAYOUTS: tuple[str, ...] = ("BCFHW", "CFHW", "FHWC", "FCHW")
_CHANNEL_COUNTS = (1, 3, 4)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Resampling and colour conversions upstream can overshoot [0, 1] by a rounding error: values up to this far
# outside are accepted and clamped; anything further is an error that says how to clamp.
RANGE_TOLERANCE = 1e-3


def infer_layout(shape: tuple[int, ...]) -> str:
    """Guess the layout of a frame tensor from its shape (see the module docstring for the rule)."""
    if len(shape) == 5:
        return "BCFHW"
    if len(shape) != 4:
        raise FrameError(
            f"frames must be 4-D ([C,F,H,W] or [F,H,W,C]) or 5-D ([B,C,F,H,W]); got shape {list(shape)} "
            f"({len(shape)}-D). A single image needs a frame axis: use image[None] for [1,H,W,C]."
        )
    first, last = shape[0], shape[-1]
    if last == 3:
        return "FHWC"
    if first == 3:
        return "CFHW"
    if last in (1, 4):
        return "FHWC"
    if first in (1, 4):
        return "CFHW"
    raise FrameError(
        f"cannot tell the channel axis of frames with shape {list(shape)}: neither the first nor the last axis "
        "has 1, 3 or 4 channels. Pass layout='FHWC', 'CFHW' or 'FCHW' explicitly, or give RGB frames."
    )


def check_layout(layout: object) -> str:
    """Return ``layout`` upper-cased if supported, else raise a ``ValueError`` listing the choices."""
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; use one of {', '.join(LAYOUTS)} or None.")
    return layout.upper()


def check_tensor(tensor: object, name: str = "frames") -> torch.Tensor:
    """``tensor`` if it is a torch tensor holding data, else a ``TypeError`` naming the fix."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(tensor).__name__}. "
            "Convert with torch.from_numpy(array) (uint8 [F,H,W,C] or float [0,1])."
        )
    if tensor.is_meta:
        raise TypeError(
            f"got a meta tensor for {name} (shape {list(tensor.shape)}: a shape without data); pass a tensor with "
            "data, on the CPU or a GPU (e.g. create it outside a torch.device('meta') block)."
        )
    return tensor


def to_bfchw(frames: torch.Tensor, layout: str | None = None) -> torch.Tensor:
    """Rearrange ``frames`` to ``[B, F, C, H, W]`` (no copy where einops can avoid one); checks channels."""
    check_tensor(frames)
    layout = infer_layout(tuple(frames.shape)) if layout is None else check_layout(layout)
    expected_rank = len(layout)
    if frames.dim() != expected_rank:
        raise ValueError(f"layout {layout!r} needs a {expected_rank}-D tensor, got shape {list(frames.shape)}.")
    pattern = " ".join(layout.lower())
    if layout == "BCFHW":
        out = rearrange(frames, "b c f h w -> b f c h w")
    else:
        out = rearrange(frames, f"{pattern} -> 1 f c h w")
    channels = out.shape[2]
    if channels not in _CHANNEL_COUNTS:
        raise FrameError(
            f"frames have {channels} channels in layout {layout} (shape {list(frames.shape)}); expected 3 (RGB), "
            "1 (grey, replicated to RGB) or 4 (RGBA, alpha dropped). If the channel axis is elsewhere, pass layout=."
        )
    if out.shape[0] == 0:
        raise ValueError(f"frames hold an empty batch (shape {list(frames.shape)}, B = 0); pass at least one video.")
    if out.shape[1] == 0:
        raise FrameError(f"frames contain zero frames (shape {list(frames.shape)}); pass at least one frame.")
    if out.shape[-1] < 2 or out.shape[-2] < 2:
        raise FrameError(
            f"frames of {out.shape[-2]}x{out.shape[-1]} pixels (layout {layout}, shape {list(frames.shape)}) are too "
            "small; frames must be at least 2x2. Check the layout (pass layout=) if this is unexpected."
        )
    if channels == 1:
        out = repeat(out, "b f 1 h w -> b f c h w", c=3)
    elif channels == 4:
        out = out[:, :, :3]
    return out


def to_unit_float(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move ``frames`` to ``device`` (once, before any conversion) and scale to float32 ``[0, 1]``.

    ``uint8`` is divided by 255; floating input must already be in ``[0, 1]`` and finite. Costs one
    device-to-host read of (min, max) per call for floating input.
    """
    if frames.dtype == torch.uint8:
        return frames.to(device, non_blocking=True).float().div_(255.0)
    if frames.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"frames have dtype {frames.dtype}; use uint8 in [0, 255] or a floating dtype "
            "(float16, bfloat16, float32, float64) in [0, 1]. Convert e.g. with frames.float() / 255."
        )
    frames = frames.to(device, non_blocking=True).float()
    low, high = (value.item() for value in torch.aminmax(frames))
    if low != low or high != high:  # NaN compares unequal to itself
        raise FrameError("frames contain NaN values; clean the input (e.g. torch.nan_to_num) before flow.")
    if low in (float("inf"), float("-inf")) or high in (float("inf"), float("-inf")):
        raise FrameError("frames contain infinite values; clean the input (e.g. torch.nan_to_num) before flow.")
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        if high > 1.5:
            hint = "They look like 0-255 values: divide by 255 or pass uint8."
        else:  # e.g. bicubic resizing overshoots
            hint = "Clamp them first (frames.clamp(0, 1)): resampling such as bicubic resizing overshoots the range."
        raise FrameError(
            f"float frames must be in [0, 1] (values up to {RANGE_TOLERANCE:g} outside are accepted and clamped), "
            f"got values in [{low:.4g}, {high:.4g}]. {hint}"
        )
    if low < 0.0 or high > 1.0:
        frames = frames.clamp_(0.0, 1.0)
    return frames
