"""RAFT Small: parity of the sequence model with torchvision's RAFT, and every way of loading weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import make_frames
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.model import weights as weights_module
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.model.weights import convert_state_dict, load_raft_small
from torchvision.models import WeightsEnum
from torchvision.models.optical_flow import Raft_Small_Weights, raft_small


def seeded_state_dict(seed: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return raft_small(weights=None).state_dict()


def to_original_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of convert_state_dict, written independently: torchvision names -> princeton-vl/RAFT names."""
    inverse = [
        (r"^(feature|context)_encoder\.convnormrelu\.0\.", lambda m: f"{'f' if m[1] == 'feature' else 'c'}net.conv1."),
        (r"^(feature|context)_encoder\.conv\.", lambda m: f"{'f' if m[1] == 'feature' else 'c'}net.conv2."),
        (r"^(feature|context)_encoder\.(layer\d\.\d)\.convnormrelu(\d)\.0\.",
         lambda m: f"{'f' if m[1] == 'feature' else 'c'}net.{m[2]}.conv{m[3]}."),
        (r"^(feature|context)_encoder\.(layer\d\.\d)\.downsample\.0\.",
         lambda m: f"{'f' if m[1] == 'feature' else 'c'}net.{m[2]}.downsample.0."),
        (r"^update_block\.motion_encoder\.convcorr1\.0\.", lambda m: "update_block.encoder.convc1."),
        (r"^update_block\.motion_encoder\.convflow1\.0\.", lambda m: "update_block.encoder.convf1."),
        (r"^update_block\.motion_encoder\.convflow2\.0\.", lambda m: "update_block.encoder.convf2."),
        (r"^update_block\.motion_encoder\.conv\.0\.", lambda m: "update_block.encoder.conv."),
        (r"^update_block\.recurrent_block\.convgru1\.", lambda m: "update_block.gru."),
        (r"^update_block\.flow_head\.", lambda m: "update_block.flow_head."),
    ]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in inverse:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        else:
            raise AssertionError(f"no original name for {key}")
        renamed["module." + key] = value
    return renamed


def test_sequence_model_matches_torchvision_raft() -> None:
    model = raft_small(weights=None).eval()
    model.load_state_dict(seeded_state_dict())
    frames = make_frames(3, 128, 136).permute(0, 3, 1, 2)
    with torch.inference_mode():
        reference = model(frames[:-1] * 2 - 1, frames[1:] * 2 - 1, num_flow_updates=6)[-1]
        ours = RaftSequenceFlow(model, num_flow_updates=6)(frames)
    assert ours.shape == (2, 2, 128, 136)
    assert (ours - reference).abs().max() < 1e-3 * max(1.0, reference.abs().max().item())


def test_random_weights_are_seeded_and_announced(caplog: pytest.LogCaptureFixture) -> None:
    weights_module.log_once.__globals__["_said"].discard("random-weights-raft_small")
    first, info = load_raft_small(None)
    second, _ = load_raft_small(None)
    assert not info.pretrained and info.identity == "random-seed0"
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert "UNTRAINED random weights" in caplog.text


@pytest.mark.parametrize("naming", ["torchvision", "original", "wrapped"])
def test_local_weights_file_in_both_namings(tmp_path: Path, naming: str) -> None:
    state_dict = seeded_state_dict()
    payload: object = {
        "torchvision": state_dict,
        "original": to_original_names(state_dict),
        "wrapped": {"state_dict": state_dict},
    }[naming]
    path = tmp_path / f"{naming}.pth"
    torch.save(payload, path)
    model, info = load_raft_small(str(path))
    assert info.pretrained and info.identity.startswith("file-")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


def test_original_names_cover_every_parameter() -> None:
    state_dict = seeded_state_dict()
    assert convert_state_dict(to_original_names(state_dict)).keys() == state_dict.keys()


def test_weights_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "raft_small.pth"
    torch.save(seeded_state_dict(3), path)
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(path))
    model, info = load_raft_small("DEFAULT")
    assert info.description == f"file {path}"
    assert torch.equal(model.state_dict()["feature_encoder.conv.weight"], seeded_state_dict(3)["feature_encoder.conv.weight"])
    pre = OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", num_flow_updates=2)
    pre(make_frames(2, 64, 64))
    assert pre.weights_info is not None and pre.weights_info.identity == info.identity


def test_missing_weights_file_says_where_to_put_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=r"nope.pth \(from \$SCOPE_OPTICAL_FLOW_WEIGHTS\)"):
        load_raft_small()
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*other.pth \(from weights\)"):
        load_raft_small(str(tmp_path / "other.pth"))


def test_wrong_model_weights_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "large.pth"
    torch.save({"fnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match=r"does not hold RAFT Small weights: \d+ missing keys"):
        load_raft_small(str(path))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"could not read RAFT weights"):
        load_raft_small(str(garbage))


def test_unknown_enum_name_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"weights='C_T_V9' is neither a Raft_Small_Weights name \(C_T_V1, C_T_V2"):
        load_raft_small("C_T_V9")


def test_download_failure_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"could not get RAFT Small weights .*checkpoints.raft_small_C_T_V2-01064c6d\.pth"):
        load_raft_small("DEFAULT")
    assert Raft_Small_Weights.DEFAULT is Raft_Small_Weights.C_T_V2


@pytest.mark.pretrained
def test_known_motion_gives_the_right_direction_and_size(pretrained_weights: Path) -> None:
    """A textured image shifted by (+6, -3) pixels: the flow's median is about (+6, -3)."""
    generator = torch.Generator().manual_seed(0)
    texture = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 200, 200, generator=generator), 5, 1, 2)[0]
    first = texture[:, 20:148, 20:148]
    second = texture[:, 23:151, 14:142]  # content moves right by 6 and up by 3
    frames = torch.stack([first, second]).permute(0, 2, 3, 1)
    pre = OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", weights=str(pretrained_weights))
    flow = pre.compute_flow(frames)[0, 1, :, 16:-16, 16:-16]
    u, v = flow[0].median().item(), flow[1].median().item()
    assert u == pytest.approx(6.0, abs=0.5) and v == pytest.approx(-3.0, abs=0.5)


@pytest.mark.parametrize("context_gates_once", [True, False])
def test_fast_update_block_has_the_same_arithmetic(context_gates_once: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tensor-core regrouping (padded channels, fused gates, the context's gate terms computed once per call)
    changes no result beyond rounding."""
    from scope_optical_flow_tensorrt.core.model import fast_update

    monkeypatch.setattr(fast_update, "CONTEXT_GATES_ONCE", context_gates_once)
    model = raft_small(weights=None).eval()
    model.load_state_dict(seeded_state_dict())
    frames = make_frames(3, 128, 136, seed=2).permute(0, 3, 1, 2)
    with torch.inference_mode():
        standard = RaftSequenceFlow(model, num_flow_updates=4)(frames)
        fast_model = RaftSequenceFlow(model, num_flow_updates=4, fast_update_block=True)
        fast = fast_model(frames)
    assert fast_model.update_block.context_gates_once is context_gates_once
    assert (fast - standard).abs().max() < 1e-4 * max(1.0, standard.abs().max().item())
    assert standard.abs().max() > 0.1
