"""The RAFT models this package runs, and everything that differs between them, in one place.

Two of torchvision's RAFT models (``torchvision.models.optical_flow``), chosen with ``model=``:

============  =======================  ==========================  ================================
model         ``raft_small`` (default)  ``raft_large``               source
============  =======================  ==========================  ================================
encoders      bottleneck blocks, 128   residual blocks, 256        torchvision ``_raft`` arguments
              features, 96 + 64        features, 128 + 128
              hidden + context         hidden + context (BatchNorm)
correlation   4 levels, radius 3       4 levels, radius 4          ``CorrBlock``
              (196 channels)           (324 channels)
update block  1 corr conv, one 3x3     2 corr convs, two GRUs      ``UpdateBlock``
              GRU                      (1x5 then 5x1)
upsampling    bilinear                 convex (learned mask)       ``MaskPredictor``
weights       ``Raft_Small_Weights``   ``Raft_Large_Weights``      DEFAULT: C_T_V2 / C_T_SKHT_V2
princeton-vl  ``raft-small.pth``       ``raft-things.pth``,        github.com/princeton-vl/RAFT
checkpoints                            ``raft-sintel.pth``, ...
============  =======================  ==========================  ================================

The encoders, correlation block and update block are read from the torchvision model itself wherever the code
can (``core.raft``, ``core.fast_update``); this module holds what cannot be read from a built model: the
builders, the weights enums, the original checkpoints' key names and the memory estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.models import WeightsEnum
from torchvision.models.optical_flow import RAFT, Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

from ..common.vocabulary import words

DEFAULT_MODEL = "raft_small"

# princeton-vl/RAFT key names -> torchvision's, the parts both models share (applied in order to each key).
_SHARED_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^module\.", ""),
    (r"^fnet\.", "feature_encoder."),
    (r"^cnet\.", "context_encoder."),
    (r"^(feature_encoder|context_encoder)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(feature_encoder|context_encoder)\.norm1\.", r"\1.convnormrelu.1."),
    (r"^(feature_encoder|context_encoder)\.conv2\.", r"\1.conv."),
    (r"^(feature_encoder|context_encoder)\.(layer\d\.\d)\.conv(\d)\.", r"\1.\2.convnormrelu\3.0."),
    (r"^(feature_encoder|context_encoder)\.(layer\d\.\d)\.norm(\d)\.", r"\1.\2.convnormrelu\3.1."),
    (r"^update_block\.encoder\.convc1\.", "update_block.motion_encoder.convcorr1.0."),
    (r"^update_block\.encoder\.convf1\.", "update_block.motion_encoder.convflow1.0."),
    (r"^update_block\.encoder\.convf2\.", "update_block.motion_encoder.convflow2.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
)


@dataclass(frozen=True)
class ModelSpec:
    """One RAFT model: how to build it, its weights, its original checkpoints' names, its memory needs."""

    name: str  # the ``model=`` value, also the prefix of cached ONNX/engine file names
    title: str  # for messages and logs
    builder: Callable[..., RAFT]  # torchvision's builder: ``builder(weights=None | enum member, progress=...)``
    weights_enum: type[WeightsEnum]
    original_checkpoints: tuple[str, ...]  # princeton-vl/RAFT file names of this model
    # princeton-vl key names -> torchvision's, applied in order after the shared renames
    original_renames: tuple[tuple[str, str], ...]
    # original keys with no torchvision counterpart: the residual blocks register their downsampling norm twice
    # (``normN`` and ``downsample.1``); torchvision keeps only ``downsample.1``
    original_duplicates: str
    # Working memory per frame pair beyond RAFT Small's, in bytes per compute pixel (fp32): the bigger encoders,
    # update block and mask. Measured once (benchmarks/NOTES.md, "Memory"); see
    # core.model.compute_size.default_max_pairs.
    extra_bytes_per_pixel: int

    @property
    def renames(self) -> tuple[tuple[str, str], ...]:
        return _SHARED_RENAMES + self.original_renames

    def build(self, weights: WeightsEnum | None = None, progress: bool = True) -> RAFT:
        return self.builder(weights=weights, progress=progress)

    def state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes of this model, without allocating its weights (built on the meta device)."""
        with torch.device("meta"):
            model = self.builder(weights=None)
        return {key: tuple(value.shape) for key, value in model.state_dict().items()}


RAFT_SMALL = ModelSpec(
    name="raft_small",
    title="RAFT Small",
    builder=raft_small,
    weights_enum=Raft_Small_Weights,
    original_checkpoints=("raft-small.pth",),
    original_renames=((r"^update_block\.gru\.", "update_block.recurrent_block.convgru1."),),
    original_duplicates=r"\.layer\d\.\d\.norm4\.",
    extra_bytes_per_pixel=0,
)

RAFT_LARGE = ModelSpec(
    name="raft_large",
    title="RAFT Large",
    builder=raft_large,
    weights_enum=Raft_Large_Weights,
    original_checkpoints=("raft-things.pth", "raft-sintel.pth", "raft-chairs.pth", "raft-kitti.pth"),
    original_renames=(
        (r"^update_block\.encoder\.convc2\.", "update_block.motion_encoder.convcorr2.0."),
        (r"^update_block\.gru\.conv([zrq])([12])\.", r"update_block.recurrent_block.convgru\2.conv\1."),
        (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
        (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
    ),
    original_duplicates=r"\.layer\d\.\d\.norm3\.",
    # Measured (benchmarks/NOTES.md, "Memory"; CPU, fp32, 256x256): 410 bytes per pixel per pair beyond the
    # pyramid, RAFT Small 302; 512x512 then gets 18 pairs per call instead of Small's 24.
    extra_bytes_per_pixel=107,
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (RAFT_SMALL, RAFT_LARGE)}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
# The choice in one sentence, the same in every face's help (measured on one H100 at 512x512, README "Models":
# RAFT Large takes 1.8x RAFT Small's time per frame at 4-frame chunks and 2.1x at 16-frame chunks).
MODEL_CHOICE = "raft_small (fast, real time) or raft_large (more accurate, about twice the time per frame)"


def model_spec(model: object) -> ModelSpec:
    """The :class:`ModelSpec` for ``model`` (``"raft_small"`` or ``"raft_large"``); ``ValueError`` otherwise."""
    if isinstance(model, ModelSpec):
        return model
    spec = MODELS.get(model) if isinstance(model, str) else None
    if spec is None:
        raise ValueError(words(f"{{model=model}} is not supported; use one of {', '.join(MODEL_NAMES)}.", model=model))
    return spec
