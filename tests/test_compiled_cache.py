"""Compiled PyTorch kernels as cache entries (core.compiled_cache) and the warm-up that writes and reads them.

The CPU runs eagerly, so most tests stand in for torch.compile and torch's cache artifacts with a fake that
"compiles" each new input shape once and saves/loads what it compiled as bytes; the model, preprocessor,
backend, keys, files, locking and rebuild rules are real. One test uses the real torch.compile on the CPU
(a tiny function, C++ compiler needed) to show that torch's portable artifacts serve a fresh process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import make_frames, run_in_two_processes
from fake_compile import UPDATES, FakeTorchCompile, make_preprocessor
from scope_optical_flow_tensorrt.cli.app import cli, main
from scope_optical_flow_tensorrt.core import prebuild
from scope_optical_flow_tensorrt.core.artifacts import compiled_cache, engine_manager
from scope_optical_flow_tensorrt.core.artifacts.compiled_cache import (
    ENTRY_SUFFIX,
    ROUTE_BUILT,
    ROUTE_LOADED,
    CompiledKernelCache,
    compiled_key,
    entry_path,
)
from scope_optical_flow_tensorrt.core.artifacts.engine_cache import sidecar_path
from scope_optical_flow_tensorrt.core.backends.torch_backend import ROUTE_COMPILED_HERE, ROUTE_FAILED

make = make_preprocessor


def entries(models_dir: Path) -> list[Path]:
    return sorted(models_dir.glob(f"*{ENTRY_SUFFIX}"))


# -- keys and names -----------------------------------------------------------------------------------


def test_key_names_everything_the_kernels_depend_on() -> None:
    key = compiled_key(model="raft_small", fused_lookup=False, height=512, width=384, pairs=4, fp16=True, num_flow_updates=12, weights="w",
                       device=torch.device("cpu"))
    assert {"gpu_name", "compute_capability", "model", "height", "width", "pairs", "precision", "num_flow_updates",
            "weights", "lookup", "torch_version", "triton_version", "package_version", "model_code"} <= set(key)
    assert key["torch_version"] == torch.__version__ and key["precision"] == "fp16"
    path = entry_path(Path("/m"), key)
    assert path.name.startswith("raft_small_512x384_cpu-") and path.suffix == ENTRY_SUFFIX
    # settings that name the file get files of their own; environment changes rebuild in place
    assert entry_path(Path("/m"), {**key, "pairs": 16}) != path
    assert entry_path(Path("/m"), {**key, "lookup": "fused"}) != path
    assert key["device_index"] == 0 and entry_path(Path("/m"), {**key, "device_index": 1}) != path
    large = entry_path(Path("/m"), {**key, "model": "raft_large"})
    assert large != path and large.name.startswith("raft_large_512x384_cpu-")
    assert entry_path(Path("/m"), {**key, "torch_version": "9.9"}) == path


# -- warm-up through the preprocessor -----------------------------------------------------------------


def test_warm_up_compiles_once_saves_an_entry_and_a_fresh_process_loads_it(
    fake: FakeTorchCompile, tmp_path: Path
) -> None:
    first = make(tmp_path)
    assert first.warm_up([4]) == [ROUTE_BUILT]  # Scope's 4-frame chunks: windows of 3 and 4 pairs, one bucket (4)
    assert fake.compiles == ["encode[5, 3, 128, 128]", "update_step[1024, 1, 16, 16]"]  # 4 pairs x 16 x 16
    [entry] = entries(tmp_path)
    sidecar = json.loads(sidecar_path(entry).read_text())
    assert sidecar["key"]["pairs"] == 4 and sidecar["key"]["kind"] == "torch_compile"
    assert sidecar["key"]["gpu_name"].startswith("cpu-") and sidecar["sha256"]
    assert fake.compiles_here == [] and len(fake.loads) == 1  # compiled by the child, loaded here
    frames = make_frames(4, 64, 80)
    first(frames)  # the first real call (3 pairs, padded to the warmed bucket) compiles nothing new
    assert len(fake.compiles) == 2

    fake.new_process()
    second = make(tmp_path)
    second.load(warmup=4)
    assert second.loaded and second.warmup_routes == [ROUTE_LOADED]
    assert len(fake.compiles) == 2 and len(fake.loads) == 2  # loaded, not compiled again
    torch.testing.assert_close(second(frames), make(tmp_path, torch_compile=False)(frames), atol=1e-4, rtol=0)


def test_each_chunk_size_warms_its_own_buckets(fake: FakeTorchCompile, tmp_path: Path) -> None:
    flow = make(tmp_path, max_batch_pairs=24)
    routes = flow.warm_up([4, 16])
    assert routes == [ROUTE_BUILT, ROUTE_BUILT]  # buckets 4 (3 and 4 pairs) and 16 (15 and 16 pairs)
    assert sorted(json.loads(sidecar_path(p).read_text())["key"]["pairs"] for p in entries(tmp_path)) == [4, 16]
    assert flow.warm_up([4]) == []  # already warm in this process: nothing runs again
    assert len(fake.compiles) == 4


def test_warm_up_on_the_cpu_without_compiling_does_nothing(tmp_path: Path) -> None:
    flow = make(tmp_path)
    assert flow.load(warmup=True) is flow.load() and flow.warmup_routes == []
    assert entries(tmp_path) == []


def test_bad_warmup_argument_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="warmup must be True, False, or frames per call"):
        make(tmp_path).load(warmup=[4, 0])


# -- stale, corrupt, truncated, unreadable ---------------------------------------------------------------


def _built_entry(fake: FakeTorchCompile, models_dir: Path) -> Path:
    make(models_dir).warm_up([1])
    [entry] = entries(models_dir)
    fake.new_process()
    fake.loads.clear()
    return entry


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "no sidecar"])
def test_damaged_entry_is_rebuilt_never_loaded(
    fake: FakeTorchCompile, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    entry = _built_entry(fake, tmp_path)
    data = entry.read_bytes()
    if damage == "corrupt":
        entry.write_bytes(data[:-3] + b"xx]")  # same size, other bytes
    elif damage == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    else:
        sidecar_path(entry).unlink()
    compiles = len(fake.compiles)
    assert make(tmp_path).warm_up([1]) == [ROUTE_BUILT]  # the compile process rebuilt it
    assert fake.loads == [data] and len(fake.compiles) == compiles + 2  # nothing damaged reached torch
    assert entry.read_bytes() == data and sidecar_path(entry).is_file()


def test_stale_key_rebuilds_in_place(fake: FakeTorchCompile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    entry = _built_entry(fake, tmp_path)
    monkeypatch.setattr(compiled_cache.torch, "__version__", "99.0")  # torch upgraded
    assert make(tmp_path).warm_up([1]) == [ROUTE_BUILT]
    assert entries(tmp_path) == [entry] and fake.loads == [entry.read_bytes()]  # the rebuilt one only
    assert json.loads(sidecar_path(entry).read_text())["key"]["torch_version"] == "99.0"


def test_entry_torch_cannot_read_is_discarded_and_rebuilt(fake: FakeTorchCompile, tmp_path: Path) -> None:
    entry = _built_entry(fake, tmp_path)
    garbage = b"not artifacts!" * 3
    entry.write_bytes(garbage)  # valid sidecar for these bytes, but torch cannot read them
    meta = json.loads(sidecar_path(entry).read_text())
    meta.update(size_bytes=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
    sidecar_path(entry).write_text(json.dumps(meta))
    assert make(tmp_path).warm_up([1]) == [ROUTE_BUILT]  # discarded, then built again by the compile process
    assert fake.loads == [garbage, entry.read_bytes()]  # tried once, then the rebuilt entry
    assert entry.read_bytes() != garbage


def test_entry_that_loads_but_does_not_serve_the_kernels_is_replaced(
    fake: FakeTorchCompile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    entry = _built_entry(fake, tmp_path)
    monkeypatch.setattr(compiled_cache, "load_artifacts", lambda data: None)  # read, but its kernels do not match
    assert make(tmp_path).warm_up([1]) == [ROUTE_COMPILED_HERE]  # served, but said
    assert any("partly compiled in this process" in r.getMessage() for r in caplog.records)
    assert sidecar_path(entry).is_file() and len(fake.compiles_here) == 2


def test_other_settings_entries_are_not_loaded(fake: FakeTorchCompile, tmp_path: Path) -> None:
    _built_entry(fake, tmp_path)
    make(tmp_path, num_flow_updates=UPDATES + 1).warm_up([1])
    assert len(fake.loads) == 1 and len(entries(tmp_path)) == 2  # its own new entry only


# -- compile failure ------------------------------------------------------------------------------------


def test_compile_failure_falls_back_to_the_uncompiled_model_with_one_log_line(
    fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_COMPILE_FAIL", "1")  # the compile process's compiler fails
    flow = make(tmp_path)
    assert flow.warm_up([4, 16]) == [ROUTE_FAILED, ROUTE_FAILED]
    frames = make_frames(5, 64, 80)
    torch.testing.assert_close(flow(frames), make(tmp_path, torch_compile=False)(frames), atol=1e-4, rtol=0)
    failures = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(failures) == 1 and "no C compiler found" in failures[0].getMessage()
    assert list(tmp_path.iterdir()) == [] or all(".lock" in p.name for p in tmp_path.iterdir())  # nothing half-built


def test_unusable_models_folder_leaves_the_uncompiled_model_serving(
    fake: FakeTorchCompile, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the models folder should be")
    flow = make(blocker)
    assert flow.warm_up([1]) == [ROUTE_FAILED] and fake.compiles_here == []
    assert flow(make_frames(3, 64, 80)).shape == (1, 3, 3, 64, 80)
    assert any("torch.compile failed" in r.getMessage() and "not-a-folder" in r.getMessage() for r in caplog.records)


# -- two processes ---------------------------------------------------------------------------------------


def _warm_in_process(folder: str, log: str, barrier: Any) -> None:
    def save() -> bytes:
        return b"compiled kernels"

    def load(data: bytes) -> None:
        assert data == b"compiled kernels"

    def run() -> None:
        with open(log, "a") as handle:
            handle.write("compiled\n")
        time.sleep(0.5)

    compiled_cache.save_artifacts = save  # type: ignore[assignment]
    compiled_cache.load_artifacts = load  # type: ignore[assignment]
    compiled_cache.fresh_torch_cache = nullcontext  # type: ignore[assignment]
    key = compiled_key(model="raft_small", fused_lookup=False, height=128, width=128, pairs=2, fp16=False, num_flow_updates=1, weights="w",
                       device=torch.device("cpu"))
    barrier.wait()
    route = CompiledKernelCache(Path(folder), key).warm(2, run, lambda: True)
    with open(log, "a") as handle:
        handle.write(route + "\n")


def test_two_processes_compile_the_same_entry_once(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    run_in_two_processes(_warm_in_process, str(tmp_path), str(log))
    lines = log.read_text().split()
    # one process compiled and saved; the other waited for the lock, loaded the entry and ran with it
    assert sorted(lines) == sorted(["compiled", "compiled", ROUTE_BUILT, ROUTE_LOADED])
    assert lines.index(ROUTE_BUILT) < lines.index(ROUTE_LOADED)
    assert len(entries(tmp_path)) == 1


# -- info, cache clear, prebuild ---------------------------------------------------------------------------


def test_info_lists_entries_and_cache_clear_removes_them(fake: FakeTorchCompile, tmp_path: Path) -> None:
    make(tmp_path).warm_up([1])
    (tmp_path / "torch-compile-cache" / "fxgraph").mkdir(parents=True, exist_ok=True)
    (tmp_path / "torch-compile-cache" / "fxgraph" / "graph.bin").write_bytes(b"x" * 1000)
    (tmp_path / "raft_small_seeded.pth").write_bytes(b"weights stay")
    rows = engine_manager.list_cached_engines(tmp_path)
    [entry] = [row for row in rows if row["kind"] == "torch_compile"]
    assert entry["pairs"] == 1 and entry["size_bytes"] > 0 and entry["valid_metadata"]
    [folder] = [row for row in rows if row["kind"] == "torch_cache_dir"]
    assert folder["size_bytes"] >= 1000

    result = CliRunner().invoke(cli, ["info", "--json", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["engines"]
    assert {row["kind"] for row in listed} == {"torch_compile", "torch_cache_dir"}
    text = CliRunner().invoke(cli, ["info", "--models-dir", str(tmp_path)]).output
    assert "torch_compile" in text and "pairs=1" in text

    result = CliRunner().invoke(cli, ["cache", "clear", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert entries(tmp_path) == [] and not (tmp_path / "torch-compile-cache").exists()
    assert (tmp_path / "raft_small_seeded.pth").read_bytes() == b"weights stay"


def test_prebuild_torch_without_cuda_is_a_clear_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["prebuild", "--torch", "--size", "128x128", "--models-dir", str(tmp_path)])
    assert code != 0
    assert "compiling the PyTorch path's kernels needs a CUDA GPU" in capfd.readouterr().err


def test_prebuild_torch_writes_the_entries_a_preprocessor_then_loads(
    fake: FakeTorchCompile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prebuild, "cuda_device", lambda *args: torch.device("cpu"))
    result = CliRunner().invoke(cli, ["prebuild", "--torch", "--size", "128x128", "--chunk", "4", "--chunk", "16",
                                      "--updates", str(UPDATES), "--weights", "untrained", "--fp32",
                                      "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    paths = entries(tmp_path)  # one .torchcache entry per bucket (4 and 16)
    assert len(paths) == 2 and all(str(path) in result.output for path in paths)
    compiles = len(fake.compiles)
    fake.new_process()
    flow = make(tmp_path, fp16=False)
    assert flow.warm_up([4, 16]) == [ROUTE_LOADED, ROUTE_LOADED] and len(fake.compiles) == compiles


# -- the real thing on the CPU: torch's portable artifacts serve a fresh process ---------------------------

_REAL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from torch._dynamo.utils import counters
    from scope_optical_flow_tensorrt.core.artifacts.compiled_cache import CompiledKernelCache, compiled_key

    models = Path(sys.argv[1])
    key = compiled_key(model="raft_small", fused_lookup=False, height=128, width=128, pairs=1, fp16=False, num_flow_updates=1, weights="w",
                       device=torch.device("cpu"))
    cache = CompiledKernelCache(models, key)
    step = torch.compile(lambda x: torch.tanh(x) * 2 + x.relu())
    route = cache.warm(1, lambda: step(torch.randn(8, 8)), lambda: True)
    print(route, counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
    """
)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_real_torch_artifacts_serve_a_fresh_process_with_an_empty_torch_cache(tmp_path: Path) -> None:
    env = dict(os.environ)  # imports this package as the test process does (PYTHONPATH or the installed one)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "-c", _REAL_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()

    assert run()[0] == ROUTE_BUILT
    shutil.rmtree(tmp_path / "inductor")  # as if /tmp (or the whole torch cache) were wiped
    route, hits, misses = run()
    assert (route, int(hits) >= 1, misses) == (ROUTE_LOADED, True, "0")
