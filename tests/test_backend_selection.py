"""backend= selection: auto falls back to torch with one log line; tensorrt without TensorRT is a clear error."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core import backends, log
from scope_optical_flow_tensorrt.core.backends import BACKENDS, BackendConfig, choose_backend, create_backend

CUDA = torch.device("cuda", 0)  # choose_backend only looks at the device type; no GPU is touched


@pytest.fixture(autouse=True)
def fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "_said", set())


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


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


def test_auto_with_tensorrt_on_cuda_picks_tensorrt(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="scope_optical_flow_tensorrt"):
        assert choose_backend("auto", CUDA) == "tensorrt"
    assert any("builds an engine" in record.getMessage() for record in package_records(caplog))


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
    from scope_optical_flow_tensorrt.core import log as log_module
    from scope_optical_flow_tensorrt.core import preprocessor as preprocessor_module

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
