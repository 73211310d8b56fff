"""Named bundles of options (``preset=``), and how they combine with options given alongside them.

``"vace"`` reproduces VACE's own flow annotator (ali-vilab/VACE, ``vace/annotators/flow.py``): RAFT Large with
20 updates at the video's own size (padded to a multiple of 8), each map scaled by that frame's largest motion,
and the first map repeated so the control video has as many frames as the input.

The rule, the same in every face: **a preset replaces the default values of its options; an option set to
anything but its default wins over the preset.** ``preset="vace", normalization="running"`` runs VACE's model
and size with running normalization; ``preset="vace", num_flow_updates=12`` still runs 20 updates, because 12 is
the default (a face cannot tell a default left alone from one typed in). ``"none"`` (or ``None``) is no preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model.specs import DEFAULT_MODEL
from .common.vocabulary import words

# The core's defaults of every option a preset may set (the preprocessor's keyword defaults).
OPTION_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "num_flow_updates": 12,
    "height": 512,
    "width": 512,
    "normalization": "per_frame",
    "first_frame": "zero",
}

PRESETS: dict[str, dict[str, Any]] = {
    "vace": {
        "model": "raft_large",
        "num_flow_updates": 20,
        "height": None,  # the input's own size, padded to a multiple of 8
        "width": None,
        "normalization": "per_frame",
        "first_frame": "repeat",
    },
}
NO_PRESET = "none"
PRESET_NAMES: tuple[str, ...] = (NO_PRESET, *PRESETS)


def apply_preset(preset: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (values of :data:`OPTION_DEFAULTS`' keys) with ``preset``'s values where they are defaults."""
    if preset is None or preset == NO_PRESET:
        return dict(options)
    if preset not in PRESETS:
        raise ValueError(words(
            "{preset=name} is not a preset; use one of " + ", ".join(PRESET_NAMES) + ".", name=preset
        ))
    return {
        key: PRESETS[preset][key] if key in PRESETS[preset] and value == OPTION_DEFAULTS[key] else value
        for key, value in options.items()
    }
