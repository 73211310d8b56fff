"""TensorRT flavours and the engine build: importing TensorRT, choosing the flavour, describing the target,
building an engine from ONNX with polygraphy.

Two flavours serve the ``tensorrt`` backend (:data:`FLAVOURS`, in order of preference): TensorRT 10/11
(module ``tensorrt``; compute capability 7.5 and up, data-centre GPUs included) and TensorRT for RTX (module
``tensorrt_rtx``; the RTX compute capabilities its ``ComputeCapability`` enum lists, 7.5 to 12.x, *not* 9.0,
so no H100/H200). ``$SCOPE_OPTICAL_FLOW_TENSORRT`` (``tensorrt`` or ``tensorrt_rtx``) picks one. Everything
TensorRT-for-RTX-specific (compute-capability targets, runtime config, runtime cache) lives in the sibling
:mod:`.trt_rtx`; the build below is shared, as polygraphy shares its loaders between the two.

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

import contextlib
import importlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..common.log import logger
from .onnx_export import INPUT_NAME, read_precision

TENSORRT_INSTALL_HINT = (
    "pip install tensorrt (from NVIDIA's package index: pip install --extra-index-url https://pypi.nvidia.com "
    "tensorrt), or pip install 'scope-optical-flow-tensorrt[tensorrt]'; on an RTX GPU (compute capability 7.5 "
    "to 12.x, not 9.0) also TensorRT for RTX from PyPI: pip install 'scope-optical-flow-tensorrt[tensorrt-rtx]'"
)
FLAVOUR_ENV = "SCOPE_OPTICAL_FLOW_TENSORRT"
TENSORRT = "tensorrt"  # TensorRT 10/11
TENSORRT_RTX = "tensorrt_rtx"  # TensorRT for RTX
FLAVOURS: tuple[str, ...] = (TENSORRT, TENSORRT_RTX)  # preference order when several can serve a GPU
FLAVOUR_TITLES = {TENSORRT: "TensorRT 10/11", TENSORRT_RTX: "TensorRT for RTX"}
TENSORRT_MIN_CAPABILITY = (7, 5)  # TensorRT 10 dropped Maxwell, Pascal and Volta
# TensorRT's scratch memory for tactics (the builder's WORKSPACE pool limit); capped at half the GPU's memory on
# small cards.
DEFAULT_WORKSPACE_BYTES = 4 << 30
# TensorRT for RTX asks its workspace for about twice the fp32 correlation volume per frame pair, for the pairs
# rounded up to a power of two (measured with 1.7 at 512x512: 1.09 GB for 8 pairs, 2.17 GB for 12, 4.31 GB for 23
# and for 24, the default), and a build that asks for more than the pool's limit fails ("OutOfMemory (Requested
# size was ...)"), where TensorRT 10/11 picks another tactic. The default pairs per call keep the correlation
# pyramid within 2 GiB (core.model.compute_size), so 8 GiB covers them at every size. It is a limit, not an
# allocation: the 512x512 build without a GPU peaked at 1.1 GB of host memory.
RTX_WORKSPACE_BYTES = 8 << 30
MIN_FRAMES = 2
# Goes into the engine cache key: engines built by an older recipe (weakly typed, fp16 builder flag with the
# correlation layers pinned to fp32) are rebuilt, never loaded.
BUILD_RECIPE = "strongly-typed-v1"
# The first polygraphy release on PyPI whose default build path (CreateConfig, the build-config log) touches
# none of the APIs TensorRT 11 removed (0.49.x reads ILayer.precision_is_set unguarded while configuring);
# strongly_typed itself exists since polygraphy 0.48.
POLYGRAPHY_FOR_TENSORRT_11 = (0, 50, 3)


def import_tensorrt(flavour: str = TENSORRT) -> ModuleType:
    """``import tensorrt`` (or ``tensorrt_rtx``), or a ``RuntimeError`` that says how to install it."""
    check_flavour_name(flavour)
    try:
        module = importlib.import_module(flavour)
    except Exception as error:  # ImportError, or a broken install failing to load its libraries
        raise RuntimeError(
            f"{FLAVOUR_TITLES[flavour]} is not available ({type(error).__name__}: {error}). Install it with: "
            f"{TENSORRT_INSTALL_HINT}; or use backend='torch'."
        ) from error
    return module


def check_flavour_name(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"TensorRT flavour {flavour!r} is not known; use one of {', '.join(FLAVOURS)} "
                         f"(e.g. ${FLAVOUR_ENV}=tensorrt_rtx).")


def flavour_available(flavour: str) -> bool:
    """Whether ``flavour`` imports (a broken install counts as missing)."""
    try:
        import_tensorrt(flavour)
    except RuntimeError:
        return False
    return True


def installed_flavours() -> tuple[str, ...]:
    """The flavours that import here, in preference order."""
    return tuple(flavour for flavour in FLAVOURS if flavour_available(flavour))


def require_tensorrt() -> None:
    """A ``RuntimeError`` with the install hint when no flavour is installed."""
    if not installed_flavours():
        import_tensorrt()  # raises, naming TensorRT 10/11's import error and how to install either flavour


def supported_capabilities(flavour: str) -> tuple[str, ...] | None:
    """The compute capabilities ``flavour`` builds and runs engines for (``None``: every one from 7.5 up)."""
    if flavour == TENSORRT:
        return None
    from .trt_rtx import rtx_capabilities

    return rtx_capabilities(import_tensorrt(TENSORRT_RTX))


def flavour_supports(flavour: str, capability: str) -> bool:
    supported = supported_capabilities(flavour)
    if supported is None:
        return _version_tuple(capability) >= TENSORRT_MIN_CAPABILITY
    return capability in supported


def choose_flavour(capability: str, gpu_name: str = "this GPU") -> tuple[str, str]:
    """The TensorRT flavour for a GPU of ``capability`` (``"8.9"``) and why, as ``(flavour, reason)``.

    ``$SCOPE_OPTICAL_FLOW_TENSORRT`` decides when set; otherwise the first of :data:`FLAVOURS` that is
    installed and supports the GPU. Raises ``RuntimeError`` (one line, before any build) when none can serve.
    """
    wanted = os.environ.get(FLAVOUR_ENV, "").strip()
    candidates = FLAVOURS
    if wanted:
        check_flavour_name(wanted)
        candidates = (wanted,)
    skipped: list[str] = []
    for flavour in candidates:
        title = FLAVOUR_TITLES[flavour]
        if not flavour_available(flavour):
            skipped.append(f"{title} is not installed")
            continue
        if not flavour_supports(flavour, capability):
            supported = supported_capabilities(flavour) or ()
            listed = ", ".join(supported) if supported else f"{'.'.join(map(str, TENSORRT_MIN_CAPABILITY))} and up"
            skipped.append(f"{title} does not support compute capability {capability} (it supports {listed})")
            continue
        why = f"${FLAVOUR_ENV}={wanted}" if wanted else ("; ".join(skipped + [f"{title} is installed"]))
        return flavour, f"{title} for {gpu_name} (compute capability {capability}): {why}"
    raise RuntimeError(
        f"no installed TensorRT flavour can serve {gpu_name} (compute capability {capability}): "
        f"{'; '.join(skipped)}. Install one that can ({TENSORRT_INSTALL_HINT}), or use backend='torch'."
    )


@dataclass(frozen=True)
class BuildTarget:
    """The GPU(s) and TensorRT an engine is built for (an engine only runs where all of these match).

    ``compute_targets`` lists the compute capabilities a TensorRT-for-RTX engine is compiled for (empty for
    TensorRT 10/11, whose engines are for the GPU that built them); a portable engine (built without a GPU, see
    :func:`portable_target`) has ``gpu_name`` ``"portable"`` and no ``compute_capability``.
    """

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    workspace_bytes: int
    flavour: str = TENSORRT
    compute_targets: tuple[str, ...] = ()

    @property
    def portable(self) -> bool:
        return self.gpu_name == PORTABLE_GPU_NAME


PORTABLE_GPU_NAME = "portable"


def build_target(device: torch.device, flavour: str | None = None) -> BuildTarget:
    """Describe ``device`` (a CUDA device) and the TensorRT flavour for it (``None``: :func:`choose_flavour`)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(
            f"TensorRT engines need a CUDA GPU, but the device is {device}. Use backend='torch' (or 'onnxruntime') "
            "on the CPU."
        )
    properties = torch.cuda.get_device_properties(device)
    capability = f"{properties.major}.{properties.minor}"
    if flavour is None:
        flavour = choose_flavour(capability, properties.name)[0]
    trt = import_tensorrt(flavour)
    return BuildTarget(
        gpu_name=properties.name,
        compute_capability=capability,
        tensorrt_version=str(trt.__version__),
        workspace_bytes=int(min(workspace_limit(flavour), properties.total_memory // 2)),
        flavour=flavour,
        compute_targets=(capability,) if flavour == TENSORRT_RTX else (),
    )


def portable_target(compute_targets: tuple[str, ...]) -> BuildTarget:
    """A TensorRT-for-RTX target for GPUs of ``compute_targets`` (``("8.6", "12.0")``), built without a GPU."""
    from .trt_rtx import check_targets

    trt = import_tensorrt(TENSORRT_RTX)
    targets = check_targets(trt, compute_targets)
    return BuildTarget(PORTABLE_GPU_NAME, "", str(trt.__version__), workspace_limit(TENSORRT_RTX), TENSORRT_RTX,
                       targets)


def workspace_limit(flavour: str) -> int:
    """The builder's workspace pool limit for ``flavour`` (before the cap at half a GPU's memory)."""
    return RTX_WORKSPACE_BYTES if flavour == TENSORRT_RTX else DEFAULT_WORKSPACE_BYTES


# polygraphy's modules that keep a module-level handle of TensorRT (``trt``), rebound for the other flavour.
_POLYGRAPHY_TRT_HANDLES = ("polygraphy.util.util", "polygraphy.backend.trt.util", "polygraphy.backend.trt.loader",
                           "polygraphy.backend.trt.config", "polygraphy.backend.tensorrt_rtx.config",
                           "polygraphy.datatype.tensorrt")
_binding = threading.RLock()


@contextlib.contextmanager
def bind_polygraphy(flavour: str) -> Iterator[None]:
    """Point polygraphy's TensorRT handles at ``flavour``'s module inside the block, and back afterwards.

    polygraphy picks ``tensorrt`` or ``tensorrt_rtx`` once, from ``$POLYGRAPHY_USE_TENSORRT_RTX`` at its first
    import, and keeps module-level handles. A build with the other flavour rebinds those handles (and polygraphy's
    ``USE_TENSORRT_RTX``) for its own duration only, never the environment, so the host's own polygraphy use gets
    its flavour back when the build ends. Our builds take turns (a lock); a host thread that uses polygraphy while
    one runs would see the build's flavour, so a host mixing both builds its own engines between ours.
    """
    from polygraphy import config as polygraphy_config

    wanted = flavour == TENSORRT_RTX
    with _binding:
        if polygraphy_config.USE_TENSORRT_RTX == wanted:
            yield
            return
        from polygraphy.mod.trt_importer import lazy_import_trt

        modules = [importlib.import_module(name) for name in _POLYGRAPHY_TRT_HANDLES]
        trt_util = importlib.import_module("polygraphy.backend.trt.util")
        handles, trt_logger = [module.trt for module in modules], trt_util.TRT_LOGGER
        polygraphy_config.USE_TENSORRT_RTX = wanted
        try:
            handle = lazy_import_trt()
            for module in modules:
                module.trt = handle
            trt_util.TRT_LOGGER = None  # rebuilt from the bound module
            yield
        finally:
            polygraphy_config.USE_TENSORRT_RTX = not wanted
            for module, previous in zip(modules, handles):
                module.trt = previous
            trt_util.TRT_LOGGER = trt_logger


def build_engine_bytes(
    onnx_path: Path,
    *,
    height: int,
    width: int,
    fp16: bool,
    max_frames: int,
    workspace_bytes: int,
    device: torch.device | None,
    flavour: str = TENSORRT,
    compute_targets: tuple[str, ...] = (),
) -> bytes:
    """Parse ``onnx_path`` as a strongly typed network and build a serialized engine (takes minutes; progress
    goes to the log). The precision comes from the graph's types: ``fp16`` says which graph ``onnx_path`` must
    be (its recorded precision is checked, so an fp32 graph never becomes an "fp16" engine).

    ``flavour`` ``tensorrt_rtx`` compiles for ``compute_targets`` (:mod:`.trt_rtx`); with ``device=None`` the
    build runs without a GPU (TensorRT for RTX only)."""
    wanted = "fp16" if fp16 else "fp32"
    recorded = read_precision(onnx_path)
    if recorded != wanted:
        raise RuntimeError(
            f"{onnx_path} is {'an ' + recorded if recorded else 'an unlabelled'} graph, but an {wanted} engine was "
            "requested; delete it (or run clear_cache()) so it is exported again."
        )
    trt = import_tensorrt(flavour)
    if flavour == TENSORRT:
        check_polygraphy(str(trt.__version__))
    with bind_polygraphy(flavour):  # polygraphy's handles point at this flavour for this build only
        return _build(trt, onnx_path, height=height, width=width, max_frames=max_frames, precision=wanted,
                      workspace_bytes=workspace_bytes, device=device, flavour=flavour, compute_targets=compute_targets)


def _build(trt: ModuleType, onnx_path: Path, *, height: int, width: int, max_frames: int, precision: str,
           workspace_bytes: int, device: torch.device | None, flavour: str, compute_targets: tuple[str, ...]) -> bytes:
    """:func:`build_engine_bytes` once polygraphy is bound to ``flavour``."""
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    opt_frames = max(MIN_FRAMES, max_frames)
    profile = Profile().add(
        INPUT_NAME,
        min=(MIN_FRAMES, 3, height, width),
        opt=(opt_frames, 3, height, width),
        max=(opt_frames, 3, height, width),
    )
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    settings: dict[str, Any] = dict(
        profiles=[profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)},
        progress_monitor=_progress_monitor(trt),
    )
    if flavour == TENSORRT_RTX:
        from .trt_rtx import create_config

        config = create_config(trt, compute_targets, **settings)
    else:
        config = CreateConfig(**settings)
    targets = f", for compute capabilities {', '.join(compute_targets)}" if compute_targets else ""
    logger.warning(
        "building a %s engine for RAFT at %dx%d (%s, up to %d frames per call%s). A first build can take "
        "minutes; it is cached afterwards.", FLAVOUR_TITLES[flavour], height, width, precision, opt_frames, targets,
    )
    started = time.monotonic()
    with torch.cuda.device(device) if device is not None else contextlib.nullcontext():
        try:
            serialized = engine_bytes_from_network(network, config=config)
        except Exception as error:  # polygraphy raises PolygraphyException("Invalid Engine ...") on a failed build
            raise RuntimeError(f"{FLAVOUR_TITLES[flavour]} could not build an engine from {onnx_path}: {error} "
                               "(see the TensorRT log above).") from error
    if not serialized:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above).")
    logger.info("%s engine built in %.0f s", FLAVOUR_TITLES[flavour], time.monotonic() - started)
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
