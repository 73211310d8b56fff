"""Non-finite flow, empty batches and meta tensors get clear errors (problem and fix), in the core and in the
ComfyUI nodes, and leave the stream as it was."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import make_frames
from test_bad_input import GOOD, make_preprocessor
from test_nodes import pack, run, work  # noqa: F401 (fixtures)

NAN_FLOW = torch.zeros(1, 2, 2, 32, 40)
NAN_FLOW[0, 1, 0, 5, 7] = torch.nan
INF_FLOW = torch.zeros(1, 2, 2, 32, 40)
INF_FLOW[0, 0, 1, 3, 3] = torch.inf


@pytest.mark.parametrize("flow", [NAN_FLOW, INF_FLOW, -INF_FLOW], ids=["NaN", "+Inf", "-Inf"])
def test_non_finite_flow_is_a_clear_error_in_flow_to_image(flow: torch.Tensor) -> None:
    pre = make_preprocessor(normalization="running")
    with pytest.raises(ValueError, match=r"flow holds 1 NaN or infinite value\(s\) of 5120.*torch\.nan_to_num"):
        pre.flow_to_image(flow)
    assert pre.normalizer.state() is None  # running scales untouched
    assert pre.flow_to_image(torch.zeros(1, 2, 2, 32, 40)).shape == (1, 3, 2, 32, 40)


def test_nan_flow_never_indexes_out_of_the_colour_wheel() -> None:
    """Callers that skip the check (the preprocessor's own flow) get colours, never an out-of-range index (on CUDA
    a device-side assert that would end the host's CUDA context)."""
    from scope_optical_flow_tensorrt.core.visualize import flow_to_rgb

    rgb = flow_to_rgb(NAN_FLOW[0], 1.0)
    assert rgb.shape == (2, 3, 32, 40)


@pytest.mark.parametrize("node", ["OpticalFlowToImage", "OpticalFlowMagnitudeMask"])
@pytest.mark.parametrize("flow", [NAN_FLOW[0], INF_FLOW[0]], ids=["NaN", "Inf"])
def test_non_finite_flow_is_a_clear_error_in_the_nodes(
    pack: types.ModuleType, work: types.ModuleType, node: str, flow: torch.Tensor  # noqa: F811
) -> None:
    with pytest.raises(ValueError, match=r"flow holds 1 NaN or infinite value\(s\).*torch\.nan_to_num"):
        run(pack.NODE_CLASS_MAPPINGS[node], flow=flow)


def test_meta_flow_is_a_clear_error_in_the_nodes(pack: types.ModuleType, work: types.ModuleType) -> None:  # noqa: F811
    with pytest.raises(TypeError, match=r"meta tensor for flow.*tensor with data"):
        run(pack.NODE_CLASS_MAPPINGS["OpticalFlowToImage"], flow=torch.zeros(2, 2, 32, 40, device="meta"))


ODD_FRAMES = [
    ("empty uint8 batch", torch.zeros(0, 3, 2, 64, 72, dtype=torch.uint8), ValueError, r"empty batch.*B = 0"),
    ("empty float batch", torch.zeros(0, 3, 2, 64, 72), ValueError, r"empty batch.*at least one video"),
    ("meta frames", torch.zeros(1, 3, 2, 64, 72, device="meta"), TypeError, r"meta tensor for frames.*with data"),
]


@pytest.mark.parametrize(("frames", "error", "message"), [case[1:] for case in ODD_FRAMES],
                         ids=[case[0] for case in ODD_FRAMES])
def test_empty_batches_and_meta_frames_raise_clear_errors_and_keep_state(
    frames: torch.Tensor, error: type, message: str
) -> None:
    pre = make_preprocessor()
    before = pre(GOOD[:2])
    for call in (pre, pre.compute_flow):
        with pytest.raises(error, match=message):
            call(frames)
    after = pre(GOOD[2:3])
    reference = make_preprocessor()(GOOD)
    assert torch.allclose(torch.cat([before, after], dim=2), reference, atol=1e-4)


@pytest.mark.parametrize(("flow", "error", "message"), [
    (torch.zeros(0, 2, 2, 32, 40), ValueError, r"flow holds no frames"),
    (torch.zeros(1, 0, 2, 32, 40), ValueError, r"flow holds no frames"),
    (torch.zeros(1, 2, 2, 32, 40, device="meta"), TypeError, r"meta tensor for flow"),
], ids=["empty batch", "no frames", "meta"])
def test_empty_and_meta_flow_raise_clear_errors(flow: torch.Tensor, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make_preprocessor().flow_to_image(flow)


def test_finite_flow_still_draws_as_before() -> None:
    pre = make_preprocessor()
    flow = pre.compute_flow(make_frames(3, 64, 72))
    assert torch.equal(pre.flow_to_image(flow), make_preprocessor().flow_to_image(flow))
