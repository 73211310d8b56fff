"""The PyTorch backend: RAFT (Small or Large) through :class:`RaftSequenceFlow`, eager on the CPU, fast path on CUDA."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor

from ..artifacts.compiled_cache import (
    ROUTE_BACKGROUND,
    ROUTE_EAGER,
    ROUTE_LOADED,
    CompiledKernelCache,
    compile_misses,
    compiled_key,
)
from ..common.log import log_once, logger
from ..common.paths import plugin_models_dir
from ..device import finish_queued_work
from ..model.corr_lookup import fused_lookup_available
from ..model.raft import EncodeFn, RaftSequenceFlow, UpdateStepFn
from ..model.specs import model_spec
from ..model.weights import WeightsSpec, load_raft
from .base import BackendConfig
from .compile_process import REPORT_FAILED, CompileProcess
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
# it eagerly. Window buckets times compute sizes (and several preprocessors in one process) exceed 8, so our own
# traces run with a higher limit (compile_settings), which the rest of the process never sees.
RECOMPILE_LIMIT = 64
# Device types torch.compile is used on (the CPU runs eagerly: compiling it is slower to start than it gains).
COMPILE_DEVICE_TYPES = ("cuda",)
# A caller waiting at least this long for the compile process imports torch's compiler stack meanwhile (up to a
# second or two); shorter waits keep their timeout to the letter.
READY_THE_COMPILER_FROM_S = 5.0
# A compiled shape whose kernels the compile process could not make (see the log); the uncompiled model serves it.
ROUTE_FAILED = "compile-failed"
# Kernels loaded from their entry, but Inductor compiled in this process all the same (the entry did not cover them).
ROUTE_COMPILED_HERE = "compiled-in-this-process"


@contextmanager
def compile_settings(host: bool = True) -> Iterator[None]:
    """Dynamo and Inductor settings for our own traces only, undone afterwards (the host's process keeps its own).

    In a host's process (``host``; not the compile process) Inductor also works in the calling thread alone: there
    it only loads what the compile process compiled, and the pool of compile workers it would start on first use
    (a process per core, each importing torch) takes the CPU from the host's live calls for seconds (measured: a
    warm Scope stream's first seconds ran at 32 ms per 4-frame chunk instead of 5, benchmarks/NOTES.md).
    """
    import torch._dynamo.config as dynamo_config

    # the newer name, and the older one (an alias since torch 2.6): patch whichever this torch has
    names = [name for name in ("recompile_limit", "cache_size_limit") if hasattr(dynamo_config, name)]
    with ExitStack() as stack:
        stack.enter_context(dynamo_config.patch({names[0]: max(getattr(dynamo_config, names[0]), RECOMPILE_LIMIT)}))
        if host:
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(compile_threads=1))
        yield


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
      the backend says so once and uses the grid_sample lookup);
    - ``torch_compile``: ``encode`` and ``update_step`` compiled by torch.compile (default mode, no
      autotuning), which fuses the GRU's elementwise work, concatenations and layout copies. The kernels are
      compiled by a child process (:mod:`.compile_process`), never in this one, and kept as cache entries in the
      models folder; this process loads an entry when a caller waits for it (:meth:`wait_for_compiled`, or a
      warm-up or first call with ``compile_in_background=False``). If compiling fails, the backend says so once
      and the uncompiled model serves.
    - ``cuda_graphs``: the whole forward pass replayed from a CUDA graph per input shape, which removes the
      launch cost of its several hundred kernels. Graphs are captured only in the caller's thread: on the first
      call of a shape, in a warm-up, or when a waiting caller switches a shape to its compiled kernels.

    Until a shape's compiled kernels are loaded, it is served by the uncompiled model's CUDA graph (about half the
    speed); a live call never waits for a compile or for loading compiled kernels.

    On the CPU: plain fp32 eager.

    ``compile_here`` makes this backend the compile process's own: it compiles in this process and keeps the
    kernels as entries of that cache (:meth:`compile_here`).
    """

    name = "torch"

    def __init__(self, config: BackendConfig, weights: WeightsSpec,
                 compile_here: CompiledKernelCache | None = None) -> None:
        raft, self.weights_info = load_raft(config.model, weights)
        half = half_precision_active(config)
        compute_dtype = torch.float16 if half else torch.float32
        self.compiled = config.torch_compile and config.device.type in COMPILE_DEVICE_TYPES
        self.model = RaftSequenceFlow(
            raft,
            config.num_flow_updates,
            compute_dtype=compute_dtype,
            corr_dtype=compute_dtype,
            fast_update_block=config.device.type == "cuda",
            fused_lookup=config.fused_lookup and fused_lookup_available(config.device),
            channels_last=CHANNELS_LAST_ON_CUDA and config.device.type == "cuda",
        )
        self.model = self.model.to(config.device).eval()
        self.max_pairs = config.max_pairs
        self.config = config
        self.kernel_cache = compile_here
        self.warmed_shapes: dict[int, str] = {}  # window pairs -> route of its compiled kernels (ready to serve)
        self.failed_shapes: dict[int, str] = {}  # window pairs -> why no compiled kernels serve it
        self._ready: dict[int, str] = {}  # window pairs -> route of an entry ready to load (not loaded yet)
        self._rebuilt: set[int] = set()  # shapes whose entry could not be loaded and was asked for again
        self._asked: set[int] = set()  # shapes a warm-up has run (uncompiled graph captured, compiled kernels asked)
        self.switch_seconds: dict[int, dict[str, float]] = {}  # window pairs -> seconds per part of its switch
        # torch.compile'd encode and update_step (set up on first need: it imports torch's compiler stack)
        self._compiled_parts: tuple[EncodeFn, UpdateStepFn] | None = None
        self.compiler: CompileProcess | None = None  # started on the first shape to compile
        use_graphs = config.cuda_graphs and config.device.type == "cuda"
        self.eager_graphs = CudaGraphRunner(self._forward_eager, config.device) if use_graphs else None
        self.graphs = CudaGraphRunner(self._forward_compiled, config.device) if use_graphs and self.compiled else None

    # -- compiled kernels -----------------------------------------------------------------------------

    def _base_key(self) -> dict[str, Any]:
        return compiled_key(
            model=self.config.model, fused_lookup=self.model.fused_lookup,
            height=self.config.height, width=self.config.width, pairs=0, fp16=half_precision_active(self.config),
            num_flow_updates=self.config.num_flow_updates, weights=self.weights_info.identity,
            device=self.config.device,
        )

    def _kernels(self) -> CompiledKernelCache:
        """The cache entries of this model's compiled kernels (see core.compiled_cache)."""
        if self.kernel_cache is None:
            self.kernel_cache = CompiledKernelCache(plugin_models_dir(self.config.models_dir), self._base_key())
        return self.kernel_cache

    def _compile_process(self) -> CompileProcess:
        if self.compiler is None:
            log_once(
                "torch-compile",
                f"compiling {model_spec(self.config.model).title} with torch.compile for this GPU in a child process: "
                "the uncompiled model serves meanwhile, about half as fast (cached on disk for later runs; "
                "pass torch_compile=False to skip).",
                20,
            )
            config = self.config
            settings = {"height": config.height, "width": config.width, "device": str(config.device),
                        "fp16": config.fp16, "num_flow_updates": config.num_flow_updates,
                        "max_pairs": config.max_pairs, "fused_lookup": self.model.fused_lookup,
                        "model": config.model, "models_dir": str(self._kernels().directory)}
            self.compiler = CompileProcess({"config": settings, "base_key": self._kernels().base_key})
        return self.compiler

    def _ask_for(self, pairs: int) -> None:
        """Have ``pairs``' compiled kernels made ready: at once from a valid entry, else by the compile process."""
        if pairs in self.warmed_shapes or pairs in self._ready or pairs in self.failed_shapes:
            return
        if self.compiler is not None and self.compiler.requested(pairs):
            return
        try:
            kernels = self._kernels()
        except OSError as error:  # e.g. an unusable models folder
            self._give_up(pairs, f"the models folder is not usable ({error})")
            return
        reason = kernels.why_invalid(pairs)
        if reason is None:
            self._ready[pairs] = ROUTE_LOADED
        elif not kernels.writable:
            self._give_up(pairs, f"the models folder {kernels.directory} cannot be written, so compiled kernels "
                                 "made now could not be kept; make it writable (or pass models_dir=) to compile")
            return
        else:
            if kernels.path(pairs).exists():  # the compile process rebuilds it; its log is not the host's
                logger.warning("rebuilding compiled kernels %s: %s", kernels.path(pairs).name, reason)
            self._compile_process().request(pairs)

    def _collect_reports(self) -> None:
        if self.compiler is None:
            return
        for pairs, report in list(self.compiler.reports.items()):
            if pairs in self.warmed_shapes or pairs in self._ready or pairs in self.failed_shapes:
                continue
            if report["route"] in (REPORT_FAILED, ROUTE_EAGER):
                self._give_up(pairs, str(report.get("error", "torch.compile fell back to eager")))
            else:
                self._ready[pairs] = str(report["route"])

    def _give_up(self, pairs: int, reason: str) -> None:
        self.failed_shapes[pairs] = reason
        log_once("torch-compile-failed", f"torch.compile failed ({reason[:300]}); the uncompiled model keeps serving.")

    def _prepare(self, pairs: int, route: str) -> str | None:
        """Load ``pairs``' entry and run its compiled kernels once (Dynamo's trace, Inductor's cached graphs, the
        Triton kernels), in this thread; returns the route for :meth:`_capture`, or ``None`` if they cannot serve."""
        kernels = self._kernels()
        started = time.perf_counter()
        if not kernels.load(pairs):  # unreadable (now discarded) or gone: built again, once
            if pairs in self._rebuilt or not kernels.writable:
                self._give_up(pairs, "its cache entry could not be loaded, even after it was built again")
            else:
                self._rebuilt.add(pairs)
                self._compile_process().request(pairs, again=True)
            return None
        loaded = time.perf_counter()
        try:
            self._ready_the_compiler()
            misses = compile_misses()
            with torch.inference_mode(), compile_settings():
                self._forward_compiled(self._zeros(pairs))
        except Exception as error:  # compiler failures (missing Triton, C compiler, ...): stay uncompiled
            kernels.discard(pairs, f"its kernels failed at use ({type(error).__name__}: {str(error)[:200]})")
            self._give_up(pairs, f"{type(error).__name__}: {error}")
            return None
        if compile_misses() != misses:  # the entry did not hold every kernel: Inductor compiled some here
            logger.warning("compiled kernels for windows of %d pairs were partly compiled in this process (the cache "
                           "entry did not cover them)", pairs)
            route = ROUTE_COMPILED_HERE
        self.switch_seconds[pairs] = {"entry": round(loaded - started, 3),
                                      "trace_and_kernels": round(time.perf_counter() - loaded, 3)}
        return route

    def _capture(self, pairs: int, route: str) -> None:
        """Capture ``pairs``' compiled graph in the calling thread and serve it from now on."""
        started = time.perf_counter()
        if self.graphs is not None:
            try:
                with torch.inference_mode(), compile_settings():
                    self.graphs(self._zeros(pairs))
            except Exception as error:  # a failure of the compiled kernels: the uncompiled graph keeps serving
                self.graphs.drop(pairs + 1)
                self._give_up(pairs, f"{type(error).__name__}: {error}")
                return
        self.warmed_shapes[pairs] = route
        parts = self.switch_seconds.setdefault(pairs, {})
        parts["graph"] = round(time.perf_counter() - started, 3)
        logger.info("compiled kernels serve windows of %d frames from now on (%s; loaded in %.1f s: %s)", pairs + 1,
                    route, sum(parts.values()), ", ".join(f"{name} {value:.2f} s" for name, value in parts.items()))

    def _switch_ready(self) -> None:
        """Switch, in the calling thread, every shape whose kernels are ready: load, run once, capture; then wait
        for the GPU work the switch queued, so the next live call does not (a call that switched nothing leaves
        the stream alone: the command line asks after every chunk of a long clip)."""
        self._collect_reports()
        if not self._ready:
            return
        while self._ready:
            pairs = min(self._ready)
            route = self._ready.pop(pairs)
            prepared_route = self._prepare(pairs, route)
            if prepared_route is not None:
                self._capture(pairs, prepared_route)
        finish_queued_work(self.config.device)

    def _zeros(self, pairs: int) -> Tensor:
        """Frames of a window of ``pairs`` pairs (contiguous, on the device; made under inference mode by callers
        that trace, as live calls' frames are)."""
        return torch.zeros(pairs + 1, 3, self.config.height, self.config.width, device=self.config.device)

    def _compile(self) -> tuple[EncodeFn, UpdateStepFn]:
        return (torch.compile(self.model.encode, dynamic=COMPILE_DYNAMIC),
                torch.compile(self.model.update_step, dynamic=COMPILE_DYNAMIC))

    def compile_here(self, pairs: int) -> str:
        """(The compile process.) Compile ``pairs``' kernels in this process, or load them from their valid entry,
        and keep them as the entry; returns the route (``core.compiled_cache.ROUTE_*``)."""
        assert self.kernel_cache is not None, "compile_here needs the backend built with compile_here=<cache>"
        if not self.compiled:
            raise RuntimeError(f"torch.compile is not used on {self.config.device.type}")
        self._ready_the_compiler()
        with torch.inference_mode(), compile_settings(host=False):
            frames = self._zeros(pairs)  # an inference tensor, as live calls pass: the same guards
            return self.kernel_cache.warm(pairs, lambda: self._forward_compiled(frames), lambda: self.compiled)

    # -- warm-up and waiting --------------------------------------------------------------------------

    def warm_up(self, pair_counts: Iterable[int]) -> list[str]:
        """Run every window shape the stream will use (``pair_counts``: pairs per model call) once, so that
        CUDA-graph capture happens now, not on a live call, and have their compiled kernels made (loaded from a
        cache entry, or compiled by the compile process). With ``compile_in_background`` this returns once the
        uncompiled graphs are captured (:data:`ROUTE_BACKGROUND`); else it waits for the compiled kernels and
        switches to them. Returns the route of each shape warmed now (shapes warmed before are skipped)."""
        shapes = sorted({bucket_pairs(p, self.max_pairs) if self.compiled else p for p in pair_counts if p > 0})
        self._retry_captures()
        warmed_now: list[int] = []
        for pairs in shapes:
            if pairs in self._asked:  # warmed before: its graph is captured and its compiled kernels asked for
                continue
            self._asked.add(pairs)
            frames = torch.zeros(pairs + 1, 3, self.config.height, self.config.width, device=self.config.device)
            with torch.inference_mode():
                self._run_eager(frames)  # captures the shape's uncompiled graph: served from now on
            if self.compiled:
                self._ask_for(pairs)
            warmed_now.append(pairs)
        if not self.compiled:
            return [ROUTE_EAGER] * len(warmed_now)
        if self.config.compile_in_background:
            return [ROUTE_BACKGROUND] * len(warmed_now)
        self.wait_for_compiled()
        return [self.warmed_shapes.get(pairs, ROUTE_FAILED) for pairs in warmed_now]

    def wait_for_compiled(self, timeout: float | None = None) -> bool:
        """Wait for the compile process to finish every shape asked of it (at most ``timeout`` seconds, whatever the
        child is doing), then load the compiled kernels of every finished shape and capture their graphs, in this
        thread (loading is the work this call is for: a few seconds per shape, not counted in ``timeout``). Returns
        whether no shape is left waiting (a shape whose compile failed stays uncompiled, as the log says)."""
        self._retry_captures()
        if not self.compiled:
            return True
        waits_long = timeout is None or timeout >= READY_THE_COMPILER_FROM_S
        if waits_long and self.compiler is not None and self.compiler.busy:
            self._ready_the_compiler()  # while the child compiles, not after it
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            finished = self.compiler.wait(left) if self.compiler is not None else True
            self._switch_ready()
            # a switch may have asked for an entry again (it could not be loaded): wait for that one too
            if not finished or self.compiler is None or not self.compiler.busy:
                return finished

    def _ready_the_compiler(self) -> None:
        """Import torch's compiler stack and set up the torch.compile'd parts (no trace yet): a waiting caller does
        it while the child compiles, so the switch after it does not pay that second or so of imports."""
        if self._compiled_parts is None:
            importlib.import_module("torch._inductor.compile_fx")  # what the switch's first compiled call imports
            self._compiled_parts = self._compile()

    def _retry_captures(self) -> None:
        """A waiting caller: graph captures that another thread interrupted may be tried again."""
        for runner in (self.eager_graphs, self.graphs):
            if runner is not None:
                runner.retry_failed()

    @property
    def needs_warm_up(self) -> bool:
        """Whether a first call of a new shape does one-off work (compiling, graph capture) worth doing early."""
        return self.compiled or self.eager_graphs is not None

    def close(self) -> None:
        """Stop the compile process, if one runs (its entry is then written whole or not at all)."""
        if self.compiler is not None:
            self.compiler.close()

    # -- running ---------------------------------------------------------------------------------------

    def _uncompile(self, error: Exception) -> None:
        log_once(
            "torch-compile-failed",
            f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); running RAFT uncompiled instead.",
        )
        self.compiled = False
        self.graphs = None
        self.close()

    def _drop_fused_lookup(self, error: Exception) -> None:
        log_once(
            "fused-lookup-failed",
            f"the fused Triton correlation lookup failed ({type(error).__name__}: {str(error)[:300]}); "
            "using the grid_sample lookup instead.",
        )
        self.model.fused_lookup = False
        if self.eager_graphs is not None:  # graphs captured with the fused lookup are recaptured without it
            self.eager_graphs = CudaGraphRunner(self._forward_eager, self.config.device)
            self._asked.clear()

    def _forward_eager(self, frames: Tensor) -> Tensor:
        return self.model(frames).float()

    def _forward_compiled(self, frames: Tensor) -> Tensor:
        assert self._compiled_parts is not None
        return self.model.forward_with(frames, *self._compiled_parts).float()

    def _run_compiled(self, frames: Tensor) -> Tensor:
        return (self.graphs if self.graphs is not None else self._forward_compiled)(frames)

    def _run_eager(self, frames: Tensor) -> Tensor:
        run = self.eager_graphs if self.eager_graphs is not None else self._forward_eager
        try:
            return run(frames)
        except Exception as error:
            if not self.model.fused_lookup:
                raise
            if self.compiled:  # its compiled kernels were made with the fused lookup too
                self._uncompile(error)
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
            self._ask_for(bucket)
            if not self.config.compile_in_background:  # this caller waits for the compiled kernels
                self.wait_for_compiled()
        if bucket not in self.warmed_shapes:  # served uncompiled until a waiting caller switches the shape over
            return self._run_eager(frames)[:pairs]
        try:
            flow = self._run_compiled(frames)
        except Exception as error:  # a failure of the compiled kernels must not stop the stream
            self._kernels().discard(bucket, f"its kernels failed at use ({type(error).__name__}: {str(error)[:200]})")
            self._uncompile(error)
            return self.flow(frames[: pairs + 1])
        return flow[:pairs]
