"""A stand-in for torch.compile and torch's portable cache artifacts, for CPU tests of the compiled path.

The CPU runs eagerly, so tests that exercise compiling, warm-up and the compiled-kernel cache entries enable
the compiled path on the CPU and replace torch.compile with :class:`FakeTorchCompile`, which "compiles" each new
input shape once and saves/loads what it compiled as bytes. Everything else (model, backend, keys, files, locks)
is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import COMPUTE_SIZE
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core import aot_package, compiled_cache
from scope_optical_flow_tensorrt.core import log as core_log
from scope_optical_flow_tensorrt.core.aot_package import PROGRAMS
from scope_optical_flow_tensorrt.core.backends import torch_backend
from scope_optical_flow_tensorrt.core.engine_cache import ArtifactBuildError
from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow
from torch._dynamo.utils import counters

# Settings of the small CPU preprocessors these tests compile (128x128, 2 flow updates, seeded random weights).
UPDATES = 2


def make_preprocessor(models_dir: Path, **options: Any) -> OpticalFlowTensorRTPreprocessor:
    """A small CPU preprocessor on the PyTorch backend caching into ``models_dir`` (``options`` override),
    compiling in the calling thread unless ``compile_in_background=True`` is passed."""
    settings: dict[str, Any] = dict(height=COMPUTE_SIZE, width=COMPUTE_SIZE, device="cpu", weights=None,
                                    num_flow_updates=UPDATES, backend="torch", models_dir=models_dir,
                                    compile_in_background=False)
    settings.update(options)
    return OpticalFlowTensorRTPreprocessor(**settings)


class FakeTorchCompile:
    """torch.compile and torch's cache artifacts in miniature. A compiled function "compiles" each input shape
    the first time it sees it in this "process" unless loaded artifacts cover that shape; ``save`` returns every
    shape compiled so far as bytes, ``load`` makes a fresh process treat those shapes as cached."""

    def __init__(self) -> None:
        self.compiles: list[str] = []
        self.loads: list[bytes] = []
        self.new_process()

    def new_process(self) -> None:
        self.seen: set[str] = set()
        self.recorded: list[str] = []
        self.cached: set[str] = set()

    def compile(self, fn: Callable[..., Any], **_: Any) -> Callable[..., Any]:
        def compiled(*args: Any) -> Any:
            first = args[0][0] if isinstance(args[0], list) else args[0]  # update_step's first argument: the pyramid
            shape = f"{fn.__name__}{list(first.shape)}"
            if shape not in self.seen:
                self.seen.add(shape)
                if shape not in self.cached:
                    self.compiles.append(shape)
                    self.recorded.append(shape)
                    counters["inductor"]["fxgraph_cache_miss"] += 1  # as Inductor counts a compile
            return fn(*args)

        return compiled

    def save(self) -> bytes | None:
        return json.dumps(self.recorded).encode() if self.recorded else None

    def load(self, data: bytes) -> None:
        self.loads.append(data)
        self.cached.update(json.loads(data))  # raises on bytes that are not what save() wrote


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTorchCompile:
    fake = FakeTorchCompile()
    monkeypatch.setattr(torch_backend, "COMPILE_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(torch, "compile", fake.compile)
    monkeypatch.setattr(compiled_cache, "save_artifacts", fake.save)
    monkeypatch.setattr(compiled_cache, "load_artifacts", fake.load)
    monkeypatch.setattr(compiled_cache, "fresh_torch_cache", nullcontext)
    monkeypatch.setattr(core_log, "_said", set())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # recorded, so the value the backend sets is undone after
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv(torch_backend.CPP_WRAPPER_ENV, raising=False)
    monkeypatch.setenv(torch_backend.COMPILE_ROUTE_ENV, "jit")  # torch.compile's entries (packages: test_aot_package)
    return fake


class FakePackages:
    """Stand-ins for :func:`aot_package.compile_package` (writes the program's name), :func:`load_runner`
    (an eager callable of that program on the backend's model) and the fresh-process check (passes unless told
    otherwise). Counts builds and loads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds: list[str] = []
        self.loads: list[str] = []
        self.check_error: str | None = None
        self.model: RaftSequenceFlow | None = None
        monkeypatch.setattr(aot_package, "compile_package", self.compile)
        monkeypatch.setattr(aot_package, "load_runner", self.load)
        monkeypatch.setattr(aot_package, "check_in_fresh_process", self.check)
        monkeypatch.setattr(aot_package, "export_program", self.export)
        monkeypatch.setenv(torch_backend.COMPILE_ROUTE_ENV, "aot")

    def export(self, model: RaftSequenceFlow, program: str, inputs: tuple[Any, ...]) -> str:
        self.model = model
        return program

    def compile(self, exported: str, path: Path) -> None:
        self.builds.append(exported)
        path.write_text(exported)

    def load(self, path: Path, device: torch.device) -> Callable[..., Any]:
        program = path.read_text()  # raises on a file compile() did not write
        if program not in PROGRAMS:
            raise RuntimeError(f"PytorchStreamReader failed reading zip archive: {path.name}")
        self.loads.append(program)

        def run(*args: Any) -> Any:
            assert self.model is not None
            with torch.no_grad():
                if program == "encode":
                    pyramid, hidden, context = RaftSequenceFlow.encode(self.model, *args)
                    return [*pyramid, hidden, context]
                return list(RaftSequenceFlow.update_step(self.model, *args))

        return run

    def check(self, packages: dict[Path, Any], device: torch.device) -> None:
        if self.check_error:
            raise ArtifactBuildError(self.check_error)


@pytest.fixture
def fake_packages(fake: Any, monkeypatch: pytest.MonkeyPatch) -> FakePackages:
    """Compiling enabled on the CPU (torch.compile faked by ``fake``), aot route, packages faked."""
    return FakePackages(monkeypatch)
