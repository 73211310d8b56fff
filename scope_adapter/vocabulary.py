"""How the core's messages name options inside Scope (imported from the hooks only: it imports the core).

The Flow pipeline's settings are its ``FlowConfig`` fields; the Flow (VACE) pipeline and the registry form
(``register_preprocessors``) have no settings, so their messages name none (a sentence naming an option is left
out, ``core.vocabulary``) and their ready lines state the settings in plain words.
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
        "model": "model", "height": "compute_height", "width": "compute_width",
        "num_flow_updates": "num_flow_updates", "flow_strength": "flow_strength", "normalization": "normalization",
        "max_flow": "max_flow", "first_frame": "first_frame",
    },
    values={"height": {None: str(NATIVE_SIZE)}, "width": {None: str(NATIVE_SIZE)}},
)
SCOPE_NO_SETTINGS = Vocabulary(face="Scope (no settings)", style="field", names={})


class ScopeFlowPreprocessor(OpticalFlowTensorRTPreprocessor):
    """The core's preprocessor as Scope's registry builds it (``cls()``), speaking :data:`SCOPE_NO_SETTINGS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("vocabulary", SCOPE_NO_SETTINGS)
        super().__init__(*args, **kwargs)


class ScopeFlowVacePreprocessor(ScopeFlowPreprocessor):
    """VACE's own flow annotator's maps (``preset="vace"``: RAFT Large, 20 updates, the input's own size, the first
    map repeated), as Scope's registry builds it (``cls()``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("preset", "vace")
        super().__init__(*args, **kwargs)
