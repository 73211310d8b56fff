"""Choosing the compute device, with one clear warning when CUDA was asked for but is missing."""

from __future__ import annotations

import torch

from .common.log import log_once
from .common.vocabulary import words


def resolve_device(requested: str | torch.device, strict: bool = False) -> torch.device:
    """Return the device to compute on.

    ``"cuda"`` (or ``"cuda:N"``) falls back to the CPU with one warning when CUDA is unavailable,
    unless ``strict`` is set, in which case a ``RuntimeError`` says what is missing.
    """
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise ValueError(words(
            "{device=requested} is not a valid torch device; use cuda, cuda:0 or cpu.", requested=str(requested)
        )) from error
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        if strict:
            raise RuntimeError(words(
                "{device=requested} was requested with {strict_device=True}, but CUDA is not available "
                "(no NVIDIA GPU or a CPU-only PyTorch build).",
                "Install a CUDA build of PyTorch or use {device='cpu'}.",
                requested=str(requested),
            ))
        log_once(
            "cuda-missing",
            words(
                f"CUDA is not available, so optical flow runs on the CPU instead of {str(requested)!r} (much slower).",
                "Pass {device='cpu'} to silence this, or {strict_device=True} to make it an error.",
            ),
        )
        return torch.device("cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(words(
            f"{{device=requested}} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).",
            requested=str(requested),
        ))
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def finish_queued_work(device: torch.device) -> None:
    """Wait until the work this thread queued on ``device``'s current stream (a warm-up's, a switch's) is done,
    so that it is counted in the loading step that queued it and the caller's first live call does not wait for
    it. Work of other streams is not waited for; on the CPU there is nothing to wait for."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
