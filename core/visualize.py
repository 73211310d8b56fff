"""Flow to RGB with the Middlebury colour wheel (torchvision ``flow_to_image`` semantics), on the GPU.

Hue is the direction, saturation the magnitude, zero flow is white. The magnitude is divided by a *scale*
(pixels) and multiplied by ``flow_strength``::

    saturation = clamp(flow_strength * |flow| / scale, 0, 1)

With ``normalization="per_frame"`` the scale is each frame's largest magnitude, so ``flow_strength=1``
reproduces ``torchvision.utils.flow_to_image`` (up to its rounding to uint8), ``flow_strength=2`` saturates
every motion at least half as large as the frame's largest, and ``flow_strength=0.5`` halves all saturation.
``"fixed"`` uses a constant scale (``max_flow`` pixels), ``"running"`` a running maximum that jumps up at
once and decays by ``decay`` per frame, so colours stay stable from frame to frame in video.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .common.vocabulary import option_name, words

Normalization = Literal["per_frame", "fixed", "running"]
NORMALIZATIONS: tuple[str, ...] = ("per_frame", "fixed", "running")
FLOW_STRENGTH_RANGE = (0.0, 2.0)
# Scales below this many pixels are treated as "no motion" in running mode, so sensor noise in a static
# scene stays near white instead of being stretched to full saturation.
RUNNING_MIN_SCALE = 1.0

_wheels: dict[tuple[str, torch.dtype], Tensor] = {}


def colorwheel(device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """The 55-colour Middlebury wheel as ``[55, 3]`` in ``[0, 1]`` (cached per device)."""
    key = (str(device), dtype)
    wheel = _wheels.get(key)
    if wheel is None:
        # Same integer steps as torchvision's _make_colorwheel: rising 255*i/n, falling 255 - 255*i/n (floored).
        rows: list[tuple[int, int, int]] = []
        for count, (red, green, blue) in ((15, "+u0"), (6, "d+0"), (4, "0+u"), (11, "0d+"), (13, "u0+"), (6, "+0d")):
            for i in range(count):
                up = math.floor(255 * i / count)
                level = {"+": 255, "0": 0, "u": up, "d": 255 - up}
                rows.append((level[red], level[green], level[blue]))
        wheel = torch.tensor(rows, dtype=torch.float32) / 255.0
        wheel = wheel.to(device=device, dtype=dtype)
        _wheels[key] = wheel
    return wheel


def flow_magnitude_max(flow: Tensor) -> Tensor:
    """Largest flow magnitude of each frame: ``[N, 2, H, W] -> [N]``."""
    return torch.linalg.vector_norm(flow, dim=1).flatten(1).amax(dim=1)


def check_finite_flow(flow: Tensor, name: str = "flow") -> None:
    """A ``ValueError`` naming the fix when ``flow`` holds NaN or infinite values (one value read back)."""
    finite = torch.isfinite(flow)
    if bool(finite.all()):
        return
    bad = int(finite.numel() - finite.sum())
    raise ValueError(
        f"{name} holds {bad} NaN or infinite value(s) of {finite.numel()}: such motion has no colour. Check what "
        "made it (e.g. frames with NaN, an fp16 overflow upstream), or clean it with torch.nan_to_num(flow, nan=0.0, "
        "posinf=0.0, neginf=0.0) first."
    )


def flow_to_rgb(flow: Tensor, scale: Tensor | float, flow_strength: float = 1.0) -> Tensor:
    """``[N, 2, H, W]`` flow in pixels -> ``[N, 3, H, W]`` RGB in ``[0, 1]``; ``scale`` is ``[N]`` or a number."""
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be [N, 2, H, W], got shape {list(flow.shape)}.")
    flow = flow.float()
    if not isinstance(scale, Tensor):
        scale = torch.full((), float(scale), device=flow.device)  # a fill: no host-to-device copy, no sync
    scale = scale.float().reshape(-1, 1, 1) if scale.dim() else scale.float()
    eps = torch.finfo(torch.float32).eps
    u, v = flow[:, 0], flow[:, 1]
    magnitude = torch.sqrt(u * u + v * v)
    saturation = (magnitude * (flow_strength / (scale + eps))).clamp_(0.0, 1.0)
    wheel = colorwheel(flow.device)
    num_colors = wheel.shape[0]
    angle = torch.atan2(-v, -u) / math.pi
    position = (angle + 1.0) / 2.0 * (num_colors - 1)
    # NaN flow (unchecked callers) must never index out of the wheel: on CUDA that would be a device-side assert
    position = torch.nan_to_num(position, nan=0.0).clamp_(0.0, num_colors - 1)
    index0 = position.floor()
    frac = (position - index0).unsqueeze(1)
    index0 = index0.long()
    index1 = (index0 + 1) % num_colors
    color0 = wheel[index0].permute(0, 3, 1, 2)
    color1 = wheel[index1].permute(0, 3, 1, 2)
    color = (1.0 - frac) * color0 + frac * color1
    return 1.0 - saturation.unsqueeze(1) * (1.0 - color)


def check_max_flow(max_flow: object) -> float:
    """``max_flow`` as a float, or a ``ValueError`` naming the option: a positive, finite number of pixels."""
    valid = isinstance(max_flow, (int, float)) and not isinstance(max_flow, bool)
    if not (valid and math.isfinite(max_flow) and max_flow > 0):  # type: ignore[arg-type]
        raise ValueError(f"{option_name('max_flow')} must be a positive number of pixels, got {max_flow!r}.")
    return float(max_flow)  # type: ignore[arg-type]


class FlowNormalizer:
    """Turns per-frame flow into per-frame scales (pixels) for :func:`flow_to_rgb`, keeping running state.

    ``flows`` is ``[B, F, 2, H, W]``; returns scales ``[B, F]``. Zero flow (a first frame without reference)
    has a zero peak, which never pulls the running maximum down.
    """

    def __init__(self, mode: str = "per_frame", max_flow: float = 20.0, decay: float = 0.9) -> None:
        if mode not in NORMALIZATIONS:
            raise ValueError(words(
                f"{{normalization=mode}} is not supported; use one of {', '.join(NORMALIZATIONS)}.", mode=mode
            ))
        check_max_flow(max_flow)
        if not (isinstance(decay, (int, float)) and 0.0 < decay <= 1.0):
            raise ValueError(
                f"{option_name('decay')} must be in (0, 1], got {decay!r}; 0.9 forgets a peak in about 20 frames."
            )
        self.mode = mode
        self.max_flow = float(max_flow)
        self.decay = float(decay)
        self._running: Tensor | None = None  # [B] last scale, or None at the start of a sequence

    def reset(self) -> None:
        self._running = None

    def state(self) -> Tensor | None:
        """What :meth:`restore` puts back (the running scale; replaced, never changed in place)."""
        return self._running

    def restore(self, state: Tensor | None) -> None:
        self._running = state

    def scales(self, flows: Tensor) -> Tensor:
        batch, frames = flows.shape[:2]
        if self.mode == "fixed":
            return torch.full((batch, frames), self.max_flow, device=flows.device)
        peaks = flow_magnitude_max(flows.flatten(0, 1).float()).view(batch, frames)
        if self.mode == "per_frame":
            return peaks
        return self._running_scales(peaks)

    def _running_scales(self, peaks: Tensor) -> Tensor:
        # scale_t = max(peak_t, decay * scale_{t-1}), unrolled without a Python loop over frames:
        # scale_t = max_k<=t peak_k * decay^(t-k), computed in the log domain with cummax (no overflow).
        batch, frames = peaks.shape
        log_decay = math.log(self.decay)
        carried = self._running is not None
        steps = torch.arange(-1 if carried else 0, frames, device=peaks.device, dtype=torch.float32)
        log_peaks = torch.log(peaks.clamp_min(1e-12))
        if self._running is not None:
            # The previous call's last scale stands at step -1, so it is decayed once into frame 0.
            log_peaks = torch.cat([torch.log(self._running.clamp_min(1e-12)).unsqueeze(1), log_peaks], dim=1)
        shifted = log_peaks - steps * log_decay
        running = torch.cummax(shifted, dim=1).values + steps * log_decay
        if self._running is not None:
            running = running[:, 1:]
        scales = running.exp()
        self._running = scales[:, -1].detach().clone()
        return scales.clamp_min(RUNNING_MIN_SCALE)
