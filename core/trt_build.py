"""TensorRT 10 specifics: importing it, describing the GPU, building an engine from ONNX with polygraphy.

Nothing here is imported unless the TensorRT backend or an engine build is used. The build is polygraphy's
lazy loader chain ``engine_bytes_from_network(network_from_onnx_path(...), config=CreateConfig(...))`` with
one optimization profile over the frame axis (min 2 frames, opt = max = ``max_pairs + 1``), so a whole
chunk of pairs runs in one engine call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .log import logger
from .onnx_export import INPUT_NAME

TENSORRT_INSTALL_HINT = (
    "pip install tensorrt (from NVIDIA's package index: pip install --extra-index-url https://pypi.nvidia.com "
    "tensorrt), or pip install 'scope-optical-flow-tensorrt[tensorrt]'"
)
# TensorRT's scratch memory for tactics; capped at half the GPU's memory on small cards.
DEFAULT_WORKSPACE_BYTES = 4 << 30
MIN_FRAMES = 2


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or a ``RuntimeError`` that says how to install it."""
    try:
        import tensorrt
    except Exception as error:  # ImportError, or a broken install failing to load its libraries
        raise RuntimeError(
            f"TensorRT is not available ({type(error).__name__}: {error}). Install it with: {TENSORRT_INSTALL_HINT}; "
            "or use backend='torch'."
        ) from error
    return tensorrt


@dataclass(frozen=True)
class BuildTarget:
    """The GPU and TensorRT an engine is built for (an engine only runs where all of these match)."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    workspace_bytes: int


def build_target(device: torch.device) -> BuildTarget:
    """Describe ``device`` (a CUDA device) and the installed TensorRT."""
    trt = import_tensorrt()
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(
            f"TensorRT engines need a CUDA GPU, but the device is {device}. Use backend='torch' (or 'onnxruntime') "
            "on the CPU."
        )
    properties = torch.cuda.get_device_properties(device)
    return BuildTarget(
        gpu_name=properties.name,
        compute_capability=f"{properties.major}.{properties.minor}",
        tensorrt_version=str(trt.__version__),
        workspace_bytes=int(min(DEFAULT_WORKSPACE_BYTES, properties.total_memory // 2)),
    )


def build_engine_bytes(
    onnx_path: Path,
    *,
    height: int,
    width: int,
    fp16: bool,
    max_frames: int,
    workspace_bytes: int,
    device: torch.device,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (takes minutes; progress goes to the log)."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import (
        CreateConfig,
        PostprocessNetwork,
        Profile,
        engine_bytes_from_network,
        network_from_onnx_path,
    )

    opt_frames = max(MIN_FRAMES, max_frames)
    profile = Profile().add(
        INPUT_NAME,
        min=(MIN_FRAMES, 3, height, width),
        opt=(opt_frames, 3, height, width),
        max=(opt_frames, 3, height, width),
    )
    network = network_from_onnx_path(str(onnx_path))
    if fp16:
        network = PostprocessNetwork(network, _keep_correlation_fp32, name="KeepCorrelationFp32")
    config = CreateConfig(
        fp16=fp16,
        # "prefer": layers pinned to fp32 above stay fp32 unless TensorRT has no fp32 kernel for them.
        precision_constraints="prefer" if fp16 else None,
        profiles=[profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)},
        progress_monitor=_progress_monitor(trt),
    )
    logger.warning(
        "building a TensorRT engine for RAFT at %dx%d (%s, up to %d frames per call). A first build takes "
        "several minutes; it is cached afterwards.", height, width, "fp16" if fp16 else "fp32", opt_frames,
    )
    started = time.monotonic()
    with torch.cuda.device(device):
        serialized = engine_bytes_from_network(network, config=config)
    if not serialized:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above).")
    logger.warning("TensorRT engine built in %.0f s", time.monotonic() - started)
    return bytes(serialized)


def _keep_correlation_fp32(network: Any) -> Any:
    """Pin the correlation volume (matmul), its pyramid (pooling) and its lookup (grid sample) to fp32.

    The PyTorch backend keeps that part in fp32 too: fp16 correlation values lose the small differences the
    lookup relies on. The encoders and the update block (the bulk of the work) still run in fp16.
    """
    import tensorrt as trt

    pinned = {trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.POOLING, trt.LayerType.GRID_SAMPLE}
    count = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in pinned:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            count += 1
    logger.info("TensorRT network: %d correlation layers kept in fp32, the rest may use fp16", count)
    return network


def _progress_monitor(trt: ModuleType) -> Any:
    """A ``trt.IProgressMonitor`` that logs top-level build phases (INFO) and nested ones (DEBUG)."""

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._started[phase_name] = time.monotonic()
            level = logging.INFO if parent_phase is None else logging.DEBUG
            logger.log(level, "TensorRT build: %s (%d steps)...", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            elapsed = time.monotonic() - self._started.pop(phase_name, time.monotonic())
            logger.debug("TensorRT build: %s done in %.1f s", phase_name, elapsed)

    return BuildProgress()


def tensorrt_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` forwarding TensorRT's messages (warnings and up) to the package logger."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            logger.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    return ForwardingLogger()
