"""Messages in each face's words: one message, rendered by each face's vocabulary (core.vocabulary)."""

from __future__ import annotations

import pytest

from scope_optical_flow_tensorrt.cli.options import cli_vocabulary
from scope_optical_flow_tensorrt.core import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.common.vocabulary import PYTHON_API, current_vocabulary, speaking, words
from scope_optical_flow_tensorrt.nodes.inputs import node_vocabulary
from scope_optical_flow_tensorrt.scope_adapter.vocabulary import SCOPE_NO_SETTINGS, SCOPE_SETTINGS

MESSAGE = ("CUDA is missing.", "Pass {device='cpu'} to silence this, or {strict_device=True} to make it an error.",
           "Compute at a fixed size ({size=fixed}), or use {weights=None}.")


@pytest.mark.parametrize(
    ("vocabulary", "expected"),
    [
        (PYTHON_API, "CUDA is missing. Pass device='cpu' to silence this, or strict_device=True to make it an "
                     "error. Compute at a fixed size (height=128, width=136), or use weights=None."),
        (cli_vocabulary(), "CUDA is missing. Pass --device cpu to silence this, or --strict-device to make it an "
                           "error. Compute at a fixed size (--size 128x136), or use --weights untrained."),
        # The node has no device input (ComfyUI's own --cpu decides): that sentence is left out.
        (node_vocabulary(), "CUDA is missing. Compute at a fixed size (compute_height = 128, compute_width = 136), "
                            "or use weights = untrained (random)."),
        (SCOPE_NO_SETTINGS, "CUDA is missing."),
    ],
    ids=["api", "cli", "comfyui", "scope-registry"],
)
def test_one_message_in_each_faces_words(vocabulary, expected: str) -> None:
    with speaking(vocabulary):
        assert words(*MESSAGE, fixed=(128, 136)) == expected
    assert current_vocabulary() is PYTHON_API  # the face's words end with its block


def test_face_values_are_translated() -> None:
    assert node_vocabulary().setting("fp16", False) == "precision = fp32"
    assert node_vocabulary().setting("first_frame", "repeat") == "first_frame = repeat"  # one spelling everywhere
    assert cli_vocabulary().setting("fp16", False) == "--fp32"
    assert cli_vocabulary().setting("size", (None, None)) == "--size native"
    assert SCOPE_SETTINGS.setting("size", (None, None)) == "compute_height = 0, compute_width = 0"


def test_the_preprocessor_speaks_the_vocabulary_it_was_built_with() -> None:
    flow = OpticalFlowTensorRTPreprocessor(device="cpu", vocabulary=cli_vocabulary())
    with pytest.raises(ValueError, match=r"^--first-frame copy is not supported; use one of zero, repeat\.$"):
        flow.first_frame = "copy"
    with pytest.raises(ValueError, match=r"^--strength must be a number in \[0.0, 2.0\], got 3\.$"):
        flow.flow_strength = 3
    with speaking(cli_vocabulary()):
        with pytest.raises(ValueError, match=r"^--preset vase is not a preset; use one of none, vace\.$"):
            OpticalFlowTensorRTPreprocessor(device="cpu", preset="vase")
    assert "fp16=False (fp16 applies on CUDA only)" in OpticalFlowTensorRTPreprocessor(device="cpu").describe_settings()
