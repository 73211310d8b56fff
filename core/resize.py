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
