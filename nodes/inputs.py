"""The nodes' inputs and outputs, declared once: ComfyUI's classic ``INPUT_TYPES`` (:mod:`.definitions`) and its
typed schema (``comfy_api.latest``, :mod:`.schema`) are both generated from these declarations, and so is the
vocabulary that makes the core's messages name node inputs (``precision = fp32``, not ``fp16=False``).

Saved workflows keep working because ids, input names, types, defaults and the order of inputs stay as they were;
new inputs are optional (an API-format workflow without them still validates) and come last.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.backends import BACKENDS
from ..core.model.specs import DEFAULT_MODEL, MODEL_CHOICE, MODEL_NAMES
from ..core.presets import PRESETS
from ..core.visualize import FLOW_STRENGTH_RANGE, NORMALIZATIONS
from ..core.common.vocabulary import Vocabulary

WEIGHTS_DEFAULT = "DEFAULT"
WEIGHTS_UNTRAINED = "untrained (random)"
PRECISIONS = ("fp16", "fp32")
# The core's first_frame values (zero, repeat) and the node's own drop, which returns one frame fewer.
FIRST_FRAME_MODES = ("zero", "repeat", "drop")
# Values workflows saved before the faces shared one spelling may hold, and what they mean now.
LEGACY_FIRST_FRAME = {"copy_next": "repeat"}
NATIVE_SIZE = 0  # compute_width = compute_height = 0: the input's own size
MAX_COMPUTE_SIZE = 2048
FLOW_TYPE = "FLOW"


@dataclass(frozen=True)
class NodeInput:
    """One input: ``kind`` is a ComfyUI type (``IMAGE``, ``INT``, ``FLOAT``, ``COMBO``, ``FLOW``); a combo's
    ``choices`` may be a function (listed anew each time ComfyUI asks, e.g. weights files). ``option`` is the core
    option it sets (its key in ``core.vocabulary``) and ``values`` how the node spells that option's values."""

    name: str
    kind: str
    tooltip: str
    default: Any = None
    choices: tuple[str, ...] | Callable[[], list[str]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    optional: bool = False
    option: str | None = None
    values: Mapping[object, str] = field(default_factory=dict)

    def choice_list(self) -> list[str]:
        choices = self.choices() if callable(self.choices) else self.choices
        return list(choices or ())

    def widget_options(self) -> dict[str, Any]:
        """The classic form's options dict (also the typed form's keyword arguments, renamed there)."""
        options: dict[str, Any] = {"tooltip": self.tooltip}
        if self.default is not None:
            options["default"] = self.default
        for key, value in (("min", self.minimum), ("max", self.maximum), ("step", self.step)):
            if value is not None:
                options[key] = value
        return options


@dataclass(frozen=True)
class NodeOutputSpec:
    name: str
    kind: str
    tooltip: str


@dataclass(frozen=True)
class NodeSpec:
    """A node's identity and interface; ``function`` names the classic class's method that does the work."""

    node_id: str
    display_name: str
    description: str
    function: str
    inputs: tuple[NodeInput, ...]
    outputs: tuple[NodeOutputSpec, ...]
    # Core options this node sets itself, not as inputs (key in core.common.vocabulary -> value).
    fixed: Mapping[str, Any] = field(default_factory=dict)


def _weights_choices() -> list[str]:
    from . import host

    return [WEIGHTS_DEFAULT, WEIGHTS_UNTRAINED, *host.weights_files()]


STRENGTH = NodeInput(
    "flow_strength", "FLOAT", default=1.0, minimum=FLOW_STRENGTH_RANGE[0], maximum=FLOW_STRENGTH_RANGE[1], step=0.05,
    option="flow_strength",
    tooltip="Colour saturation multiplier: saturation = strength * |flow| / scale. 1 matches torchvision's "
    "flow_to_image in per_frame mode; 2 saturates motions at least half as fast as the scale; 0.5 pales all.",
)
NORMALIZATION = NodeInput(
    "normalization", "COMBO", default="per_frame", choices=NORMALIZATIONS, option="normalization",
    tooltip="What full saturation means. per_frame: each frame's fastest motion (colours may flicker). "
    "fixed: max_flow pixels in every frame (colours mean the same speed throughout). running: a running "
    "maximum that rises at once and decays by 0.9 per frame (stable colours that still adapt).",
)
MAX_FLOW = NodeInput(
    "max_flow", "FLOAT", default=20.0, minimum=0.1, maximum=1000.0, step=0.5, option="max_flow",
    tooltip="For normalization=fixed: the motion (pixels of the output image per frame) shown at full "
    "saturation. Ignored by the other modes.",
)
FLOW_INPUT = NodeInput("flow", FLOW_TYPE, tooltip="Raw flow [N, 2, H, W] in pixels, from Optical Flow (RAFT).")
IMAGES = NodeInput("images", "IMAGE", tooltip="The video's frames in order ([N, H, W, C]); at least 2.")
PRECISION = NodeInput(
    "precision", "COMBO", default="fp16", choices=PRECISIONS, option="fp16", values={True: "fp16", False: "fp32"},
    tooltip="fp16 runs the encoders and update block in half precision on CUDA (faster); fp32 everywhere "
    "else. Ignored on the CPU.",
)
BACKEND = NodeInput(
    "backend", "COMBO", default="auto", choices=BACKENDS, option="backend",
    tooltip="auto: TensorRT when installed on CUDA, else PyTorch. Engines are built once and cached in "
    "models/optical_flow.",
)
WEIGHTS = NodeInput(
    "weights", "COMBO", default=WEIGHTS_DEFAULT, choices=_weights_choices, option="weights",
    values={None: WEIGHTS_UNTRAINED},
    tooltip="DEFAULT: torchvision's weights of the chosen model (downloaded once, or a file of that model in "
    "$SCOPE_OPTICAL_FLOW_WEIGHTS); a .pth file of the chosen model from models/optical_flow; or untrained "
    "(random) for testing a workflow without weights.",
)
PREVIOUS_FRAMES = NodeInput(
    "previous_frames", "IMAGE", optional=True,
    tooltip="Frames before this clip (e.g. the previous chunk of a long video); its last frame becomes "
    "frame 0's reference, so frame 0 shows real motion. Same size as images.",
)

OPTICAL_FLOW = NodeSpec(
    node_id="OpticalFlowRAFT",
    display_name="Optical Flow (RAFT)",
    description=(
        "Optical flow between consecutive frames with RAFT Small or Large (TensorRT or PyTorch), for video "
        "ControlNet / VACE conditioning. Input: a video's frames in order. Output: RGB flow maps (hue = direction, "
        "saturation = speed, white = still) at the input size, and the raw flow in pixels. Each run is a new "
        "clip; the model stays loaded while the model settings are unchanged. For the maps of VACE's own flow "
        "annotator use Optical Flow (VACE annotator)."
    ),
    function="compute",
    inputs=(
        IMAGES,
        NodeInput(
            "compute_width", "INT", default=512, minimum=NATIVE_SIZE, maximum=MAX_COMPUTE_SIZE, step=8, option="width",
            values={None: str(NATIVE_SIZE)},
            tooltip="Width the flow is computed at (multiple of 8, at least 128); larger sees finer motion but costs "
            "more, and the output is resized back to the input size. 0 (with compute_height 0): the input's own "
            "size, padded to a multiple of 8, never resized.",
        ),
        NodeInput(
            "compute_height", "INT", default=512, minimum=NATIVE_SIZE, maximum=MAX_COMPUTE_SIZE, step=8,
            option="height", values={None: str(NATIVE_SIZE)},
            tooltip="Height the flow is computed at (multiple of 8, at least 128); 0 (with compute_width 0): the "
            "input's own size.",
        ),
        PRECISION,
        NodeInput(
            "flow_updates", "INT", default=12, minimum=1, maximum=32, option="num_flow_updates",
            tooltip="RAFT refinement iterations: fewer is faster, more is more accurate (12 is standard).",
        ),
        STRENGTH,
        NORMALIZATION,
        MAX_FLOW,
        BACKEND,
        NodeInput(
            "first_frame", "COMBO", default="zero", choices=FIRST_FRAME_MODES, option="first_frame",
            tooltip="Frame 0 has no frame before it (unless previous_frames is connected). zero: no motion "
            "(white); repeat: frame 1's map (as VACE's annotator does); drop: output one frame fewer.",
        ),
        WEIGHTS,
        NodeInput(
            "model", "COMBO", default=DEFAULT_MODEL, choices=MODEL_NAMES, option="model",
            tooltip=f"RAFT model: {MODEL_CHOICE}. raft_large also needs more memory (Sintel final EPE 2.72 vs 3.28 "
            "on torchvision's model cards).",
        ),
        PREVIOUS_FRAMES,
    ),
    outputs=(
        NodeOutputSpec("flow_image", "IMAGE", "Flow visualization [N, H, W, 3] in [0, 1], same size as the input "
                       "frames."),
        NodeOutputSpec("flow", FLOW_TYPE, "Raw flow [N, 2, H, W]: x/y motion from the previous frame, in pixels of "
                       "the input size."),
    ),
)

OPTICAL_FLOW_VACE = NodeSpec(
    node_id="OpticalFlowVACE",
    display_name="Optical Flow (VACE annotator)",
    description=(
        "The flow maps of VACE's own flow annotator, for VACE's flow conditioning: RAFT Large with 20 updates at "
        "the frames' own size (padded to a multiple of 8, never resized), each map scaled by its frame's fastest "
        "motion, and frame 1's map repeated for frame 0, so there is one map per frame. Only the inputs that "
        "leave those maps as VACE's are here; for other settings use Optical Flow (RAFT)."
    ),
    function="compute_vace",
    inputs=(IMAGES, PRECISION, BACKEND, WEIGHTS, PREVIOUS_FRAMES),
    outputs=OPTICAL_FLOW.outputs,
    fixed={**PRESETS["vace"], "flow_strength": 1.0},
)

FLOW_TO_IMAGE = NodeSpec(
    node_id="OpticalFlowToImage",
    display_name="Flow to Image",
    description=(
        "Turns raw optical flow into an RGB flow map (Middlebury colour wheel: hue = direction, saturation = "
        "speed, white = still). With the same settings it reproduces the Optical Flow node's flow_image."
    ),
    function="visualize",
    inputs=(FLOW_INPUT, STRENGTH, NORMALIZATION, MAX_FLOW),
    outputs=(NodeOutputSpec("flow_image", "IMAGE", "Flow visualization [N, H, W, 3] in [0, 1], the flow's size."),),
)

MAGNITUDE_MASK = NodeSpec(
    node_id="OpticalFlowMagnitudeMask",
    display_name="Flow Magnitude Mask",
    description=(
        "A mask of motion speed from raw optical flow: |flow| divided by the normalization's scale, in [0, 1] "
        "(1 = fastest). With threshold > 0 it is binary: 1 where the scaled speed reaches the threshold. Useful "
        "to inpaint or condition only moving regions."
    ),
    function="mask",
    inputs=(
        FLOW_INPUT,
        NORMALIZATION,
        MAX_FLOW,
        NodeInput(
            "threshold", "FLOAT", default=0.0, minimum=0.0, maximum=1.0, step=0.01,
            tooltip="0: soft mask (scaled speed). Above 0: 1 where the scaled speed is at least this, else 0 (e.g. "
            "0.1 with fixed max_flow=20 marks motion of 2 pixels or more).",
        ),
    ),
    outputs=(NodeOutputSpec("mask", "MASK", "Motion mask [N, H, W] in [0, 1], the flow's size."),),
)

NODE_SPECS: tuple[NodeSpec, ...] = (OPTICAL_FLOW, OPTICAL_FLOW_VACE, FLOW_TO_IMAGE, MAGNITUDE_MASK)


def classic_input_types(spec: NodeSpec) -> dict[str, Any]:
    """``INPUT_TYPES()`` of the classic form: ``{"required": {...}, "optional": {...}}``."""
    groups: dict[str, dict[str, Any]] = {"required": {}}
    for item in spec.inputs:
        kind: Any = item.choice_list() if item.kind == "COMBO" else item.kind
        groups.setdefault("optional" if item.optional else "required", {})[item.name] = (kind, item.widget_options())
    return groups


def node_vocabulary(spec: NodeSpec = OPTICAL_FLOW) -> Vocabulary:
    """How the core's messages name options inside node ``spec``: by its inputs that set them (a message that
    names an option the node has no input for leaves that sentence out)."""
    return _vocabularies(spec.node_id)


@functools.cache
def _vocabularies(node_id: str) -> Vocabulary:
    [spec] = [spec for spec in NODE_SPECS if spec.node_id == node_id]
    names: dict[str, str] = {}
    values: dict[str, Mapping[object, str]] = {}
    for item in spec.inputs:
        if item.option is not None:
            names[item.option] = item.name
            if item.values:
                values[item.option] = item.values
    return Vocabulary(face=f"ComfyUI node {spec.display_name}", style="field", names=names, values=values)
