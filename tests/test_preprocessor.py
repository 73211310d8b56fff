"""The streaming preprocessor on the CPU: layouts, shapes, ranges, streaming, reset, strength, normalization."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import COMPUTE_SIZE, make_frames
from einops import rearrange
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.preprocessor import default_max_pairs

UPDATES = 3


def make_preprocessor(**overrides: object) -> OpticalFlowTensorRTPreprocessor:
    options: dict[str, object] = dict(
        height=COMPUTE_SIZE, width=COMPUTE_SIZE, device="cpu", weights=None, num_flow_updates=UPDATES
    )
    options.update(overrides)
    return OpticalFlowTensorRTPreprocessor(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def frames_fhwc() -> torch.Tensor:
    return make_frames(5, 96, 112)


def test_no_argument_construction_is_lazy_and_has_gpu_defaults() -> None:
    pre = OpticalFlowTensorRTPreprocessor()
    assert (pre.height, pre.width, pre.fp16, pre.flow_strength) == (512, 512, True, 1.0)
    assert pre.num_flow_updates == 12
    assert not pre.loaded
    from scope_optical_flow_tensorrt.core.backends import tensorrt_available

    assert pre.backend_name == ("tensorrt" if torch.cuda.is_available() and tensorrt_available() else "torch")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pre.device.type == expected


def test_output_shape_dtype_range_and_input_size(frames_fhwc: torch.Tensor) -> None:
    out = make_preprocessor()(frames_fhwc)
    assert out.shape == (1, 3, 5, 96, 112)
    assert out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


def test_every_layout_gives_the_same_result(frames_fhwc: torch.Tensor) -> None:
    reference = make_preprocessor()(frames_fhwc)
    cfhw = rearrange(frames_fhwc, "f h w c -> c f h w")
    bcfhw = cfhw.unsqueeze(0)
    fchw = rearrange(frames_fhwc, "f h w c -> f c h w")
    variants = {
        "CFHW": make_preprocessor()(cfhw),
        "BCFHW": make_preprocessor()(bcfhw),
        "FCHW": make_preprocessor()(fchw, layout="FCHW"),
        "FHWC explicit": make_preprocessor(layout="FHWC")(frames_fhwc),
        "uint8": make_preprocessor()((frames_fhwc * 255).round().to(torch.uint8)),
    }
    for name, out in variants.items():
        tolerance = 0.05 if name == "uint8" else 1e-5  # uint8 quantizes the input itself
        assert out.shape == reference.shape, name
        assert (out - reference).abs().mean() < tolerance, name


def test_grey_and_rgba_inputs_are_accepted(frames_fhwc: torch.Tensor) -> None:
    grey = frames_fhwc.mean(dim=-1, keepdim=True)
    out_grey = make_preprocessor()(grey)
    assert out_grey.shape == (1, 3, 5, 96, 112)
    rgba = torch.cat([frames_fhwc, torch.ones_like(frames_fhwc[..., :1])], dim=-1)
    assert torch.allclose(make_preprocessor()(rgba), make_preprocessor()(frames_fhwc))


def test_first_frame_without_reference_is_white_and_later_frames_are_not(frames_fhwc: torch.Tensor) -> None:
    out = make_preprocessor()(frames_fhwc)
    assert torch.equal(out[:, :, 0], torch.ones_like(out[:, :, 0]))
    assert (out[:, :, 1:] < 0.99).any(dim=(0, 1, 3, 4)).all()  # every later frame shows some colour


def test_streaming_five_equals_three_then_two(frames_fhwc: torch.Tensor) -> None:
    for normalization in ("per_frame", "running", "fixed"):
        whole = make_preprocessor(normalization=normalization)(frames_fhwc)
        streamed = make_preprocessor(normalization=normalization)
        parts = torch.cat([streamed(frames_fhwc[:3]), streamed(frames_fhwc[3:])], dim=2)
        assert (parts - whole).abs().max() < 1e-4, normalization
        # the first frame of the second call used the last frame of the first as its reference
        assert not torch.equal(parts[:, :, 3], torch.ones_like(parts[:, :, 3]))


def test_single_frame_calls_stream(frames_fhwc: torch.Tensor) -> None:
    whole = make_preprocessor()(frames_fhwc)
    pre = make_preprocessor()
    singles = torch.cat([pre(frames_fhwc[i : i + 1]) for i in range(5)], dim=2)
    assert (singles - whole).abs().max() < 1e-4


def test_windows_of_pairs_equal_one_batch(frames_fhwc: torch.Tensor) -> None:
    whole = make_preprocessor()(frames_fhwc)
    windowed = make_preprocessor(max_batch_pairs=2)(frames_fhwc)
    assert (windowed - whole).abs().max() < 1e-4


def test_reset_starts_a_new_sequence(frames_fhwc: torch.Tensor) -> None:
    pre = make_preprocessor()
    first = pre(frames_fhwc[:3])
    pre.reset()
    again = pre(frames_fhwc[:3])
    assert torch.allclose(first, again)
    assert torch.equal(again[:, :, 0], torch.ones_like(again[:, :, 0]))


def test_input_size_change_resets_by_itself(frames_fhwc: torch.Tensor, caplog: pytest.LogCaptureFixture) -> None:
    pre = make_preprocessor()
    pre(frames_fhwc[:2])
    smaller = torch.nn.functional.interpolate(rearrange(frames_fhwc[2:4], "f h w c -> f c h w"), size=(64, 80))
    out = pre(rearrange(smaller, "f c h w -> f h w c"))
    assert out.shape == (1, 3, 2, 64, 80)
    assert torch.equal(out[:, :, 0], torch.ones_like(out[:, :, 0]))
    assert "starting a new flow sequence" in caplog.text


def test_compute_flow_returns_pixels_at_compute_size(frames_fhwc: torch.Tensor) -> None:
    flow = make_preprocessor().compute_flow(frames_fhwc)
    assert flow.shape == (1, 5, 2, COMPUTE_SIZE, COMPUTE_SIZE)
    assert torch.equal(flow[0, 0], torch.zeros_like(flow[0, 0]))
    assert flow[0, 1:].abs().amax() > 0.1


def test_flow_strength_changes_the_picture(frames_fhwc: torch.Tensor) -> None:
    def saturation(strength: float) -> float:
        out = make_preprocessor(flow_strength=strength)(frames_fhwc)
        return float((1.0 - (out[:, :, 1:] + 1) / 2).mean())  # 0 = white

    none, normal, strong = saturation(0.0), saturation(1.0), saturation(2.0)
    assert none == pytest.approx(0.0, abs=1e-6)
    assert normal > 0.01
    assert strong > normal * 1.3


def test_flow_strength_can_change_between_calls_and_is_validated() -> None:
    pre = make_preprocessor()
    pre.flow_strength = 1.5
    assert pre.flow_strength == 1.5
    with pytest.raises(ValueError, match=r"flow_strength must be a number in \[0.0, 2.0\]"):
        pre.flow_strength = 3.0
    assert pre.flow_strength == 1.5


def test_fixed_normalization_keeps_colours_comparable_across_frames() -> None:
    pre = make_preprocessor(normalization="fixed", max_flow=10.0)
    flow = torch.zeros(1, 2, 2, 16, 16)
    flow[0, 0, 0] = 5.0  # 5 px right in frame 0
    flow[0, 1, 0] = 10.0  # 10 px right in frame 1
    rgb = (pre.flow_to_image(flow) + 1) / 2
    per_frame = (make_preprocessor().flow_to_image(flow) + 1) / 2
    # fixed: frame 0 (half the speed) is paler than frame 1; per_frame: both fully saturated, identical
    assert rgb[0, :, 0].min() > rgb[0, :, 1].min() + 0.2
    assert torch.allclose(per_frame[0, :, 0], per_frame[0, :, 1])


def test_running_normalization_does_not_flicker() -> None:
    pre = make_preprocessor(normalization="running", decay=0.9)
    flow = torch.zeros(1, 3, 2, 16, 16)
    flow[0, 0, 0] = 10.0
    flow[0, 1, 0] = 5.0  # motion halves: running scale ~9 px, so frame 1 is paler than frame 0
    flow[0, 2, 0] = 5.0
    scales = pre.normalizer.scales(flow)
    assert scales[0].tolist() == pytest.approx([10.0, 9.0, 8.1], rel=1e-4)


def test_visualization_matches_torchvision_per_frame() -> None:
    from torchvision.utils import flow_to_image

    torch.manual_seed(0)
    flow = torch.randn(1, 3, 2, 32, 40) * 4
    ours = (make_preprocessor().flow_to_image(flow)[0] + 1) / 2  # [3, F, H, W]
    reference = torch.stack([flow_to_image(f) for f in flow[0]], dim=1).float() / 255
    assert (ours - reference).abs().max() <= 1.0 / 255 + 1e-6


def test_flow_direction_sets_the_hue() -> None:
    pre = make_preprocessor()
    directions = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}
    colours = {}
    for name, (u, v) in directions.items():
        flow = torch.zeros(1, 1, 2, 8, 8)
        flow[0, 0, 0], flow[0, 0, 1] = u, v
        colours[name] = ((pre.flow_to_image(flow) + 1) / 2)[0, :, 0, 4, 4]
    # Middlebury wheel: right = red, left = cyan-blue, down = yellow-green side, up = blue-magenta side.
    assert colours["right"][0] > 0.9 and colours["right"][2] < 0.2
    assert colours["left"][0] < 0.2 and colours["left"][2] > 0.5
    assert colours["down"][1] > colours["down"][2]
    assert colours["up"][2] > colours["up"][1]


def test_scope_context_object_and_target_size(frames_fhwc: torch.Tensor) -> None:
    class Context:
        video_frames = rearrange(frames_fhwc, "f h w c -> 1 c f h w")
        target_height = 72
        target_width = 64

    out = make_preprocessor()(Context())
    assert out.shape == (1, 3, 5, 72, 64)
    # antialiased resampling of 1.0 gives 0.99999994; still areas must stay exactly white (255 in Scope's preview)
    assert torch.equal(out[:, :, 0], torch.ones_like(out[:, :, 0]))
    Context.target_height, Context.target_width = 320, 576
    out = make_preprocessor()(Context())
    assert out.shape == (1, 3, 5, 320, 576)
    assert torch.equal(out[:, :, 0], torch.ones_like(out[:, :, 0]))


def test_default_max_pairs_bounds_the_correlation_memory() -> None:
    assert default_max_pairs(128, 128) == 32
    assert 8 <= default_max_pairs(512, 512) <= 32
    assert default_max_pairs(1024, 1024) == 1


def test_cuda_fallback_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from scope_optical_flow_tensorrt.core import device as device_module
    from scope_optical_flow_tensorrt.core.common import log as log_module

    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(log_module, "_said", set())
    caplog.set_level(logging.WARNING, logger="scope_optical_flow_tensorrt")
    first = OpticalFlowTensorRTPreprocessor(device="cuda")
    OpticalFlowTensorRTPreprocessor(device="cuda")
    assert first.device.type == "cpu"
    assert caplog.text.count("CUDA is not available") == 1
    with pytest.raises(RuntimeError, match="strict_device=True"):
        OpticalFlowTensorRTPreprocessor(device="cuda", strict_device=True)


def test_batch_of_videos_keeps_one_stream_per_video(frames_fhwc: torch.Tensor) -> None:
    other = make_frames(5, 96, 112, seed=3)
    batch = torch.stack([rearrange(frames_fhwc, "f h w c -> c f h w"), rearrange(other, "f h w c -> c f h w")])
    whole = make_preprocessor()(batch)
    assert whole.shape == (2, 3, 5, 96, 112)
    assert (whole[0] - make_preprocessor()(frames_fhwc)[0]).abs().max() < 1e-4
    assert (whole[1] - make_preprocessor()(other)[0]).abs().max() < 1e-4
    streamed = make_preprocessor()
    parts = torch.cat([streamed(batch[:, :, :3]), streamed(batch[:, :, 3:])], dim=2)
    assert (parts - whole).abs().max() < 1e-4
