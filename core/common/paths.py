"""Where models, ONNX graphs and TensorRT engines live on disk."""

from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR_ENV = "DAYDREAM_SCOPE_MODELS_DIR"
PLUGIN_SUBDIR = "optical-flow-tensorrt"


def models_root() -> Path:
    """Scope's models root: ``$DAYDREAM_SCOPE_MODELS_DIR`` or ``~/.daydream-scope/models``."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".daydream-scope" / "models"


def plugin_models_dir(models_dir: str | os.PathLike[str] | None = None) -> Path:
    """This plugin's folder: ``<models root>/optical-flow-tensorrt`` unless ``models_dir`` names another."""
    if models_dir is not None:
        return Path(models_dir).expanduser()
    return models_root() / PLUGIN_SUBDIR
