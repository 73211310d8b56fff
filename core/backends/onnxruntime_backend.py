"""The onnxruntime backend: runs the very ONNX file TensorRT builds its engines from.

Its job is proof and portability: flow through it matches the PyTorch backend (see tests/test_onnx_export.py),
which shows the exported graph is right. CUDA execution provider when the device is CUDA and onnxruntime has
it (tensors bound in place through I/O binding), else the CPU provider.

Which graph: the fp16 one (the file an fp16 TensorRT engine is built from) when ``fp16=True`` and the CUDA
provider runs it; otherwise the fp32 one. This follows the PyTorch backend's rule (fp16 applies on CUDA
only): onnxruntime's CPU provider lacks most float16 kernels and would wrap them in casts to float32, slower
than the fp32 graph and no closer to what a GPU computes.
"""

from __future__ import annotations

from typing import Any

import numpy
import torch
from torch import Tensor

from ..artifacts.engine_manager import ensure_onnx
from ..artifacts.onnx_export import INPUT_NAME, OUTPUT_NAME
from ..common.log import log_once
from ..common.paths import plugin_models_dir
from ..model.weights import WeightsInfo, WeightsSpec
from .base import BackendConfig

ONNXRUNTIME_INSTALL_HINT = "pip install onnxruntime (or onnxruntime-gpu), or pip install 'scope-optical-flow-tensorrt[onnx]'"


def import_onnxruntime() -> Any:
    """``import onnxruntime``, or a ``RuntimeError`` that says how to install it."""
    try:
        import onnxruntime
    except Exception as error:
        raise RuntimeError(
            f"backend='onnxruntime' needs onnxruntime ({type(error).__name__}: {error}). Install it with: "
            f"{ONNXRUNTIME_INSTALL_HINT}; or use backend='torch'."
        ) from error
    return onnxruntime


class OnnxRuntimeFlowBackend:
    """RAFT (Small or Large) from a cached ONNX graph: fp16 with ``fp16=True`` on the CUDA provider, else fp32."""

    name = "onnxruntime"

    def __init__(self, config: BackendConfig, weights: WeightsSpec) -> None:
        ort = import_onnxruntime()
        self.config = config
        self.device = config.device
        self.max_pairs = config.max_pairs
        self.on_cuda = config.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        if config.device.type == "cuda" and not self.on_cuda:
            log_once(
                "onnxruntime-cpu",
                "onnxruntime has no CUDA execution provider here: the onnxruntime backend runs the fp32 graph on "
                "the CPU (pip install onnxruntime-gpu for the GPU).",
            )
        self.fp16 = config.fp16 and self.on_cuda
        directory = plugin_models_dir(config.models_dir)
        self.onnx_path, self.weights_info = ensure_onnx(
            directory, config.height, config.width, config.num_flow_updates, weights, fp16=self.fp16,
            model=config.model,
        )
        providers: list[Any] = (
            [("CUDAExecutionProvider", {"device_id": config.device.index or 0}), "CPUExecutionProvider"]
            if self.on_cuda else ["CPUExecutionProvider"]
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: graph-optimizer notes are not the user's concern
        self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=providers)

    @property
    def weights(self) -> WeightsInfo:
        return self.weights_info

    def flow(self, frames: Tensor) -> Tensor:
        frames = frames.to(dtype=torch.float32)
        if self.on_cuda:
            return self._flow_cuda(frames.to(self.device).contiguous())
        array = frames.detach().cpu().contiguous().numpy()
        (result,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(result).to(self.device)

    def _flow_cuda(self, frames: Tensor) -> Tensor:
        num_frames, _, height, width = frames.shape
        output = torch.empty(num_frames - 1, 2, height, width, dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        device_id = self.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", device_id, numpy.float32, list(frames.shape), frames.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", device_id, numpy.float32, list(output.shape), output.data_ptr())
        # onnxruntime runs on its own CUDA stream: the input, written on torch's stream, must be complete.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return output
