"""TensorRT 10 and 11 specifics: importing it, describing the GPU, building an engine from ONNX with polygraphy.

Nothing here is imported unless the TensorRT backend or an engine build is used. The build is polygraphy's
lazy loader chain ``engine_bytes_from_network(network_from_onnx_path(path, strongly_typed=True),
config=CreateConfig(profiles=..., memory_pool_limits=..., progress_monitor=...))`` with one optimization
profile over the frame axis (min 2 frames, opt = max = ``max_pairs + 1``), so a whole chunk of pairs runs in
one engine call.

The network is strongly typed: every tensor has the type the ONNX graph gives it, so the graph decides the
precision (``core.onnx_export`` writes an fp32 and an fp16 graph). No precision builder flags
(``BuilderFlag.FP16``, ``OBEY/PREFER_PRECISION_CONSTRAINTS``) and no per-layer ``precision`` /
``set_output_type`` calls: TensorRT 11 removed them, and TensorRT 10 does not allow per-layer precision on
strongly typed networks. TensorRT 10 honours the ``STRONGLY_TYPED`` creation flag polygraphy sets; TensorRT
11 keeps that flag (deprecated, ignored) because every network is strongly typed there. polygraphy's
``CreateConfig`` leaves TF32 off, so fp32 tensors (the whole fp32 graph, the correlation of the fp16 one)
run in full fp32.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .log import logger
from .onnx_export import INPUT_NAME, read_precision

TENSORRT_INSTALL_HINT = (
    "pip install tensorrt (from NVIDIA's package index: pip install --extra-index-url https://pypi.nvidia.com "
    "tensorrt), or pip install 'scope-optical-flow-tensorrt[tensorrt]'"
)
# TensorRT's scratch memory for tactics; capped at half the GPU's memory on small cards.
DEFAULT_WORKSPACE_BYTES = 4 << 30
MIN_FRAMES = 2
# Goes into the engine cache key: engines built by an older recipe (weakly typed, fp16 builder flag with the
# correlation layers pinned to fp32) are rebuilt, never loaded.
BUILD_RECIPE = "strongly-typed-v1"
# The first polygraphy release on PyPI whose default build path (CreateConfig, the build-config log) touches
# none of the APIs TensorRT 11 removed (0.49.x reads ILayer.precision_is_set unguarded while configuring);
# strongly_typed itself exists since polygraphy 0.48.
POLYGRAPHY_FOR_TENSORRT_11 = (0, 50, 3)


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
    """Parse ``onnx_path`` as a strongly typed network and build a serialized engine (takes minutes; progress
    goes to the log). The precision comes from the graph's types: ``fp16`` says which graph ``onnx_path`` must
    be (its recorded precision is checked, so an fp32 graph never becomes an "fp16" engine)."""
    wanted = "fp16" if fp16 else "fp32"
    recorded = read_precision(onnx_path)
    if recorded != wanted:
        raise RuntimeError(
            f"{onnx_path} is {'an ' + recorded if recorded else 'an unlabelled'} graph, but an {wanted} engine was "
            "requested; delete it (or run clear_cache()) so it is exported again."
        )
    trt = import_tensorrt()
    check_polygraphy(str(trt.__version__))
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    opt_frames = max(MIN_FRAMES, max_frames)
    profile = Profile().add(
        INPUT_NAME,
        min=(MIN_FRAMES, 3, height, width),
        opt=(opt_frames, 3, height, width),
        max=(opt_frames, 3, height, width),
    )
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    config = CreateConfig(
        profiles=[profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)},
        progress_monitor=_progress_monitor(trt),
    )
    logger.warning(
        "building a TensorRT engine for RAFT at %dx%d (%s, up to %d frames per call). A first build takes "
        "several minutes; it is cached afterwards.", height, width, wanted, opt_frames,
    )
    started = time.monotonic()
    with torch.cuda.device(device):
        serialized = engine_bytes_from_network(network, config=config)
    if not serialized:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above).")
    logger.warning("TensorRT engine built in %.0f s", time.monotonic() - started)
    return bytes(serialized)


def check_polygraphy(tensorrt_version: str) -> None:
    """Raise ``RuntimeError`` when the installed polygraphy is too old to build with this TensorRT."""
    import polygraphy

    if _version_tuple(tensorrt_version)[:1] < (11,):
        return
    installed = str(getattr(polygraphy, "__version__", "0"))
    if _version_tuple(installed) < POLYGRAPHY_FOR_TENSORRT_11:
        needed = ".".join(map(str, POLYGRAPHY_FOR_TENSORRT_11))
        raise RuntimeError(
            f"TensorRT {tensorrt_version} needs polygraphy >= {needed} to build engines (older releases call "
            f"APIs TensorRT 11 removed), but polygraphy {installed} is installed. Fix: pip install -U polygraphy."
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"11.4.0.post1"`` -> ``(11, 4, 0)``: the leading numeric release parts."""
    parts: list[int] = []
    for part in version.split(".")[:3]:
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


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
