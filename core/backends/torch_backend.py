"""The PyTorch backend: RAFT (Small or Large) through :class:`RaftSequenceFlow`, eager on the CPU, fast path on CUDA."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ..aot_package import (
    ROUTE_AOT_BUILT,
    ROUTE_AOT_LOADED,
    AotPackageCache,
    AotParts,
    aot_available,
)
from ..compiled_cache import (
    ROUTE_BACKGROUND,
    ROUTE_EAGER,
    ROUTE_NOT_SAVED,
    CompiledKernelCache,
    compiled_key,
    point_torch_caches_at,
)
from ..corr_lookup import fused_lookup_available
from ..log import log_once, logger
from ..models import model_spec
from ..paths import plugin_models_dir
from ..raft import EncodeFn, RaftSequenceFlow, UpdateStepFn
from ..weights import WeightsSpec, load_raft
from .background_compile import BackgroundCompiler
from .base import BackendConfig
from .cuda_graph import CudaGraphRunner

# Measured on an H200 at 512x512 (benchmarks/profile_flow.py --shapes): dynamic shapes compiled in 60 s and ran
# 2x slower than static ones (19 s per shape). So shapes stay static, and window lengths are padded up to a few
# bucket sizes (in pairs) so that only a handful of shapes is ever compiled and captured.
COMPILE_DYNAMIC = False
# Weights and activations channels-last on CUDA (RaftSequenceFlow(channels_last=...)): measured side by side in
# benchmarks/bench_flow.py ("channels-last" row).
CHANNELS_LAST_ON_CUDA = False
PAIR_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)
# torch.compile keeps at most `recompile_limit` (default 8) compiled versions per function, then silently runs
# it eagerly. Window buckets times compute sizes (and several preprocessors in one process) exceed 8.
RECOMPILE_LIMIT = 64
# Device types torch.compile is used on (the CPU runs eagerly: compiling it is slower to start than it gains).
COMPILE_DEVICE_TYPES = ("cuda",)
# "1": Inductor's C++ wrapper (cpp_wrapper) instead of generated Python, which a warm process otherwise spends
# seconds re-compiling with Python's compile(); measured by benchmarks/bench_cold_start.py.
CPP_WRAPPER_ENV = "SCOPE_OPTICAL_FLOW_CPP_WRAPPER"
# How compiled kernels reach a process (core.compiled_cache, core.aot_package):
# "jit" (default): torch.compile, its kernels kept as .torchcache entries in the models folder;
# "aot": ahead-of-time packages, loaded if cached, else built (checked in a fresh process, kept) by a warm-up; a shape
#        first met on a live call uses its packages if they exist, else torch.compile; settings the packages do not
#        cover (fused lookup, cpp_wrapper) use torch.compile. Not the default: on torch 2.11+cu130 (H200) loading any
#        CUDA package, even a one-convolution model, crashed the loading process (benchmarks/NOTES.md); the
#        fresh-process check catches that, records it and falls back, but only after a compile of about two minutes.
COMPILE_ROUTE_ENV = "SCOPE_OPTICAL_FLOW_COMPILE"
COMPILE_ROUTES = ("jit", "aot")
DEFAULT_COMPILE_ROUTE = "jit"


def compile_route() -> str:
    """The compile route the environment asks for (:data:`COMPILE_ROUTE_ENV`), checked."""
    route = os.environ.get(COMPILE_ROUTE_ENV, "").strip().lower() or DEFAULT_COMPILE_ROUTE
    if route not in COMPILE_ROUTES:
        raise ValueError(f"{COMPILE_ROUTE_ENV}={route!r} is not a compile route; use one of {', '.join(COMPILE_ROUTES)}.")
    return route


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one (alias since 2.6)
        if getattr(dynamo_config, name, RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
            setattr(dynamo_config, name, RECOMPILE_LIMIT)


def bucket_pairs(pairs: int, max_pairs: int) -> int:
    """The smallest bucket size (or ``max_pairs``) that holds ``pairs`` pairs."""
    for bucket in PAIR_BUCKETS:
        if pairs <= bucket <= max_pairs:
            return bucket
    return max_pairs


def half_precision_active(config: BackendConfig) -> bool:
    """fp16 applies on CUDA only; on the CPU it would be slower and less accurate."""
    return config.fp16 and config.device.type == "cuda"


class TorchFlowBackend:
    """PyTorch inference of :class:`RaftSequenceFlow`.

    On CUDA, five things make it fast (all but the regrouped update block can be turned off in the config):

    - ``fp16``: encoders, update block and correlation pyramid in half precision (coordinates stay fp32);
      measured against fp32 on random weights: flow within 0.2 px max, 0.02 px mean at 512x512.
    - the update block regrouped for tensor cores (:class:`FastUpdateBlock`, same arithmetic);
    - ``fused_lookup``: the correlation lookup as one Triton kernel (:mod:`..corr_lookup`) writing the update
      block's input, instead of grid_sample per pyramid level plus glue (needs Triton; if the kernel fails,
      the backend says so once and uses the grid_sample lookup; the ``aot`` route's packages use grid_sample);
    - ``torch_compile``: ``encode`` and ``update_step`` compiled by torch.compile (default mode, no
      autotuning), which fuses the GRU's elementwise work, concatenations and layout copies. The first call
      compiles (tens of seconds; torch caches the result on disk for later runs). If compiling fails, the
      backend says so once and runs eagerly.
    - ``cuda_graphs``: the whole forward pass replayed from a CUDA graph per input shape, which removes the
      launch cost of its several hundred kernels.
    - ``compile_in_background`` (with ``torch_compile``): a new window shape is served at once by the
      uncompiled model's CUDA graph while a worker thread (:class:`BackgroundCompiler`) loads its compiled
      kernels from the cache entry or compiles them and captures their graph; the shape then switches over.
      Loading takes seconds even from a warm cache, a first compile tens of seconds (benchmarks/NOTES.md).

    On the CPU: plain fp32 eager.
    """

    name = "torch"

    def __init__(self, config: BackendConfig, weights: WeightsSpec) -> None:
        raft, self.weights_info = load_raft(config.model, weights)
        half = half_precision_active(config)
        compute_dtype = torch.float16 if half else torch.float32
        self.compiled = config.torch_compile and config.device.type in COMPILE_DEVICE_TYPES
        # the ahead-of-time packages hold the grid_sample lookup (the fused one is a custom op they cannot carry)
        packages_asked = self.compiled and compile_route() == "aot"
        self.model = RaftSequenceFlow(
            raft,
            config.num_flow_updates,
            compute_dtype=compute_dtype,
            corr_dtype=compute_dtype,
            fast_update_block=config.device.type == "cuda",
            fused_lookup=config.fused_lookup and fused_lookup_available(config.device) and not packages_asked,
            channels_last=CHANNELS_LAST_ON_CUDA and config.device.type == "cuda",
        )
        self.model = self.model.to(config.device).eval()
        self.max_pairs = config.max_pairs
        self.config = config
        on_cuda = config.device.type == "cuda"
        self.cpp_wrapper = os.environ.get(CPP_WRAPPER_ENV, "") == "1"
        self.kernel_cache: CompiledKernelCache | None = None
        self.warmed_shapes: dict[int, str] = {}  # window pairs -> route of its compiled kernels (ready to serve)
        self._warming: set[int] = set()  # shapes whose warm-up is running (its own calls must not warm again)
        # ahead-of-time packages per warmed window shape (pairs), used before the torch.compile'd methods
        self.aot_packages: AotPackageCache | None = None
        self.aot_parts: dict[int, AotParts] = {}
        self.aot_failures: dict[int, str] = {}  # window pairs -> why its packages could not serve it
        # torch.compile'd encode and update_step (set up on first need: it imports torch's compiler stack)
        self._compiled_parts: tuple[EncodeFn, UpdateStepFn] | None = None
        use_graphs = config.cuda_graphs and on_cuda
        self.eager_graphs = CudaGraphRunner(self._forward_eager, config.device) if use_graphs else None
        self.graphs = CudaGraphRunner(self._forward_compiled, config.device) if use_graphs and self.compiled else None
        # Background compiling: new shapes are served at once by the uncompiled model (CUDA graphs) while a worker
        # thread loads or compiles their kernels; each shape switches over when its compiled graph is captured.
        self.compiler = (BackgroundCompiler(self._compile_shape, config.device)
                         if self.compiled and config.compile_in_background else None)
        if self.compiled and self.compiler is None:
            self._set_up_compiling()

    def _set_up_compiling(self) -> None:
        """Cache entries, torch.compile'd parts and ahead-of-time packages (once; in the worker when compiling
        in the background)."""
        if self._compiled_parts is not None:
            return
        try:
            self.kernel_cache = self._kernel_cache()
        except OSError as error:  # e.g. a read-only models folder: compile as before, without entries
            log_once("compiled-cache-unavailable", f"compiled kernels are not cached on disk ({error}).")
        if (self.kernel_cache is not None and compile_route() == "aot" and not self.model.fused_lookup
                and not self.cpp_wrapper and aot_available()):
            self.aot_packages = AotPackageCache(self.kernel_cache.directory, self.kernel_cache.base_key)
        self._compiled_parts = self._compile()

    def _compile(self) -> tuple[EncodeFn, UpdateStepFn]:
        log_once(
            "torch-compile",
            f"compiling {model_spec(self.config.model).title} with torch.compile for this GPU: the first call for "
            "each new input shape takes a while (cached on disk for later runs); pass torch_compile=False to skip.",
            20,
        )
        _raise_recompile_limit()
        options = {"cpp_wrapper": True} if self.cpp_wrapper else None
        return (torch.compile(self.model.encode, dynamic=COMPILE_DYNAMIC, options=options),
                torch.compile(self.model.update_step, dynamic=COMPILE_DYNAMIC, options=options))

    def _kernel_cache(self) -> CompiledKernelCache:
        """The compiled-kernel cache entries of this model (see core.compiled_cache); loads the existing ones."""
        directory = plugin_models_dir(self.config.models_dir)
        point_torch_caches_at(directory)
        key = compiled_key(
            model=self.config.model, fused_lookup=self.model.fused_lookup,
            height=self.config.height, width=self.config.width, pairs=0, fp16=half_precision_active(self.config),
            num_flow_updates=self.config.num_flow_updates, weights=self.weights_info.identity,
            device=self.config.device, wrapper="cpp" if self.cpp_wrapper else "python",
        )
        cache = CompiledKernelCache(directory, key)
        cache.load_existing()
        return cache

    def warm_up(self, pair_counts: Iterable[int], build_packages: bool = True) -> list[str]:
        """Run every window shape the stream will use (``pair_counts``: pairs per model call) once, so that
        compiling and CUDA-graph capture happen now, not on a live call. Compiled kernels come from their cache
        entries (ahead-of-time packages first) or are compiled and kept as entries; ``build_packages=False``
        compiles a shape without packages with torch.compile instead of building its packages (quicker, for a
        live call). Compiling in the background (the default), each shape's uncompiled CUDA graph is captured
        now, so the shape is served at once, and the worker thread loads or compiles its kernels
        (:data:`ROUTE_BACKGROUND`; :meth:`wait_for_compiled` waits for them). Returns the route of each shape
        warmed now (``ROUTE_*``; shapes run before are skipped)."""
        shapes = sorted({bucket_pairs(p, self.max_pairs) if self.compiled else p for p in pair_counts if p > 0})
        compiler = self.compiler if self.compiled else None
        routes: list[str] = []
        for pairs in shapes:
            if pairs in self.warmed_shapes:  # this process has run this shape already: nothing left to do
                continue
            if compiler is not None and compiler.requested(pairs):  # served already, its kernels on their way
                continue
            frames = torch.zeros(pairs + 1, 3, self.config.height, self.config.width, device=self.config.device)
            if compiler is not None:
                with torch.inference_mode():
                    self._run_eager(frames)  # captures the shape's uncompiled graph: served from now on
                compiler.request(pairs)
                routes.append(ROUTE_BACKGROUND)
                continue

            def run(frames: Tensor = frames) -> None:
                self.flow(frames)

            self._warming.add(pairs)
            try:
                routes.append(self._warm_shape(pairs, run, build_packages))
            finally:
                self._warming.discard(pairs)
            self.warmed_shapes[pairs] = routes[-1]
        return routes

    def wait_for_compiled(self, timeout: float | None = None) -> bool:
        """Wait until the background worker is done with every shape asked of it; ``False`` on timeout. (Which
        shapes compiled kernels serve, and how they came: :attr:`warmed_shapes`.)"""
        return self.compiler.wait(timeout) if self.compiler is not None else True

    def _compile_shape(self, pairs: int) -> None:
        """The worker's task: load or compile ``pairs``' kernels and capture their graph, then switch it over."""
        if not self.compiled:
            return
        started = time.perf_counter()
        frames = torch.zeros(pairs + 1, 3, self.config.height, self.config.width, device=self.config.device)
        try:
            self._set_up_compiling()
            with torch.inference_mode():
                route = self._warm_shape(pairs, lambda: self._run_compiled(frames), build_packages=True)
        except Exception as error:  # compiler failures (missing Triton, C compiler, ...): stay uncompiled
            self._uncompile(error)
            return
        if self.compiled and route != ROUTE_EAGER:
            self.warmed_shapes[pairs] = route  # flow() uses the compiled graph from its next call
            logger.info("compiled kernels serve windows of %d frames from now on (%s, %.1f s in the background)",
                        pairs + 1, route, time.perf_counter() - started)

    def _run_compiled(self, frames: Tensor) -> Tensor:
        return (self.graphs if self.graphs is not None else self._forward_compiled)(frames)

    def _warm_shape(self, pairs: int, run: Callable[[], None], build_packages: bool) -> str:
        """Warm one window shape: ahead-of-time packages, else torch.compile (its cache entry), else eager."""
        aot_route = self._warm_aot(pairs, run, build_packages) if self.aot_packages is not None else None
        if aot_route is not None:
            return aot_route
        if self.compiled and self.kernel_cache is not None:
            try:
                return self.kernel_cache.warm(pairs, run, lambda: self.compiled)
            except OSError as error:  # the entry could not be written: the kernels are compiled all the same
                log_once("compiled-cache-unwritable", f"compiled kernels not saved ({error}).")
                run()
                return ROUTE_NOT_SAVED
        run()
        return ROUTE_NOT_SAVED if self.compiled else ROUTE_EAGER

    def _warm_aot(self, pairs: int, run: Callable[[], None], build: bool) -> str | None:
        """Run one window shape on its ahead-of-time packages, loading them or (``build``) building them first;
        the route taken, or ``None`` when no packages serve it (torch.compile does then)."""
        assert self.aot_packages is not None
        device = self.config.device
        route = ROUTE_AOT_LOADED
        parts = self.aot_packages.load(pairs, device)
        if parts is None and not build:
            return None
        if parts is None:
            route = ROUTE_AOT_BUILT
            logger.info("compiling %s ahead of time for windows of %d pairs on this GPU (once per GPU model, size and "
                        "setting; later processes load it in about a second)", model_spec(self.config.model).title,
                        pairs)
            try:
                with torch.inference_mode(False):  # export traces ordinary tensors (this may run inside flow())
                    self.aot_packages.build(self.model, pairs, device)
            except Exception as error:  # export, compiler or check failures: torch.compile serves the shape
                self._drop_aot(pairs, error, "could not be built")
                return None
            parts = self.aot_packages.load(pairs, device)
            if parts is None:
                return None
        self.aot_parts[pairs] = parts
        try:
            run()
        except Exception as error:
            self._drop_aot(pairs, error, "failed to run")
            return None
        return route

    def _drop_aot(self, pairs: int, error: Exception, what: str) -> None:
        self.aot_failures[pairs] = f"{what}: {type(error).__name__}: {str(error)[:1000]}"
        log_once(
            f"aot-{what}",
            f"the ahead-of-time compiled model {what} ({type(error).__name__}: {str(error)[:300]}); "
            "using torch.compile instead.",
        )
        self.aot_parts.pop(pairs, None)
        if self.graphs is not None:  # a graph captured with the packages, or a failed capture, is not used again
            self.graphs.drop(pairs + 1)

    @property
    def needs_warm_up(self) -> bool:
        """Whether a first call of a new shape does one-off work (compiling, graph capture) worth doing early."""
        return self.compiled or self.eager_graphs is not None

    def _uncompile(self, error: Exception) -> None:
        log_once(
            "torch-compile-failed",
            f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); running RAFT eagerly instead.",
        )
        self.compiled = False
        self.graphs = None

    def _drop_fused_lookup(self, error: Exception) -> None:
        log_once(
            "fused-lookup-failed",
            f"the fused Triton correlation lookup failed ({type(error).__name__}: {str(error)[:300]}); "
            "using the grid_sample lookup instead.",
        )
        self.model.fused_lookup = False
        if self.eager_graphs is not None:  # graphs captured with the fused lookup are recaptured without it
            self.eager_graphs = CudaGraphRunner(self._forward_eager, self.config.device)
        if self.graphs is not None:
            self.graphs = CudaGraphRunner(self._forward_compiled, self.config.device)

    def _forward_eager(self, frames: Tensor) -> Tensor:
        return self.model(frames).float()

    def _forward_compiled(self, frames: Tensor) -> Tensor:
        parts = self.aot_parts.get(frames.shape[0] - 1)
        if parts is not None:
            return self.model.forward_with(frames, parts.encode, parts.update_step).float()
        assert self._compiled_parts is not None
        return self.model.forward_with(frames, *self._compiled_parts).float()

    def _run_eager(self, frames: Tensor) -> Tensor:
        run = self.eager_graphs if self.eager_graphs is not None else self._forward_eager
        try:
            return run(frames)
        except Exception as error:
            if not self.model.fused_lookup:
                raise
            self._drop_fused_lookup(error)
            return self._run_eager(frames)

    @torch.inference_mode()
    def flow(self, frames: Tensor) -> Tensor:
        if not self.compiled:
            return self._run_eager(frames)
        pairs = frames.shape[0] - 1
        bucket = bucket_pairs(pairs, self.max_pairs)
        padding = bucket - pairs
        if padding > 0:  # repeat the last frame: the extra (still) pairs are computed and dropped
            frames = torch.cat([frames, frames[-1:].expand(padding, -1, -1, -1)])
        if not (frames.is_inference() and frames.is_contiguous()):
            # compiled code is specialized on strides and on inference-ness: one kind of input, no recompiles
            frames = frames.clone(memory_format=torch.contiguous_format)
        if bucket not in self.warmed_shapes:
            if self.compiler is not None:  # served uncompiled until the worker has switched the shape over
                self.compiler.request(bucket)
                return self._run_eager(frames)[:pairs]
            if bucket not in self._warming:
                # A shape no warm-up covered: its packages are loaded if they exist, else torch.compile compiles
                # it (quicker than building packages, which only warm-ups do: that is where hosts show waiting).
                self.warm_up([bucket], build_packages=False)
        started = time.perf_counter()
        try:
            flow = self._run_compiled(frames)
        except Exception as error:  # compiler failures (missing Triton, C compiler, ...) must not stop the stream
            if bucket in self.aot_parts:  # first without the ahead-of-time package
                self._drop_aot(bucket, error, "failed to run")
            elif self.model.fused_lookup:  # then without the fused lookup, then without compiling
                self._drop_fused_lookup(error)
            else:
                self._uncompile(error)
            return self.flow(frames[: pairs + 1])
        elapsed = time.perf_counter() - started
        if elapsed > 2.0:
            logger.info("compiled RAFT for windows of %d frames in %.1f s", frames.shape[0], elapsed)
        return flow[:pairs]
