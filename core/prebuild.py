"""Compiled PyTorch kernels ahead of time (the CLI's ``prebuild --torch``): a preprocessor warmed up for the
chunk sizes a stream will use, its compiled kernels kept as :mod:`.compiled_cache` entries.

A module of its own above the preprocessor: the engine manager stays below it (the backends import the engine
manager, and the preprocessor imports the backends).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .artifacts.engine_manager import check_positive, cuda_device
from .model.compute_size import check_compute_size
from .model.specs import DEFAULT_MODEL
from .model.weights import WeightsSpec
from .preprocessor import OpticalFlowTensorRTPreprocessor


def prebuild_compiled(
    height: int,
    width: int,
    *,
    chunk_frames: tuple[int, ...] = (4, 16),
    fp16: bool = True,
    num_flow_updates: int = 12,
    max_pairs: int | None = None,
    weights: WeightsSpec = "DEFAULT",
    models_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cuda",
    model: str = DEFAULT_MODEL,
) -> list[Path]:
    """Compile the PyTorch path for streams fed ``chunk_frames`` frames per call and keep it as torch.compile's
    ``.torchcache`` entries (made by the compile process), so later processes load them instead of compiling;
    returns the entries' paths.
    Needs a CUDA GPU (the CPU runs eagerly, with nothing to compile)."""
    check_compute_size(height, width)
    check_positive("num_flow_updates", num_flow_updates)
    resolved = cuda_device(device, "compiling the PyTorch path's kernels", "")
    flow = OpticalFlowTensorRTPreprocessor(
        height, width, device=resolved, fp16=fp16, num_flow_updates=num_flow_updates, backend="torch",
        weights=weights, strict_device=True, max_batch_pairs=max_pairs, models_dir=models_dir, model=model,
        compile_in_background=False,  # the entries are what this call is for: wait for them
    )
    flow.warm_up(chunk_frames)
    backend = flow.load()
    cache = getattr(backend, "kernel_cache", None)
    if cache is None or not backend.compiled:
        raise RuntimeError("torch.compile failed or is unavailable here (see the log): nothing compiled to keep.")
    return sorted(cache.path(pairs) for pairs in backend.warmed_shapes if cache.path(pairs).is_file())
