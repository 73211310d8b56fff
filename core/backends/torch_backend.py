"""The PyTorch backend: RAFT Small run eagerly through :class:`RaftSequenceFlow` (the reference backend)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..raft import RaftSequenceFlow
from ..weights import WeightsSpec, load_raft_small
from .base import BackendConfig
from .cuda_graph import CudaGraphRunner


def half_precision_active(config: BackendConfig) -> bool:
    """fp16 applies on CUDA only; on the CPU it would be slower and less accurate."""
    return config.fp16 and config.device.type == "cuda"


class TorchFlowBackend:
    """PyTorch inference of :class:`RaftSequenceFlow`.

    On CUDA: encoders and update block in fp16 (``fp16=True``; correlation stays fp32), and the whole forward
    pass replayed from a CUDA graph per input shape (``cuda_graphs=True``), which removes the per-kernel launch
    cost that dominates eager RAFT. On the CPU: plain fp32 eager.
    """

    name = "torch"

    def __init__(self, config: BackendConfig, weights: WeightsSpec) -> None:
        raft, self.weights_info = load_raft_small(weights)
        compute_dtype = torch.float16 if half_precision_active(config) else torch.float32
        self.model = RaftSequenceFlow(raft, config.num_flow_updates, compute_dtype=compute_dtype)
        self.model = self.model.to(config.device).eval()
        self.max_pairs = config.max_pairs
        self.config = config
        use_graphs = config.cuda_graphs and config.device.type == "cuda"
        self.graphs = CudaGraphRunner(self._forward, config.device) if use_graphs else None

    def _forward(self, frames: Tensor) -> Tensor:
        return self.model(frames).float()

    @torch.inference_mode()
    def flow(self, frames: Tensor) -> Tensor:
        if self.graphs is not None:
            return self.graphs(frames)
        return self._forward(frames)
