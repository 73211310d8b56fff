"""Bad input: a clear error naming the problem and the fix, and the stream state left untouched."""

from __future__ import annotations

import pytest
import torch

from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

from conftest import COMPUTE_SIZE, make_frames


def make_preprocessor(**overrides: object) -> OpticalFlowTensorRTPreprocessor:
    options: dict[str, object] = dict(height=COMPUTE_SIZE, width=COMPUTE_SIZE, device="cpu", weights=None,
                                      num_flow_updates=2)
    options.update(overrides)
    return OpticalFlowTensorRTPreprocessor(**options)  # type: ignore[arg-type]


GOOD = make_frames(3, 64, 72)

BAD_FRAMES = [
    ("3-D tensor", GOOD[0], ValueError, r"4-D .* or 5-D .*got shape \[64, 72, 3\].*image\[None\]"),
    ("6-D tensor", GOOD[None, None], ValueError, r"must be 4-D"),
    ("2 channels", make_frames(5, 64, 72)[..., :2], ValueError, r"cannot tell the channel axis.*layout="),
    ("5 channels", torch.rand(1, 5, 2, 8, 8), ValueError, r"5 channels.*expected 3 \(RGB\)"),
    ("zero frames", GOOD[:0], ValueError, r"zero frames"),
    ("NaN", torch.where(GOOD > 0.5, torch.nan, GOOD), ValueError, r"NaN.*nan_to_num"),
    ("Inf", torch.where(GOOD > 0.5, torch.inf, GOOD), ValueError, r"infinite.*nan_to_num"),
    ("0-255 floats", GOOD * 255, ValueError, r"must be in \[0, 1\].*divide by 255 or pass uint8"),
    ("negative floats", GOOD - 0.5, ValueError, r"must be in \[0, 1\] \(values up to 0\.001 outside are accepted and "
     r"clamped\), got values in \[-0\.\d+, 0\.\d+\]\. Clamp them first \(frames\.clamp\(0, 1\)\)"),
    ("int32", (GOOD * 255).to(torch.int32), TypeError, r"dtype torch.int32.*uint8.*floating"),
    ("bool", GOOD > 0.5, TypeError, r"dtype torch.bool"),
    ("numpy array", GOOD.numpy(), TypeError, r"must be a torch.Tensor.*torch.from_numpy"),
    ("1x1 frames", torch.rand(2, 1, 1, 3), ValueError, r"too small"),
]


@pytest.mark.parametrize(("frames", "error", "message"), [case[1:] for case in BAD_FRAMES],
                         ids=[case[0] for case in BAD_FRAMES])
def test_bad_frames_raise_clear_errors_and_keep_state(frames: object, error: type, message: str) -> None:
    pre = make_preprocessor()
    before = pre(GOOD[:2])
    with pytest.raises(error, match=message):
        pre(frames)
    # the failed call did not move the stream: the next frame still uses frame 1 as its reference
    after = pre(GOOD[2:3])
    reference = make_preprocessor()(GOOD)
    assert torch.allclose(torch.cat([before, after], dim=2), reference, atol=1e-4)


def test_bad_layout_argument() -> None:
    with pytest.raises(ValueError, match=r"layout='HWC' is not supported; use one of BCFHW"):
        make_preprocessor()(GOOD, layout="HWC")
    with pytest.raises(ValueError, match=r"layout 'BCFHW' needs a 5-D tensor"):
        make_preprocessor()(GOOD, layout="BCFHW")
    with pytest.raises(ValueError, match=r"layout='xyz'"):
        make_preprocessor(layout="xyz")


def test_scope_context_without_video() -> None:
    class Context:
        video_frames = None
        target_height = 64
        target_width = 64

    with pytest.raises(ValueError, match=r"no video frames.*video or camera input"):
        make_preprocessor()(Context())


def test_scope_context_with_bad_target_size() -> None:
    class Context:
        video_frames = GOOD.permute(3, 0, 1, 2)[None]
        target_height = 0
        target_width = 64

    with pytest.raises(ValueError, match=r"target_height must be a positive integer"):
        make_preprocessor()(Context())


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"height": 300}, ValueError, r"height=300 must be a multiple of 8 .* try 304"),
        ({"width": 64}, ValueError, r"width=64 must be a multiple of 8 and at least 128"),
        ({"height": 128.0}, TypeError, r"height must be an integer"),
        ({"flow_strength": 2.5}, ValueError, r"flow_strength must be a number in \[0.0, 2.0\], got 2.5"),
        ({"flow_strength": -0.1}, ValueError, r"flow_strength"),
        ({"flow_strength": float("nan")}, ValueError, r"flow_strength"),
        ({"normalization": "global"}, ValueError, r"normalization='global' is not supported; use one of per_frame"),
        ({"normalization": "fixed", "max_flow": 0}, ValueError, r"max_flow must be a positive number"),
        ({"normalization": "running", "decay": 1.5}, ValueError, r"decay must be in \(0, 1\]"),
        ({"num_flow_updates": 0}, ValueError, r"num_flow_updates must be a positive integer"),
        ({"max_batch_pairs": 0}, ValueError, r"max_batch_pairs must be a positive integer"),
        ({"backend": "cuda"}, ValueError, r"backend='cuda' is not supported"),
        ({"device": "gpu"}, ValueError, r"device='gpu' is not a valid torch device"),
    ],
)
def test_bad_options_raise_at_construction(options: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make_preprocessor(**options)


def test_bad_flow_for_visualization() -> None:
    with pytest.raises(ValueError, match=r"flow must be \[B, F, 2, H, W\]"):
        make_preprocessor().flow_to_image(torch.zeros(1, 2, 8, 8))
