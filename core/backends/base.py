"""What every flow backend provides, and the choice between them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class FlowBackend(Protocol):
    """Computes flow for a run of consecutive frames at the compute resolution.

    ``flow(frames)`` takes ``[T, 3, H, W]`` float32 in ``[0, 1]`` on the backend's device (T >= 2, at most
    ``max_pairs + 1``) and returns ``[T - 1, 2, H, W]`` float32 flow in pixels, ``[i]`` from frame i to i+1.
    """

    name: str
    max_pairs: int

    def flow(self, frames: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class BackendConfig:
    """Everything a backend needs to build itself (shared by all backends)."""

    height: int
    width: int
    device: torch.device
    fp16: bool
    num_flow_updates: int
    max_pairs: int
    cuda_graphs: bool = True  # replay the forward pass from CUDA graphs where the backend supports it
    torch_compile: bool = True  # compile the PyTorch model's parts with torch.compile on CUDA
    fused_lookup: bool = True  # the Triton correlation lookup on CUDA (where Triton is importable)
    # serve the uncompiled model while a child process compiles; False: warm-ups and first calls wait (PyTorch, CUDA)
    compile_in_background: bool = True
    models_dir: str | os.PathLike[str] | None = None  # ONNX/engine cache folder (None: the default one)
    model: str = "raft_small"  # core.models: "raft_small" or "raft_large"
