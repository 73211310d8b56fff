"""Flow inference backends and the ``backend=`` choice."""

from __future__ import annotations

import functools

import torch

from ..artifacts.trt_build import TENSORRT_INSTALL_HINT, choose_flavour, installed_flavours
from ..common.log import log_once
from ..model.weights import WeightsSpec
from ..common.vocabulary import words
from .base import BackendConfig, FlowBackend
from .torch_backend import TorchFlowBackend

BACKENDS: tuple[str, ...] = ("auto", "torch", "tensorrt", "onnxruntime")


@functools.cache
def tensorrt_available() -> bool:
    """Whether a TensorRT flavour (``tensorrt`` or ``tensorrt_rtx``) imports (tried once per process; a broken
    install counts as missing)."""
    return bool(installed_flavours())


def tensorrt_flavour_for(device: torch.device) -> tuple[str, str]:
    """``(flavour, reason)`` for the CUDA ``device`` (see ``core.trt_build.choose_flavour``); ``RuntimeError``
    with one clear line when no installed flavour supports the GPU."""
    properties = torch.cuda.get_device_properties(device)
    return choose_flavour(f"{properties.major}.{properties.minor}", properties.name)


def choose_backend(requested: str, device: torch.device) -> str:
    """Resolve ``backend=`` to a concrete backend name, logging once why ``auto`` chose what it chose.

    ``"tensorrt"`` without TensorRT or without a CUDA device, and ``"onnxruntime"`` without onnxruntime, raise
    a ``RuntimeError`` here (at construction), saying what to install.
    """
    if requested not in BACKENDS:
        raise ValueError(words(
            f"{{backend=requested}} is not supported; use one of {', '.join(BACKENDS)}.", requested=requested
        ))
    if requested == "tensorrt":
        if not tensorrt_available():
            raise RuntimeError(words(
                "{backend='tensorrt'} but TensorRT is not installed (import tensorrt failed). Install it with: "
                f"{TENSORRT_INSTALL_HINT}; or use {{backend='auto'}} or {{backend='torch'}}."
            ))
        if device.type != "cuda":
            raise RuntimeError(words(
                f"{{backend='tensorrt'}} needs a CUDA GPU, but the device is {device}.",
                "Use {device='cuda'} on a machine with an NVIDIA GPU, or {backend='torch'}.",
            ))
        flavour, reason = tensorrt_flavour_for(device)  # raises before any build when no flavour fits the GPU
        log_once(f"backend-tensorrt-{flavour}", f"optical flow backend: tensorrt, running on {reason}.", 20)
        return requested
    if requested == "onnxruntime":
        from .onnxruntime_backend import import_onnxruntime

        import_onnxruntime()
        return requested
    if requested != "auto":
        return requested
    if device.type != "cuda":
        log_once("backend-auto-cpu", "optical flow backend: torch (running on the CPU; TensorRT needs CUDA).", 20)
        return "torch"
    if tensorrt_available():
        try:
            flavour, reason = tensorrt_flavour_for(device)
        except RuntimeError as error:
            log_once("backend-auto-no-flavour", f"optical flow backend: torch, because {error}")
            return "torch"
        log_once(
            f"backend-auto-tensorrt-{flavour}",
            f"optical flow backend: tensorrt, running on {reason}. The first use at a new size builds an engine "
            "(minutes), cached after.",
            20,
        )
        return "tensorrt"
    log_once(
        "backend-auto-torch",
        f"optical flow backend: torch, because TensorRT is not installed. For the faster TensorRT path: "
        f"{TENSORRT_INSTALL_HINT}.",
    )
    return "torch"


def create_backend(name: str, config: BackendConfig, weights: WeightsSpec) -> FlowBackend:
    """Build the named backend (loads weights or engines; the expensive step the preprocessor defers to first use)."""
    if name == "torch":
        return TorchFlowBackend(config, weights)
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTFlowBackend

        return TensorRTFlowBackend(config, weights)
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeFlowBackend

        return OnnxRuntimeFlowBackend(config, weights)
    raise ValueError(f"backend={name!r} is not supported; use one of {', '.join(BACKENDS)}.")


__all__ = [
    "BACKENDS",
    "TENSORRT_INSTALL_HINT",
    "BackendConfig",
    "FlowBackend",
    "choose_backend",
    "create_backend",
    "tensorrt_available",
    "tensorrt_flavour_for",
]
