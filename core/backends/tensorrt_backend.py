"""The TensorRT backend: a cached engine (built on first use), run on torch's current CUDA stream.

The engine is deserialized once and run through one execution context. Input and output are torch tensors
on the preprocessor's device, bound by address (``set_tensor_address``); ``set_input_shape`` and the output
buffer change only when the number of frames changes; ``execute_async_v3`` is queued on
``torch.cuda.current_stream()``, so nothing waits for the GPU (no host synchronization in ``flow``).

Both TensorRT flavours run here (see :mod:`..trt_build`); with TensorRT for RTX the context is created with
the runtime config of :mod:`..trt_rtx` (eager shape specialization, its own CUDA-graph capture when
``cuda_graphs`` is on, the runtime cache loaded from beside the engine), and the runtime cache is saved back
after the first call at each new frame count (one stream synchronization per shape, paid by warm-up).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..artifacts import trt_rtx
from ..artifacts.engine_manager import EngineSpec, load_engine, load_runtime_cache, save_runtime_cache
from ..artifacts.onnx_export import INPUT_NAME, OUTPUT_NAME
from ..artifacts.trt_build import (
    FLAVOUR_TITLES,
    TENSORRT_RTX,
    build_target,
    import_tensorrt,
    require_tensorrt,
    tensorrt_logger,
)
from ..common.log import logger
from ..common.paths import plugin_models_dir
from ..model.weights import WeightsInfo, WeightsSpec
from .base import BackendConfig


class TensorRTFlowBackend:
    """RAFT (Small or Large) through a TensorRT engine cached per size, settings and GPU (see ``core.engine_manager``)."""

    name = "tensorrt"

    def __init__(self, config: BackendConfig, weights: WeightsSpec) -> None:
        require_tensorrt()  # the install hint first, on any device
        target = build_target(config.device)  # raises without CUDA, or when no installed flavour fits the GPU
        trt = import_tensorrt(target.flavour)
        self.target = target
        self.config = config
        self.device = config.device
        self.max_pairs = config.max_pairs
        spec = EngineSpec(config.height, config.width, config.fp16, config.num_flow_updates, config.max_pairs,
                          model=config.model)
        # TensorRT keeps references to the logger and runtime; they must outlive the engine.
        self._trt_logger = tensorrt_logger(trt)
        self._runtime = trt.Runtime(self._trt_logger)
        with torch.cuda.device(self.device):
            self.engine, self.engine_path, self.weights_info = load_engine(
                plugin_models_dir(config.models_dir), spec, weights, target, self._runtime.deserialize_cuda_engine
            )
            self._runtime_config = None
            if target.flavour == TENSORRT_RTX:
                cached = load_runtime_cache(self.engine_path, target)
                self.context, self._runtime_config = trt_rtx.create_context(
                    trt, self.engine, cached, config.cuda_graphs)
            else:
                self.context = self.engine.create_execution_context()
        logger.info("TensorRT backend: %s %s, engine %s", FLAVOUR_TITLES[target.flavour], target.tensorrt_version,
                    self.engine_path.name)
        self._runtime_cached_frames: set[int] = set()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.engine_path} (out of GPU memory?).")
        self._check_io(trt)
        self._frames: int | None = None  # number of frames the context's input shape is set for
        self._output: Tensor | None = None

    @property
    def weights(self) -> WeightsInfo:
        return self.weights_info

    def flow(self, frames: Tensor) -> Tensor:
        num_frames = frames.shape[0]
        if not 2 <= num_frames <= self.max_pairs + 1:
            raise ValueError(f"the TensorRT engine takes 2 to {self.max_pairs + 1} frames per call, got {num_frames}.")
        frames = frames.to(device=self.device, dtype=torch.float32).contiguous()
        with torch.cuda.device(self.device):  # TensorRT runs on the current device; no-op when already current
            if num_frames != self._frames:
                self._resize(num_frames)
            assert self._output is not None
            if not self.context.set_tensor_address(INPUT_NAME, frames.data_ptr()):
                raise RuntimeError("TensorRT rejected the input tensor address.")
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run the engine {self.engine_path} (see the TensorRT log).")
            if self._runtime_config is not None and num_frames not in self._runtime_cached_frames:
                self._save_runtime_cache(stream, num_frames)
            # The output buffer is reused by the next call, and callers keep several results (one per window)
            # before concatenating them: hand out a copy (queued on the same stream, no synchronization).
            return self._output.clone()

    def _save_runtime_cache(self, stream: Any, num_frames: int) -> None:
        """Keep the kernels compiled for this frame count (first call at it only; waits for the stream once)."""
        stream.synchronize()
        self._runtime_cached_frames.add(num_frames)
        save_runtime_cache(self.engine_path, self.target, trt_rtx.serialize_runtime_cache(self._runtime_config))

    def _resize(self, num_frames: int) -> None:
        """Set the input shape for ``num_frames`` and (re)allocate and bind the output buffer."""
        shape = (num_frames, 3, self.config.height, self.config.width)
        if not self.context.set_input_shape(INPUT_NAME, shape):
            raise RuntimeError(f"TensorRT rejected input shape {shape} (engine profile: 2 to {self.max_pairs + 1} frames).")
        output_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        self._output = torch.empty(output_shape, dtype=torch.float32, device=self.device)
        if not self.context.set_tensor_address(OUTPUT_NAME, self._output.data_ptr()):
            raise RuntimeError("TensorRT rejected the output tensor address.")
        self._frames = num_frames

    def _check_io(self, trt: Any) -> None:
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        modes = {name: self.engine.get_tensor_mode(name) for name in names}
        if modes.get(INPUT_NAME) != trt.TensorIOMode.INPUT or modes.get(OUTPUT_NAME) != trt.TensorIOMode.OUTPUT:
            raise RuntimeError(
                f"{self.engine_path} has tensors {names}, expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}; "
                "delete it (or run clear_cache()) to rebuild."
            )
        for name in (INPUT_NAME, OUTPUT_NAME):
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise RuntimeError(f"{self.engine_path}: tensor {name!r} is not float32; delete it to rebuild.")
