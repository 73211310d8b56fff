"""ComfyUI nodes over the core: Optical Flow (RAFT), Flow to Image, Flow Magnitude Mask.

ComfyUI reads ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` from the repository root, which takes
them from here. ComfyUI's own modules are imported only inside functions (see :mod:`.host`).
"""

from .definitions import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
