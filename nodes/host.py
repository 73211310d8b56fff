"""What the nodes need from ComfyUI (device, models folder, progress bar, interruption), with plain fallbacks.

ComfyUI's modules (``comfy``, ``folder_paths``) are imported inside the functions, so this package imports and
runs in plain Python too (tests, scripts): then the device is CUDA when available else the CPU, weights and
engines live in the core's models folder, and progress/interruption are no-ops.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Protocol

import torch

from ..core.common.paths import plugin_models_dir

MODELS_FOLDER_NAME = "optical_flow"  # ComfyUI/models/optical_flow: RAFT .pth files, ONNX graphs, TensorRT engines
WEIGHTS_EXTENSIONS = (".pth", ".pt")


def _comfy(module: str) -> ModuleType | None:
    """``module`` from ComfyUI's process, or ``None`` outside ComfyUI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def compute_device() -> torch.device:
    """ComfyUI's torch device (respects ``--cpu``, ``--cuda-device``), else CUDA if available, else the CPU."""
    management = _comfy("comfy.model_management")
    if management is not None:
        return torch.device(management.get_torch_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def output_device() -> torch.device:
    """Where IMAGE/MASK/FLOW outputs live: ComfyUI's intermediate device (the CPU by default)."""
    management = _comfy("comfy.model_management")
    if management is not None:
        return torch.device(management.intermediate_device())
    return torch.device("cpu")


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception if the user pressed Cancel (no-op outside ComfyUI)."""
    management = _comfy("comfy.model_management")
    if management is not None:
        management.throw_exception_if_processing_interrupted()


class Progress(Protocol):
    def update(self, value: int) -> None: ...


class _NoProgress:
    def update(self, value: int) -> None:
        pass


def progress_bar(total: int) -> Progress:
    """ComfyUI's progress bar for this node (shown on the node in the UI), or a silent stand-in."""
    utils = _comfy("comfy.utils")
    if utils is not None:
        return utils.ProgressBar(total)
    return _NoProgress()


def models_folder() -> Path:
    """The folder for weights files and cached engines: ``ComfyUI/models/optical_flow`` inside ComfyUI
    (registered with ``folder_paths`` as ``optical_flow``; extra_model_paths.yaml may add more), else the
    core's folder (``~/.daydream-scope/models/optical-flow-tensorrt``)."""
    folder_paths = _register_folder()
    if folder_paths is None:
        return plugin_models_dir()
    return Path(folder_paths.get_folder_paths(MODELS_FOLDER_NAME)[0])


def weights_files() -> list[str]:
    """Weights files (``.pth``/``.pt``) in the models folder, as names relative to it."""
    folder_paths = _register_folder()
    if folder_paths is not None:
        return list(folder_paths.get_filename_list(MODELS_FOLDER_NAME))
    folder = plugin_models_dir()
    if not folder.is_dir():
        return []
    return sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*") if path.suffix.lower() in WEIGHTS_EXTENSIONS
    )


def weights_path(name: str) -> Path:
    """Full path of a weights file listed by :func:`weights_files`; a clear error if it is gone."""
    folder_paths = _register_folder()
    full = folder_paths.get_full_path(MODELS_FOLDER_NAME, name) if folder_paths is not None else None
    if full is None and folder_paths is None:
        candidate = plugin_models_dir() / name
        full = str(candidate) if candidate.is_file() else None
    if full is None:
        raise ValueError(
            f"weights file {name!r} was not found in the optical-flow models folder ({models_folder()}). "
            "Put a RAFT .pth file there (and refresh the page), or choose 'DEFAULT'."
        )
    return Path(full)


def _register_folder() -> ModuleType | None:
    """Register ``models/optical_flow`` with ComfyUI's ``folder_paths`` (once); ``None`` outside ComfyUI."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None or not hasattr(folder_paths, "folder_names_and_paths"):
        return None
    registry = folder_paths.folder_names_and_paths
    if MODELS_FOLDER_NAME not in registry or not registry[MODELS_FOLDER_NAME][0]:
        default = os.path.join(folder_paths.models_dir, MODELS_FOLDER_NAME)
        os.makedirs(default, exist_ok=True)  # so users find where weights go (and engines can be written)
        folder_paths.add_model_folder_path(MODELS_FOLDER_NAME, default)
    paths, extensions = registry[MODELS_FOLDER_NAME]
    if not extensions:  # a folder added by extra_model_paths.yaml or add_model_folder_path lists every file
        registry[MODELS_FOLDER_NAME] = (paths, set(WEIGHTS_EXTENSIONS))
    return folder_paths
