"""VACE-faithful conditioning: ``preset="vace"`` against an independent reimplementation of the arithmetic of
VACE's flow annotator (ali-vilab/VACE ``vace/annotators/flow.py``), plus ``first_frame`` and the input's own size.

The reference below is written from the annotator's description, with torchvision's parts only: RAFT Large with
20 updates per pair of consecutive frames at the frames' own size, replicate padding to a multiple of 8 split as
RAFT's ``InputPadder`` splits it (padding cropped off the flow), ``torchvision.utils.flow_to_image`` (each map
scaled by its own largest motion), and the first map repeated. Same seeded random weights; CPU; small frames.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_large
from torchvision.utils import flow_to_image

from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.model.weights import RANDOM_WEIGHTS_SEED

from conftest import make_frames

HEIGHT, WIDTH = 130, 150  # not multiples of 8: the padding and its cropping are exercised
UPDATES = 20


def vace_reference(frames_fhwc: torch.Tensor) -> torch.Tensor:
    """uint8 ``[F, H, W, 3]`` -> VACE-style flow maps, uint8 ``[F, 3, H, W]``."""
    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    model = raft_large(weights=None).eval()
    images = frames_fhwc.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # RAFT's input range [-1, 1]
    height, width = images.shape[-2:]
    pad_h, pad_w = (8 - height % 8) % 8, (8 - width % 8) % 8
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(images, [left, pad_w - left, top, pad_h - top], mode="replicate")
    maps = []
    with torch.no_grad():
        for first, second in zip(padded[:-1], padded[1:]):
            flow = model(first[None], second[None], num_flow_updates=UPDATES)[-1]
            flow = flow[..., top : top + height, left : left + width]
            maps.append(flow_to_image(flow)[0])
    return torch.stack(maps[:1] + maps)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return (make_frames(4, HEIGHT, WIDTH) * 255).round().to(torch.uint8)  # a video's frames, as VACE reads them


def test_vace_preset_matches_the_annotators_arithmetic(frames: torch.Tensor) -> None:
    expected = vace_reference(frames).float()
    flow = OpticalFlowTensorRTPreprocessor(preset="vace", device="cpu", weights=None)
    maps = flow(frames, layout="FHWC")[0].permute(1, 0, 2, 3)  # [F, 3, H, W] in [-1, 1]
    ours = ((maps + 1.0) * 127.5).round()
    assert ours.shape == expected.shape == (4, 3, HEIGHT, WIDTH)
    assert (flow.model, flow.num_flow_updates, flow.normalization, flow.first_frame) == (
        "raft_large", UPDATES, "per_frame", "repeat")
    assert flow.compute_size == (136, 152)
    difference = (ours - expected).abs() / 255.0
    assert difference.mean() <= 2 / 255, f"mean {difference.mean() * 255:.2f}/255"
    assert torch.equal(ours[0], ours[1])  # the first map repeated
    assert expected[1:].std() > 10  # the reference shows motion: the comparison is not white against white


def test_explicit_non_default_options_win_over_the_preset() -> None:
    flow = OpticalFlowTensorRTPreprocessor(preset="vace", device="cpu", normalization="running", height=256,
                                           width=256)
    assert (flow.model, flow.num_flow_updates, flow.normalization, flow.compute_size, flow.first_frame) == (
        "raft_large", 20, "running", (256, 256), "repeat")
    plain = OpticalFlowTensorRTPreprocessor(preset="none", device="cpu")
    assert (plain.model, plain.num_flow_updates, plain.compute_size, plain.first_frame) == (
        "raft_small", 12, (512, 512), "zero")
    with pytest.raises(ValueError, match=r"preset='vase' is not a preset; use one of none, vace"):
        OpticalFlowTensorRTPreprocessor(preset="vase", device="cpu")


def make(**options: object) -> OpticalFlowTensorRTPreprocessor:
    defaults: dict[str, object] = dict(device="cpu", weights=None, num_flow_updates=2)
    return OpticalFlowTensorRTPreprocessor(**{**defaults, **options})  # type: ignore[arg-type]


def test_first_frame_repeat_in_one_call_and_streaming() -> None:
    frames = make_frames(4, 128, 128)
    zero = make(first_frame="zero").compute_flow(frames, layout="FHWC")[0]
    repeat = make(first_frame="repeat").compute_flow(frames, layout="FHWC")[0]
    assert zero[0].abs().max() == 0 and zero[1].abs().max() > 0
    assert torch.equal(repeat[0], repeat[1]) and torch.equal(repeat[1:], zero[1:])
    # Streaming: one map per input frame; a first call of one frame has no pair yet, later calls are unaffected.
    stream = make(first_frame="repeat")
    first = stream.compute_flow(frames[:1], layout="FHWC")[0]
    rest = stream.compute_flow(frames[1:], layout="FHWC")[0]
    assert first.shape[0] == 1 and first.abs().max() == 0
    assert rest.shape[0] == 3 and torch.allclose(rest, zero[1:], atol=1e-5)
    # A stream whose first call has two frames or more repeats its first pair.
    chunked = make(first_frame="repeat")
    parts = [chunked.compute_flow(frames[:2], layout="FHWC")[0], chunked.compute_flow(frames[2:], layout="FHWC")[0]]
    assert torch.allclose(torch.cat(parts), repeat, atol=1e-5)
    with pytest.raises(ValueError, match=r"first_frame='copy' is not supported; use one of zero, repeat"):
        make(first_frame="copy")


def test_native_size_pads_crops_and_rebuilds_per_size() -> None:
    flow = make(height=None, width=None)
    assert flow.native_size and flow.compute_size is None and flow.load() is None
    first = flow.compute_flow(make_frames(3, 130, 150), layout="FHWC")
    assert first.shape == (1, 3, 2, 130, 150) and flow.compute_size == (136, 152)
    backend = flow.load()
    second = flow.compute_flow(make_frames(3, 128, 136), layout="FHWC")  # a new size: a new model, a new stream
    assert second.shape == (1, 3, 2, 128, 136) and flow.compute_size == (128, 136)
    assert flow.load() is not backend and second[0, 0].abs().max() == 0
    maps = flow(make_frames(2, 128, 136))
    assert maps.shape == (1, 3, 2, 128, 136)


def test_native_size_rejects_frames_too_small_and_half_sizes() -> None:
    with pytest.raises(ValueError, match=r"frames are 90x100 \(height x width\).* at least 128 pixels on each side.*height=128"):
        make(height=None, width=None).compute_flow(make_frames(2, 90, 100), layout="FHWC")
    with pytest.raises(ValueError, match=r"height=None and width=None go together"):
        make(height=None, width=256)


@pytest.mark.gpu
def test_vace_preset_on_cuda_matches_the_reference_and_rebuilds_per_size(frames: torch.Tensor) -> None:
    expected = vace_reference(frames).float()
    # The uncompiled CUDA graphs: compiling RAFT Large at two sizes would take minutes of the GPU suite, and the
    # compiled fast path's parity is test_gpu.py's test_raft_large_fast_path_matches_fp32_eager.
    flow = OpticalFlowTensorRTPreprocessor(preset="vace", device="cuda", fp16=False, weights=None,
                                           torch_compile=False)
    maps = flow(frames.cuda(), layout="FHWC")[0].permute(1, 0, 2, 3).cpu()
    ours = ((maps + 1.0) * 127.5).round()
    assert ((ours - expected).abs() / 255.0).mean() <= 2 / 255
    assert flow.compute_size == (136, 152)
    # Another input size: the backend (its CUDA graphs) is built for it, the stream restarts.
    other = (make_frames(3, 200, 264) * 255).round().to(torch.uint8).cuda()
    again = flow(other, layout="FHWC")
    assert again.shape == (1, 3, 3, 200, 264) and flow.compute_size == (200, 264)
    assert torch.equal(again[:, :, 0], again[:, :, 1])
