"""Real TensorRT for RTX engine builds on the CPU, through the package's own code (no stand-in module).

TensorRT for RTX (``pip install tensorrt-rtx``, in CI) builds engines without a GPU for the compute
capabilities listed. These tests build RAFT Small and Large, fp16 and fp32, at a small size and at 512x512,
for sm86, sm89 and sm120, and check the build, the fp16 network's precision split (correlation MatMuls and
the GridSample lookup in fp32), the cache entry and its sidecar, reuse without a rebuild, and rebuilds of
stale or corrupt engines. No engine runs here: deserialization and execution need a GPU TensorRT for RTX
supports (not the H100/H200 of the GPU machine); that path is covered by the stand-in in
test_tensorrt_runtime.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install tensorrt-rtx)")

from click.testing import CliRunner  # noqa: E402
from scope_optical_flow_tensorrt.core.artifacts import engine_manager  # noqa: E402
from scope_optical_flow_tensorrt.core.artifacts.engine_cache import read_sidecar  # noqa: E402
from scope_optical_flow_tensorrt.core.artifacts.engine_manager import EngineSpec, ensure_engine  # noqa: E402
from scope_optical_flow_tensorrt.core.artifacts.trt_build import BuildTarget, bind_polygraphy, portable_target  # noqa: E402

pytestmark = pytest.mark.tensorrt_rtx

TARGETS = ("8.6", "8.9", "12.0")
UPDATES = 2
MAX_PAIRS = 2
CASES = [(model, fp16, size) for model in ("raft_small", "raft_large") for size in (128, 512)
         for fp16 in (True, False)]


class CountingBuilder:
    """The real builder (engine_manager.write_engine_with_tensorrt), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
        self.calls += 1
        engine_manager.write_engine_with_tensorrt(onnx, destination, spec, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One portable engine per case, built once per test session (the builds are the expensive part)."""
    return {"dir": tmp_path_factory.mktemp("rtx-engines"), "engines": {}}


def build_case(built: dict, model: str, fp16: bool, size: int) -> tuple[Path, CountingBuilder]:
    key = (model, fp16, size)
    if key not in built["engines"]:
        builder = CountingBuilder()
        spec = EngineSpec(size, size, fp16, UPDATES, MAX_PAIRS, model=model)
        path, _ = ensure_engine(built["dir"], spec, None, portable_target(TARGETS), builder)
        built["engines"][key] = (path, builder)
    return built["engines"][key]


@pytest.mark.parametrize(("model", "fp16", "size"), CASES,
                         ids=[f"{m}-{'fp16' if f else 'fp32'}-{s}" for m, f, s in CASES])
def test_portable_engine_builds_lands_in_cache_and_is_reused(built: dict, model: str, fp16: bool, size: int) -> None:
    path, builder = build_case(built, model, fp16, size)
    assert builder.calls == 1 and path.is_file() and path.suffix == ".trt"
    assert path.name.startswith(f"{model}_{size}x{size}_portable-")
    assert path.stat().st_size > 1 << 20  # a real plan, megabytes of kernels and weights
    sidecar = read_sidecar(path)
    assert sidecar is not None and sidecar["size_bytes"] == path.stat().st_size
    key = sidecar["key"]
    assert key["tensorrt_flavour"] == "tensorrt_rtx" and key["compute_targets"] == list(TARGETS)
    assert key["tensorrt_version"].startswith("1.") and key["precision"] == ("fp16" if fp16 else "fp32")
    assert sidecar["info"]["built_with"].startswith("TensorRT for RTX 1.")
    # found again without a rebuild
    spec = EngineSpec(size, size, fp16, UPDATES, MAX_PAIRS, model=model)
    again, _ = ensure_engine(built["dir"], spec, None, portable_target(TARGETS), builder)
    assert again == path and builder.calls == 1


@pytest.mark.parametrize("model", ["raft_small", "raft_large"])
def test_fp16_network_keeps_correlation_and_lookup_in_fp32(built: dict, model: str) -> None:
    """The fp16 graph as TensorRT for RTX parses it (strongly typed): the pyramid's MatMuls and every GridSample
    compute in fp32, the convolutions in fp16."""
    import tensorrt_rtx as trt

    build_case(built, model, True, 128)
    onnx = next(built["dir"].glob(f"{model}_128x128_fp16-*.onnx"))
    from polygraphy.backend.trt import network_from_onnx_path

    with bind_polygraphy("tensorrt_rtx"):
        _, network, _parser = network_from_onnx_path(str(onnx), strongly_typed=True)
        layers = [network.get_layer(index) for index in range(network.num_layers)]

    def output_types(kind: object) -> list[object]:
        return [layer.get_output(0).dtype for layer in layers if layer.type == kind]

    matmuls, lookups = output_types(trt.LayerType.MATRIX_MULTIPLY), output_types(trt.LayerType.GRID_SAMPLE)
    assert len(matmuls) == 4 and set(matmuls) == {trt.float32}  # one correlation product per pyramid level
    assert len(lookups) == 4 * UPDATES and set(lookups) == {trt.float32}
    assert set(output_types(trt.LayerType.CONVOLUTION)) == {trt.float16}


def test_corrupt_or_stale_engine_is_rebuilt(built: dict, caplog: pytest.LogCaptureFixture) -> None:
    path, _ = build_case(built, "raft_small", True, 128)
    spec = EngineSpec(128, 128, True, UPDATES, MAX_PAIRS, model="raft_small")
    builder = CountingBuilder()
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="scope_optical_flow_tensorrt"):
        assert ensure_engine(built["dir"], spec, None, portable_target(TARGETS), builder)[0] == path
    assert builder.calls == 1 and "truncated" in caplog.text
    sidecar_path = path.with_name(path.name + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["key"]["tensorrt_version"] = "1.0.0.0"  # built by another TensorRT for RTX: stale
    sidecar_path.write_text(json.dumps(sidecar))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scope_optical_flow_tensorrt"):
        ensure_engine(built["dir"], spec, None, portable_target(TARGETS), builder)
    assert builder.calls == 2 and "changed: tensorrt_version" in caplog.text
    assert read_sidecar(path)["key"]["tensorrt_version"] != "1.0.0.0"


def test_a_gpu_of_a_listed_capability_loads_the_portable_engine_without_building(built: dict) -> None:
    path, _ = build_case(built, "raft_small", True, 128)
    spec = EngineSpec(128, 128, True, UPDATES, MAX_PAIRS, model="raft_small")
    version = read_sidecar(path)["key"]["tensorrt_version"]
    builder = CountingBuilder()
    rtx_4090 = BuildTarget("NVIDIA GeForce RTX 4090", "8.9", version, 12 << 30, "tensorrt_rtx", ("8.9",))
    assert ensure_engine(built["dir"], spec, None, rtx_4090, builder)[0] == path and builder.calls == 0
    # a capability that is not listed (sm75) gets an engine of its own
    rtx_2080 = BuildTarget("NVIDIA GeForce RTX 2080", "7.5", version, 4 << 30, "tensorrt_rtx", ("7.5",))
    own, _ = ensure_engine(built["dir"], spec, None, rtx_2080, lambda onnx, dest, s, t: dest.write_bytes(b"PLAN"))
    assert own != path and "NVIDIA_GeForce_RTX_2080" in own.name


def test_cli_prebuild_tensorrt_targets_says_what_was_built(built: dict) -> None:
    from scope_optical_flow_tensorrt.cli.app import cli as main

    path, _ = build_case(built, "raft_small", True, 128)
    result = CliRunner().invoke(main, ["prebuild", "--size", "128x128", "--updates", str(UPDATES), "--max-pairs",
                                       str(MAX_PAIRS), "--weights", "untrained", "--models-dir", str(built["dir"]),
                                       "--tensorrt-targets", "sm86,sm89,sm120"])
    assert result.exit_code == 0, result.output
    assert str(path) in result.output  # found in the cache: the same engine, not rebuilt
    assert "TensorRT for RTX 1." in result.output and "compute capabilities 8.6, 8.9, 12.0" in result.output
    bad = CliRunner().invoke(main, ["prebuild", "--size", "128x128", "--models-dir", str(built["dir"]),
                                    "--tensorrt-targets", "sm90"])
    message = bad.output + str(bad.exception)  # the CliError (main() prints it as one line)
    assert bad.exit_code != 0 and "compute capability 9.0" in message and "needs TensorRT 10/11" in message
