"""Resizing frames, images and flow fields between input, compute and output resolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_images(images: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of ``[N, C, H, W]`` (antialiased when shrinking); a no-op at the same size."""
    if images.shape[-2:] == (height, width):
        return images
    shrinking = height < images.shape[-2] or width < images.shape[-1]
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def resize_flow(flow: Tensor, height: int, width: int) -> Tensor:
    """Resize ``[N, 2, H, W]`` flow in pixels to ``height x width``, scaling the vectors with the image."""
    old_height, old_width = flow.shape[-2:]
    if (old_height, old_width) == (height, width):
        return flow
    resized = resize_images(flow, height, width)
    # Python scalars, not a tensor built from a list: that would be a host-to-device copy and a stream sync.
    return torch.stack((resized[:, 0] * (width / old_width), resized[:, 1] * (height / old_height)), dim=1)


def pad_to_multiple(images: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Pad ``[N, C, H, W]`` to the next multiple of ``multiple`` by repeating the edge pixels, split between the
    sides as RAFT's ``InputPadder`` does (the odd pixel at the bottom/right). Returns the padded images and the
    padding ``(left, right, top, bottom)`` for :func:`crop_padding`."""
    height, width = images.shape[-2:]
    pad_height, pad_width = -height % multiple, -width % multiple
    padding = (pad_width // 2, pad_width - pad_width // 2, pad_height // 2, pad_height - pad_height // 2)
    if not any(padding):
        return images, padding
    return F.pad(images, padding, mode="replicate"), padding


def crop_padding(images: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple` on ``[..., H, W]`` (images or flow, whose vectors need no change)."""
    left, right, top, bottom = padding
    height, width = images.shape[-2:]
    return images[..., top : height - bottom, left : width - right]
