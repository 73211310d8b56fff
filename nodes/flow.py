"""The work behind the nodes, kept apart from their declarations: a cached preprocessor, windowed flow for a
clip, and visualization of ``FLOW``. Everything numerical is the core's; this module only arranges calls.

``FLOW`` (the type passed between these nodes) is a float32 tensor ``[N, 2, H, W]``: per frame, the motion
(x, y) in pixels of that ``H x W`` image from the previous frame to this one, on ComfyUI's intermediate device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import OpticalFlowTensorRTPreprocessor
from ..core.artifacts.compiled_cache import ROUTE_BACKGROUND
from ..core.common.log import logger
from ..core.layout import check_tensor
from ..core.model.specs import model_spec
from ..core.model.weights import WeightsSpec
from ..core.resize import resize_flow
from ..core.visualize import FlowNormalizer, check_finite_flow, flow_to_rgb
from ..core.common.vocabulary import words
from ..core.warmup import needs_warm_up, window_pair_counts
from . import host
from .inputs import (
    FIRST_FRAME_MODES,
    LEGACY_FIRST_FRAME,
    NATIVE_SIZE,
    PRECISIONS,
    WEIGHTS_DEFAULT,
    WEIGHTS_UNTRAINED,
    NodeSpec,
    node_vocabulary,
)

# The node's first_frame values as the core's (drop is the node's own: it removes frame 0 afterwards).
_CORE_FIRST_FRAME = {"zero": "zero", "repeat": "repeat", "drop": "zero"}
_IMAGE_CHANNELS = (1, 3, 4)
# Full-size flow (2 floats) + RGB (3 floats) + temporaries per pixel: ~64 Mpixel windows peak near 2 GB.
VISUAL_WINDOW_PIXELS = 64 << 20
RUNNING_DECAY = 0.9  # running normalization forgets a peak in about 20 frames


@dataclass(frozen=True)
class ModelSettings:
    """The settings that need a new model/engine when they change (the preprocessor cache key)."""

    compute_height: int
    compute_width: int
    precision: str
    flow_updates: int
    backend: str
    weights: str
    model: str
    device: str
    models_dir: str


@dataclass(frozen=True)
class MapSettings:
    """How the node draws the flow: changing these never reloads the model."""

    flow_strength: float
    normalization: str
    max_flow: float
    first_frame: str  # the node's value: zero, repeat or drop

    def normalizer(self) -> FlowNormalizer:
        return FlowNormalizer(self.normalization, max_flow=self.max_flow, decay=RUNNING_DECAY)

    def core_options(self) -> dict[str, object]:
        """The preprocessor's keyword arguments for these settings."""
        return {"flow_strength": self.flow_strength, "normalization": self.normalization, "max_flow": self.max_flow,
                "decay": RUNNING_DECAY, "first_frame": _CORE_FIRST_FRAME[self.first_frame]}

    def apply(self, preprocessor: OpticalFlowTensorRTPreprocessor) -> None:
        """Make ``preprocessor`` (a cached one, built for other map settings) draw with these."""
        preprocessor.flow_strength = self.flow_strength
        preprocessor.normalizer = self.normalizer()
        preprocessor.first_frame = _CORE_FIRST_FRAME[self.first_frame]


def node_first_frame(value: str) -> str:
    """The node's ``first_frame`` value, with values saved by earlier versions (``copy_next``) read as today's
    (``repeat``); anything else is an error listing the choices."""
    value = LEGACY_FIRST_FRAME.get(value, value)
    check_first_frame(value)
    return value


_cache: dict[tuple[ModelSettings, object, str | None], OpticalFlowTensorRTPreprocessor] = {}


def clear_cache() -> None:
    """Forget the cached model/engine (frees its memory once nothing else holds it)."""
    _cache.clear()


def get_preprocessor(
    settings: ModelSettings,
    frame_size: tuple[int, int] | None = None,
    maps: MapSettings | None = None,
    spec: NodeSpec | None = None,
) -> OpticalFlowTensorRTPreprocessor:
    """The loaded preprocessor for ``settings``: reused while they stay the same, else built and loaded anew
    (at the input's own size, for frames of ``frame_size``), drawing with ``maps`` and speaking node ``spec``'s
    words.

    One model is kept at a time, so switching settings frees the old one. The stream state is reset, so every
    node execution is a new clip.
    """
    if settings.precision not in PRECISIONS:
        raise ValueError(f"precision={settings.precision!r} is not supported; use one of {', '.join(PRECISIONS)}.")
    native = settings.compute_height == NATIVE_SIZE and settings.compute_width == NATIVE_SIZE
    weights_spec, weights_version = _resolve_weights(settings.weights)
    key = (settings, weights_version, spec.node_id if spec is not None else None)  # each node speaks its words
    preprocessor = _cache.get(key)
    if preprocessor is None:
        preprocessor = OpticalFlowTensorRTPreprocessor(
            height=None if native else settings.compute_height,
            width=None if native else settings.compute_width,
            vocabulary=node_vocabulary(spec) if spec is not None else node_vocabulary(),
            **(maps.core_options() if maps is not None else {}),  # type: ignore[arg-type]
            device=settings.device,
            fp16=settings.precision == "fp16",
            model=settings.model,
            num_flow_updates=settings.flow_updates,
            backend=settings.backend,
            weights=weights_spec,
            layout="FHWC",
            models_dir=settings.models_dir,
        )
        try:
            load_and_warm_up(preprocessor, frame_size)  # cached only once loading worked: a failed download retries
        except RuntimeError as error:
            if settings.weights != WEIGHTS_DEFAULT:
                raise
            raise RuntimeError(
                f"{error} Or put a {model_spec(settings.model).title} .pth file in {settings.models_dir} and "
                "choose it under weights."
            ) from error
        _cache.clear()
        _cache[key] = preprocessor
    else:
        # ComfyUI waits for this node anyway: shapes a child process has compiled since the last run switch to their
        # compiled kernels here (never during a run; the first runs use the uncompiled model, about half as fast).
        preprocessor.wait_for_compiled(timeout=0)
    if maps is not None:
        maps.apply(preprocessor)
    preprocessor.reset()
    return preprocessor


def load_and_warm_up(
    preprocessor: OpticalFlowTensorRTPreprocessor, frame_size: tuple[int, int] | None = None
) -> None:
    """Load the model (at the input's own size: for frames of ``frame_size``), then run the shapes the node's
    windows use (compiling them the first time for this GPU and size), saying so in the log with the time it
    took and moving the node's progress bar per shape."""
    backend = preprocessor.load(size=frame_size)
    if backend is None or not needs_warm_up(backend, preprocessor.device):
        return
    window = preprocessor.max_batch_pairs  # video_flow's frames per call
    progress = host.progress_bar(len(window_pair_counts([window], window)))
    height, width = preprocessor.compute_size or (0, 0)
    logger.info("optical flow: preparing %dx%d on this GPU", height, width)
    started = time.perf_counter()
    routes = preprocessor.warm_up([window], progress=lambda done, total: progress.update(1))
    logger.info("optical flow ready in %.1f s%s", time.perf_counter() - started,
                f" ({', '.join(sorted(set(routes)))})" if routes else "")
    if ROUTE_BACKGROUND in routes:
        logger.info("optical flow: the uncompiled model serves while a child process compiles the kernels for this GPU "
                    "and size (the first time only); they take over at the start of a later run of this node")


def _resolve_weights(choice: str) -> tuple[WeightsSpec, object]:
    """The core's ``weights=`` for a dropdown choice, and what identifies that file's version (for the cache)."""
    if choice == WEIGHTS_DEFAULT:
        return "DEFAULT", None
    if choice == WEIGHTS_UNTRAINED:
        return None, None
    path = host.weights_path(choice)
    stat = path.stat()
    return str(path), (stat.st_mtime_ns, stat.st_size)


def check_images(images: object, name: str = "images") -> Tensor:
    """A ComfyUI ``IMAGE`` ``[N, H, W, C]``, or a clear error saying what was connected instead."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a ComfyUI IMAGE (a torch tensor [N, H, W, C]), got {type(images).__name__}.")
    if images.dim() != 4:
        hint = " That looks like a MASK: convert it with 'Convert Mask to Image' first." if images.dim() == 3 else ""
        raise ValueError(f"{name} must be a ComfyUI IMAGE [N, H, W, C], got shape {list(images.shape)}.{hint}")
    if images.shape[-1] not in _IMAGE_CHANNELS:
        raise ValueError(
            f"{name} must have 3 colour channels (RGB; 1 grey or 4 RGBA also work) in the last axis of "
            f"[N, H, W, C], got {images.shape[-1]} (shape {list(images.shape)}). Connect an IMAGE output, e.g. "
            "Load Video -> Get Video Components, or Load Image."
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} holds no frames (shape {list(images.shape)}).")
    return images


def check_flow(flow: object) -> Tensor:
    """A ``FLOW`` ``[N, 2, H, W]`` from the Optical Flow node, or a clear error."""
    if not isinstance(flow, Tensor) or flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[0] == 0:
        shape = list(flow.shape) if isinstance(flow, Tensor) else type(flow).__name__
        raise ValueError(
            f"flow must be a FLOW [N, 2, H, W] (x/y motion in pixels), got {shape}. Connect the 'flow' output of "
            "the Optical Flow (RAFT) node."
        )
    check_tensor(flow, "flow")
    check_finite_flow(flow)  # NaN or infinite motion has no colour and no magnitude
    return flow


def check_first_frame(first_frame: str) -> None:
    if first_frame not in FIRST_FRAME_MODES:
        raise ValueError(words(
            f"{{first_frame=value}} is not supported; use one of {', '.join(FIRST_FRAME_MODES)}.", value=first_frame
        ))


def check_clip(images: Tensor, previous_frame: Tensor | None, first_frame: str) -> None:
    """Errors a clip would hit in :func:`video_flow`, raised before any model is loaded."""
    check_first_frame(first_frame)
    if previous_frame is None and images.shape[0] < 2:
        raise ValueError(
            f"optical flow needs at least 2 frames to find motion, got {images.shape[0]}. Connect a video's frames "
            "(e.g. Load Video -> Get Video Components), or connect previous_frames with the frame(s) before it."
        )
    if previous_frame is not None and previous_frame.shape[:2] != images.shape[1:3]:
        raise ValueError(
            f"previous_frames are {previous_frame.shape[1]}x{previous_frame.shape[0]} but images are "
            f"{images.shape[2]}x{images.shape[1]} (width x height); they must be the same video size. "
            "Resize one of them, or disconnect previous_frames."
        )


def video_flow(
    preprocessor: OpticalFlowTensorRTPreprocessor,
    images: Tensor,
    previous_frame: Tensor | None = None,
    first_frame: str = "zero",
) -> Tensor:
    """Flow for a clip ``[N, H, W, C]`` at compute resolution, ``[N', 2, h, w]`` on the compute device.

    Frames go through the preprocessor in windows of its ``max_batch_pairs`` (its streaming state makes that
    equal to one call), with ComfyUI's progress bar and Cancel check between windows. ``previous_frame``
    (``[H, W, C]``) is the frame before ``images[0]``, so frame 0 gets real motion; without it frame 0 has no
    reference and ``first_frame`` decides: ``"zero"`` (no motion, white), ``"repeat"`` (frame 1's flow, as the
    core's ``first_frame="repeat"``) or ``"drop"`` (the output has N - 1 frames).
    """
    check_clip(images, previous_frame, first_frame)
    preprocessor.first_frame = _CORE_FIRST_FRAME[first_frame]
    if previous_frame is not None:
        preprocessor.compute_flow(previous_frame[None])  # primes the stream; no model call for a single frame
    window = max(2, preprocessor.max_batch_pairs)  # the first window holds the pair (0, 1) that repeat repeats
    progress = host.progress_bar(images.shape[0])
    pieces: list[Tensor] = []
    for start in range(0, images.shape[0], window):
        host.check_interrupted()
        chunk = images[start : start + window]
        pieces.append(preprocessor.compute_flow(chunk)[0])
        progress.update(chunk.shape[0])
    flow = torch.cat(pieces)
    if previous_frame is None and first_frame == "drop":
        flow = flow[1:]
    return flow


def flow_maps(
    spec: NodeSpec, settings: ModelSettings, maps: MapSettings, images: Tensor, previous_frame: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One execution of a flow node: the clip's maps (IMAGE) and flow (FLOW) at the input size, with the settings
    that run stated in the log in the node's words (as it loads, and at every execution)."""
    check_clip(images, previous_frame, maps.first_frame)
    height, width = images.shape[1:3]
    preprocessor = get_preprocessor(settings, frame_size=(height, width), maps=maps, spec=spec)
    shown = {"first_frame": maps.first_frame} if maps.first_frame == "drop" else {}
    with_size = preprocessor.compute_size_for(height, width)
    logger.info("optical flow runs: %s", preprocessor.describe_settings(with_size, **shown))
    raw = video_flow(preprocessor, images, previous_frame, maps.first_frame)
    window = visual_window(height, width)
    return flow_images(raw, preprocessor.normalizer, maps.flow_strength, preprocessor.device, window, (height, width))


def flow_images(
    flow: Tensor,
    normalizer: FlowNormalizer,
    flow_strength: float,
    device: torch.device,
    window: int,
    size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Visualize ``[N, 2, h, w]`` flow as an IMAGE ``[N, H, W, 3]`` in ``[0, 1]``; also return the FLOW.

    Works on ``device`` in windows (one Cancel check each), optionally resizing the flow to ``size`` first;
    both results land on ComfyUI's intermediate device. ``normalizer`` carries running scales across windows.
    """
    out = host.output_device()
    images: list[Tensor] = []
    flows: list[Tensor] = []
    for start in range(0, flow.shape[0], max(1, window)):
        host.check_interrupted()
        chunk = flow[start : start + window].to(device, torch.float32)
        if size is not None:
            chunk = resize_flow(chunk, *size)  # vectors scaled to the new size's pixels
        scales = normalizer.scales(chunk[None])[0]
        rgb = flow_to_rgb(chunk, scales, flow_strength).clamp_(0.0, 1.0)
        images.append(rgb.permute(0, 2, 3, 1).to(out))
        flows.append(chunk.to(out))
    return torch.cat(images), torch.cat(flows)


def magnitude_mask(
    flow: Tensor, normalizer: FlowNormalizer, threshold: float, device: torch.device, window: int
) -> Tensor:
    """``[N, H, W]`` motion mask in ``[0, 1]``: |flow| / the normalizer's scale, or 1 where that is >= threshold
    (when ``threshold > 0``)."""
    out = host.output_device()
    masks: list[Tensor] = []
    for start in range(0, flow.shape[0], max(1, window)):
        host.check_interrupted()
        chunk = flow[start : start + window].to(device, torch.float32)
        scales = normalizer.scales(chunk[None])[0].clamp_min(torch.finfo(torch.float32).eps)
        mask = (torch.linalg.vector_norm(chunk, dim=1) / scales.view(-1, 1, 1)).clamp_(0.0, 1.0)
        if threshold > 0:
            mask = (mask >= threshold).float()
        masks.append(mask.to(out))
    return torch.cat(masks)


def visual_window(height: int, width: int) -> int:
    """Frames per visualization window so a window's flow and RGB stay within a fixed pixel budget."""
    return max(1, VISUAL_WINDOW_PIXELS // max(1, height * width))
