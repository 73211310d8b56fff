"""Flow inference backends and the ``backend=`` choice."""

from __future__ import annotations

import importlib.util

import torch

from ..log import log_once
from ..weights import WeightsSpec
from .base import BackendConfig, FlowBackend
from .torch_backend import TorchFlowBackend

BACKENDS: tuple[str, ...] = ("auto", "torch")
TENSORRT_INSTALL_HINT = (
    "pip install tensorrt (from NVIDIA's package index: pip install --extra-index-url https://pypi.nvidia.com "
    "tensorrt), or pip install 'scope-optical-flow-tensorrt[tensorrt]'"
)


def tensorrt_available() -> bool:
    """Whether the ``tensorrt`` Python package can be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def choose_backend(requested: str, device: torch.device) -> str:
    """Resolve ``backend=`` to a concrete backend name, logging once why ``auto`` chose what it chose."""
    if requested not in BACKENDS:
        raise ValueError(f"backend={requested!r} is not supported; use one of {', '.join(BACKENDS)}.")
    if requested != "auto":
        return requested
    if device.type != "cuda":
        log_once("backend-auto-cpu", "optical flow backend: torch (running on the CPU; TensorRT needs CUDA).", 20)
        return "torch"
    reason = (
        "TensorRT is not installed" if not tensorrt_available() else "this version has no TensorRT backend yet"
    )
    log_once(
        "backend-auto-torch",
        f"optical flow backend: torch, because {reason}. For the faster TensorRT path: {TENSORRT_INSTALL_HINT}.",
    )
    return "torch"


def create_backend(name: str, config: BackendConfig, weights: WeightsSpec) -> FlowBackend:
    """Build the named backend (loads weights; the expensive step the preprocessor defers to first use)."""
    if name == "torch":
        return TorchFlowBackend(config, weights)
    raise ValueError(f"backend={name!r} is not supported; use one of {', '.join(BACKENDS)}.")


__all__ = ["BACKENDS", "BackendConfig", "FlowBackend", "choose_backend", "create_backend", "tensorrt_available"]
