"""Ahead-of-time packages (core.aot_package): the opt-in compile route's cache entries.

One module-scoped build runs the real thing on the CPU (torch.export + AOTInductor, 128x128, 2 updates, one pair
per window; about a minute on two cores): the packages are checked in a fresh process, a new backend loads them
and matches the eager model. The rules around them (stale, corrupt or unloadable packages, a failing check, two
processes, live calls; ``prebuild`` is in test_compiled_cache.py) use stand-ins for the compiler and loader with
eager callables (tests/fake_compile.py), so they are fast; the backend, keys, files, sidecars and locks are real.
On CUDA, tests/test_gpu.py builds packages and loads them in a fresh process (or checks the safe fallback where
this torch cannot load them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from scope_optical_flow_tensorrt.cli.app import cli
from scope_optical_flow_tensorrt.core import aot_package, engine_manager
from scope_optical_flow_tensorrt.core.aot_package import (
    PACKAGE_SUFFIX,
    PROGRAMS,
    ROUTE_AOT_BUILT,
    ROUTE_AOT_LOADED,
    AotPackageCache,
    check_in_fresh_process,
)
from scope_optical_flow_tensorrt.core.backends import torch_backend
from scope_optical_flow_tensorrt.core.compiled_cache import ROUTE_BUILT, ROUTE_LOADED, compiled_key
from scope_optical_flow_tensorrt.core.engine_cache import ArtifactBuildError, check_artifact, file_sha256, sidecar_path
from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow

from conftest import make_frames, run_in_two_processes
from fake_compile import UPDATES, FakePackages, make_preprocessor

make = make_preprocessor


def packages(models_dir: Path) -> list[Path]:
    return sorted(models_dir.glob(f"*{PACKAGE_SUFFIX}"))


def eager(models_dir: Path, frames: torch.Tensor) -> torch.Tensor:
    return make(models_dir, torch_compile=False)(frames)


# -- the real compiler on the CPU ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A models folder whose packages (1 pair per window) a real warm-up built: aot route, compiling on the CPU."""
    models_dir = tmp_path_factory.mktemp("aot-models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch_backend, "COMPILE_DEVICE_TYPES", ("cuda", "cpu"))
        patch.setenv(torch_backend.COMPILE_ROUTE_ENV, "aot")
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(models_dir / "inductor"))
        flow = make(models_dir)
        started = time.perf_counter()
        routes = flow.warm_up([1])  # one frame per call: windows of 1 pair (the first call has none)
        print(f"built the packages in {time.perf_counter() - started:.0f} s")
    assert routes == [ROUTE_AOT_BUILT]
    yield models_dir


def test_warm_up_builds_checked_packages_with_full_keys(built_models_dir: Path) -> None:
    paths = packages(built_models_dir)
    assert [path.name.rsplit("-", 1)[-1] for path in paths] == ["encode.pt2", "update_step.pt2"]
    for path, program in zip(paths, PROGRAMS):
        sidecar = json.loads(sidecar_path(path).read_text())
        key = sidecar["key"]
        assert (key["kind"], key["program"], key["pairs"]) == ("aot_inductor", program, 1)
        assert (key["height"], key["width"], key["num_flow_updates"], key["precision"]) == (128, 128, UPDATES, "fp32")
        assert key["torch_version"] == torch.__version__ and key["model_code"] and key["weights"]
        assert sidecar["info"]["checked_in_fresh_process"] is True
        assert sidecar["size_bytes"] == path.stat().st_size > 0


def test_a_new_backend_loads_the_packages_and_matches_eager(
    built_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch_backend, "COMPILE_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setenv(torch_backend.COMPILE_ROUTE_ENV, "aot")

    def no_compiling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("packages were built again")

    monkeypatch.setattr(aot_package, "compile_package", no_compiling)
    flow = make(built_models_dir)
    assert flow.warm_up([1]) == [ROUTE_AOT_LOADED]
    backend = flow.load()
    assert sorted(backend.aot_parts) == [1]  # type: ignore[attr-defined]
    frames = make_frames(5, 64, 80)
    # 1-frame calls: every window is the 1-pair shape the packages hold (5 calls, no torch.compile needed)
    streamed = torch.cat([flow(frames[i : i + 1]) for i in range(5)], dim=2)
    reference = make(built_models_dir, torch_compile=False)
    expected = torch.cat([reference(frames[i : i + 1]) for i in range(5)], dim=2)
    torch.testing.assert_close(streamed, expected, atol=1e-4, rtol=0)
    assert backend.warmed_shapes == {1: ROUTE_AOT_LOADED}  # type: ignore[attr-defined]


def test_info_lists_packages_and_cache_clear_removes_them(built_models_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(built_models_dir, copy)
    rows = [row for row in engine_manager.list_cached_engines(copy) if row["kind"] == "aot_inductor"]
    assert sorted(row["program"] for row in rows) == list(PROGRAMS)
    assert all(row["valid_metadata"] and row["pairs"] == 1 for row in rows)
    text = CliRunner().invoke(cli, ["info", "--models-dir", str(copy)]).output
    assert "aot_inductor" in text and "program=update_step" in text
    result = CliRunner().invoke(cli, ["cache", "clear", "--models-dir", str(copy)])
    assert result.exit_code == 0, result.output
    assert packages(copy) == [] and list(copy.glob("*.json")) == []


def test_fresh_process_check_rejects_a_package_that_cannot_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"not a zip archive")
    with pytest.raises(ArtifactBuildError, match="fresh process could not load and run"):
        check_in_fresh_process({broken: ((torch.zeros(2, 3, 128, 128),), [torch.zeros(1)])}, torch.device("cpu"))


def test_fresh_process_check_rejects_wrong_outputs(built_models_dir: Path) -> None:
    [encode, _] = packages(built_models_dir)
    frames = torch.rand(2, 3, 128, 128)
    raft = make(built_models_dir, torch_compile=False).load().model  # type: ignore[attr-defined]
    with torch.no_grad():
        pyramid, hidden, context = RaftSequenceFlow.encode(raft, frames)
    right = [*pyramid, hidden, context]
    check_in_fresh_process({encode: ((frames,), right)}, torch.device("cpu"))  # passes with the true outputs
    wrong = [*right[:-1], right[-1] + 1.0]
    with pytest.raises(ArtifactBuildError, match="output 5 differs from the eager model"):
        check_in_fresh_process({encode: ((frames,), wrong)}, torch.device("cpu"))


_COMPILE_AFTER_A_PACKAGE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from torch._dynamo.utils import counters
    from scope_optical_flow_tensorrt.core import compiled_cache
    from scope_optical_flow_tensorrt.core.aot_package import compile_package

    step, artifacts = sys.argv[1], Path(sys.argv[2])

    def function(x):
        return torch.tanh(x) * 2 + x.relu()

    with compiled_cache.fresh_torch_cache():
        if step == "save":  # build a package first, as a process whose packages failed their check does
            toy = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
            with torch.no_grad():
                exported = torch.export.export(toy, (torch.rand(1, 3, 16, 16),))
            compile_package(exported, artifacts.with_suffix(".pt2"))
            torch.compile(function)(torch.randn(8, 8))
            artifacts.write_bytes(compiled_cache.save_artifacts())
        else:
            compiled_cache.load_artifacts(artifacts.read_bytes())
            torch.compile(function)(torch.randn(8, 8))
            print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
    """
)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_torch_compile_entries_written_after_a_package_build_serve_a_fresh_process(tmp_path: Path) -> None:
    """Building a package must not change the keys of what torch.compile compiles later in the same process
    (AOTInductor writes its metadata into a global config dict that is part of those keys)."""
    artifacts = tmp_path / "artifacts.bin"
    for step in ("save", "load"):
        done = subprocess.run([sys.executable, "-c", _COMPILE_AFTER_A_PACKAGE, step, str(artifacts)],
                              capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
    hits, misses = done.stdout.split()
    assert (int(hits), int(misses)) == (1, 0)


# -- the rules, with stand-ins for the compiler and the loader --------------------------------------------


def test_packages_come_first_and_a_second_backend_loads_them(fake_packages: FakePackages, fake: Any,
                                                             tmp_path: Path) -> None:
    first = make(tmp_path)
    assert first.warm_up([4]) == [ROUTE_AOT_BUILT]  # Scope's 4-frame chunks: one bucket of 4 pairs
    assert fake_packages.builds == ["encode", "update_step"] and fake.compiles == []  # no torch.compile
    frames = make_frames(4, 64, 80)
    torch.testing.assert_close(first(frames), eager(tmp_path, frames), atol=1e-4, rtol=0)
    second = make(tmp_path)
    second.load(warmup=4)
    assert second.warmup_routes == [ROUTE_AOT_LOADED] and len(fake_packages.builds) == 2
    assert not list(tmp_path.glob("*.torchcache"))  # no torch.compile entry


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "stale", "unloadable", "sidecar"])
def test_damaged_or_stale_packages_are_rebuilt_never_loaded(
    fake_packages: FakePackages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    make(tmp_path).warm_up([1])
    update = packages(tmp_path)[1]
    if damage == "corrupt":
        update.write_text("encode_step")  # same size as a valid one would not be; sha256 differs anyway
    elif damage == "truncated":
        update.write_text(update.read_text()[:3])
    elif damage == "stale":
        monkeypatch.setattr(aot_package.torch, "__version__", "99.0")  # torch upgraded: every key changes
    elif damage == "unloadable":  # passes its checks but torch cannot load it
        update.write_text("garbage!!!!")
        sidecar = json.loads(sidecar_path(update).read_text())
        sidecar.update(size_bytes=update.stat().st_size, sha256=file_sha256(update))
        sidecar_path(update).write_text(json.dumps(sidecar))
    else:
        sidecar_path(update).unlink()
    flow = make(tmp_path)
    assert flow.warm_up([1]) == [ROUTE_AOT_BUILT]
    rebuilt = ["update_step"] if damage != "stale" else list(PROGRAMS)
    assert fake_packages.builds == [*PROGRAMS, *rebuilt]
    assert [p.read_text() for p in packages(tmp_path)] == list(PROGRAMS)
    frames = make_frames(2, 64, 80)
    torch.testing.assert_close(flow(frames), eager(tmp_path, frames), atol=1e-4, rtol=0)


def test_a_failed_check_keeps_nothing_and_torch_compile_serves(
    fake_packages: FakePackages, fake: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_packages.check_error = "a fresh process could not load and run the new packages (exit code -11)"
    flow = make(tmp_path)
    assert flow.warm_up([1, 4]) == [ROUTE_BUILT, ROUTE_BUILT]  # torch.compile's entries instead
    assert packages(tmp_path) == [] and list(tmp_path.glob("*.pt2.json")) == []  # no package, no sidecar
    assert len(list(tmp_path.glob("*.pt2.failed.json"))) == 2  # the failure of each shape, recorded
    said = [r.getMessage() for r in caplog.records if "ahead-of-time compiled model could not be built" in r.getMessage()]
    assert len(said) == 1 and "exit code -11" in said[0]  # once, though two shapes failed
    frames = make_frames(4, 64, 80)
    torch.testing.assert_close(flow(frames), eager(tmp_path, frames), atol=1e-4, rtol=0)
    # The failure is recorded: a later process does not pay for the build again, until `cache clear`.
    fake_packages.check_error = None
    builds = len(fake_packages.builds)
    later = make(tmp_path)
    assert later.warm_up([1]) == [ROUTE_LOADED] and len(fake_packages.builds) == builds
    assert "failed before with these settings" in later.load().aot_failures[1]  # type: ignore[attr-defined]
    assert "exit code -11" in later.load().aot_failures[1]  # type: ignore[attr-defined]
    assert CliRunner().invoke(cli, ["cache", "clear", "--models-dir", str(tmp_path)]).exit_code == 0
    assert list(tmp_path.glob("*.failed.json")) == []
    assert make(tmp_path).warm_up([1]) == [ROUTE_AOT_BUILT]


def test_live_calls_use_packages_when_they_exist_and_never_build_them(
    fake_packages: FakePackages, fake: Any, tmp_path: Path
) -> None:
    flow = make(tmp_path)
    frames = make_frames(3, 64, 80)
    flow(frames)  # no warm-up: 2 pairs (bucket 2) compiled by torch.compile on the spot, no packages built
    assert fake_packages.builds == [] and packages(tmp_path) == [] and fake.compiles
    make(tmp_path).warm_up([2])  # another stream warms 2-frame chunks: packages for 1 and 2 pairs
    assert len(packages(tmp_path)) == 4
    fake.new_process()
    fresh = make(tmp_path)
    compiles = len(fake.compiles)
    torch.testing.assert_close(fresh(frames), eager(tmp_path, frames), atol=1e-4, rtol=0)
    assert fresh.load().warmed_shapes == {2: ROUTE_AOT_LOADED}  # type: ignore[attr-defined]
    assert len(fake.compiles) == compiles and len(fake_packages.builds) == 4


def test_jit_route_does_not_use_packages_and_the_aot_route_drops_the_fused_lookup(
    fake_packages: FakePackages, fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(torch_backend.COMPILE_ROUTE_ENV, "jit")
    monkeypatch.setattr(torch_backend, "fused_lookup_available", lambda device: True)
    backend = make(tmp_path, fused_lookup=True).load()
    assert backend.aot_packages is None and backend.model.fused_lookup  # type: ignore[attr-defined]
    monkeypatch.setattr(torch_backend, "fused_lookup_available", lambda device: False)  # the CPU runs no Triton
    assert make(tmp_path).warm_up([1]) == [ROUTE_BUILT]
    assert fake_packages.builds == [] and packages(tmp_path) == []
    monkeypatch.setenv(torch_backend.COMPILE_ROUTE_ENV, "aot")
    monkeypatch.setattr(torch_backend, "fused_lookup_available", lambda device: True)
    backend = make(tmp_path, fused_lookup=True).load()
    # the packages carry the grid_sample lookup: asking for them turns the (custom-op) fused lookup off
    assert backend.aot_packages is not None and not backend.model.fused_lookup  # type: ignore[attr-defined]


def test_torch_without_the_ahead_of_time_api_uses_torch_compile(
    fake_packages: FakePackages, fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch_backend, "aot_available", lambda: False)  # e.g. a torch without torch.export
    flow = make(tmp_path)
    assert flow.warm_up([1]) == [ROUTE_BUILT] and flow.load().aot_packages is None  # type: ignore[attr-defined]
    assert fake_packages.builds == [] and packages(tmp_path) == [] and fake.compiles
    frames = make_frames(2, 64, 80)
    torch.testing.assert_close(flow(frames), eager(tmp_path, frames), atol=1e-4, rtol=0)


def test_unknown_compile_route_is_a_clear_error(fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(torch_backend.COMPILE_ROUTE_ENV, "ahead")
    with pytest.raises(ValueError, match="SCOPE_OPTICAL_FLOW_COMPILE='ahead' is not a compile route; use one of jit, aot"):
        make(tmp_path).load()


def _build_in_process(folder: str, log: str, barrier: Any) -> None:
    def compile_package(exported: str, path: Path) -> None:
        with open(log, "a") as handle:
            handle.write(f"built {exported}\n")
        time.sleep(0.5)
        path.write_text(exported)

    # Nothing here may run torch's CPU kernels: a forked child of a process that has used its thread pools can
    # deadlock in them. So no model and no example inputs: the lock and the files are what is tested.
    aot_package.compile_package = compile_package  # type: ignore[assignment]
    aot_package.export_program = lambda model, program, inputs: program  # type: ignore[assignment]
    aot_package.example_inputs = lambda *args: {program: () for program in PROGRAMS}  # type: ignore[assignment]
    key = compiled_key(model="raft_small", fused_lookup=False, height=128, width=128, pairs=0, fp16=False,
                       num_flow_updates=UPDATES, weights="w", device=torch.device("cpu"))
    cache = AotPackageCache(Path(folder), key)
    barrier.wait()
    cache.build(None, 1, torch.device("cpu"), check=False)  # type: ignore[arg-type]
    with open(log, "a") as handle:
        ready = all(check_artifact(cache.path(1, program), cache.key(1, program)) is None for program in PROGRAMS)
        handle.write(f"ready {ready}\n")


def test_two_processes_build_the_same_packages_once(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    run_in_two_processes(_build_in_process, str(tmp_path), str(log))
    lines = log.read_text().splitlines()
    assert sorted(lines) == ["built encode", "built update_step", "ready True", "ready True"]
    assert len(packages(tmp_path)) == 2
