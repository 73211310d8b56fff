"""scope-optical-flow-tensorrt: real-time optical-flow maps (RAFT Small or Large) for VACE video conditioning.

Public API: :class:`OpticalFlowTensorRTPreprocessor`. When this folder is loaded by ComfyUI as a custom node
pack, it offers ComfyUI's typed nodes through ``comfy_entrypoint`` where ``comfy_api.latest`` imports (ComfyUI's
loader prefers ``NODE_CLASS_MAPPINGS`` when a module has them, so they are then absent), and the classic
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` otherwise. Nothing heavy or host-specific (TensorRT,
ComfyUI, Scope) is imported here.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import OpticalFlowTensorRTPreprocessor

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "OpticalFlowTensorRTPreprocessor", "comfy_entrypoint"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that host plugin modules (e.g. .scope_adapter, loaded by Scope's entry-point scan) can be
    # imported without importing torch; the core loads on first use of the class.
    if name == "OpticalFlowTensorRTPreprocessor":
        from .core import OpticalFlowTensorRTPreprocessor

        return OpticalFlowTensorRTPreprocessor
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):  # read by ComfyUI's custom-node loader
        from . import nodes

        if nodes.typed_schema_available():  # the loader then takes comfy_entrypoint (the typed nodes) instead
            raise AttributeError(f"{name}: this ComfyUI has the typed node schema; see comfy_entrypoint")
        return getattr(nodes, name)
    if name == "comfy_entrypoint":
        from . import nodes

        return nodes.comfy_entrypoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
