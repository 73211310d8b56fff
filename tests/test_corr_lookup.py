"""The fused (Triton) correlation lookup against torchvision's ``CorrBlock.index_pyramid``.

The kernel tests run on CUDA where there is one, and on the CPU under Triton's interpreter: in CI,
``test_lookup_tests_under_triton_interpreter`` re-runs this file in a subprocess with ``TRITON_INTERPRET=1``
(it must be set before Triton is imported, so not in this process). Elsewhere they skip.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_frames
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.backends import BackendConfig
from scope_optical_flow_tensorrt.core.backends.torch_backend import TorchFlowBackend
from scope_optical_flow_tensorrt.core.common import log as core_log
from scope_optical_flow_tensorrt.core.model import corr_lookup as corr_lookup_module
from scope_optical_flow_tensorrt.core.model.corr_lookup import (
    corr_lookup,
    fused_lookup_available,
    lookup_channels,
    triton_available,
)
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow
from torchvision.models.optical_flow import raft_small
from torchvision.models.optical_flow.raft import CorrBlock

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
PAIRS, FEATURES, HEIGHT, WIDTH = 2, 32, 16, 20  # level sizes 16x20, 8x10, 4x5, 2x2



@pytest.mark.parametrize("size", [(16, 20), (17, 23), (64, 40)])
def test_pyramid_from_pooled_features_equals_torchvision_pooled_volume(size: tuple[int, int]) -> None:
    """Each level is a product with pooled features (not the full volume pooled): the same numbers as
    torchvision's ``CorrBlock.build_pyramid`` at every level, odd sizes (floor pooling) included."""
    generator = torch.Generator().manual_seed(3)
    fmap1, fmap2 = (torch.randn(PAIRS, 128, *size, generator=generator) for _ in range(2))
    model = RaftSequenceFlow(raft_small(weights=None), num_flow_updates=1)
    reference = CorrBlock(num_levels=4, radius=3)
    reference.build_pyramid(fmap1, fmap2)
    ours = model._correlation_pyramid(fmap1, fmap2)
    assert len(ours) == 4
    for level, (mine, theirs) in enumerate(zip(ours, reference.corr_pyramid)):
        assert mine.shape == theirs.shape, level
        assert (mine - theirs).abs().max() < 1e-5 * theirs.abs().max(), level
    assert reference.corr_pyramid[3].abs().max() > 0.1  # the coarsest level holds real values
    model.corr_dtype = torch.float16  # the fast path's precision: within fp16 rounding of the fp32 pyramid
    half = model._correlation_pyramid(fmap1.half(), fmap2.half())
    for mine, theirs in zip(half, reference.corr_pyramid):
        assert mine.dtype == torch.float16
        assert (mine.float() - theirs).abs().max() < 4e-3 * theirs.abs().max()

@pytest.fixture
def device() -> torch.device:
    """Where the kernel can run here: the interpreter's CPU, or CUDA."""
    if INTERPRETED:
        return torch.device("cpu")
    if torch.cuda.is_available() and triton_available():
        return torch.device("cuda")
    pytest.skip("kernel runs on CUDA, or on the CPU in test_lookup_tests_under_triton_interpreter's subprocess")


def pyramid_and_coords(device: torch.device, radius: int, seed: int = 0) -> tuple[CorrBlock, torch.Tensor]:
    """torchvision's pyramid for random features, and coordinates that reach every case the sampler has."""
    generator = torch.Generator().manual_seed(seed)
    fmap1 = torch.randn(PAIRS, FEATURES, HEIGHT, WIDTH, generator=generator)
    fmap2 = torch.randn(PAIRS, FEATURES, HEIGHT, WIDTH, generator=generator)
    block = CorrBlock(num_levels=4, radius=radius)
    block.build_pyramid(fmap1.to(device), fmap2.to(device))
    ys, xs = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    coords = torch.stack([xs, ys]).float().expand(PAIRS, 2, HEIGHT, WIDTH).clone()
    coords += 4 * torch.randn(coords.shape, generator=generator)  # fractional, some beyond the borders
    special = [  # (x, y): on the borders, whole pixels, just outside, far outside, beyond every window
        (0.0, 0.0), (WIDTH - 1.0, HEIGHT - 1.0), (-1.0, 5.5), (WIDTH + 0.25, 2.0), (-radius - 1.5, 3.0),
        (3.0, HEIGHT + radius + 0.75), (1e9, -1e9), (-3e7, 7.0), (WIDTH / 2 - 1e-4, HEIGHT / 2 + 1e-4),
        (8 * 2 - 1.0, 8 * 1.0),  # whole pixels at the coarsest level (x / 8 = 1.875, y / 8 = 1)
    ]
    for index, (x, y) in enumerate(special):
        coords[0, :, 0, index] = torch.tensor([x, y])
    return block, coords.to(device)


@pytest.mark.parametrize("radius", [3, 4])
def test_kernel_matches_torchvision_fp32(device: torch.device, radius: int) -> None:
    block, coords = pyramid_and_coords(device, radius)
    reference = block.index_pyramid(coords)
    window = (2 * radius + 1) ** 2
    padded = lookup_channels(4, radius) + 4
    out = corr_lookup(block.corr_pyramid, coords, radius, padded)
    assert out.shape == (PAIRS, padded, HEIGHT, WIDTH) and out.dtype == torch.float32 and out.is_contiguous()
    for level in range(4):  # each level on its own, to name the one that differs
        part = slice(level * window, (level + 1) * window)
        difference = (out[:, part] - reference[:, part]).abs().max().item()
        assert difference < 1e-4, f"level {level}: max difference {difference}"
    assert torch.equal(out[:, lookup_channels(4, radius):], torch.zeros_like(out[:, lookup_channels(4, radius):]))
    assert torch.equal(corr_lookup(block.corr_pyramid, coords, radius), out[:, : lookup_channels(4, radius)])


def test_kernel_in_fp16(device: torch.device) -> None:
    block, coords = pyramid_and_coords(device, 3, seed=1)
    half = [level.half() for level in block.corr_pyramid]
    out = corr_lookup(half, coords, 3, 200)
    assert out.dtype == torch.float16
    # the same fp16 values looked up in fp32: only the output's rounding to fp16 differs
    block.corr_pyramid = [level.float() for level in half]
    reference = block.index_pyramid(coords)
    scale = reference.abs().max().item()
    assert (out[:, :196].float() - reference).abs().max().item() < 2e-3 * scale
    assert not out[:, 196:].any()


def test_kernel_writes_channels_last(device: torch.device) -> None:
    block, coords = pyramid_and_coords(device, 3, seed=4)
    contiguous = corr_lookup(block.corr_pyramid, coords, 3, 200)
    channels_last = corr_lookup(block.corr_pyramid, coords, 3, 200, channels_last=True)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and not channels_last.is_contiguous()
    assert torch.equal(channels_last, contiguous)


def test_kernel_reads_non_contiguous_coords(device: torch.device) -> None:
    block, coords = pyramid_and_coords(device, 3, seed=2)
    strided = coords.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last storage
    assert not strided.is_contiguous()
    assert torch.equal(corr_lookup(block.corr_pyramid, strided, 3), corr_lookup(block.corr_pyramid, coords, 3))


def test_kernel_under_torch_compile(device: torch.device) -> None:
    block, coords = pyramid_and_coords(device, 3, seed=3)
    pyramid = block.corr_pyramid

    def step(coords: torch.Tensor) -> torch.Tensor:
        return corr_lookup(pyramid, coords + 0.5, 3, 200, channels_last=True) * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # traced through the fake kernel
    assert torch.equal(compiled(coords), step(coords))
    for channels_last in (False, True):
        torch.library.opcheck(torch.ops.scope_optical_flow.corr_lookup.default,
                              (coords, pyramid, 3, 200, channels_last), test_utils=("test_schema", "test_faketensor"))


def test_model_with_fused_lookup_matches_grid_sample_lookup(device: torch.device,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # plain fp32 convolutions on CUDA too
    raft = raft_small(weights=None).eval()
    frames = make_frames(2, 128, 128).permute(0, 3, 1, 2).to(device)
    with torch.inference_mode():
        reference = RaftSequenceFlow(raft, num_flow_updates=2).to(device)(frames)
        fused = RaftSequenceFlow(raft, num_flow_updates=2, fast_update_block=True, fused_lookup=True).to(device)(frames)
        fused_last = RaftSequenceFlow(raft, num_flow_updates=2, fast_update_block=True, fused_lookup=True,
                                      lookup_channels_last=True).to(device)(frames)
    assert (fused - reference).abs().max().item() < 1e-3 * max(1.0, reference.abs().max().item())
    assert (fused_last - fused).abs().max().item() < 1e-4 * max(1.0, reference.abs().max().item())


@pytest.mark.gpu
def test_fused_lookup_on_cuda_matches_grid_sample() -> None:
    """The default lookup on CUDA (fused_lookup=True), against grid_sample in fp32 eager."""
    def make(**options: object) -> OpticalFlowTensorRTPreprocessor:
        return OpticalFlowTensorRTPreprocessor(256, 256, device="cuda", strict_device=True, weights=None,
                                               backend="torch", fp16=False, torch_compile=False, **options)

    fused, plain = make(), make(fused_lookup=False)
    clip = make_frames(5, 256, 256)
    flow_fused, flow_plain = fused.compute_flow(clip), plain.compute_flow(clip)
    assert fused.load().model.fused_lookup and not plain.load().model.fused_lookup  # type: ignore[attr-defined]
    assert (flow_fused - flow_plain).abs().max().item() < 1e-2


@pytest.mark.skipif(INTERPRETED, reason="this is the test that starts the interpreter")
@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_lookup_tests_under_triton_interpreter() -> None:
    """The kernel tests above, on the CPU, through Triton's interpreter (a subprocess: env set before import)."""
    environment = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", __file__, "-k", "kernel or model"],
        cwd=Path(__file__).resolve().parents[1], env=environment, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, summary
    last_line = [line for line in result.stdout.splitlines() if line.strip()][-1]
    assert "7 passed" in last_line and "skipped" not in last_line, summary


def test_a_second_copy_of_the_module_reuses_the_op() -> None:
    # ComfyUI imports the repository folder as a package of its own: the op must not be defined twice.
    spec = importlib.util.spec_from_file_location("corr_lookup_second_copy", corr_lookup_module.__file__)
    assert spec is not None and spec.loader is not None
    second = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(second)
    assert second._corr_lookup_op is torch.ops.scope_optical_flow.corr_lookup


def test_no_fused_lookup_on_the_cpu() -> None:
    assert not fused_lookup_available(torch.device("cpu"))


@pytest.mark.skipif(INTERPRETED, reason="the interpreter runs the kernel on the CPU")
def test_backend_falls_back_to_grid_sample_when_the_lookup_fails(caplog: pytest.LogCaptureFixture) -> None:
    config = BackendConfig(height=128, width=128, device=torch.device("cpu"), fp16=False, num_flow_updates=2,
                           max_pairs=4)
    backend = TorchFlowBackend(config, None)
    expected = backend.flow(make_frames(2, 128, 128).permute(0, 3, 1, 2))
    backend.model.fused_lookup = True  # Triton cannot run it on CPU tensors outside the interpreter
    core_log.log_once.__globals__["_said"].discard("fused-lookup-failed")
    flow = backend.flow(make_frames(2, 128, 128).permute(0, 3, 1, 2))
    assert not backend.model.fused_lookup and torch.equal(flow, expected)
    assert "fused Triton correlation lookup failed" in caplog.text


def test_bad_arguments_are_named() -> None:
    block, coords = pyramid_and_coords(torch.device("cpu"), 3)
    with pytest.raises(ValueError, match=r"coords must be \[pairs, 2, h, w\]"):
        corr_lookup(block.corr_pyramid, coords[:, :1], 3)
    with pytest.raises(ValueError, match="pyramid level 0 must be"):
        corr_lookup(block.corr_pyramid, coords[:1], 3)
    with pytest.raises(ValueError, match="out_channels 100 < 196"):
        corr_lookup(block.corr_pyramid, coords, 3, 100)
