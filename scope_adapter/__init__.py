"""Daydream Scope plugin: the optical-flow preprocessor as "Flow" in Scope's VACE conditioning dropdown.

Scope finds this module through the entry-point group ``scope`` (see ``pyproject.toml``) and calls its hooks:

- ``register_preprocessors(register)``, in Scope builds with the VACE preprocessor registry (January 2026):
  registers the core's :class:`OpticalFlowTensorRTPreprocessor` (as :class:`.vocabulary.ScopeFlowPreprocessor`,
  whose messages name no options: this form has no settings) as ``("flow", "Flow")``, and VACE's annotator's
  maps as ``("flow-vace", "Flow (VACE)")``. Scope builds them with no arguments and calls them with its
  ``PreprocessorContext`` once per chunk.
- ``register_pipelines(register)``, in Scope releases where preprocessors are pipelines marked
  ``usage=[UsageType.PREPROCESSOR]`` (v0.1.0-beta.3 and later): registers :class:`.pipeline.FlowPipeline` and
  :class:`.pipeline.FlowVacePipeline`, thin wrappers around the same preprocessor. In a Scope without that API the
  hook registers nothing.

Importing this module imports neither torch, the core nor Scope: they load inside the hooks, when Scope asks.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import pluggy

PREPROCESSOR_ID = "flow"
DISPLAY_NAME = "Flow"
# VACE's own flow annotator's maps: a preprocessor of its own, because a preset field could not show its values in
# the fields it overrides.
VACE_PREPROCESSOR_ID = "flow-vace"
VACE_DISPLAY_NAME = "Flow (VACE)"


def _scope_hookimpl() -> pluggy.HookimplMarker:
    """Scope's own marker when Scope has loaded it (it is loading us), else the equivalent ``"scope"`` marker."""
    hookspecs = sys.modules.get("scope.core.plugins.hookspecs")
    marker = getattr(hookspecs, "hookimpl", None)
    if isinstance(marker, pluggy.HookimplMarker) and marker.project_name == "scope":
        return marker
    return pluggy.HookimplMarker("scope")


hookimpl = _scope_hookimpl()


# optionalhook: a Scope version that lacks one of these hooks still validates the plugin.
@hookimpl(optionalhook=True)
def register_preprocessors(register: Callable[[str, str, type], Any]) -> None:
    """Register the preprocessor class for Scope's VACE conditioning dropdown: the core's class, whose messages
    name no options (this form has no settings to set)."""
    from .vocabulary import ScopeFlowPreprocessor, ScopeFlowVacePreprocessor

    register(PREPROCESSOR_ID, DISPLAY_NAME, ScopeFlowPreprocessor)
    register(VACE_PREPROCESSOR_ID, VACE_DISPLAY_NAME, ScopeFlowVacePreprocessor)


@hookimpl(optionalhook=True)
def register_pipelines(register: Callable[[type], Any]) -> None:
    """Register the preprocessor pipeline where Scope has preprocessor pipelines; otherwise do nothing."""
    if not scope_has_preprocessor_pipelines():
        return
    from .pipeline import FlowPipeline, FlowVacePipeline

    register(FlowPipeline)
    register(FlowVacePipeline)


def scope_has_preprocessor_pipelines() -> bool:
    """Whether the installed Scope marks pipelines as preprocessors (``UsageType.PREPROCESSOR``)."""
    try:
        from scope.core.pipelines.base_schema import UsageType
    except ImportError:
        return False
    return hasattr(UsageType, "PREPROCESSOR")


__all__ = ["DISPLAY_NAME", "PREPROCESSOR_ID", "VACE_DISPLAY_NAME", "VACE_PREPROCESSOR_ID", "hookimpl",
           "register_pipelines", "register_preprocessors"]
