"""The PyTorch backend: RAFT Small run eagerly through :class:`RaftSequenceFlow` (the reference backend)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..raft import RaftSequenceFlow
from ..weights import WeightsInfo, WeightsSpec, load_raft_small
from .base import BackendConfig


def half_precision_active(config: BackendConfig) -> bool:
    """fp16 applies on CUDA only; on the CPU it would be slower and less accurate."""
    return config.fp16 and config.device.type == "cuda"


class TorchFlowBackend:
    """Eager PyTorch inference: encoders and update block in fp16 on CUDA (``fp16=True``), correlation in fp32."""

    name = "torch"

    def __init__(self, config: BackendConfig, weights: WeightsSpec) -> None:
        raft, self.weights_info = load_raft_small(weights)
        compute_dtype = torch.float16 if half_precision_active(config) else torch.float32
        self.model = RaftSequenceFlow(raft, config.num_flow_updates, compute_dtype=compute_dtype)
        self.model = self.model.to(config.device).eval()
        self.max_pairs = config.max_pairs
        self.config = config

    @property
    def weights(self) -> WeightsInfo:
        return self.weights_info

    @torch.inference_mode()
    def flow(self, frames: Tensor) -> Tensor:
        return self.model(frames).float()
