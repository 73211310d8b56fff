"""Ahead-of-time compiled RAFT (torch.export + AOTInductor ``.pt2`` packages) as cache entries in the models
folder: a fresh process loads them in about a second and compiles nothing.

Each window shape (``pairs`` frame pairs per model call) gets two packages, ``encode`` (features, context and
correlation pyramid) and ``update_step`` (one refinement). The update loop and the final upsampling stay in
:meth:`RaftSequenceFlow.forward_with`, and the backend replays the whole pass from a CUDA graph, as it does on the
torch.compile route. Two small programs rather than one: with the updates unrolled into one graph AOTInductor
compiles every update's code separately (an earlier probe of torchvision's ``raft_small``: 102 s).

The programs are exported with cuDNN disabled, so ``grid_sample`` decomposes to ``grid_sampler_2d``, which
Inductor generates kernels for. With cuDNN enabled it becomes ``cudnn_grid_sampler``, which AOTInductor has no C
shim for (it goes through the proxy executor; such a package crashed on load in that probe). When the packages
run, cuDNN is enabled as usual (the convolutions use it).

Entries follow the engine cache's rules (:mod:`.engine_cache`: key in a JSON sidecar with size and sha256, atomic
writes, one lock per folder); the key is :func:`.compiled_key`'s with ``kind`` ``aot_inductor`` and the program's
name. Before a new package is kept, a fresh Python process loads it and runs it on the build's inputs, and its
outputs must match the eager model's: a package that crashes or computes something else is never kept, so it
can never take down the host process that loads it later.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .compiled_cache import entry_path
from .engine_cache import (
    ArtifactBuildError,
    build_artifact,
    check_artifact,
    failure_record_path,
    invalidate,
    locked,
    record_failure,
    recorded_failure,
)
from .log import logger
from .raft import RaftSequenceFlow

KIND = "aot_inductor"
# Routes a warm-up reports for shapes these packages serve (beside core.compiled_cache's ROUTE_*).
ROUTE_AOT_LOADED = "aot-package"  # loaded from cached packages
ROUTE_AOT_BUILT = "aot-built"  # compiled ahead of time now (no valid packages), checked and kept
PACKAGE_SUFFIX = ".pt2"
PROGRAMS = ("encode", "update_step")
# The fresh-process check of a new package: load, run, compare. Its own limit, so a hung load cannot hang a build.
CHECK_TIMEOUT_S = 300.0
# Largest difference from the eager model (same fp16 arithmetic, other kernels) a package's outputs may show
# in the check, relative to the output's largest magnitude (fp16 rounding is ~1e-3 relative).
CHECK_TOLERANCE = 2e-2

_NAME_FIELDS = ("model", "height", "width", "pairs", "precision", "num_flow_updates", "weights", "device_index")


def aot_available() -> bool:
    """Whether this torch has the ahead-of-time API (torch.export and AOTInductor packages)."""
    try:
        import torch._inductor
        from torch._inductor import aoti_compile_and_package, aoti_load_package  # noqa: F401  (availability)
    except ImportError:
        return False
    return hasattr(torch, "export")


class _EncodeProgram(nn.Module):
    """``encode`` as an exportable module: flat outputs ``(*pyramid, hidden, context)``."""

    def __init__(self, model: RaftSequenceFlow) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor) -> tuple[Tensor, ...]:
        # the class's method, not the instance attribute torch.compile may have replaced
        pyramid, hidden, context = RaftSequenceFlow.encode(self.model, frames)
        return (*pyramid, hidden, context)


class _UpdateStepProgram(nn.Module):
    """``update_step`` as an exportable module (the pyramid as a list input)."""

    def __init__(self, model: RaftSequenceFlow) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pyramid: list[Tensor], context: Tensor, hidden: Tensor, coords0: Tensor, coords1: Tensor
    ) -> tuple[Tensor, Tensor]:
        return RaftSequenceFlow.update_step(self.model, pyramid, context, hidden, coords0, coords1)


@dataclass
class AotParts:
    """The loaded packages of one window shape, callable like :meth:`RaftSequenceFlow.encode` / ``update_step``."""

    encode_runner: Callable[..., Any]
    update_runner: Callable[..., Any]

    def encode(self, frames: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        outputs = list(self.encode_runner(frames))
        return outputs[:-2], outputs[-2], outputs[-1]

    def update_step(
        self, pyramid: list[Tensor], context: Tensor, hidden: Tensor, coords0: Tensor, coords1: Tensor
    ) -> tuple[Tensor, Tensor]:
        hidden, coords1 = self.update_runner(pyramid, context, hidden, coords0, coords1)
        return hidden, coords1


def example_inputs(model: RaftSequenceFlow, pairs: int, height: int, width: int, device: torch.device
                   ) -> dict[str, tuple[Any, ...]]:
    """Inputs of both programs for one window shape (frames of smooth noise, and what ``encode`` makes of them)."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(pairs + 1, 3, height, width, generator=generator).to(device)
    with torch.no_grad():
        pyramid, hidden, context = RaftSequenceFlow.encode(model, frames)
    coords0 = model._coords_grid(pairs, height // 8, width // 8, device)
    coords1 = coords0 + torch.randn(coords0.shape, generator=generator).to(device)  # off-grid, like a later update
    return {"encode": (frames,), "update_step": (pyramid, context, hidden, coords0, coords1)}


def program_module(model: RaftSequenceFlow, program: str) -> nn.Module:
    """``encode`` or ``update_step`` of ``model`` as a module with flat tensor outputs (what a package returns)."""
    return _EncodeProgram(model) if program == "encode" else _UpdateStepProgram(model)


def export_program(model: RaftSequenceFlow, program: str, inputs: tuple[Any, ...]) -> Any:
    """``torch.export`` of one program (cuDNN off while tracing: see the module docstring)."""
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        return torch.export.export(program_module(model, program), inputs)


def compile_package(exported: Any, path: Path) -> None:
    """AOTInductor compile of an exported program into a ``.pt2`` package at ``path`` (any file name)."""
    import torch._inductor
    import torch._inductor.config

    # AOTInductor writes its package metadata into the global config dict aot_inductor.metadata, which is part of
    # the key of every graph torch.compile compiles afterwards in this process: torch.compile's cache entries
    # written after a package build then missed in a fresh process. A fresh dict for the build keeps it apart.
    isolated = {"aot_inductor.metadata": {}} if hasattr(torch._inductor.config.aot_inductor, "metadata") else {}
    with (tempfile.TemporaryDirectory(prefix="raft-aot-") as temp, torch.backends.cudnn.flags(enabled=False),
          torch._inductor.config.patch(isolated)):
        package = Path(temp) / "package.pt2"  # the compiler wants a name ending in .pt2
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
        path.write_bytes(package.read_bytes())


def load_runner(path: Path, device: torch.device) -> Callable[..., Any]:
    """Load one package for ``device`` (single-threaded runner: what CUDA-graph capture needs)."""
    import torch._inductor

    index = _indexed(device).index if device.type == "cuda" else -1
    return torch._inductor.aoti_load_package(str(path), run_single_threaded=True, device_index=index)


def _indexed(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


_CHECK_SCRIPT = """
import sys, torch, torch._inductor
device = torch.device(sys.argv[1])
index = device.index if device.type == "cuda" else -1
if device.type == "cuda":  # a CUDA context first, as in the processes that use packages
    torch.cuda.set_device(device)
    torch.zeros(1, device=device)
for package, inputs_file, outputs_file in zip(*[iter(sys.argv[2:])] * 3):
    runner = torch._inductor.aoti_load_package(package, run_single_threaded=True, device_index=index)
    inputs = torch.load(inputs_file, map_location=device)
    with torch.inference_mode():
        outputs = runner(*inputs)
    torch.save([t.cpu() for t in outputs], outputs_file)
"""


def check_in_fresh_process(packages: dict[Path, tuple[tuple[Any, ...], list[Tensor]]], device: torch.device) -> None:
    """Load and run each package (``path -> (inputs, expected outputs)``) in one new Python process and compare
    its outputs with the expected ones; raises :class:`ArtifactBuildError` if that process crashes, hangs or
    computes something else."""
    with tempfile.TemporaryDirectory(prefix="raft-aot-check-") as temp:
        arguments: list[str] = []
        for number, (path, (inputs, _)) in enumerate(packages.items()):
            package = Path(temp) / f"{number}.pt2"
            shutil.copyfile(path, package)
            torch.save(tuple(_to_cpu(value) for value in inputs), Path(temp) / f"{number}.inputs.pt")
            arguments += [str(package), str(Path(temp) / f"{number}.inputs.pt"), str(Path(temp) / f"{number}.out.pt")]
        command = [sys.executable, "-c", _CHECK_SCRIPT, str(_indexed(device)), *arguments]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise ArtifactBuildError(f"a fresh process loading the new packages did not finish in "
                                     f"{CHECK_TIMEOUT_S:.0f} s") from error
        if done.returncode != 0:
            raise ArtifactBuildError(f"a fresh process could not load and run the new packages (exit code "
                                     f"{done.returncode}): {done.stderr.strip()[-400:]}")
        results = [torch.load(Path(temp) / f"{number}.out.pt") for number in range(len(packages))]
    for outputs, (path, (_, expected)) in zip(results, packages.items()):
        compare_outputs(path.name, outputs, expected)


def compare_outputs(name: str, outputs: list[Tensor], expected: list[Tensor]) -> None:
    """Raise :class:`ArtifactBuildError` unless ``outputs`` match ``expected`` (shapes; values within
    :data:`CHECK_TOLERANCE` of the largest magnitude; no NaN)."""
    if len(outputs) != len(expected):
        raise ArtifactBuildError(f"{name} returned {len(outputs)} outputs, not {len(expected)}")
    for number, (got, want) in enumerate(zip(outputs, expected)):
        want = want.detach().float().cpu()
        if tuple(got.shape) != tuple(want.shape):
            raise ArtifactBuildError(f"{name}: output {number} has shape {list(got.shape)}, not {list(want.shape)}")
        scale = max(float(want.abs().max()), 1.0)
        difference = float((got.float() - want).abs().max())
        if not difference <= CHECK_TOLERANCE * scale:  # also catches NaN
            raise ArtifactBuildError(f"{name}: output {number} differs from the eager model by {difference:.4g} "
                                     f"(largest magnitude {scale:.4g})")


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


class AotPackageCache:
    """The ahead-of-time packages of one model setting (``base_key``: :func:`.compiled_key` without ``pairs``)."""

    def __init__(self, directory: Path, base_key: dict[str, Any]) -> None:
        self.directory = directory
        self.base_key = {name: value for name, value in base_key.items() if name not in ("pairs", "wrapper", "lookup")}
        self.base_key["kind"] = KIND

    def key(self, pairs: int, program: str) -> dict[str, Any]:
        return {**self.base_key, "pairs": pairs, "program": program}

    def path(self, pairs: int, program: str) -> Path:
        return entry_path(self.directory, self.key(pairs, program), _NAME_FIELDS, f"-{program}{PACKAGE_SUFFIX}")

    def load(self, pairs: int, device: torch.device) -> AotParts | None:
        """Both packages of one window shape, loaded; ``None`` when one is missing, stale, corrupt or fails to
        load (a package that fails to load is removed, so it is rebuilt)."""
        runners: dict[str, Callable[..., Any]] = {}
        with locked(self.directory):
            for program in PROGRAMS:
                path, key = self.path(pairs, program), self.key(pairs, program)
                reason = check_artifact(path, key)
                if reason is not None:
                    if path.exists():
                        logger.info("ahead-of-time package %s not used: %s", path.name, reason)
                    return None
                started = time.perf_counter()
                try:
                    runners[program] = load_runner(path, device)
                except Exception as error:  # another torch build, a damaged zip, a missing symbol, ...
                    invalidate(path, f"torch could not load it ({type(error).__name__}: {str(error)[:200]})")
                    return None
                logger.info("loaded ahead-of-time package %s (%.2f s)", path.name, time.perf_counter() - started)
        return AotParts(runners["encode"], runners["update_step"])

    def build(self, model: RaftSequenceFlow, pairs: int, device: torch.device, check: bool = True) -> list[Path]:
        """Export and compile the packages of one window shape that have no valid entry, check them in one fresh
        process (``check``) and keep them; returns both paths. Holds the folder's lock, so two processes that
        need the same packages build them once. A failure is recorded beside the packages (and raised): later
        processes with the same key raise at once instead of paying for it again, until ``cache clear``."""
        record, record_key = self.path(pairs, PROGRAMS[0]), self.key(pairs, "*")
        with locked(self.directory):
            earlier = recorded_failure(record, record_key)
            if earlier is not None:
                raise ArtifactBuildError(f"building them failed before with these settings ({earlier}); "
                                         f"'cache clear' removes {failure_record_path(record).name} to try again")
            try:
                return self._build(model, pairs, device, check)
            except Exception as error:
                record_failure(record, record_key, f"{type(error).__name__}: {str(error)[:600]}")
                raise

    def _build(self, model: RaftSequenceFlow, pairs: int, device: torch.device, check: bool) -> list[Path]:
        height, width = self.base_key["height"], self.base_key["width"]
        reasons = {program: check_artifact(self.path(pairs, program), self.key(pairs, program)) for program in PROGRAMS}
        missing = [program for program, reason in reasons.items() if reason is not None]
        if not missing:
            return [self.path(pairs, program) for program in PROGRAMS]
        with tempfile.TemporaryDirectory(prefix="raft-aot-build-") as temp:
            inputs = example_inputs(model, pairs, height, width, device)
            built: dict[str, Path] = {}
            seconds: dict[str, float] = {}
            for program in missing:
                started = time.perf_counter()
                exported = export_program(model, program, inputs[program])
                exported_at = time.perf_counter()
                built[program] = Path(temp) / f"{program}{PACKAGE_SUFFIX}"
                compile_package(exported, built[program])
                seconds[program] = time.perf_counter() - started
                logger.info("compiled the %s package for windows of %d pairs (export %.1f s, compile %.1f s)",
                            program, pairs, exported_at - started, time.perf_counter() - exported_at)
            if check:
                started = time.perf_counter()
                with torch.no_grad():
                    expected = {program: list(program_module(model, program)(*inputs[program])) for program in missing}
                check_in_fresh_process({built[p]: (inputs[p], expected[p]) for p in missing}, device)
                logger.info("checked the new packages in a fresh process (%.1f s)", time.perf_counter() - started)
            for program in missing:
                path, source = self.path(pairs, program), built[program]
                if path.exists():
                    logger.warning("rebuilt ahead-of-time package %s: %s", path.name, reasons[program])
                build_artifact(path, self.key(pairs, program), lambda temp, source=source: shutil.copyfile(source, temp),
                               {"checked_in_fresh_process": check, "compile_seconds": round(seconds[program], 1)})
        return [self.path(pairs, program) for program in PROGRAMS]
