"""ComfyUI nodes: loaded the way ComfyUI loads a custom-node folder, run on small CPU tensors.

ComfyUI imports ``custom_nodes/<folder>/__init__.py`` by path as a package under a made-up module name, so
these tests do the same (not ``import scope_optical_flow_tensorrt``). Untrained weights, compute 128x128.
"""

from __future__ import annotations

import importlib
import logging

import importlib.util
import inspect
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import COMPUTE_SIZE, REPO_ROOT, make_frames

PACK_NAME = "custom_nodes_optical_flow_pack_under_test"
FAST = {
    "compute_width": COMPUTE_SIZE, "compute_height": COMPUTE_SIZE, "flow_updates": 2, "precision": "fp32",
    "weights": "untrained (random)",
}


def load_pack(name: str = PACK_NAME) -> types.ModuleType:
    """Import the repository root as ComfyUI does (spec from the folder's __init__.py, run as a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack() -> types.ModuleType:
    return load_pack()


@pytest.fixture
def work(pack: types.ModuleType, request: pytest.FixtureRequest, monkeypatch) -> types.ModuleType:
    """The nodes' work module, with an empty model cache before and after each test.

    Tests not marked ``gpu`` run the nodes on the CPU even where CUDA exists (exact parity checks); the
    fake-ComfyUI test keeps the real device lookup, which then asks the fake ComfyUI.
    """
    module = importlib.import_module(f"{pack.__name__}.nodes.flow")
    if "gpu" not in request.keywords and "fake_comfy" not in request.fixturenames:
        monkeypatch.setattr(module.host, "compute_device", lambda: torch.device("cpu"))
    module.clear_cache()
    yield module
    module.clear_cache()


def defaults(node_class: type) -> dict[str, Any]:
    """Widget inputs at their schema defaults (what a freshly added node sends), plus the fast test settings."""
    values: dict[str, Any] = {}
    for name, spec in node_class.INPUT_TYPES()["required"].items():
        options = spec[1] if len(spec) > 1 else {}
        if "default" in options:
            values[name] = options["default"]
    values.update({key: value for key, value in FAST.items() if key in values})
    return values


def run(node_class: type, **inputs: Any) -> tuple:
    """Call a node like ComfyUI's executor: a fresh instance, then its FUNCTION with keyword inputs."""
    return getattr(node_class(), node_class.FUNCTION)(**{**defaults(node_class), **inputs})


def flow_node(pack: types.ModuleType) -> type:
    return pack.NODE_CLASS_MAPPINGS["OpticalFlowRAFT"]


# -- loading and schema ----------------------------------------------------------------------------------


def test_root_import_is_light_and_exports_mappings() -> None:
    # A fresh interpreter: importing the folder must not pull in torch or ComfyUI; reading the mappings
    # loads the nodes (torch) but still never imports ComfyUI's modules.
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    "some_custom_node_folder", {str(REPO_ROOT / '__init__.py')!r}, submodule_search_locations=[{str(REPO_ROOT)!r}]
)
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
assert "torch" not in sys.modules, "importing the root package imported torch"
mappings = pack.NODE_CLASS_MAPPINGS
assert set(mappings) == set(pack.NODE_DISPLAY_NAME_MAPPINGS), "display names must match node ids"
assert "torch" in sys.modules
leaked = sorted(name for name in sys.modules if name == "comfy" or name.startswith(("comfy.", "folder_paths")))
assert not leaked, leaked
print(",".join(sorted(mappings)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split(",") == ["OpticalFlowMagnitudeMask", "OpticalFlowRAFT", "OpticalFlowToImage",
                                                "OpticalFlowVACE"]


def test_mappings_and_declarations(pack: types.ModuleType) -> None:
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == {
        "OpticalFlowRAFT": "Optical Flow (RAFT)",
        "OpticalFlowVACE": "Optical Flow (VACE annotator)",
        "OpticalFlowToImage": "Flow to Image",
        "OpticalFlowMagnitudeMask": "Flow Magnitude Mask",
    }
    for node_id, node_class in pack.NODE_CLASS_MAPPINGS.items():
        assert isinstance(node_class.RETURN_TYPES, tuple) and node_class.RETURN_TYPES, node_id
        assert len(node_class.RETURN_NAMES) == len(node_class.RETURN_TYPES) == len(node_class.OUTPUT_TOOLTIPS)
        assert callable(getattr(node_class, node_class.FUNCTION)), node_id
        assert node_class.CATEGORY == "optical flow"
        assert len(node_class.DESCRIPTION) > 40
    assert flow_node(pack).RETURN_TYPES == pack.NODE_CLASS_MAPPINGS["OpticalFlowVACE"].RETURN_TYPES == ("IMAGE", "FLOW")
    assert pack.NODE_CLASS_MAPPINGS["OpticalFlowToImage"].RETURN_TYPES == ("IMAGE",)
    assert pack.NODE_CLASS_MAPPINGS["OpticalFlowMagnitudeMask"].RETURN_TYPES == ("MASK",)


def test_input_types_schema(pack: types.ModuleType) -> None:
    from_core = importlib.import_module(f"{pack.__name__}.core.backends").BACKENDS
    normalizations = importlib.import_module(f"{pack.__name__}.core.visualize").NORMALIZATIONS
    for node_id, node_class in pack.NODE_CLASS_MAPPINGS.items():
        schema = node_class.INPUT_TYPES()
        assert set(schema) <= {"required", "optional", "hidden"}, node_id
        inputs = {**schema["required"], **schema.get("optional", {})}
        # The function takes exactly the declared inputs (optional ones with a default).
        parameters = inspect.signature(getattr(node_class, node_class.FUNCTION)).parameters
        assert set(parameters) - {"self"} == set(inputs), node_id
        for name, (_, options) in schema.get("optional", {}).items():  # absent: a widget's default, else None
            assert parameters[name].default == options.get("default"), (node_id, name)
        for name, spec in inputs.items():
            kind, options = spec[0], spec[1]
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind and options["default"] in kind, (node_id, name)
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], (node_id, name)
                assert isinstance(options["default"], int if kind == "INT" else float), (node_id, name)
            else:
                assert kind in ("IMAGE", "FLOW"), (node_id, name)
    required = flow_node(pack).INPUT_TYPES()["required"]
    assert required["backend"][0] == list(from_core)  # new core backends appear in the dropdown by themselves
    assert required["normalization"][0] == list(normalizations)
    assert required["weights"][0][:2] == ["DEFAULT", "untrained (random)"]
    assert required["compute_width"][1]["step"] == 8 and required["compute_width"][1]["min"] == 0  # 0: native
    assert required["first_frame"][0] == ["zero", "repeat", "drop"]  # the core's spelling, and the node's drop
    assert list(flow_node(pack).INPUT_TYPES()["optional"]) == ["previous_frames"]
    # The VACE annotator's node carries only the inputs that leave its maps VACE's.
    vace = pack.NODE_CLASS_MAPPINGS["OpticalFlowVACE"].INPUT_TYPES()
    assert list(vace["required"]) == ["images", "precision", "backend", "weights"]
    assert list(vace["optional"]) == ["previous_frames"]


# -- execution ---------------------------------------------------------------------------------------------


def test_optical_flow_outputs_shapes_and_ranges(pack: types.ModuleType, work: types.ModuleType) -> None:
    frames = make_frames(5, 96, 112)
    image, flow = run(flow_node(pack), images=frames)
    assert image.shape == (5, 96, 112, 3) and image.dtype == torch.float32 and image.device.type == "cpu"
    assert flow.shape == (5, 2, 96, 112) and flow.dtype == torch.float32 and flow.device.type == "cpu"
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.all(flow[0] == 0) and torch.all(image[0] == 1.0)  # no reference: zero flow, white
    assert flow[1:].abs().amax(dim=(1, 2, 3)).min() > 0
    assert image[1:].min() < 0.9  # real frames have coloured motion


def test_flow_output_is_core_flow_at_input_size(pack: types.ModuleType, work: types.ModuleType) -> None:
    frames = make_frames(4, 96, 112)
    _, flow = run(flow_node(pack), images=frames)
    core = pack.OpticalFlowTensorRTPreprocessor(
        COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", fp16=False, num_flow_updates=2, weights=None
    )
    raw = core.compute_flow(frames, layout="FHWC")[0]  # [F, 2, 128, 128] in compute pixels
    resize_flow = importlib.import_module(f"{pack.__name__}.core.resize").resize_flow
    expected = resize_flow(raw, 96, 112)
    torch.testing.assert_close(flow, expected, rtol=1e-4, atol=1e-4)
    # Vectors are in input pixels: x scaled by 112/128, y by 96/128 relative to the compute-size flow.
    assert torch.allclose(flow[1:, 0].mean(), raw[1:, 0].mean() * 112 / 128, rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("normalization", ["per_frame", "fixed", "running"])
def test_flow_to_image_reproduces_the_node_image(
    pack: types.ModuleType, work: types.ModuleType, normalization: str
) -> None:
    settings = {"normalization": normalization, "flow_strength": 1.5, "max_flow": 3.0}
    image, flow = run(flow_node(pack), images=make_frames(5, 96, 112), **settings)
    (again,) = run(pack.NODE_CLASS_MAPPINGS["OpticalFlowToImage"], flow=flow, **settings)
    torch.testing.assert_close(again, image)
    (paler,) = run(pack.NODE_CLASS_MAPPINGS["OpticalFlowToImage"], flow=flow, **{**settings, "flow_strength": 0.5})
    assert paler[1:].mean() > image[1:].mean()  # weaker strength: closer to white


def test_windows_equal_one_call(pack: types.ModuleType, work: types.ModuleType, monkeypatch) -> None:
    frames = make_frames(6, 96, 112)
    image, flow = run(flow_node(pack), images=frames, normalization="running")
    preprocessor = next(iter(work._cache.values()))
    monkeypatch.setattr(preprocessor, "max_batch_pairs", 2)  # flow in windows of 2 frames
    monkeypatch.setattr(work, "VISUAL_WINDOW_PIXELS", 96 * 112)  # visualize one frame per window
    windowed_image, windowed_flow = run(flow_node(pack), images=frames, normalization="running")
    torch.testing.assert_close(windowed_flow, flow, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(windowed_image, image, rtol=1e-4, atol=1e-4)


def test_first_frame_modes(pack: types.ModuleType, work: types.ModuleType) -> None:
    frames = make_frames(4, 96, 112)
    _, zero = run(flow_node(pack), images=frames, first_frame="zero")
    image, copied = run(flow_node(pack), images=frames, first_frame="repeat")
    dropped_image, dropped = run(flow_node(pack), images=frames, first_frame="drop")
    torch.testing.assert_close(copied[0], zero[1])
    torch.testing.assert_close(copied[1:], zero[1:])
    assert image[0].min() < 1.0  # the first map is no longer blank
    # Workflows saved with the earlier spelling still run, with the same meaning, and pass ComfyUI's check.
    legacy_image, legacy = run(flow_node(pack), images=frames, first_frame="copy_next")
    torch.testing.assert_close(legacy, copied)
    torch.testing.assert_close(legacy_image, image)
    assert flow_node(pack).VALIDATE_INPUTS(first_frame="copy_next") is True
    assert "first_frame = copy is not supported; use one of zero, repeat, drop" in flow_node(pack).VALIDATE_INPUTS(
        first_frame="copy")
    assert dropped.shape[0] == dropped_image.shape[0] == 3
    torch.testing.assert_close(dropped, zero[1:])


def test_previous_frames_continue_the_clip(pack: types.ModuleType, work: types.ModuleType) -> None:
    frames = make_frames(6, 96, 112)
    _, whole = run(flow_node(pack), images=frames)
    _, second_half = run(flow_node(pack), images=frames[3:], previous_frames=frames[:3])
    torch.testing.assert_close(second_half, whole[3:], rtol=1e-4, atol=1e-4)
    _, single = run(flow_node(pack), images=frames[5:], previous_frames=frames[:5])  # one frame is fine now
    torch.testing.assert_close(single, whole[5:], rtol=1e-4, atol=1e-4)


def test_magnitude_mask(pack: types.ModuleType, work: types.ModuleType) -> None:
    _, flow = run(flow_node(pack), images=make_frames(4, 96, 112))
    node = pack.NODE_CLASS_MAPPINGS["OpticalFlowMagnitudeMask"]
    (soft,) = run(node, flow=flow)
    assert soft.shape == (4, 96, 112) and 0.0 <= soft.min() and soft.max() <= 1.0
    torch.testing.assert_close(soft[1:].amax(dim=(1, 2)), torch.ones(3))  # per_frame: fastest pixel is 1
    assert torch.all(soft[0] == 0)
    (fixed,) = run(node, flow=flow, normalization="fixed", max_flow=4.0)
    torch.testing.assert_close(fixed, (flow.norm(dim=1) / 4.0).clamp(0, 1))
    (binary,) = run(node, flow=flow, normalization="fixed", max_flow=4.0, threshold=0.25)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(binary, (flow.norm(dim=1) >= 1.0).float(), atol=0, rtol=0)


def test_onnxruntime_backend_matches_torch(
    pack: types.ModuleType, work: types.ModuleType, _isolated_models_dir: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    if "onnxruntime" not in flow_node(pack).INPUT_TYPES()["required"]["backend"][0]:
        pytest.skip("this core has no onnxruntime backend")
    frames = make_frames(3, 96, 112)
    _, reference = run(flow_node(pack), images=frames, backend="torch")
    _, flow = run(flow_node(pack), images=frames, backend="onnxruntime")
    assert next(iter(work._cache.values())).backend_name == "onnxruntime"
    assert list(_isolated_models_dir.rglob("*.onnx")), "the ONNX graph is cached in the models folder"
    torch.testing.assert_close(flow, reference, rtol=1e-3, atol=1e-3)


# -- caching -----------------------------------------------------------------------------------------------


def test_model_is_cached_until_a_model_setting_changes(pack: types.ModuleType, work: types.ModuleType) -> None:
    frames = make_frames(4, 96, 112)
    image, flow = run(flow_node(pack), images=frames, normalization="running")
    (first,) = work._cache.values()
    # Display settings do not rebuild the model; each execution is a new clip (state reset), so the same
    # clip gives the same result again.
    again_image, again_flow = run(flow_node(pack), images=frames, normalization="running")
    run(flow_node(pack), images=frames, flow_strength=2.0, normalization="fixed", first_frame="drop")
    assert list(work._cache.values()) == [first]
    torch.testing.assert_close(again_flow, flow)
    torch.testing.assert_close(again_image, image)
    # A model setting does: one model is kept, the new one.
    run(flow_node(pack), images=frames, flow_updates=3)
    (second,) = work._cache.values()
    assert second is not first and second.num_flow_updates == 3
    run(flow_node(pack), images=frames, compute_width=136)
    (third,) = work._cache.values()
    assert third is not second and third.width == 136


def test_weights_from_the_models_folder(pack: types.ModuleType, work: types.ModuleType, _isolated_models_dir) -> None:
    from torchvision.models.optical_flow import raft_small

    folder = _isolated_models_dir / "optical-flow-tensorrt"  # the core's models folder outside ComfyUI
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same init as the core's seeded "untrained" model
        torch.save(raft_small(weights=None).state_dict(), folder / "raft_small_seed0.pth")
    choices = flow_node(pack).INPUT_TYPES()["required"]["weights"][0]
    assert "raft_small_seed0.pth" in choices
    frames = make_frames(3, 96, 112)
    _, from_file = run(flow_node(pack), images=frames, weights="raft_small_seed0.pth")
    _, untrained = run(flow_node(pack), images=frames)
    torch.testing.assert_close(from_file, untrained)
    with pytest.raises(ValueError, match=r"'gone\.pth' was not found in the optical-flow models folder"):
        run(flow_node(pack), images=frames, weights="gone.pth")


# -- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.rand(4, 96, 112, 2), ValueError, r"3 colour channels .* got 2"),
        (torch.rand(4, 96, 112), ValueError, r"looks like a MASK"),
        (torch.rand(1, 96, 112, 3), ValueError, r"at least 2 frames .* got 1"),
        (torch.rand(0, 96, 112, 3), ValueError, r"no frames"),
        ([[0.5]], TypeError, r"must be a ComfyUI IMAGE"),
        (torch.rand(3, 96, 112, 3) * 255, ValueError, r"\[0, 1\].*divide by 255"),
    ],
)
def test_bad_images_are_explained(
    pack: types.ModuleType, work: types.ModuleType, images: Any, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        run(flow_node(pack), images=images)
    if "255" not in message:  # shape errors come before any model is loaded (the range check needs the values)
        assert not work._cache


def test_bad_settings_and_mismatched_inputs(pack: types.ModuleType, work: types.ModuleType) -> None:
    frames = make_frames(3, 96, 112)
    good_image, good_flow = run(flow_node(pack), images=frames)
    with pytest.raises(ValueError, match=r"previous_frames are 100x80 but images are 112x96 .* same video size"):
        run(flow_node(pack), images=frames, previous_frames=torch.rand(2, 80, 100, 3))
    with pytest.raises(ValueError, match=r"compute_width = 140 must be a multiple of 8 .* try 144"):
        run(flow_node(pack), images=frames, compute_width=140)
    with pytest.raises(ValueError, match=r"first_frame = first is not supported"):
        run(flow_node(pack), images=frames, first_frame="first")
    with pytest.raises(ValueError, match=r"flow_strength must be a number in \[0.0, 2.0\]"):
        run(flow_node(pack), images=frames, flow_strength=3.0)
    with pytest.raises(ValueError, match=r"normalization = auto is not supported"):
        run(flow_node(pack), images=frames, normalization="auto")
    with pytest.raises(ValueError, match=r"backend = cuda is not supported"):
        run(flow_node(pack), images=frames, backend="cuda")
    to_image = pack.NODE_CLASS_MAPPINGS["OpticalFlowToImage"]
    with pytest.raises(ValueError, match=r"FLOW \[N, 2, H, W\].*got \[3, 96, 112, 3\]"):
        run(to_image, flow=good_image)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        run(pack.NODE_CLASS_MAPPINGS["OpticalFlowMagnitudeMask"], flow=good_flow, threshold=2.0)
    # None of that disturbed the cached model or its state.
    image, flow = run(flow_node(pack), images=frames)
    torch.testing.assert_close(flow, good_flow)
    torch.testing.assert_close(image, good_image)


def test_vace_node_native_size_and_the_ready_line_in_node_words(
    pack: types.ModuleType, work: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    frames = make_frames(3, 128, 136)
    caplog.set_level(logging.INFO, logger="scope_optical_flow_tensorrt")
    vace = pack.NODE_CLASS_MAPPINGS["OpticalFlowVACE"]
    image, flow = run(vace, images=frames, precision="fp16", weights="untrained (random)")
    preprocessor = next(iter(work._cache.values()))
    assert (preprocessor.model, preprocessor.num_flow_updates, preprocessor.compute_size) == ("raft_large", 20,
                                                                                              (128, 136))
    assert image.shape == (3, 128, 136, 3) and flow.shape == (3, 2, 128, 136)
    torch.testing.assert_close(image[0], image[1])  # the first map repeated
    ready = [record.getMessage() for record in caplog.records if "optical flow ready" in record.getMessage()]
    # The node has no model or updates inputs: the line states them in plain words, not as inputs.
    assert ready and "model raft_large" in ready[-1] and "flow updates 20" in ready[-1]
    assert "first frame repeat" in ready[-1] and "normalization per_frame" in ready[-1]
    # On the CPU fp16 does not run: the line says what runs, in the node's words.
    assert "precision = fp32 (fp16 applies on CUDA only)" in ready[-1] and "fp16=True" not in ready[-1]
    # Compute size 0 x 0 on the RAFT node is the input's own, and 0 goes with 0 only.
    run(flow_node(pack), images=frames, compute_width=0, compute_height=0, flow_updates=3)
    preprocessor = next(iter(work._cache.values()))
    assert (preprocessor.num_flow_updates, preprocessor.compute_size) == (3, (128, 136))
    with pytest.raises(ValueError, match=r"compute_height = 0 and compute_width = 0 go together.*got "
                                         r"compute_height = 256 and compute_width = 0"):
        run(flow_node(pack), images=frames, compute_width=0, compute_height=256)


def test_node_messages_name_node_inputs(pack: types.ModuleType, work: types.ModuleType,
                                        caplog: pytest.LogCaptureFixture) -> None:
    core_log = importlib.import_module(f"{pack.__name__}.core.common.log")  # the pack's own copy of the core
    core_log._said.discard("random-weights-raft_small")
    work.clear_cache()  # the model loads (and says what weights it has) anew
    run(flow_node(pack), images=make_frames(2, 96, 112))
    notices = [record.getMessage() for record in caplog.records if "UNTRAINED" in record.getMessage()]
    assert notices and "That is weights = untrained (random); use weights = DEFAULT" in notices[-1]
    assert "weights=None" not in notices[-1]


# -- inside ComfyUI (its modules faked) --------------------------------------------------------------------


class _Interrupted(Exception):
    pass


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path: Path) -> types.SimpleNamespace:
    """Stand-ins for the ComfyUI modules the nodes use, recording how they are called."""
    record = types.SimpleNamespace(
        progress=[], checks=0, interrupt_after=None, models=tmp_path / "models", device_asked=0
    )
    management = types.ModuleType("comfy.model_management")

    def get_torch_device() -> torch.device:
        record.device_asked += 1
        return torch.device("cpu")

    management.get_torch_device = get_torch_device
    management.intermediate_device = lambda: torch.device("cpu")

    def check() -> None:
        record.checks += 1
        if record.interrupt_after is not None and record.checks > record.interrupt_after:
            raise _Interrupted()

    management.throw_exception_if_processing_interrupted = check
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total: int) -> None:
            record.progress.append([total, 0])

        def update(self, value: int) -> None:
            record.progress[-1][1] += value

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = management, utils
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(record.models)
    folder_paths.folder_names_and_paths = {}

    def add_model_folder_path(name: str, path: str, is_default: bool = False) -> None:
        folder_paths.folder_names_and_paths.setdefault(name, ([], set()))[0].append(path)

    folder_paths.add_model_folder_path = add_model_folder_path
    folder_paths.get_folder_paths = lambda name: list(folder_paths.folder_names_and_paths[name][0])
    folder_paths.get_filename_list = lambda name: sorted(
        p.name for d in folder_paths.folder_names_and_paths[name][0] for p in Path(d).iterdir()
        if p.suffix in folder_paths.folder_names_and_paths[name][1]
    )
    folder_paths.get_full_path = lambda name, file: next(
        (str(Path(d) / file) for d in folder_paths.folder_names_and_paths[name][0] if (Path(d) / file).is_file()),
        None,
    )
    for name, module in (("comfy", comfy), ("comfy.model_management", management), ("comfy.utils", utils),
                         ("folder_paths", folder_paths)):
        monkeypatch.setitem(sys.modules, name, module)
    record.folder_paths = folder_paths
    return record


def test_uses_comfyui_device_folder_progress_and_interruption(
    pack: types.ModuleType, work: types.ModuleType, fake_comfy: types.SimpleNamespace, monkeypatch
) -> None:
    frames = make_frames(5, 96, 112)
    choices = flow_node(pack).INPUT_TYPES()["required"]["weights"][0]
    registered = fake_comfy.folder_paths.folder_names_and_paths["optical_flow"]
    assert registered[0] == [str(fake_comfy.models / "optical_flow")] and registered[1] == {".pth", ".pt"}
    assert (fake_comfy.models / "optical_flow").is_dir()
    assert choices == ["DEFAULT", "untrained (random)"]
    (fake_comfy.models / "optical_flow" / "mine.pth").write_bytes(b"")
    (fake_comfy.models / "optical_flow" / "notes.txt").write_text("not weights")
    assert flow_node(pack).INPUT_TYPES()["required"]["weights"][0][2:] == ["mine.pth"]

    image, _ = run(flow_node(pack), images=frames)
    preprocessor = next(iter(work._cache.values()))
    assert preprocessor.models_dir == fake_comfy.models / "optical_flow"  # engines go to ComfyUI's models
    assert fake_comfy.device_asked >= 1 and preprocessor.device == torch.device("cpu")
    assert fake_comfy.progress == [[5, 5]]
    checks_one_run = fake_comfy.checks
    assert checks_one_run >= 2  # at least one check for flow windows and one for visualization

    monkeypatch.setattr(preprocessor, "max_batch_pairs", 2)
    fake_comfy.checks, fake_comfy.interrupt_after = 0, 1
    with pytest.raises(_Interrupted):  # Cancel between windows stops the run
        run(flow_node(pack), images=frames)
    fake_comfy.interrupt_after = None
    again, _ = run(flow_node(pack), images=frames)  # and leaves nothing half-done behind
    torch.testing.assert_close(again, image, rtol=1e-4, atol=1e-4)


# -- GPU -------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_nodes_on_cuda(pack: types.ModuleType, work: types.ModuleType, precision: str) -> None:
    frames = make_frames(6, 96, 112)
    image, flow = run(flow_node(pack), images=frames, precision=precision, backend="torch")
    preprocessor = next(iter(work._cache.values()))
    assert preprocessor.device.type == "cuda"
    assert image.device.type == flow.device.type == "cpu"  # outputs on the intermediate device
    assert image.shape == (6, 96, 112, 3) and flow.shape == (6, 2, 96, 112)
    assert torch.isfinite(flow).all() and 0.0 <= image.min() and image.max() <= 1.0
    (again,) = run(pack.NODE_CLASS_MAPPINGS["OpticalFlowToImage"], flow=flow)
    torch.testing.assert_close(again, image)


# -- example workflow and registry metadata -----------------------------------------------------------------


def test_example_workflow_fits_the_node_schemas(pack: types.ModuleType) -> None:
    import json

    workflow = json.loads((REPO_ROOT / "examples" / "optical_flow_video.json").read_text())
    ours = [node for node in workflow.values() if node["class_type"] in pack.NODE_CLASS_MAPPINGS]
    assert {node["class_type"] for node in ours} >= {"OpticalFlowRAFT", "OpticalFlowMagnitudeMask"}
    for node in workflow.values():
        for value in node["inputs"].values():
            if isinstance(value, list):  # a link: [source node id, output index]
                assert value[0] in workflow, value
    for node in ours:
        node_class = pack.NODE_CLASS_MAPPINGS[node["class_type"]]
        required = node_class.INPUT_TYPES()["required"]
        assert set(required) <= set(node["inputs"]), node["class_type"]
        for name, value in node["inputs"].items():
            kind, options = required[name][0], required[name][1]
            if isinstance(value, list):
                source = workflow[value[0]]["class_type"]
                if source in pack.NODE_CLASS_MAPPINGS:
                    assert pack.NODE_CLASS_MAPPINGS[source].RETURN_TYPES[value[1]] == kind, (name, source)
            elif isinstance(kind, list):
                assert value in kind, (name, value)
            else:
                assert options["min"] <= value <= options["max"], (name, value)


def test_registry_metadata() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "Icon" in comfy
    assert "comfyui" not in project["project"]["name"].lower()  # the registry's node-id rule


# -- the model choice ----------------------------------------------------------------------------------------


def test_model_input_runs_raft_large_and_keys_the_cache(pack: types.ModuleType, work: types.ModuleType) -> None:
    model_input = flow_node(pack).INPUT_TYPES()["required"]["model"]
    assert model_input[0] == ["raft_small", "raft_large"] and model_input[1]["default"] == "raft_small"
    frames = make_frames(3, 96, 112)
    _, small_flow = run(flow_node(pack), images=frames)
    (small,) = work._cache.values()
    image, flow = run(flow_node(pack), images=frames, model="raft_large")
    (large,) = work._cache.values()
    assert small.model == "raft_small" and large is not small and large.model == "raft_large"
    assert image.shape == (3, 96, 112, 3) and flow.shape == (3, 2, 96, 112)
    core = pack.OpticalFlowTensorRTPreprocessor(
        COMPUTE_SIZE, COMPUTE_SIZE, device="cpu", fp16=False, num_flow_updates=2, weights=None, model="raft_large"
    )
    resize_flow = importlib.import_module(f"{pack.__name__}.core.resize").resize_flow
    expected = resize_flow(core.compute_flow(frames, layout="FHWC")[0], 96, 112)
    torch.testing.assert_close(flow, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(flow, small_flow, atol=1e-3)
    run(flow_node(pack), images=frames, model="raft_large", flow_strength=2.0)  # display setting: no reload
    assert list(work._cache.values()) == [large]
    with pytest.raises(ValueError, match="use one of raft_small, raft_large"):
        run(flow_node(pack), images=frames, model="raft_medium")
