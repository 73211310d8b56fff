"""Engine cache logic without TensorRT: names, keys, rebuild rules, atomic writes, corrupt files, locking.

A fake engine builder (writes bytes naming what it was asked to build) and a fake GPU description stand in
for TensorRT; the ONNX export is real (TorchScript exporter here for speed, 128x128, 1 flow update).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import run_in_two_processes
from filelock import FileLock
from scope_optical_flow_tensorrt.core.artifacts import engine_cache, engine_manager
from scope_optical_flow_tensorrt.core.artifacts.engine_cache import (
    LOCK_NAME,
    ensure_artifact,
    locked,
    sanitize_gpu_name,
    sidecar_path,
)
from scope_optical_flow_tensorrt.core.artifacts.engine_manager import (
    EngineSpec,
    clear_cache,
    ensure_engine,
    export_onnx_cached,
    list_cached_engines,
    load_engine,
    prebuild_engine,
)
from scope_optical_flow_tensorrt.core.artifacts.onnx_export import EXPORT_RECIPE, check_onnx
from scope_optical_flow_tensorrt.core.artifacts.trt_build import BUILD_RECIPE, BuildTarget

SIZE = 128
SPEC = EngineSpec(height=SIZE, width=SIZE, fp16=True, num_flow_updates=1, max_pairs=4)
TARGET = BuildTarget(gpu_name="NVIDIA GeForce RTX 4090", compute_capability="8.9", tensorrt_version="10.3.0",
                     workspace_bytes=4 << 30)


class FakeBuilder:
    """Stands in for TensorRT: writes a small 'engine' describing its inputs, and counts builds."""

    def __init__(self) -> None:
        self.calls: list[tuple[EngineSpec, BuildTarget]] = []

    def __call__(self, onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
        assert onnx.is_file() and onnx.suffix == ".onnx"
        self.calls.append((spec, target))
        destination.write_bytes(f"engine {spec} {target} from {onnx.name}".encode() * 50)


@pytest.fixture(autouse=True)
def fast_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_manager, "resolve_exporter", lambda exporter="auto": "torchscript")


@pytest.fixture(scope="module")
def onnx_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the fp32 and fp16 ONNX graphs (exported once per module, copied into each test's folder)."""
    folder = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_manager, "resolve_exporter", lambda exporter="auto": "torchscript")
        for fp16 in (False, True):  # SPEC's engines are built from the fp16 graph
            export_onnx_cached(SIZE, SIZE, num_flow_updates=1, weights=None, models_dir=folder, fp16=fp16)
    return folder


@pytest.fixture
def cache_dir(onnx_template: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    shutil.copytree(onnx_template, folder)
    return folder


def test_gpu_names_are_sanitized_for_file_names() -> None:
    assert sanitize_gpu_name("NVIDIA GeForce RTX 4090") == "NVIDIA_GeForce_RTX_4090"
    assert sanitize_gpu_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"
    for hostile in ("../../etc/passwd", "A100/SXM4:80GB", "a\\b", "..", "GPU\x00\n*?<>|\"'"):
        name = sanitize_gpu_name(hostile)
        assert name and "/" not in name and "\\" not in name and ".." not in name
        assert all(ch.isalnum() or ch in "._-" for ch in name)
    assert sanitize_gpu_name("") == sanitize_gpu_name("///") == "gpu"
    assert len(sanitize_gpu_name("X" * 500)) <= 64


def test_engine_is_built_once_then_reused_with_named_file_and_metadata(cache_dir: Path) -> None:
    builder = FakeBuilder()
    path, info = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    assert path.parent == cache_dir
    assert path.name.startswith(f"raft_small_{SIZE}x{SIZE}_NVIDIA_GeForce_RTX_4090-") and path.suffix == ".trt"
    assert len(builder.calls) == 1 and info.identity == "random-seed0"
    again, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    assert again == path and len(builder.calls) == 1  # cache hit: no rebuild

    key = json.loads(sidecar_path(path).read_text())["key"]
    assert key["tensorrt_version"] == "10.3.0" and key["compute_capability"] == "8.9"
    assert key["precision"] == "fp16" and key["num_flow_updates"] == 1
    assert key["profile_frames"] == [2, 5, 5] and key["weights"] == "random-seed0"
    assert key["package_version"] and len(key["onnx_sha256"]) == 64
    assert key["build_recipe"] == BUILD_RECIPE
    assert not list(cache_dir.glob("*.tmp-*"))


def test_each_precision_builds_from_its_own_graph(cache_dir: Path) -> None:
    """An fp16 engine is built from the fp16 graph, an fp32 one from the fp32 graph; both graphs are checked."""
    seen: dict[bool, Path] = {}

    def builder(onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
        seen[spec.fp16] = onnx
        destination.write_bytes(b"engine" * 100)

    for fp16 in (True, False):
        spec = EngineSpec(SIZE, SIZE, fp16=fp16, num_flow_updates=1, max_pairs=4)
        path, _ = ensure_engine(cache_dir, spec, None, TARGET, builder)
        key = json.loads(sidecar_path(path).read_text())["key"]
        graph = seen[fp16]
        graph_key = json.loads(sidecar_path(graph).read_text())["key"]
        assert key["precision"] == graph_key["precision"] == ("fp16" if fp16 else "fp32")
        assert key["onnx_sha256"] == json.loads(sidecar_path(graph).read_text())["sha256"]
        assert graph_key["export_recipe"] == EXPORT_RECIPE
        check_onnx(graph, SIZE, SIZE, "fp16" if fp16 else "fp32")  # recorded precision and weight types agree
    assert seen[True].name.startswith(f"raft_small_{SIZE}x{SIZE}_fp16-") and seen[True] != seen[False]
    assert seen[False].name.startswith(f"raft_small_{SIZE}x{SIZE}-")


def test_graphs_and_engines_of_the_old_recipe_are_rebuilt_not_loaded(cache_dir: Path) -> None:
    """Files whose keys lack the export/build recipe (the weakly typed fp16 build) are rebuilt in place."""
    builder = FakeBuilder()
    engine, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    graph = export_onnx_cached(SIZE, SIZE, num_flow_updates=1, weights=None, models_dir=cache_dir, fp16=False)
    for path, fields in ((engine, ["build_recipe"]), (graph, ["export_recipe", "precision"])):
        sidecar = json.loads(sidecar_path(path).read_text())
        for field in fields:  # keys written before graphs carried their precision lack these
            del sidecar["key"][field]
        sidecar_path(path).write_text(json.dumps(sidecar))
    again, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    assert again == engine and len(builder.calls) == 2  # same name, rebuilt
    assert json.loads(sidecar_path(engine).read_text())["key"]["build_recipe"] == BUILD_RECIPE
    mtime = graph.stat().st_mtime_ns
    assert export_onnx_cached(SIZE, SIZE, num_flow_updates=1, weights=None, models_dir=cache_dir) == graph
    assert graph.stat().st_mtime_ns != mtime  # the fp32 graph keeps its old name and is re-exported in place
    assert json.loads(sidecar_path(graph).read_text())["key"]["export_recipe"] == EXPORT_RECIPE


@pytest.mark.parametrize(
    "change",
    [
        {"target": BuildTarget("NVIDIA GeForce RTX 4090", "8.9", "10.4.0", 4 << 30)},  # TensorRT upgrade
        {"target": BuildTarget("NVIDIA GeForce RTX 4090", "9.0", "10.3.0", 4 << 30)},  # compute capability
    ],
)
def test_environment_change_rebuilds_in_place(cache_dir: Path, change: dict) -> None:
    builder = FakeBuilder()
    path, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    rebuilt, _ = ensure_engine(cache_dir, SPEC, None, change["target"], builder)
    assert rebuilt == path and len(builder.calls) == 2  # same file, rebuilt: no stale copies pile up
    assert json.loads(sidecar_path(path).read_text())["key"]["tensorrt_version"] == change["target"].tensorrt_version


def test_package_version_change_rebuilds(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = FakeBuilder()
    path, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    monkeypatch.setattr(engine_manager, "package_version", lambda: "99.0")
    again, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    assert again == path and len(builder.calls) == 2


def test_settings_changes_get_their_own_files_without_thrashing(cache_dir: Path) -> None:
    builder = FakeBuilder()
    variants = [
        SPEC,
        EngineSpec(SIZE, SIZE, fp16=False, num_flow_updates=1, max_pairs=4),  # precision
        EngineSpec(SIZE, SIZE, fp16=True, num_flow_updates=1, max_pairs=8),  # batch profile
    ]
    paths = [ensure_engine(cache_dir, spec, None, TARGET, builder)[0] for spec in variants]
    assert len(set(paths)) == 3 and all(p.is_file() for p in paths) and len(builder.calls) == 3
    for spec, path in zip(variants, paths):  # switching back and forth rebuilds nothing
        assert ensure_engine(cache_dir, spec, None, TARGET, builder)[0] == path
    assert len(builder.calls) == 3
    other_gpu = BuildTarget("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", 4 << 30)
    assert "NVIDIA_H100_80GB_HBM3" in ensure_engine(cache_dir, SPEC, None, other_gpu, builder)[0].name


def test_flow_updates_change_reexports_onnx_and_builds_new_engine(cache_dir: Path) -> None:
    builder = FakeBuilder()
    first, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    two = EngineSpec(SIZE, SIZE, fp16=True, num_flow_updates=2, max_pairs=4)
    second, _ = ensure_engine(cache_dir, two, None, TARGET, builder)
    assert first != second and len(builder.calls) == 2
    onnx_keys = sorted((row["precision"], row["num_flow_updates"]) for row in list_cached_engines(cache_dir)
                       if row["kind"] == "onnx")
    assert onnx_keys == [("fp16", 1), ("fp16", 2), ("fp32", 1)]  # fp32 graph from the template, untouched


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar", "bad_sidecar", "other_key"])
def test_corrupt_or_stale_engine_is_detected_and_rebuilt(
    cache_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    builder = FakeBuilder()
    path, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    good = path.read_bytes()
    sidecar = sidecar_path(path)
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    elif damage == "no_sidecar":
        sidecar.unlink()
    elif damage == "bad_sidecar":
        sidecar.write_text("{not json")
    else:
        data = json.loads(sidecar.read_text())
        data["key"]["precision"] = "fp32"
        sidecar.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="scope_optical_flow_tensorrt"):
        again, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    assert again == path and len(builder.calls) == 2
    assert path.read_bytes() == good
    assert any("rebuilding TensorRT engine" in record.getMessage() for record in caplog.records)


def test_engine_that_fails_to_deserialize_is_discarded_and_rebuilt_once(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builder = FakeBuilder()
    ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    answers = iter([None, "engine object"])  # TensorRT returns None for a plan it cannot read
    with caplog.at_level(logging.WARNING, logger="scope_optical_flow_tensorrt"):
        engine, path, info = load_engine(cache_dir, SPEC, None, TARGET, lambda data: next(answers), builder)
    assert engine == "engine object" and path.is_file() and info.identity == "random-seed0"
    assert len(builder.calls) == 2
    assert any("discarding" in record.getMessage() for record in caplog.records)

    def always_broken(data: bytes) -> None:
        raise RuntimeError("Serialization assertion failed")

    with pytest.raises(RuntimeError, match="does not load"):
        load_engine(cache_dir, SPEC, None, TARGET, always_broken, builder)


def test_failed_build_leaves_no_partial_file(cache_dir: Path) -> None:
    def crashing_builder(onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
        destination.write_bytes(b"half an engine")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        ensure_engine(cache_dir, SPEC, None, TARGET, crashing_builder)
    assert not list(cache_dir.glob("*.trt")) and not list(cache_dir.glob("*.trt.json"))
    assert not [p for p in cache_dir.iterdir() if ".tmp-" in p.name]

    def empty_builder(onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
        destination.write_bytes(b"")

    with pytest.raises(RuntimeError, match="empty"):
        ensure_engine(cache_dir, SPEC, None, TARGET, empty_builder)
    assert not list(cache_dir.glob("*.trt"))
    # A later good build still works.
    assert ensure_engine(cache_dir, SPEC, None, TARGET, FakeBuilder())[0].is_file()


def test_failed_rebuild_keeps_old_file_marked_stale(cache_dir: Path) -> None:
    builder = FakeBuilder()
    path, _ = ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    newer = BuildTarget(TARGET.gpu_name, TARGET.compute_capability, "10.9.0", TARGET.workspace_bytes)

    def crashing_builder(onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        ensure_engine(cache_dir, SPEC, None, newer, crashing_builder)
    assert not sidecar_path(path).exists()  # old engine can no longer pass as valid for any key
    assert ensure_engine(cache_dir, SPEC, None, TARGET, builder)[0] == path and len(builder.calls) == 2


def _build_in_process(folder: str, counter: str, barrier) -> None:
    barrier.wait()  # both processes ask at the same moment

    def slow_build(temp: Path) -> None:
        with open(counter, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        temp.write_bytes(b"engine bytes")

    ensure_artifact(Path(folder) / "raft_small_128x128_gpu-0000.trt", {"k": 1}, slow_build, label="TensorRT engine")


def test_two_processes_build_the_same_engine_once(tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    run_in_two_processes(_build_in_process, str(tmp_path), str(counter))
    assert counter.read_text().count("built") == 1
    assert (tmp_path / "raft_small_128x128_gpu-0000.trt").read_bytes() == b"engine bytes"


def test_lock_wait_is_logged_and_times_out_with_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = FileLock(str(tmp_path / LOCK_NAME))  # another holder (a separate lock object acts like another process)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with other:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    try:
        with caplog.at_level(logging.INFO, logger="scope_optical_flow_tensorrt"):
            with pytest.raises(RuntimeError, match="engine cache lock"):
                with locked(tmp_path, timeout=0.3):
                    pass
        assert any("waiting for another process" in record.getMessage() for record in caplog.records)
    finally:
        release.set()
        thread.join()
    with locked(tmp_path, timeout=1):  # free again
        pass


def test_list_and_clear_cache(cache_dir: Path) -> None:
    builder = FakeBuilder()
    ensure_engine(cache_dir, SPEC, None, TARGET, builder)
    (cache_dir / "raft_small_128x128-deadbeef.onnx.tmp-1-2").write_bytes(b"left by a crash")
    (cache_dir / "my_weights.pth").write_bytes(b"not ours")
    rows = list_cached_engines(cache_dir)
    assert sorted(row["kind"] for row in rows) == ["onnx", "onnx", "tensorrt"]  # fp32 and fp16 graphs, one engine
    for row in rows:
        assert row["path"].is_file() and row["size_bytes"] == row["path"].stat().st_size > 0
        assert row["valid_metadata"] and row["key"]["height"] == SIZE and row["height"] == SIZE
    engine_row = next(row for row in rows if row["kind"] == "tensorrt")
    assert engine_row["precision"] == "fp16" and engine_row["tensorrt_version"] == "10.3.0"

    assert clear_cache(cache_dir) == 7  # 2 graphs + sidecars, engine + sidecar, temp leftover
    assert list_cached_engines(cache_dir) == []
    assert (cache_dir / "my_weights.pth").is_file()
    assert clear_cache(cache_dir) == 0
    assert clear_cache(cache_dir / "missing") == 0


def test_prebuild_without_tensorrt_raises_with_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for flavour in ("tensorrt", "tensorrt_rtx"):  # make `import tensorrt` (and TensorRT for RTX) fail everywhere
        monkeypatch.setitem(__import__("sys").modules, flavour, None)
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        prebuild_engine(SIZE, SIZE, num_flow_updates=1, weights=None, models_dir=tmp_path)
    assert not list(tmp_path.glob("*.trt"))


def test_prebuild_without_a_gpu_points_at_portable_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where TensorRT for RTX is installed but there is no GPU, the error says how to build without one."""
    from scope_optical_flow_tensorrt.core.artifacts import trt_build

    monkeypatch.setattr(engine_manager, "require_tensorrt", lambda: None)
    monkeypatch.setattr(engine_manager, "flavour_available", lambda flavour: flavour == trt_build.TENSORRT_RTX)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU \(device='cuda'.*TensorRT for RTX \(installed\) builds "
                                           r"portable engines.*tensorrt_targets=\('8\.6', '8\.9', '12\.0'\)"):
        prebuild_engine(SIZE, SIZE, num_flow_updates=1, weights=None, models_dir=tmp_path)


def test_export_onnx_cached_rebuilds_stale_graph(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = export_onnx_cached(SIZE, SIZE, num_flow_updates=1, weights=None, models_dir=cache_dir)
    created = json.loads(sidecar_path(path).read_text())["created"]
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["key"]["opset"] >= 16 and sidecar["info"]["exporter"] == "torchscript"
    monkeypatch.setattr(engine_manager, "package_version", lambda: "99.0")
    again = export_onnx_cached(SIZE, SIZE, num_flow_updates=1, weights=None, models_dir=cache_dir)
    assert again == path
    assert json.loads(sidecar_path(path).read_text())["key"]["package_version"] == "99.0"
    assert created  # sidecar carries build information
    assert engine_cache.check_artifact(path, json.loads(sidecar_path(path).read_text())["key"]) is None


def test_fp16_torchscript_export_traces_on_cuda_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PyTorch's fp16 CPU kernels make a TorchScript trace of the fp16 graph take minutes at 512x512."""
    from scope_optical_flow_tensorrt.core.artifacts.engine_manager import export_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert export_device(False, "torchscript").type == export_device(True, "dynamo").type == "cpu"
    with caplog.at_level(logging.WARNING, logger="scope_optical_flow_tensorrt"):
        assert export_device(True, "torchscript").type == "cpu"
    assert "pip install onnxscript" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert export_device(True, "torchscript") == torch.device("cuda", 1)
    assert export_device(True, "dynamo").type == export_device(False, "torchscript").type == "cpu"
