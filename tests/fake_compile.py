"""A stand-in for torch.compile and torch's portable cache artifacts, for CPU tests of the compiled path.

The CPU runs eagerly, so tests that exercise compiling, warm-up and the compiled-kernel cache entries enable
the compiled path on the CPU and replace torch.compile with :class:`FakeTorchCompile`, which "compiles" each new
input shape once and saves/loads what it compiled as bytes, in the test's process and in the compile process
(tests/fake_compile_worker.py). Everything else (model, backend, child process, keys, files, locks) is real.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import COMPUTE_SIZE
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.artifacts import compiled_cache
from scope_optical_flow_tensorrt.core.backends import compile_process, torch_backend
from scope_optical_flow_tensorrt.core.common import log as core_log
from torch._dynamo.utils import counters

# Settings of the small CPU preprocessors these tests compile (128x128, 2 flow updates, seeded random weights).
UPDATES = 2
FAKE_WORKER = Path(__file__).with_name("fake_compile_worker.py")
GATE_TIMEOUT_S = 120


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
    shape compiled so far as bytes, ``load`` makes a fresh process treat those shapes as cached.

    The compile process (a child) runs its own instance (tests/fake_compile_worker.py), which appends what it
    compiles to ``log``; :attr:`compiles` counts both processes' compiles. ``FAKE_COMPILE_GATE`` (a path) makes
    compiles wait until that file exists; ``FAKE_COMPILE_FAIL=1`` makes them raise."""

    def __init__(self, log: Path | None = None) -> None:
        self.log = log
        self.compiles_here: list[str] = []
        self.loads: list[bytes] = []
        self.compile_threads_seen: list[object] = []  # Inductor's compile_threads at each compiled call here
        self.new_process()

    @property
    def compiles(self) -> list[str]:
        child = self.log.read_text().splitlines() if self.log is not None and self.log.is_file() else []
        return child + self.compiles_here

    def new_process(self) -> None:
        self.seen: set[str] = set()
        self.recorded: list[str] = []
        self.cached: set[str] = set()

    def compile(self, fn: Callable[..., Any], **_: Any) -> Callable[..., Any]:
        def compiled(*args: Any) -> Any:
            import torch._inductor.config as inductor_config

            self.compile_threads_seen.append(inductor_config.compile_threads)
            first = args[0][0] if isinstance(args[0], list) else args[0]  # update_step's first argument: the pyramid
            shape = f"{fn.__name__}{list(first.shape)}"
            if shape not in self.seen:
                self.seen.add(shape)
                if shape not in self.cached:
                    _wait_for_gate()
                    if os.environ.get("FAKE_COMPILE_FAIL") == "1":
                        raise RuntimeError("fake compiler failure: no C compiler found")
                    self.compiles_here.append(shape)
                    if self.log is not None:
                        with self.log.open("a") as handle:
                            handle.write(shape + "\n")
                    self.recorded.append(shape)
                    counters["inductor"]["fxgraph_cache_miss"] += 1  # as Inductor counts a compile
            return fn(*args)

        return compiled

    def save(self) -> bytes | None:
        return json.dumps(self.recorded).encode() if self.recorded else None

    def load(self, data: bytes) -> None:
        self.loads.append(data)
        self.cached.update(json.loads(data))  # raises on bytes that are not what save() wrote


def _wait_for_gate() -> None:
    gate = os.environ.get("FAKE_COMPILE_GATE")
    if not gate:
        return
    Path(gate + ".started").touch()
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the compile gate")
        time.sleep(0.02)


def install(fake: FakeTorchCompile, set_attr: Callable[[Any, str, Any], None]) -> None:
    """Compiling enabled on the CPU, with ``fake`` standing in for torch.compile and torch's cache artifacts."""
    set_attr(torch_backend, "COMPILE_DEVICE_TYPES", ("cuda", "cpu"))
    set_attr(torch, "compile", fake.compile)
    set_attr(compiled_cache, "save_artifacts", fake.save)
    set_attr(compiled_cache, "load_artifacts", fake.load)
    set_attr(compiled_cache, "fresh_torch_cache", nullcontext)


@pytest.fixture
def gate(fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiles (in any process) wait until this file exists; ``<gate>.started`` appears when one begins."""
    path = tmp_path_factory.mktemp("gate") / "open"
    monkeypatch.setenv("FAKE_COMPILE_GATE", str(path))
    return path


def wait_for_file(path: Path, timeout: float = GATE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> FakeTorchCompile:
    fake = FakeTorchCompile(tmp_path_factory.mktemp("compile-log") / "compiles.txt")
    install(fake, monkeypatch.setattr)
    monkeypatch.setattr(compile_process, "WORKER_COMMAND", [sys.executable, str(FAKE_WORKER)])
    monkeypatch.setenv("FAKE_COMPILE_LOG", str(fake.log))
    monkeypatch.setattr(core_log, "_said", set())
    return fake


