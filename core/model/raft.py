"""RAFT (Small or Large) as a sequence model: flow between every pair of consecutive frames in one batched pass.

Built from torchvision's ``raft_small`` or ``raft_large`` parts (feature encoder, context encoder, update block,
RAFT Large's mask predictor; the correlation block's levels and radius), with the same arithmetic as
``torchvision.models.optical_flow.RAFT.forward``
for the last flow update, and these differences, all for speed, export and graph capture:

- each frame's features are computed once, not twice (frame t is image2 of pair t-1 and image1 of pair t);
- nothing is created on the CPU in the forward pass (coordinate grid and lookup offsets are device buffers),
  so the module can be captured in a CUDA graph and exported to ONNX without host copies;
- the correlation pyramid's coarser levels are products with pooled features instead of pooled products (the
  same values: correlation is linear; see :meth:`RaftSequenceFlow._correlation_pyramid`);
- only the final flow is upsampled and returned (torchvision returns every update's), so RAFT Large's upsampling
  mask is predicted once, not after every update; its convex upsampling gathers the 3x3 neighbourhood with
  padding and slices (torchvision uses ``F.unfold``, which has no ONNX operator TensorRT reads);
- precision is explicit instead of autocast: encoders and update block run in ``compute_dtype``, the
  correlation pyramid and its lookup stay in ``corr_dtype`` (fp32 by default), coordinates stay fp32;
- with ``fused_lookup`` (CUDA), the correlation lookup is one Triton kernel (:mod:`.corr_lookup`) instead of
  ``grid_sample`` per pyramid level; the ``grid_sample`` lookup stays the reference and the exported path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.optical_flow import RAFT

from .corr_lookup import corr_lookup
from .fast_update import FastUpdateBlock

# torchvision's CorrBlock needs 2 pixels at the coarsest of its 4 levels: feature maps >= 16, images >= 128.
MIN_SIZE = 128
DOWNSAMPLE = 8

# encode(frames) -> (pyramid, hidden, context); update_step(pyramid, context, hidden, coords0, coords1)
EncodeFn = Callable[[Tensor], tuple[list[Tensor], Tensor, Tensor]]
UpdateStepFn = Callable[[list[Tensor], Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


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
        fused_lookup: bool = False,
        lookup_channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.feature_encoder = raft.feature_encoder
        self.context_encoder = raft.context_encoder
        # torchvision's block (exported to ONNX as is) or the same arithmetic regrouped for tensor cores
        self.update_block: nn.Module = FastUpdateBlock(raft.update_block) if fast_update_block else raft.update_block
        # RAFT Large predicts a convex-upsampling mask from the hidden state; RAFT Small upsamples bilinearly.
        self.mask_predictor: nn.Module | None = raft.mask_predictor
        self.fast_update_block = fast_update_block
        self.num_levels: int = raft.corr_block.num_levels
        self.radius: int = raft.corr_block.radius
        self.hidden_size: int = raft.update_block.hidden_state_size
        self.num_flow_updates = num_flow_updates
        self.compute_dtype = compute_dtype
        self.corr_dtype = corr_dtype
        self.channels_last = channels_last
        # The Triton lookup (core/corr_lookup.py; CUDA only) in place of the grid_sample one in _lookup, writing
        # contiguous or channels-last features. Contiguous also under torch.compile, although Inductor runs the
        # convolutions channels-last: on one H200 the kernel took 0.59 ms per 12 lookups contiguous against 2.45
        # channels-last, and 1.12 against 2.77 ms with the 1x1 convolution that reads it (results/lookup_512x15.txt).
        self.fused_lookup = fused_lookup
        self.lookup_channels_last = lookup_channels_last
        side = 2 * self.radius + 1
        offsets = torch.linspace(-self.radius, self.radius, side)
        # Same (i, j) order as torchvision's CorrBlock.index_pyramid: the first offset varies along rows and is
        # added to x. The trained weights expect exactly this channel order.
        delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).view(1, side, side, 2)
        self.register_buffer("lookup_offsets", delta, persistent=False)
        self.register_buffer("unit_x", torch.tensor([1.0, 0.0]), persistent=False)
        self.register_buffer("unit_y", torch.tensor([0.0, 1.0]), persistent=False)
        parts = [self.feature_encoder, self.context_encoder, self.update_block]
        if self.mask_predictor is not None:
            parts.append(self.mask_predictor)
        for part in parts:  # buffers above stay fp32
            part.to(compute_dtype)
            if channels_last:
                part.to(memory_format=torch.channels_last)

    def forward(self, frames: Tensor) -> Tensor:
        return self.forward_with(frames, self.encode, self.update_step)

    def forward_with(self, frames: Tensor, encode: EncodeFn, update_step: UpdateStepFn) -> Tensor:
        """:meth:`forward` with other implementations of :meth:`encode` and :meth:`update_step` (e.g. the
        torch.compile'd ones); the final upsampling runs here."""
        num_frames, _, height, width = frames.shape
        pyramid, hidden, context = encode(frames)
        coords0 = self._coords_grid(num_frames - 1, height // DOWNSAMPLE, width // DOWNSAMPLE, frames.device)
        coords1 = coords0.clone()  # not an alias: torch.compile would guard on "coords1 is coords0" and compile twice
        for _ in range(self.num_flow_updates):
            hidden, coords1 = update_step(pyramid, context, hidden, coords0, coords1)
        flow_low = coords1 - coords0
        if self.mask_predictor is not None:
            return self.convex_upsample(flow_low, self.mask_predictor(hidden).float())
        return DOWNSAMPLE * F.interpolate(flow_low, size=(height, width), mode="bilinear", align_corners=True)

    @staticmethod
    def convex_upsample(flow_low: Tensor, mask: Tensor) -> Tensor:
        """torchvision's ``upsample_flow`` with a mask: each full-resolution pixel is a convex combination
        (softmax weights from ``mask [N, 9*8*8, h, w]``) of the 3x3 low-resolution neighbours, times 8."""
        pairs, channels, h, w = flow_low.shape
        weights = torch.softmax(mask.view(pairs, 1, 9, DOWNSAMPLE, DOWNSAMPLE, h, w), dim=2)
        padded = F.pad(DOWNSAMPLE * flow_low, (1, 1, 1, 1))
        # the 9 neighbours in F.unfold's order (kernel row, then column), zero outside the image
        neighbours = torch.stack([padded[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], dim=2)
        upsampled = torch.sum(weights * neighbours.view(pairs, channels, 9, 1, 1, h, w), dim=2)
        return upsampled.permute(0, 1, 4, 2, 5, 3).reshape(pairs, channels, DOWNSAMPLE * h, DOWNSAMPLE * w)

    def encode(self, frames: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Features of every frame once, context of every first frame (with the fast update block: the GRUs'
        context terms), and the correlation pyramid per pair."""
        images = frames.to(self.compute_dtype) * 2.0 - 1.0
        images = images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        fmaps = self.feature_encoder(images)
        context_out = self.context_encoder(images[:-1])
        hidden, context = torch.split(
            context_out, [self.hidden_size, context_out.shape[1] - self.hidden_size], dim=1
        )
        pyramid = self._correlation_pyramid(fmaps[:-1], fmaps[1:])
        context = F.relu(context)
        if self.fast_update_block:  # the GRUs' context terms, the same at every update (FastUpdateBlock)
            context = self.update_block.context_gates(context)
        return pyramid, torch.tanh(hidden), context

    def update_step(
        self, pyramid: list[Tensor], context: Tensor, hidden: Tensor, coords0: Tensor, coords1: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One RAFT refinement: look up correlations around ``coords1``, update the hidden state and coords."""
        flow = (coords1 - coords0).to(self.compute_dtype)
        if self.fused_lookup:  # writes the (padded) update-block input directly
            corr_channels = self.update_block.corr_channels if self.fast_update_block else None
            corr_features = corr_lookup(pyramid, coords1, self.radius, corr_channels, self.lookup_channels_last)
            corr_features = corr_features.to(self.compute_dtype)
        else:
            corr_features = self._lookup(pyramid, coords1).to(self.compute_dtype)
            if self.fast_update_block:
                corr_features = F.pad(corr_features,
                                      (0, 0, 0, 0, 0, self.update_block.corr_channels - corr_features.shape[1]))
        if self.fast_update_block:
            flow = F.pad(flow, (0, 0, 0, 0, 0, self.update_block.flow_channels - 2))
        hidden, delta_flow = self.update_block(hidden, context, corr_features, flow)
        return hidden, coords1 + delta_flow.float()

    def _correlation_pyramid(self, fmap1: Tensor, fmap2: Tensor) -> list[Tensor]:
        """torchvision's ``CorrBlock`` pyramid: ``corr[i, j] = <f1_i, f2_j> / sqrt(C)``, then 2x2 average
        pooling over ``j``, level by level. Correlation is linear in ``f2``, so pooling it over ``j`` equals
        correlating with ``f2`` pooled the same way: each level here is one matrix product with pooled features,
        and the full-resolution volume is written once and never read back (nor divided in a pass of its own:
        the scale goes on ``f1``)."""
        pairs, channels, h, w = fmap1.shape
        # The scale goes on after the transpose: scaling [P, C, H, W] before it (same values) makes TensorRT for
        # RTX 1.7 fail to build the pyramid's MatMuls (Myelin formats.cpp CHECK; see benchmarks/NOTES.md).
        f1 = fmap1.to(self.corr_dtype).reshape(pairs, channels, h * w).transpose(1, 2) * channels**-0.5
        f2 = fmap2.to(self.corr_dtype)
        pyramid = []
        for index in range(self.num_levels):
            if index:
                f2 = F.avg_pool2d(f2, kernel_size=2, stride=2)
            level_h, level_w = f2.shape[-2:]
            level = torch.matmul(f1, f2.reshape(pairs, channels, level_h * level_w))
            pyramid.append(level.reshape(pairs * h * w, 1, level_h, level_w))
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
