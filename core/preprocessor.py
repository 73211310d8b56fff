"""The streaming optical-flow preprocessor shared by the Python API, ComfyUI nodes, Scope adapter and CLI."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from .backends import BackendConfig, FlowBackend, choose_backend, create_backend
from .common.log import log_once, logger
from .common.paths import plugin_models_dir
from .device import finish_queued_work, resolve_device
from .layout import check_layout, check_tensor, to_bfchw, to_unit_float
from .memory import check_call_fits, check_compute_size_fits, check_maps_fit
from .model.compute_size import check_compute_size, default_max_pairs, native_compute_size
from .model.raft import DOWNSAMPLE
from .model.specs import DEFAULT_MODEL, model_spec
from .model.weights import WeightsInfo, WeightsSpec
from .presets import apply_preset
from .resize import crop_padding, pad_to_multiple, resize_images
from .visualize import FLOW_STRENGTH_RANGE, FlowNormalizer, check_finite_flow, check_max_flow, flow_to_rgb
from .common.vocabulary import SIZE, Vocabulary, current_vocabulary, option_name, speaking, words
from .warmup import chunk_sizes, needs_warm_up, warm_up_backend, window_pair_counts


FIRST_FRAME_MODES: tuple[str, ...] = ("zero", "repeat")

class OpticalFlowTensorRTPreprocessor:
    """Video frames in, RGB optical-flow maps out (RAFT Small or Large), keeping temporal state across calls.

    Construction is cheap and needs no arguments; the model (or TensorRT engine) loads on the first call, or
    ahead of it with :meth:`load` (``load(warmup=4)`` also compiles and runs the shapes of 4-frame calls).

    Args:
        height, width: compute resolution, multiples of 8, at least 128. Frames are resized to it and the
            output is resized back (to the input size, or to Scope's ``target_height`` x ``target_width``).
            ``None`` and ``None``: compute at the input's own size, never resized: frames are padded to a multiple
            of 8 by repeating their edges (as VACE's annotator does) and the padding is cropped off the flow. The
            model (engine, compiled kernels) is built for each size met, cached per size as usual.
        device: ``"cuda"`` (falls back to the CPU with one warning if CUDA is missing, unless
            ``strict_device=True``), ``"cuda:N"`` or ``"cpu"``.
        fp16: half precision for the encoders and update block on CUDA (correlation stays fp32).
        flow_strength: 0 to 2; multiplies the displayed saturation (see ``core.visualize``).
        model: torchvision's RAFT models: ``"raft_small"`` (the default; fast, real time) or ``"raft_large"`` (more
            accurate, about twice the time per frame; ``core.model.specs.MODEL_CHOICE``).
        num_flow_updates: RAFT refinement iterations (12 is torchvision's default).
        first_frame: what the first frame of a stream shows, having no frame before it: ``"zero"`` (no motion,
            white; the default) or ``"repeat"`` (the map of the pair (0, 1), as VACE's annotator and Scope's
            built-in pipeline do). Each call still returns one map per input frame: a stream's first call with a
            single frame has no pair yet and returns zero flow; later calls are unaffected (their first frame
            pairs with the previous call's last frame).
        preset: ``"vace"`` bundles VACE's annotator settings (RAFT Large, 20 updates, the input's own size,
            per-frame normalization, ``first_frame="repeat"``); it replaces the default values of those options,
            and any of them set to a non-default value wins (``core.presets``). ``None``/``"none"``: no preset.
        normalization: ``"per_frame"`` (each frame scaled by its own largest motion, torchvision's look),
            ``"fixed"`` (``max_flow`` pixels is full saturation) or ``"running"`` (running maximum that decays
            by ``decay`` per frame: no colour flicker in video).
        backend: ``"auto"`` (TensorRT when available on CUDA, else PyTorch), ``"torch"``, ``"tensorrt"`` or
            ``"onnxruntime"`` (the exported ONNX graph; for checks and CPU-only machines).
        weights: ``"DEFAULT"``, a name of the model's weights enum (``Raft_Small_Weights``,
            ``Raft_Large_Weights``), a local ``.pth`` path, or ``None`` (untrained, seeded). A file in
            ``$SCOPE_OPTICAL_FLOW_WEIGHTS`` holding the model's weights overrides ``"DEFAULT"`` (``core.weights``).
        layout: default input layout (``"BCFHW"``, ``"CFHW"``, ``"FHWC"``, ``"FCHW"``); ``None`` infers it.
        max_batch_pairs: frame pairs per model call; ``None`` picks by resolution and model (memory bound).
        models_dir: where ONNX graphs and engines are cached; default ``<models root>/optical-flow-tensorrt``.
        cuda_graphs: on CUDA, replay the PyTorch model from CUDA graphs (one capture per window shape);
            turn off to debug or to save the graphs' memory.
        torch_compile: on CUDA, compile the PyTorch model with torch.compile (a first call of tens of
            seconds, cached on disk; falls back to eager if compiling fails).
        fused_lookup: on CUDA with Triton, run the PyTorch backend's correlation lookup as one fused Triton
            kernel instead of grid_sample per pyramid level (same numbers, sampling positions in fp32). On an
            H200 at 512x512 it made 16-frame chunks 8% faster (benchmarks/NOTES.md); ``False``: grid_sample.
        compile_in_background: with ``torch_compile`` on CUDA, serve each new window shape at once from the
            uncompiled model (in a CUDA graph; same numbers within fp16 rounding, about half the speed) while a
            child process compiles its kernels (or nothing, where the models folder has them already); the shape
            switches to them when a caller waits for it (:meth:`wait_for_compiled`), never inside a live call.
            ``False``: warm-ups and first calls of a shape wait for the compiled kernels instead. Either way this
            process never compiles: it only loads the kernels the child kept in the models folder.
        vocabulary: how messages name options (``core.common.vocabulary``): a face passes its own so that errors
            and log lines say ``--device cpu`` on the command line and ``device='cpu'`` in Python; default: the
            vocabulary current at construction.

    Call it with frames (``[B,C,F,H,W]``, ``[C,F,H,W]`` or ``[F,H,W,C]``, RGB, float ``[0,1]`` or uint8)
    or with Scope's context object; it returns ``[B, 3, F, H_out, W_out]`` float in ``[-1, 1]``.
    The first frame after construction or :meth:`reset` has no reference and shows zero flow (white), or with
    ``first_frame="repeat"`` the next pair's map; every later frame, across calls, is compared with the frame
    before it.
    """

    def __init__(
        self,
        height: int | None = 512,
        width: int | None = 512,
        device: str | torch.device = "cuda",
        fp16: bool = True,
        flow_strength: float = 1.0,
        *,
        model: str = DEFAULT_MODEL,
        num_flow_updates: int = 12,
        normalization: str = "per_frame",
        max_flow: float = 20.0,
        decay: float = 0.9,
        first_frame: str = "zero",
        preset: str | None = None,
        backend: str = "auto",
        weights: WeightsSpec = "DEFAULT",
        layout: str | None = None,
        strict_device: bool = False,
        max_batch_pairs: int | None = None,
        models_dir: str | os.PathLike[str] | None = None,
        cuda_graphs: bool = True,
        torch_compile: bool = True,
        fused_lookup: bool = True,
        compile_in_background: bool = True,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        self.vocabulary = vocabulary or current_vocabulary()
        with speaking(self.vocabulary):
            chosen = apply_preset(preset, {
                "model": model, "num_flow_updates": num_flow_updates, "height": height, "width": width,
                "normalization": normalization, "first_frame": first_frame,
            })
            self.preset = preset
            self.model = model_spec(chosen["model"]).name
            check_compute_size(chosen["height"], chosen["width"])
            _check_flow_strength(flow_strength)
            num_flow_updates = chosen["num_flow_updates"]
            if not isinstance(num_flow_updates, int) or isinstance(num_flow_updates, bool) or num_flow_updates < 1:
                raise ValueError(
                    f"{option_name('num_flow_updates')} must be a positive integer (12 is typical), "
                    f"got {num_flow_updates!r}."
                )
            if max_batch_pairs is not None and (not isinstance(max_batch_pairs, int) or max_batch_pairs < 1):
                raise ValueError(
                    f"{option_name('max_batch_pairs')} must be a positive integer or None, got {max_batch_pairs!r}."
                )
            if layout is not None:
                check_layout(layout)
            self.height: int | None = chosen["height"]
            self.width: int | None = chosen["width"]
            self._flow_strength = float(flow_strength)
            self.first_frame = chosen["first_frame"]
            self.num_flow_updates = num_flow_updates
            self.fp16 = bool(fp16)
            self.cuda_graphs = bool(cuda_graphs)
            self.torch_compile = bool(torch_compile)
            self.fused_lookup = bool(fused_lookup)
            self.compile_in_background = bool(compile_in_background)
            self.layout = layout
            self.weights_spec = weights
            self.models_dir = plugin_models_dir(models_dir)
            self.device = resolve_device(device, strict=strict_device)
            self.requested_backend = backend
            self.backend_name = choose_backend(backend, self.device)
            self._requested_max_pairs = max_batch_pairs
            self.normalizer = FlowNormalizer(chosen["normalization"], max_flow=max_flow, decay=decay)
        self._backend: FlowBackend | None = None
        self._backend_size: tuple[int, int] | None = None  # the compute size the backend was built for
        self.warmup_routes: list[str] = []  # how the last warm-up's shapes were served (core.compiled_cache)
        self._previous_frames: Tensor | None = None  # [B, 3, h, w] last frame of the stream, compute size
        self._stream_key: tuple[int, int, int] | None = None  # (B, H, W) of the input the state belongs to

    # -- public API ---------------------------------------------------------------------------------

    @property
    def flow_strength(self) -> float:
        """Display strength in [0, 2]; may be changed between calls."""
        return self._flow_strength

    @flow_strength.setter
    def flow_strength(self, value: float) -> None:
        with speaking(self.vocabulary):
            _check_flow_strength(value)
        self._flow_strength = float(value)

    @property
    def first_frame(self) -> str:
        """``"zero"`` or ``"repeat"`` (see the class docstring); may be changed between calls."""
        return self._first_frame

    @first_frame.setter
    def first_frame(self, value: str) -> None:
        if value not in FIRST_FRAME_MODES:
            with speaking(self.vocabulary):
                raise ValueError(words(
                    f"{{first_frame=value}} is not supported; use one of {', '.join(FIRST_FRAME_MODES)}.", value=value
                ))
        self._first_frame = value

    @property
    def normalization(self) -> str:
        return self.normalizer.mode

    @property
    def max_flow(self) -> float:
        """Pixels of motion at full saturation with ``normalization="fixed"``; may be changed between calls."""
        return self.normalizer.max_flow

    @max_flow.setter
    def max_flow(self, value: float) -> None:
        with speaking(self.vocabulary):
            self.normalizer.max_flow = check_max_flow(value)

    @property
    def native_size(self) -> bool:
        """Whether flow is computed at the input's own size (``height=None, width=None``)."""
        return self.height is None

    @property
    def compute_size(self) -> tuple[int, int] | None:
        """``(height, width)`` the model runs at: the fixed size, or at the input's own size the padded size of
        the latest input (``None`` before the first)."""
        if self.height is not None and self.width is not None:
            return self.height, self.width
        return self._backend_size

    def compute_size_for(self, height: int, width: int) -> tuple[int, int]:
        """The compute size for input frames of ``height`` x ``width``."""
        if self.height is not None and self.width is not None:
            return self.height, self.width
        with speaking(self.vocabulary):
            return native_compute_size(height, width)

    @property
    def max_batch_pairs(self) -> int:
        """Frame pairs per model call: as given, else by the compute size and model (512x512 until an input
        has given a size at the input's own size)."""
        if self._requested_max_pairs is not None:
            return self._requested_max_pairs
        height, width = self.compute_size or (512, 512)
        return default_max_pairs(height, width, self.model)

    @max_batch_pairs.setter
    def max_batch_pairs(self, value: int) -> None:
        """Pairs per model call for models built from now on (a loaded model keeps its own)."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{option_name('max_batch_pairs')} must be a positive integer, got {value!r}.")
        self._requested_max_pairs = value

    @property
    def fp16_active(self) -> bool:
        """Whether half precision runs (``fp16`` applies on CUDA only)."""
        return self.fp16 and self.device.type == "cuda"

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def weights_info(self) -> WeightsInfo | None:
        """What weights the loaded model has (``None`` before the first call)."""
        return getattr(self._backend, "weights_info", None)

    def load(
        self, warmup: bool | int | Iterable[int] = False, size: tuple[int, int] | None = None
    ) -> FlowBackend | None:
        """Load the model/engine now instead of on the first call; returns the backend.

        ``warmup`` also runs, once, every window shape of a stream fed that many frames per call (``True``: 16;
        an int or several ints: those chunk sizes), so CUDA-graph capture happens now, and has their compiled
        kernels made: loaded from the models folder, or compiled by a child process. With
        ``compile_in_background`` (the default) the warm-up returns once the uncompiled model's CUDA graphs are
        captured (about a second); :meth:`wait_for_compiled` then switches to the compiled kernels when they are
        ready. Otherwise it returns when the compiled kernels serve (seconds from the models folder, tens of
        seconds the first time), so the first real call runs at full speed. Hosts call it while they show a
        loading state. On the CPU (eager, nothing to compile) the warm-up does nothing.

        At the input's own size (``height=None``) the model is built per compute size: ``size`` is the input
        frames' ``(height, width)`` to load for; without it (and before any input) nothing loads and ``None``
        is returned. A later input of another size builds the model for that size (engines and compiled kernels
        are cached per size).
        """
        with speaking(self.vocabulary):
            if size is not None:
                target: tuple[int, int] | None = self.compute_size_for(*size)
            else:
                target = self.compute_size
            if target is None:
                return None
            if self._backend is None or self._backend_size != target:
                self._backend = None  # the old size's model goes before the new one loads
                self._backend = self._create_backend(target)
                self._backend_size = target
            if warmup is not False:
                self.warm_up(chunk_sizes(warmup))
            return self._backend

    def _create_backend(self, size: tuple[int, int]) -> FlowBackend:
        check_compute_size_fits(self.device, size, self._correlation_bytes, self.native_size)
        height, width = size
        config = BackendConfig(
            height=height,
            width=width,
            device=self.device,
            model=self.model,
            fp16=self.fp16,
            num_flow_updates=self.num_flow_updates,
            max_pairs=self._requested_max_pairs or default_max_pairs(height, width, self.model),
            cuda_graphs=self.cuda_graphs,
            torch_compile=self.torch_compile,
            fused_lookup=self.fused_lookup,
            compile_in_background=self.compile_in_background,
            models_dir=self.models_dir,
        )
        try:
            backend = create_backend(self.backend_name, config, self.weights_spec)
        except Exception as error:
            if self.requested_backend != "auto" or self.backend_name == "torch":
                raise
            # backend="auto" promises a working preprocessor: a failed engine build falls back to PyTorch.
            log_once(
                "backend-auto-fallback",
                words(
                    f"the {self.backend_name} backend failed to load ({type(error).__name__}: {error}); "
                    "falling back to the PyTorch backend.",
                    "Use {backend='tensorrt'} to see the failure as an error.",
                ),
            )
            self.backend_name = "torch"
            backend = create_backend(self.backend_name, config, self.weights_spec)
        logger.info("optical flow ready: %s", self.describe_settings(size))
        return backend

    def running_settings(self) -> list[tuple[str, object]]:
        """Every setting that shapes the maps, as it runs now: ``(option key, value)`` pairs in the ready line's
        order (``core.common.vocabulary`` keys; the compute size is ``SIZE``: ``(height, width)``, ``(None, None)`` at
        the input's own size). ``fp16`` is whether half precision runs (off on the CPU); ``max_flow`` and ``decay``
        appear with the normalizations that use them."""
        settings: list[tuple[str, object]] = [
            ("model", self.model),
            (SIZE, (self.height, self.width)),
            ("num_flow_updates", self.num_flow_updates),
            ("fp16", self.fp16_active),
            ("normalization", self.normalization),
        ]
        if self.normalization == "fixed":
            settings.append(("max_flow", self.max_flow))
        elif self.normalization == "running":
            settings.append(("decay", self.normalizer.decay))
        settings += [
            ("flow_strength", self.flow_strength),
            ("first_frame", self.first_frame),
            ("backend", self.backend_name),
            ("device", str(self.device)),
        ]
        return settings

    def describe_settings(self, size: tuple[int, int] | None = None, **shown: object) -> str:
        """The settings that actually run (:meth:`running_settings`), named as the face's vocabulary names them:
        the ready line. At the input's own size the compute size met follows (``size``, or the latest input's),
        height x width. ``shown`` replaces values a face applies itself (the ComfyUI node's ``first_frame``
        ``drop``)."""
        vocabulary = self.vocabulary
        parts: list[str] = []
        for key, value in {**dict(self.running_settings()), **shown}.items():
            if key == SIZE:
                parts.append(self._describe_size(size or self.compute_size))
            elif key == "fp16":
                precision = (vocabulary.setting("fp16", value) if vocabulary.has("fp16")
                             else f"precision {'fp16' if value else 'fp32'}")
                parts.append(precision + (" (fp16 applies on CUDA only)" if self.fp16 and not value else ""))
            else:
                parts.append(vocabulary.describe(key, value))
        return ", ".join(parts)

    def _describe_size(self, compute: tuple[int, int] | None) -> str:
        vocabulary = self.vocabulary
        if not self.native_size:
            if vocabulary.has(SIZE):
                return vocabulary.setting(SIZE, (self.height, self.width))
            return f"compute size {self.height}x{self.width}"
        text = vocabulary.setting(SIZE, (None, None)) if vocabulary.has(SIZE) else "compute size"
        if compute is None:
            return f"{text} (the input's own size)"
        return f"{text} (the input's own size, padded to {compute[0]}x{compute[1]})"

    def warm_up(self, chunk_frames: Iterable[int], progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Load, then run each window shape of streams fed ``chunk_frames`` frames per call once (see
        :meth:`load`); ``progress(done, total)`` after each shape. Returns how each shape was served
        (``core.compiled_cache.ROUTE_*``; empty when there was nothing to warm). Keeps the stream state."""
        backend = self.load()
        if backend is None or self._backend_size is None:  # at the input's own size, before any input
            return []
        chunks = chunk_sizes(list(chunk_frames))
        pair_counts = window_pair_counts(chunks, backend.max_pairs)
        self.warmup_routes = warm_up_backend(backend, pair_counts, *self._backend_size, self.device, progress)
        if needs_warm_up(backend, self.device):
            self._warm_whole_call(chunks)
            finish_queued_work(self.device)
        return self.warmup_routes

    def _warm_whole_call(self, chunk_frames: list[int]) -> None:
        """One whole call per chunk size on still frames (uint8 from the CPU, as hosts pass them), so the first
        live call does no one-off work outside the model either (the input's conversion and the visualization
        load their kernels on first use); the stream state is left as it was."""
        assert self._backend_size is not None
        height, width = self._backend_size
        saved = (self._previous_frames, self._stream_key, self.normalizer.state())
        try:
            for frames in sorted(set(chunk_frames)):
                self(torch.zeros(frames, height, width, 3, dtype=torch.uint8), layout="FHWC")
        finally:
            self._previous_frames, self._stream_key = saved[:2]
            self.normalizer.restore(saved[2])

    def wait_for_compiled(self, timeout: float | None = None) -> bool:
        """Wait until the child process has compiled every shape warmed or met so far (at most ``timeout``
        seconds; ``0`` does not wait), then switch every shape whose kernels are ready to them: loading them and
        capturing their CUDA graphs takes this call a few seconds per shape. Live calls never do this, so call it
        where a pause suits the caller. Returns whether no shape is still compiling; at once where nothing
        compiles (other backends, the CPU, ``torch_compile=False``, before the model is loaded). A shape whose
        compile failed keeps the uncompiled model, as the log says."""
        wait = getattr(self._backend, "wait_for_compiled", None)
        return bool(wait(timeout)) if wait is not None else True

    def close(self) -> None:
        """Stop a compile in progress (its child process exits at once; a cache entry is written whole or not at
        all) and free the model; a later call loads it again."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()
        self._backend = None
        self.reset()

    def reset(self) -> None:
        """Start a new sequence: the next frame has no reference (zero flow) and running scales restart."""
        self._previous_frames = None
        self._stream_key = None
        self.normalizer.reset()

    def __call__(self, frames: Any, layout: str | None = None) -> Tensor:
        """Flow maps for ``frames`` (a tensor or Scope's context): ``[B, 3, F, H_out, W_out]`` in ``[-1, 1]``.

        A call that fails leaves the stream as it was: its sizes are checked against the device's memory before
        anything is allocated, and the stream state moves only when the maps are made."""
        with speaking(self.vocabulary):
            tensor, target = _unpack_context(frames)
            state = (self._previous_frames, self._stream_key, self.normalizer.state())
            try:
                flow, input_size = self._compute_flow(tensor, layout, maps_size=target or "input")
                return self._draw(flow, target or input_size)
            except BaseException:
                self._previous_frames, self._stream_key = state[:2]
                self.normalizer.restore(state[2])
                raise

    def compute_flow(self, frames: Tensor, layout: str | None = None) -> Tensor:
        """Raw flow ``[B, F, 2, h, w]`` in compute-resolution pixels (at the input's own size: the input's size,
        padding cropped off), continuing the stream.

        Frame 0 of the result compares with the previous call's last frame; at a sequence start it is zero flow,
        or with ``first_frame="repeat"`` the flow of the pair (0, 1) where this call has one.
        """
        with speaking(self.vocabulary):
            return self._compute_flow(frames, layout)[0]

    def _compute_flow(
        self, frames: Tensor, layout: str | None, maps_size: tuple[int, int] | str | None = None
    ) -> tuple[Tensor, tuple[int, int]]:
        """Raw flow and the input size; ``maps_size`` (a size, or ``"input"``) is the size of the maps the caller
        makes next, checked against the device's memory with everything else before anything is allocated."""
        batch_frames = to_bfchw(frames, layout or self.layout)
        batch, num_frames, _, in_height, in_width = batch_frames.shape
        stream_key = (batch, in_height, in_width)
        height, width = self.compute_size_for(in_height, in_width)
        check_call_fits(
            self.device, frames=batch * num_frames, input_size=(in_height, in_width), compute_size=(height, width),
            output_size=(in_height, in_width) if maps_size == "input" else maps_size,  # type: ignore[arg-type]
            copies_input=not (batch_frames.dtype == torch.float32 and batch_frames.device == self.device),
            element_bytes=self._correlation_bytes, native=self.native_size,
        )
        unit = to_unit_float(batch_frames, self.device).flatten(0, 1)
        padding: tuple[int, int, int, int] | None = None
        if self.native_size:
            compute, padding = pad_to_multiple(unit, DOWNSAMPLE)
        else:
            compute = resize_images(unit, height, width)
        compute = compute.view(batch, num_frames, 3, height, width)
        backend = self.load(size=(in_height, in_width))
        assert backend is not None  # a size was given
        previous = self._previous_frames if stream_key == self._stream_key else None
        if previous is None and self._stream_key is not None:
            logger.info("input size changed from %s to %s: starting a new flow sequence", self._stream_key, stream_key)
            self.normalizer.reset()
        flows = torch.stack([
            self._sequence_flow(backend, compute[b], previous[b] if previous is not None else None)
            for b in range(batch)
        ])
        if padding is not None:
            flows = crop_padding(flows, padding)
        # Only now, after everything succeeded, does the stream state move on.
        self._previous_frames = compute[:, -1].clone()
        self._stream_key = stream_key
        return flows, (in_height, in_width)

    def flow_to_image(
        self, flow: Tensor, size: tuple[int, int] | None = None, *, check_finite: bool = True
    ) -> Tensor:
        """Visualize ``[B, F, 2, h, w]`` flow as ``[B, 3, F, H, W]`` in ``[-1, 1]`` (updates running scales).

        Flow that is empty, has no data (the meta device) or holds NaN or infinite values is a ``ValueError`` /
        ``TypeError`` naming the fix. Checking finiteness reads one value back from the device; a caller drawing
        this preprocessor's own :meth:`compute_flow` result (computed from checked frames) may skip it with
        ``check_finite=False``."""
        check_tensor(flow, "flow")
        if flow.dim() != 5 or flow.shape[2] != 2:
            raise ValueError(f"flow must be [B, F, 2, H, W], got shape {list(flow.shape)}.")
        if flow.numel() == 0:
            raise ValueError(f"flow holds no frames (shape {list(flow.shape)}); pass flow of at least one frame.")
        if check_finite:
            check_finite_flow(flow)
        height, width = size if size is not None else flow.shape[-2:]
        check_maps_fit(flow.device, frames=flow.shape[0] * flow.shape[1], flow_size=tuple(flow.shape[-2:]),
                       output_size=(height, width))
        return self._draw(flow, (height, width))

    def _draw(self, flow: Tensor, size: tuple[int, int]) -> Tensor:
        """:meth:`flow_to_image` of flow this preprocessor computed (finite: no check, no read-back)."""
        batch, num_frames = flow.shape[:2]
        height, width = size
        scales = self.normalizer.scales(flow)
        rgb = flow_to_rgb(flow.flatten(0, 1), scales.flatten(), self.flow_strength)
        # Resize the distance from white: resampling keeps exact zeros exact, so still areas (and a first frame
        # without reference) stay exactly white at any output size, where resizing 1.0 itself gives 0.99999994.
        rgb = (1.0 - resize_images(1.0 - rgb, height, width)).clamp_(0.0, 1.0)
        return rearrange(rgb * 2.0 - 1.0, "(b f) c h w -> b c f h w", b=batch, f=num_frames)

    # -- internals ----------------------------------------------------------------------------------

    @property
    def _correlation_bytes(self) -> int:
        """Bytes per value of the correlation volume at least (fp16 only where half precision runs)."""
        return 2 if self.fp16_active else 4

    def _sequence_flow(self, backend: FlowBackend, frames: Tensor, previous: Tensor | None) -> Tensor:
        """Flow for one video's frames ``[F, 3, h, w]``: pairs (previous, 0), (0, 1), ... in windows."""
        if previous is not None:
            frames = torch.cat([previous.unsqueeze(0), frames])
        pieces: list[Tensor] = []
        if previous is None:
            pieces.append(frames.new_zeros(1, 2, *frames.shape[-2:]))
        step = backend.max_pairs
        for start in range(0, frames.shape[0] - 1, step):
            pieces.append(backend.flow(frames[start : start + step + 1]))
        flow = torch.cat(pieces)
        if previous is None and self.first_frame == "repeat" and flow.shape[0] > 1:
            flow[0] = flow[1]  # the first frame has no pair of its own: it shows the pair (0, 1)
        return flow


def _unpack_context(frames: Any) -> tuple[Tensor, tuple[int, int] | None]:
    """Accept Scope's ``PreprocessorContext`` (duck-typed on ``.video_frames``) or a bare tensor."""
    if not hasattr(frames, "video_frames"):
        return frames, None
    video = frames.video_frames
    if video is None:
        raise ValueError(
            "the Scope context has no video frames (video_frames is None): optical flow needs a video or "
            "camera input. Select a video source, or choose another VACE conditioning mode."
        )
    target_height = getattr(frames, "target_height", None)
    target_width = getattr(frames, "target_width", None)
    if target_height is None or target_width is None:
        return video, None
    for name, value in (("target_height", target_height), ("target_width", target_width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"context.{name} must be a positive integer, got {value!r}.")
    return video, (target_height, target_width)


def _check_flow_strength(flow_strength: object) -> None:
    low, high = FLOW_STRENGTH_RANGE
    if (
        not isinstance(flow_strength, (int, float))
        or isinstance(flow_strength, bool)
        or not math.isfinite(flow_strength)
        or not low <= flow_strength <= high
    ):
        raise ValueError(f"{option_name('flow_strength')} must be a number in [{low}, {high}], got {flow_strength!r}.")
