"""scope-optical-flow-tensorrt: real-time optical-flow maps (RAFT Small or Large) for VACE video conditioning.

Public API: :class:`OpticalFlowTensorRTPreprocessor`. When this folder is loaded by ComfyUI as a custom node
pack, ``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` are exported too. Nothing heavy or host-specific
(TensorRT, ComfyUI, Scope) is imported here.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import OpticalFlowTensorRTPreprocessor

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "OpticalFlowTensorRTPreprocessor"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that host plugin modules (e.g. .scope_adapter, loaded by Scope's entry-point scan) can be
    # imported without importing torch; the core loads on first use of the class.
    if name == "OpticalFlowTensorRTPreprocessor":
        from .core import OpticalFlowTensorRTPreprocessor

        return OpticalFlowTensorRTPreprocessor
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):  # read by ComfyUI's custom-node loader
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
