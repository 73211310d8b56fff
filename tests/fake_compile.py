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
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from scope_optical_flow_tensorrt.core import compiled_cache
from scope_optical_flow_tensorrt.core import log as core_log
from scope_optical_flow_tensorrt.core.backends import torch_backend


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
