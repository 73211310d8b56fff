"""RAFT Large beside RAFT Small: the model choice through the API, weights of both models (torchvision and
princeton-vl names, enums, the environment variable, wrong-model and unknown-model errors), the sequence model
and its fast update block against torchvision's ``raft_large``, and ONNX/onnxruntime parity.

CPU, 128x128, seeded random weights, few frames and updates (RAFT Large costs several times RAFT Small).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import COMPUTE_SIZE, make_frames
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.artifacts.engine_manager import EngineSpec, ensure_engine, export_onnx_cached
from scope_optical_flow_tensorrt.core.artifacts.trt_build import BuildTarget
from scope_optical_flow_tensorrt.core.model.compute_size import default_max_pairs
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow
from scope_optical_flow_tensorrt.core.model.specs import MODEL_NAMES, model_spec
from scope_optical_flow_tensorrt.core.model.weights import (
    checkpoint_model,
    convert_state_dict,
    default_weights_file,
    load_raft,
)
from torchvision.models import WeightsEnum
from torchvision.models.optical_flow import RAFT, Raft_Large_Weights, raft_large, raft_small

UPDATES = 2


def seeded_state_dict(builder, seed: int = 7) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(weights=None).state_dict()


def prefix(encoder: str) -> str:
    return "fnet" if encoder == "feature" else "cnet"


def large_to_original_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision raft_large names -> princeton-vl/RAFT names (``raft-things.pth``), written independently of
    the package's mapping. Like the original files, each downsampling norm appears twice (``norm3`` and
    ``downsample.1``), and BatchNorm counters are left out."""
    inverse = [
        (r"^(feature|context)_encoder\.convnormrelu\.0\.", lambda m: f"{prefix(m[1])}.conv1."),
        (r"^(feature|context)_encoder\.convnormrelu\.1\.", lambda m: f"{prefix(m[1])}.norm1."),
        (r"^(feature|context)_encoder\.conv\.", lambda m: f"{prefix(m[1])}.conv2."),
        (r"^(feature|context)_encoder\.(layer\d\.\d)\.convnormrelu(\d)\.0\.",
         lambda m: f"{prefix(m[1])}.{m[2]}.conv{m[3]}."),
        (r"^(feature|context)_encoder\.(layer\d\.\d)\.convnormrelu(\d)\.1\.",
         lambda m: f"{prefix(m[1])}.{m[2]}.norm{m[3]}."),
        (r"^(feature|context)_encoder\.(layer\d\.\d)\.downsample\.(\d)\.",
         lambda m: f"{prefix(m[1])}.{m[2]}.downsample.{m[3]}."),
        (r"^update_block\.motion_encoder\.convcorr(\d)\.0\.", lambda m: f"update_block.encoder.convc{m[1]}."),
        (r"^update_block\.motion_encoder\.convflow(\d)\.0\.", lambda m: f"update_block.encoder.convf{m[1]}."),
        (r"^update_block\.motion_encoder\.conv\.0\.", lambda m: "update_block.encoder.conv."),
        (r"^update_block\.recurrent_block\.convgru(\d)\.conv([zrq])\.",
         lambda m: f"update_block.gru.conv{m[2]}{m[1]}."),
        (r"^update_block\.flow_head\.", lambda m: "update_block.flow_head."),
        (r"^mask_predictor\.convrelu\.0\.", lambda m: "update_block.mask.0."),
        (r"^mask_predictor\.conv\.", lambda m: "update_block.mask.2."),
    ]
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in inverse:
            if re.match(pattern, key):
                new_key = re.sub(pattern, replacement, key)
                break
        else:
            raise AssertionError(f"no original name for {key}")
        renamed["module." + new_key] = value
        duplicate = re.sub(r"\.downsample\.1\.", ".norm3.", new_key)
        if duplicate != new_key:
            renamed["module." + duplicate] = value
    return renamed


def small_to_original_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision raft_small names -> princeton-vl names (``raft-small.pth``; no norm parameters)."""
    from test_model_and_weights import to_original_names

    return to_original_names(state_dict)


def assert_same_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state_dict[key]), key


# -- the model: parity with torchvision --------------------------------------------------------------------


def test_sequence_model_matches_torchvision_raft_large() -> None:
    model = raft_large(weights=None).eval()
    model.load_state_dict(seeded_state_dict(raft_large))
    frames = make_frames(3, COMPUTE_SIZE, COMPUTE_SIZE).permute(0, 3, 1, 2)
    with torch.inference_mode():
        reference = model(frames[:-1] * 2 - 1, frames[1:] * 2 - 1, num_flow_updates=3)[-1]
        ours = RaftSequenceFlow(model, num_flow_updates=3)(frames)
        fast = RaftSequenceFlow(model, num_flow_updates=3, fast_update_block=True)(frames)
    assert ours.shape == (2, 2, COMPUTE_SIZE, COMPUTE_SIZE)
    scale = max(1.0, reference.abs().max().item())
    assert reference.abs().max() > 0.1
    assert (ours - reference).abs().max() < 1e-3 * scale  # convex upsampling included
    assert (fast - ours).abs().max() < 1e-4 * scale  # padded channels, fused gates, two GRUs


def test_fast_update_block_layout_per_model() -> None:
    from scope_optical_flow_tensorrt.core.model.fast_update import FastUpdateBlock

    small = FastUpdateBlock(raft_small(weights=None).update_block)
    large = FastUpdateBlock(raft_large(weights=None).update_block)
    assert (small.corr_channels, small.gru_flow_channels, len(small.convzr), small.convcorr2) == (200, 8, 1, None)
    assert (large.corr_channels, large.gru_flow_channels, len(large.convzr)) == (328, 2, 2)
    # per update the GRUs read hidden + motion + flow; the context's share runs once per call
    assert (small.convzr[0].in_channels, small.convq[0].in_channels, small.convzr[0].out_channels) == (184, 184, 192)
    assert (small.context_convs[0].in_channels, small.context_convs[0].out_channels) == (64, 288)
    assert large.convzr[0].in_channels == 256 and large.convzr[0].kernel_size == (1, 5)
    assert large.convzr[1].kernel_size == (5, 1)
    assert [conv.kernel_size for conv in large.context_convs] == [(1, 5), (5, 1)]
    assert (large.context_convs[0].in_channels, large.context_convs[0].out_channels) == (128, 384)
    full = FastUpdateBlock(raft_small(weights=None).update_block, context_gates_once=False)
    assert full.convzr[0].in_channels == 248 and len(full.context_convs) == 0


@pytest.mark.parametrize("build", [raft_small, raft_large])
def test_context_gates_once_match_the_full_gru_convolutions(build: Callable[..., RAFT]) -> None:
    """Per update, conv([hidden, context, motion]) == conv([hidden, motion]) + the context terms of encode."""
    from scope_optical_flow_tensorrt.core.model.fast_update import FastUpdateBlock

    torch.manual_seed(0)
    block = build(weights=None).update_block.eval()
    once, full = FastUpdateBlock(block, context_gates_once=True), FastUpdateBlock(block, context_gates_once=False)
    pairs, h, w = 2, 12, 20
    hidden = torch.tanh(torch.randn(pairs, once.hidden_size, h, w))
    context = torch.relu(torch.randn(pairs, once.context_channels, h, w))
    corr = F.pad(torch.randn(pairs, block.motion_encoder.convcorr1[0].in_channels, h, w),
                 (0, 0, 0, 0, 0, once.corr_channels - block.motion_encoder.convcorr1[0].in_channels))
    flow = F.pad(torch.randn(pairs, 2, h, w) * 3, (0, 0, 0, 0, 0, once.flow_channels - 2))
    with torch.inference_mode():
        terms = once.context_gates(context)
        hidden_once, delta_once = once(hidden, terms, corr, flow)
        hidden_full, delta_full = full(hidden, full.context_gates(context), corr, flow)
    assert terms.shape == (pairs, 3 * once.hidden_size * len(once.convzr), h, w)
    assert torch.equal(full.context_gates(context), context)
    assert (hidden_once - hidden_full).abs().max() < 1e-5
    assert (delta_once - delta_full).abs().max() < 1e-4 * max(1.0, delta_full.abs().max().item())
    assert delta_full.abs().max() > 1e-3  # the comparison saw a real update


def test_model_specs_match_torchvision() -> None:
    assert MODEL_NAMES == ("raft_small", "raft_large")
    for name, radius in (("raft_small", 3), ("raft_large", 4)):
        built = model_spec(name).build()
        assert built.corr_block.radius == radius and built.corr_block.num_levels == 4
    assert model_spec("raft_large").weights_enum.DEFAULT is Raft_Large_Weights.C_T_SKHT_V2


# -- the API --------------------------------------------------------------------------------------------------


def test_preprocessor_runs_raft_large() -> None:
    frames = make_frames(3, 96, 112)
    large = OpticalFlowTensorRTPreprocessor(COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", model="raft_large",
                                            weights=None, num_flow_updates=UPDATES)
    maps = large(frames)
    assert maps.shape == (1, 3, 3, 96, 112) and -1.0 <= maps.min() and maps.max() <= 1.0
    assert large.weights_info is not None and large.weights_info.model == "raft_large"
    assert "RAFT Large" in large.weights_info.description
    flow = large.compute_flow(make_frames(2, 96, 112, seed=1))
    small = OpticalFlowTensorRTPreprocessor(COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", weights=None,
                                            num_flow_updates=UPDATES)
    assert small.model == "raft_small"  # the default
    assert not torch.allclose(flow, small.compute_flow(make_frames(2, 96, 112, seed=1)))


def test_default_max_pairs_accounts_for_the_model() -> None:
    assert default_max_pairs(512, 512) == default_max_pairs(512, 512, "raft_small") == 24
    assert default_max_pairs(512, 512, "raft_large") == 18
    assert default_max_pairs(COMPUTE_SIZE, COMPUTE_SIZE, "raft_large") == 32
    assert OpticalFlowTensorRTPreprocessor(512, 512, device="cpu", model="raft_large").max_batch_pairs == 18


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"model='raft_huge' is not supported; use one of raft_small, raft_large"):
        OpticalFlowTensorRTPreprocessor(COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", model="raft_huge")
    with pytest.raises(ValueError, match=r"use one of raft_small, raft_large"):
        load_raft("small")


# -- weights ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("naming", ["torchvision", "princeton-vl"])
def test_weights_files_in_both_namings_for_both_models(tmp_path: Path, model: str, naming: str) -> None:
    builder = raft_small if model == "raft_small" else raft_large
    state_dict = seeded_state_dict(builder)
    if naming == "princeton-vl":
        payload = (small_to_original_names if model == "raft_small" else large_to_original_names)(state_dict)
    else:
        payload = state_dict
    path = tmp_path / f"{model}-{naming}.pth"
    torch.save(payload, path)
    loaded, info = load_raft(model, str(path))
    assert info.pretrained and info.model == model and info.identity.startswith("file-")
    assert_same_weights(loaded, state_dict)
    assert checkpoint_model(payload) is model_spec(model)


def test_princeton_vl_names_cover_every_raft_large_parameter() -> None:
    state_dict = seeded_state_dict(raft_large)
    converted = convert_state_dict(large_to_original_names(state_dict), "raft_large")
    expected = {key for key in state_dict if not key.endswith("num_batches_tracked")}
    assert converted.keys() == expected


@pytest.mark.parametrize("naming", ["torchvision", "princeton-vl"])
def test_checkpoint_of_the_other_model_is_one_clear_line(tmp_path: Path, naming: str) -> None:
    large, small = seeded_state_dict(raft_large), seeded_state_dict(raft_small)
    if naming == "princeton-vl":
        large, small = large_to_original_names(large), small_to_original_names(small)
    torch.save(large, tmp_path / "raft-things.pth")
    torch.save(small, tmp_path / "raft-small.pth")
    with pytest.raises(ValueError) as error:
        load_raft("raft_small", str(tmp_path / "raft-things.pth"))
    message = str(error.value)
    assert "\n" not in message and "missing keys" not in message
    assert re.search(r"raft-things\.pth holds RAFT Large weights, but the model is RAFT Small: pass "
                     r"model='raft_large'", message)
    with pytest.raises(ValueError, match=r"holds RAFT Small weights, but the model is RAFT Large: pass model='raft_sm"):
        load_raft("raft_large", str(tmp_path / "raft-small.pth"))


def test_enum_names_are_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[str] = []

    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> None:
        requested.append(self.url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"could not get RAFT Large weights .*raft_large_C_T_SKHT_V2-ff5fadd5\.pth"):
        load_raft("raft_large", "DEFAULT")
    with pytest.raises(RuntimeError, match=r"Raft_Large_Weights\.C_T_V1"):
        load_raft("raft_large", "C_T_V1")
    with pytest.raises(RuntimeError, match=r"raft_large_C_T_SKHT_K_V2"):
        load_raft("raft_large", "Raft_Large_Weights.C_T_SKHT_K_V2")
    assert len(requested) == 3
    with pytest.raises(ValueError, match=r"'C_T_SKHT_V2' is neither a Raft_Small_Weights name \(C_T_V1, C_T_V2"):
        load_raft("raft_small", "C_T_SKHT_V2")
    with pytest.raises(ValueError, match=r"are not RAFT Small weights"):
        load_raft("raft_small", Raft_Large_Weights.C_T_V2)


def test_environment_variable_lists_files_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_path, large_path = tmp_path / "raft_small.pth", tmp_path / "raft-things.pth"
    torch.save(seeded_state_dict(raft_small, 3), small_path)
    torch.save(large_to_original_names(seeded_state_dict(raft_large, 3)), large_path)
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", f"{small_path}:{large_path}")
    assert default_weights_file("raft_small") == small_path
    assert default_weights_file("raft_large") == large_path
    model, info = load_raft("raft_large", "DEFAULT")
    assert info.description == f"file {large_path}"
    assert_same_weights(model, seeded_state_dict(raft_large, 3))
    # Only a RAFT Small file listed: RAFT Large uses torchvision's DEFAULT weights (here: a failed download).
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", str(small_path))
    assert default_weights_file("raft_large") is None
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(RuntimeError, match=r"raft_large_C_T_SKHT_V2"):
        load_raft("raft_large", "DEFAULT")
    # A listed file that is missing stays an error for every model (a typo never falls back silently).
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_WEIGHTS", f"{tmp_path / 'typo.pth'}:{large_path}")
    with pytest.raises(FileNotFoundError, match=r"typo\.pth \(from \$SCOPE_OPTICAL_FLOW_WEIGHTS\)"):
        load_raft("raft_large", "DEFAULT")


# -- ONNX and the engine cache ----------------------------------------------------------------------------------


def test_onnxruntime_matches_torch_for_raft_large(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    frames = make_frames(3, 96, 112)
    flows = {}
    for backend in ("torch", "onnxruntime"):
        pre = OpticalFlowTensorRTPreprocessor(COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", model="raft_large",
                                              weights=None, num_flow_updates=UPDATES, backend=backend,
                                              models_dir=tmp_path)
        flows[backend] = pre.compute_flow(frames)
    [onnx_file] = tmp_path.glob("*.onnx")
    assert onnx_file.name.startswith(f"raft_large_{COMPUTE_SIZE}x{COMPUTE_SIZE}-")
    import onnx
    from test_onnx_export import TENSORRT10_SUPPORTED_OPS  # convex upsampling added no operator TensorRT lacks

    used = {node.op_type for node in onnx.load(str(onnx_file)).graph.node}
    assert used <= TENSORRT10_SUPPORTED_OPS, sorted(used - TENSORRT10_SUPPORTED_OPS)
    assert flows["torch"].abs().max() > 0.1
    torch.testing.assert_close(flows["onnxruntime"], flows["torch"], atol=1e-4, rtol=0)


def test_engine_cache_names_and_keys_carry_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scope_optical_flow_tensorrt.core.artifacts import engine_manager

    monkeypatch.setattr(engine_manager, "resolve_exporter", lambda exporter="auto": "torchscript")
    target = BuildTarget(gpu_name="NVIDIA H100", compute_capability="9.0", tensorrt_version="10.3.0",
                         workspace_bytes=1 << 30)
    built: list[str] = []

    def builder(onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
        built.append(onnx.name)
        destination.write_bytes(b"engine " * 64)

    paths = {}
    for model in MODEL_NAMES:
        spec = EngineSpec(COMPUTE_SIZE, COMPUTE_SIZE, num_flow_updates=1, max_pairs=2, model=model)
        paths[model], _ = ensure_engine(tmp_path, spec, None, target, builder)
    assert paths["raft_small"].name.startswith(f"raft_small_{COMPUTE_SIZE}x{COMPUTE_SIZE}_NVIDIA_H100-")
    assert paths["raft_large"].name.startswith(f"raft_large_{COMPUTE_SIZE}x{COMPUTE_SIZE}_NVIDIA_H100-")
    assert [name.split("_1")[0] for name in built] == ["raft_small", "raft_large"]
    rows = engine_manager.list_cached_engines(tmp_path)
    assert sorted((row["kind"], row["model"]) for row in rows) == [
        ("onnx", "raft_large"), ("onnx", "raft_small"), ("tensorrt", "raft_large"), ("tensorrt", "raft_small")]
    assert engine_manager.clear_cache(tmp_path) == 8  # four files and their sidecars
    with pytest.raises(ValueError, match="use one of raft_small, raft_large"):
        export_onnx_cached(COMPUTE_SIZE, COMPUTE_SIZE, weights=None, models_dir=tmp_path, model="large")
