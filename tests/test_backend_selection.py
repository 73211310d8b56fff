"""backend= selection: auto falls back to torch with one log line; tensorrt without TensorRT is a clear error."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core import backends
from scope_optical_flow_tensorrt.core.artifacts import trt_build
from scope_optical_flow_tensorrt.core.backends import BACKENDS, BackendConfig, choose_backend, create_backend
from scope_optical_flow_tensorrt.core.common import log

CUDA = torch.device("cuda", 0)  # choose_backend only looks at the device type; no GPU is touched


@pytest.fixture(autouse=True)
def fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "_said", set())


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # and so does `import tensorrt_rtx`


def package_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "scope_optical_flow_tensorrt"]


def test_backend_names() -> None:
    assert set(BACKENDS) == {"auto", "torch", "tensorrt", "onnxruntime"}


def test_auto_without_tensorrt_uses_torch_with_one_log_line(no_tensorrt: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scope_optical_flow_tensorrt"):
        assert choose_backend("auto", CUDA) == "torch"
        assert choose_backend("auto", CUDA) == "torch"
    records = package_records(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "torch" in message and "TensorRT is not installed" in message and "pip install" in message
    assert records[0].levelno == logging.WARNING


def gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    """Pretend the CUDA device is ``name`` of ``capability`` (only its properties are read)."""
    properties = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)


def flavours_installed(monkeypatch: pytest.MonkeyPatch, *installed: str) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: bool(installed))
    monkeypatch.setattr(trt_build, "flavour_available", lambda flavour: flavour in installed)
    monkeypatch.setattr(trt_build, "supported_capabilities",
                        lambda flavour: None if flavour == "tensorrt" else ("7.5", "8.0", "8.6", "8.9", "12.0"))


def test_auto_with_tensorrt_on_cuda_picks_tensorrt(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    flavours_installed(monkeypatch, "tensorrt", "tensorrt_rtx")
    gpu(monkeypatch, "NVIDIA GeForce RTX 4090", (8, 9))
    monkeypatch.delenv(trt_build.FLAVOUR_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="scope_optical_flow_tensorrt"):
        assert choose_backend("auto", CUDA) == "tensorrt"
    (message,) = [record.getMessage() for record in package_records(caplog)]
    assert "builds an engine" in message and "TensorRT 10/11 for NVIDIA GeForce RTX 4090" in message  # first when both


@pytest.mark.parametrize(("installed", "env", "capability", "expected", "why"), [
    (("tensorrt_rtx",), "", (8, 9), "tensorrt_rtx", "TensorRT 10/11 is not installed"),
    (("tensorrt", "tensorrt_rtx"), "tensorrt_rtx", (8, 9), "tensorrt_rtx", "$SCOPE_OPTICAL_FLOW_TENSORRT=tensorrt_rtx"),
    (("tensorrt", "tensorrt_rtx"), "", (9, 0), "tensorrt", "TensorRT 10/11 is installed"),
])
def test_flavour_choice_and_its_reason(monkeypatch: pytest.MonkeyPatch, installed, env, capability, expected, why) -> None:
    flavours_installed(monkeypatch, *installed)
    monkeypatch.setenv(trt_build.FLAVOUR_ENV, env)
    flavour, reason = trt_build.choose_flavour(".".join(map(str, capability)), "GPU")
    assert flavour == expected and why in reason


def test_a_gpu_no_installed_flavour_supports_gets_one_line_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """TensorRT for RTX alone on an H100 (compute capability 9.0): one clear line before any build; auto runs
    PyTorch, backend='tensorrt' raises it."""
    flavours_installed(monkeypatch, "tensorrt_rtx")
    gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0))
    monkeypatch.delenv(trt_build.FLAVOUR_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="scope_optical_flow_tensorrt"):
        assert choose_backend("auto", CUDA) == "torch"
    (message,) = [record.getMessage() for record in package_records(caplog)]
    assert "backend: torch" in message and "H100" in message and "does not support compute capability 9.0" in message
    assert "\n" not in message
    with pytest.raises(RuntimeError, match=r"no installed TensorRT flavour can serve NVIDIA H100.*9\.0"):
        choose_backend("tensorrt", CUDA)
    monkeypatch.setenv(trt_build.FLAVOUR_ENV, "tensorrt")  # asked for a flavour that is not installed
    with pytest.raises(RuntimeError, match="TensorRT 10/11 is not installed"):
        choose_backend("tensorrt", CUDA)
    monkeypatch.setenv(trt_build.FLAVOUR_ENV, "tensorrt-11")
    with pytest.raises(ValueError, match="tensorrt, tensorrt_rtx"):
        choose_backend("tensorrt", CUDA)


def test_auto_on_cpu_uses_torch_even_with_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: True)
    assert choose_backend("auto", torch.device("cpu")) == "torch"


def test_tensorrt_without_tensorrt_is_a_clear_error_at_construction(no_tensorrt: None) -> None:
    with pytest.raises(RuntimeError, match=r"TensorRT is not installed.*pip install tensorrt"):
        OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", backend="tensorrt", weights=None)
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        choose_backend("tensorrt", CUDA)


def test_tensorrt_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: True)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        choose_backend("tensorrt", torch.device("cpu"))


def test_creating_tensorrt_backend_without_tensorrt_fails_clearly(no_tensorrt: None) -> None:
    config = BackendConfig(height=128, width=128, device=torch.device("cpu"), fp16=True, num_flow_updates=1, max_pairs=2)
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        create_backend("tensorrt", config, None)


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ValueError, match="tensorrt, onnxruntime"):
        choose_backend("openvino", CUDA)
    with pytest.raises(ValueError, match="not supported"):
        OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", backend="TensorRT")


def test_onnxruntime_backend_is_chosen_as_asked() -> None:
    assert choose_backend("onnxruntime", torch.device("cpu")) == "onnxruntime"


def test_onnxruntime_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeError, match="pip install onnxruntime"):
        choose_backend("onnxruntime", torch.device("cpu"))


def test_auto_falls_back_to_torch_when_the_tensorrt_backend_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """backend='auto' chose TensorRT, but its engine build failed: the preprocessor still works, on PyTorch."""
    from scope_optical_flow_tensorrt.core import preprocessor as preprocessor_module
    from scope_optical_flow_tensorrt.core.common import log as log_module

    real_create = preprocessor_module.create_backend

    def failing_tensorrt(name: str, config: object, weights: object) -> object:
        if name == "tensorrt":
            raise RuntimeError("engine build failed: out of workspace")
        return real_create(name, config, weights)  # type: ignore[arg-type]

    monkeypatch.setattr(preprocessor_module, "choose_backend", lambda requested, device: "tensorrt")
    monkeypatch.setattr(preprocessor_module, "create_backend", failing_tensorrt)
    monkeypatch.setattr(log_module, "_said", set())
    pre = preprocessor_module.OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", weights=None, num_flow_updates=2)
    out = pre(torch.rand(2, 64, 64, 3))
    assert out.shape == (1, 3, 2, 64, 64)
    assert pre.backend_name == "torch"
    assert "tensorrt backend failed to load (RuntimeError: engine build failed" in caplog.text

    strict = preprocessor_module.OpticalFlowTensorRTPreprocessor(
        128, 128, device="cpu", weights=None, num_flow_updates=2, backend="onnxruntime"
    )
    monkeypatch.setattr(preprocessor_module, "create_backend", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        strict(torch.rand(2, 64, 64, 3))
