"""ComfyUI nodes over the core: Optical Flow (RAFT), Flow to Image, Flow Magnitude Mask.

Two forms, from one declaration of the inputs (:mod:`.inputs`): the classic ``NODE_CLASS_MAPPINGS`` /
``NODE_DISPLAY_NAME_MAPPINGS`` (:mod:`.definitions`) for ComfyUI without ``comfy_api.latest``, and the typed schema
(:mod:`.schema`, through ``comfy_entrypoint``) where it imports. ComfyUI's loader takes the classic mappings when a
module has them, so the repository root offers them only where the typed schema is unavailable
(:func:`typed_schema_available`). ComfyUI's own modules are imported only inside functions (see :mod:`.host`).
"""

from __future__ import annotations

import importlib.util

from .definitions import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS


def typed_schema_available() -> bool:
    """Whether this process has ComfyUI's typed node schema (``comfy_api.latest``)."""
    try:
        return importlib.util.find_spec("comfy_api.latest") is not None
    except (ImportError, ValueError):
        return False


async def comfy_entrypoint():  # type: ignore[no-untyped-def]
    """ComfyUI's entry point for typed nodes (``comfy_api.latest``)."""
    from .schema import comfy_entrypoint as entrypoint

    return await entrypoint()


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "comfy_entrypoint", "typed_schema_available"]
