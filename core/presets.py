"""Named bundles of options (``preset=``), and how they combine with options given alongside them.

``"vace"`` reproduces VACE's own flow annotator (ali-vilab/VACE, ``vace/annotators/flow.py``): RAFT Large with
20 updates at the video's own size (padded to a multiple of 8), each map scaled by that frame's largest motion,
and the first map repeated so the control video has as many frames as the input.

The rule: **a preset replaces the options it covers, except those the caller set.** Where the caller can tell
which options were given (the command line: flags typed on it), those win whatever their value; the Python API
cannot tell a keyword left at its default from one passed with the default value, so there an option set to
anything but its default wins. ``preset="vace", normalization="running"`` runs VACE's model and size with
running normalization; in Python ``preset="vace", num_flow_updates=12`` still runs 20 updates (12 is the default),
on the command line ``--preset vace --updates 12`` runs 12. ``"none"`` (or ``None``) is no preset.

The ComfyUI nodes and Scope's settings have no preset field, because a form cannot show the preset's values in
the fields it overrides: VACE's annotator is a node and a pipeline of its own there, carrying only the settings
that still apply.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
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


def apply_preset(
    preset: str | None, options: Mapping[str, Any], given: Collection[str] | None = None
) -> dict[str, Any]:
    """``options`` (values of :data:`OPTION_DEFAULTS`' keys) with ``preset``'s values in place of those the caller
    did not set: ``given`` names the options set explicitly (they win whatever their value); ``None``: those whose
    value differs from its default (for callers that cannot tell)."""
    if preset is None or preset == NO_PRESET:
        return dict(options)
    if preset not in PRESETS:
        raise ValueError(words(
            "{preset=name} is not a preset; use one of " + ", ".join(PRESET_NAMES) + ".", name=preset
        ))
    chosen = set(given) if given is not None else {key for key, value in options.items()
                                                     if value != OPTION_DEFAULTS[key]}
    return {
        key: PRESETS[preset][key] if key in PRESETS[preset] and key not in chosen else value
        for key, value in options.items()
    }
