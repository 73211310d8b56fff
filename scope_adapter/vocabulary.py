"""How the core's messages name options inside Scope (imported from the hooks only: it imports the core).

The pipeline form's settings are its ``FlowConfig`` fields; the registry form (``register_preprocessors``) has
no settings, so its messages name none (a sentence naming an option is left out, ``core.vocabulary``).
"""

from __future__ import annotations

from typing import Any

from ..core import OpticalFlowTensorRTPreprocessor
from ..core.common.vocabulary import Vocabulary

NATIVE_SIZE = 0  # compute_height = compute_width = 0: the input's own size

SCOPE_SETTINGS = Vocabulary(
    face="Scope settings",
    style="field",
    names={
        "preset": "preset", "model": "model", "height": "compute_height", "width": "compute_width",
        "num_flow_updates": "num_flow_updates", "flow_strength": "flow_strength", "normalization": "normalization",
        "first_frame": "first_frame",
    },
    values={"height": {None: str(NATIVE_SIZE)}, "width": {None: str(NATIVE_SIZE)}},
)
SCOPE_NO_SETTINGS = Vocabulary(face="Scope (VACE preprocessor registry)", style="field", names={})


class ScopeFlowPreprocessor(OpticalFlowTensorRTPreprocessor):
    """The core's preprocessor as Scope's registry builds it (``cls()``), speaking :data:`SCOPE_NO_SETTINGS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("vocabulary", SCOPE_NO_SETTINGS)
        super().__init__(*args, **kwargs)
