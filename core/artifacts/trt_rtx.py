"""TensorRT for RTX specifics (module ``tensorrt_rtx``), the sibling of the shared build in :mod:`.trt_build`.

What differs from TensorRT 10/11, and only that:

- **Compute-capability targets.** Engines are compiled ahead of time for the capabilities listed
  (``IBuilderConfig.set_compute_capability``, through polygraphy's ``CreateConfigRTX``); on a GPU machine the
  target is that GPU, and :func:`.trt_build.portable_target` builds for a list without any GPU. The build
  itself is polygraphy's shared loader chain, strongly typed, as for TensorRT 10/11.
- **Runtime config.** Kernels are compiled just in time when a context is created and, for dynamic shapes,
  specialized per shape. ``DynamicShapesKernelSpecializationStrategy.EAGER`` compiles the specialized kernels
  of a shape at its first call, so the preprocessor's warm-up (one call per chunk size) pays for them; the
  default ``LAZY`` would compile them in the background and switch kernels during live calls. CUDA graphs:
  ``CudaGraphStrategy.WHOLE_GRAPH_CAPTURE`` when the backend's ``cuda_graphs`` option is on (TensorRT for
  RTX captures and replays its own launches per shape), ``DISABLED`` otherwise.
- **Runtime cache.** The JIT-compiled kernels are serialized (``IRuntimeCache``) and kept as a cache entry
  beside the engine (``<engine>.rtcache``, same key, sidecar, lock and atomic-write rules; see
  :mod:`.engine_manager`), so the next process skips the compilation.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any


def capability_name(capability: str) -> str:
    """``"8.9"`` -> ``"SM89"``, the ``tensorrt_rtx.ComputeCapability`` member name."""
    major, minor = capability.split(".")
    return f"SM{major}{minor}"


def rtx_capabilities(trt: ModuleType) -> tuple[str, ...]:
    """The compute capabilities this TensorRT for RTX compiles for (``("7.5", "8.0", ..., "12.0", ...)``)."""
    found = []
    for name in trt.ComputeCapability.__members__:
        match = re.fullmatch(r"SM(\d+)(\d)", name)
        if match:
            found.append(f"{match.group(1)}.{match.group(2)}")
    return tuple(found)


def parse_targets(text: str) -> tuple[str, ...]:
    """``"sm86,sm89,sm120"`` (or ``"8.6,8.9,12.0"``, ``"86 120"``) -> ``("8.6", "8.9", "12.0")``."""
    targets = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        match = re.fullmatch(r"(?:sm_?)?(\d+)\.?(\d)", item.strip().lower())
        if match is None:
            raise ValueError(f"{item!r} is not a compute capability; write them like sm86,sm89,sm120 (or 8.6,12.0).")
        targets.append(f"{int(match.group(1))}.{match.group(2)}")
    if not targets:
        raise ValueError("no compute capability given; write them like sm86,sm89,sm120.")
    return tuple(dict.fromkeys(targets))


def check_targets(trt: ModuleType, targets: tuple[str, ...]) -> tuple[str, ...]:
    """``targets`` sorted, or a ``ValueError`` naming those this TensorRT for RTX cannot compile for."""
    supported = rtx_capabilities(trt)
    unknown = [target for target in targets if target not in supported]
    if unknown or not targets:
        raise ValueError(
            f"TensorRT for RTX {trt.__version__} cannot compile for compute capability {', '.join(unknown) or '(none)'};"
            f" it supports {', '.join(supported)} (9.0, H100/H200, needs TensorRT 10/11)."
        )
    return tuple(sorted(set(targets), key=lambda target: tuple(map(int, target.split(".")))))


def create_config(trt: ModuleType, compute_targets: tuple[str, ...], **settings: Any) -> Any:
    """polygraphy's ``CreateConfigRTX`` loader for ``compute_targets`` (the shared ``CreateConfig`` settings
    pass through)."""
    from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

    targets = [tuple(int(part) for part in target.split(".")) for target in check_targets(trt, compute_targets)]
    return CreateConfigRTX(compute_capabilities=targets, **settings)


def create_context(trt: ModuleType, engine: Any, runtime_cache: bytes | None, cuda_graphs: bool) -> tuple[Any, Any]:
    """An execution context of ``engine`` configured as the module docstring says, and its runtime config.

    ``runtime_cache`` (from an earlier :func:`serialize_runtime_cache`) is loaded when TensorRT for RTX accepts
    it (it rejects blobs of another version, GPU or driver, and the kernels are compiled again).
    """
    config = engine.create_runtime_config()
    config.dynamic_shapes_kernel_specialization_strategy = trt.DynamicShapesKernelSpecializationStrategy.EAGER
    config.cuda_graph_strategy = (trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE if cuda_graphs
                                  else trt.CudaGraphStrategy.DISABLED)
    cache = config.create_runtime_cache()
    if runtime_cache and not cache.deserialize(runtime_cache):
        from ..common.log import logger

        logger.info("the TensorRT for RTX runtime cache does not fit this GPU or driver; kernels are compiled again")
    config.set_runtime_cache(cache)
    return engine.create_execution_context(config), config


def serialize_runtime_cache(config: Any) -> bytes:
    """The runtime cache of a context's runtime config, as bytes (empty when it holds nothing)."""
    cache = config.get_runtime_cache()
    data = cache.serialize() if cache is not None else None
    return bytes(memoryview(data)) if data is not None else b""
