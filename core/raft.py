"""RAFT Small as a sequence model: flow between every pair of consecutive frames in one batched pass.

Built from torchvision's ``raft_small`` parts (feature encoder, context encoder, update block; the
correlation block's numbers), with the same arithmetic as ``torchvision.models.optical_flow.RAFT.forward``
for the last flow update, and these differences, all for speed, export and graph capture:

- each frame's features are computed once, not twice (frame t is image2 of pair t-1 and image1 of pair t);
- nothing is created on the CPU in the forward pass (coordinate grid and lookup offsets are device buffers),
  so the module can be captured in a CUDA graph and exported to ONNX without host copies;
- only the final flow is upsampled and returned (torchvision returns every update's);
- precision is explicit instead of autocast: encoders and update block run in ``compute_dtype``, the
  correlation pyramid and its lookup stay in ``corr_dtype`` (fp32 by default), coordinates stay fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.optical_flow import RAFT

from .fast_update import FastUpdateBlock

# torchvision's CorrBlock needs 2 pixels at the coarsest of its 4 levels: feature maps >= 16, images >= 128.
MIN_SIZE = 128
DOWNSAMPLE = 8


class RaftSequenceFlow(nn.Module):
    """``forward(frames [T,3,H,W] in [0,1]) -> flow [T-1,2,H,W]`` in pixels, flow[i] from frame i to i+1.

    H and W must be multiples of 8 and at least 128 (RAFT's correlation pyramid needs that).
    """

    def __init__(
        self,
        raft: RAFT,
        num_flow_updates: int = 12,
        compute_dtype: torch.dtype = torch.float32,
        corr_dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        fast_update_block: bool = False,
    ) -> None:
        super().__init__()
        if raft.mask_predictor is not None:
            raise ValueError("RaftSequenceFlow supports RAFT Small only (no convex-upsampling mask predictor).")
        self.feature_encoder = raft.feature_encoder
        self.context_encoder = raft.context_encoder
        # torchvision's block (exported to ONNX as is) or the same arithmetic regrouped for tensor cores
        self.update_block: nn.Module = FastUpdateBlock(raft.update_block) if fast_update_block else raft.update_block
        self.fast_update_block = fast_update_block
        self.num_levels: int = raft.corr_block.num_levels
        self.radius: int = raft.corr_block.radius
        self.hidden_size: int = raft.update_block.hidden_state_size
        self.num_flow_updates = num_flow_updates
        self.compute_dtype = compute_dtype
        self.corr_dtype = corr_dtype
        self.channels_last = channels_last
        side = 2 * self.radius + 1
        offsets = torch.linspace(-self.radius, self.radius, side)
        # Same (i, j) order as torchvision's CorrBlock.index_pyramid: the first offset varies along rows and is
        # added to x. The trained weights expect exactly this channel order.
        delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).view(1, side, side, 2)
        self.register_buffer("lookup_offsets", delta, persistent=False)
        self.register_buffer("unit_x", torch.tensor([1.0, 0.0]), persistent=False)
        self.register_buffer("unit_y", torch.tensor([0.0, 1.0]), persistent=False)
        for part in (self.feature_encoder, self.context_encoder, self.update_block):  # buffers above stay fp32
            part.to(compute_dtype)
            if channels_last:
                part.to(memory_format=torch.channels_last)

    def forward(self, frames: Tensor) -> Tensor:
        num_frames, _, height, width = frames.shape
        pyramid, hidden, context = self.encode(frames)
        coords0 = self._coords_grid(num_frames - 1, height // DOWNSAMPLE, width // DOWNSAMPLE, frames.device)
        coords1 = coords0.clone()  # not an alias: torch.compile would guard on "coords1 is coords0" and compile twice
        for _ in range(self.num_flow_updates):
            hidden, coords1 = self.update_step(pyramid, context, hidden, coords0, coords1)
        flow_low = coords1 - coords0
        return DOWNSAMPLE * F.interpolate(flow_low, size=(height, width), mode="bilinear", align_corners=True)

    def encode(self, frames: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Features of every frame once, context of every first frame, and the correlation pyramid per pair."""
        images = frames.to(self.compute_dtype) * 2.0 - 1.0
        images = images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        fmaps = self.feature_encoder(images)
        context_out = self.context_encoder(images[:-1])
        hidden, context = torch.split(
            context_out, [self.hidden_size, context_out.shape[1] - self.hidden_size], dim=1
        )
        pyramid = self._correlation_pyramid(fmaps[:-1], fmaps[1:])
        return pyramid, torch.tanh(hidden), F.relu(context)

    def update_step(
        self, pyramid: list[Tensor], context: Tensor, hidden: Tensor, coords0: Tensor, coords1: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One RAFT refinement: look up correlations around ``coords1``, update the hidden state and coords."""
        corr_features = self._lookup(pyramid, coords1).to(self.compute_dtype)
        flow = (coords1 - coords0).to(self.compute_dtype)
        if self.fast_update_block:
            corr_features = F.pad(corr_features, (0, 0, 0, 0, 0, self.update_block.corr_channels - corr_features.shape[1]))
            flow = F.pad(flow, (0, 0, 0, 0, 0, self.update_block.flow_channels - 2))
        hidden, delta_flow = self.update_block(hidden, context, corr_features, flow)
        return hidden, coords1 + delta_flow.float()

    def _correlation_pyramid(self, fmap1: Tensor, fmap2: Tensor) -> list[Tensor]:
        pairs, channels, h, w = fmap1.shape
        f1 = fmap1.to(self.corr_dtype).reshape(pairs, channels, h * w)
        f2 = fmap2.to(self.corr_dtype).reshape(pairs, channels, h * w)
        corr = torch.matmul(f1.transpose(1, 2), f2) / channels**0.5
        level = corr.reshape(pairs * h * w, 1, h, w)
        pyramid = [level]
        for _ in range(self.num_levels - 1):
            level = F.avg_pool2d(level, kernel_size=2, stride=2)
            pyramid.append(level)
        return pyramid

    def _lookup(self, pyramid: list[Tensor], coords: Tensor) -> Tensor:
        pairs, _, h, w = coords.shape
        centroids = coords.permute(0, 2, 3, 1).reshape(pairs * h * w, 1, 1, 2)
        sampled = []
        for index, level in enumerate(pyramid):
            level_h, level_w = level.shape[-2:]
            # torchvision's grid_sample helper maps absolute pixels to [-1, 1] with align_corners=True:
            # grid = (centroid / 2^level + offset) * axis_scale - 1, done as one fused multiply-add per level.
            axis_scale = self.unit_x * (2.0 / (level_w - 1)) + self.unit_y * (2.0 / (level_h - 1))
            grid = torch.addcmul(self.lookup_offsets * axis_scale - 1.0, centroids, axis_scale / 2**index)
            values = F.grid_sample(level, grid.to(level.dtype), mode="bilinear", padding_mode="zeros",
                                   align_corners=True)
            sampled.append(values.view(pairs, h, w, -1))
        return torch.cat(sampled, dim=-1).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def _coords_grid(batch: int, h: int, w: int, device: torch.device) -> Tensor:
        ys = torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1).expand(batch, 1, h, w)
        xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w).expand(batch, 1, h, w)
        return torch.cat([xs, ys], dim=1)
