"""scope-optical-flow-tensorrt: real-time optical-flow maps (RAFT Small) for VACE video conditioning.

Public API: :class:`OpticalFlowTensorRTPreprocessor`. When this folder is loaded by ComfyUI as a custom node
pack, ``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` are exported too. Nothing heavy or host-specific
(TensorRT, ComfyUI, Scope) is imported here.
"""

from .core import OpticalFlowTensorRTPreprocessor

__all__ = ["OpticalFlowTensorRTPreprocessor"]
__version__ = "0.1.0"
