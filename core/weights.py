"""RAFT Small weights: torchvision's weights API, local files (torchvision or original RAFT key names), or
seeded random init.

``weights`` may be:

- ``"DEFAULT"`` (the default): ``Raft_Small_Weights.DEFAULT`` through torchvision's normal download and cache,
  unless the environment variable ``SCOPE_OPTICAL_FLOW_WEIGHTS`` names a local file, which then wins;
- a ``Raft_Small_Weights`` member or its name (``"C_T_V1"``, ``"C_T_V2"``, ``"Raft_Small_Weights.C_T_V2"``);
- a path to a ``.pth`` state dict, with torchvision key names or the original princeton-vl/RAFT names
  (``module.fnet.conv1.weight`` ...); loaded with ``weights_only=True``;
- ``None``: untrained weights, deterministically seeded (for tests and offline smoke runs), with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models.optical_flow import RAFT, Raft_Small_Weights, raft_small

from .log import log_once, logger

WEIGHTS_ENV = "SCOPE_OPTICAL_FLOW_WEIGHTS"
RANDOM_WEIGHTS_SEED = 0

WeightsSpec = str | os.PathLike[str] | Raft_Small_Weights | None


@dataclass(frozen=True)
class WeightsInfo:
    """What was loaded: ``identity`` is stable across processes and goes into engine cache keys."""

    identity: str
    pretrained: bool
    description: str


def load_raft_small(weights: WeightsSpec = "DEFAULT", progress: bool = True) -> tuple[RAFT, WeightsInfo]:
    """Build torchvision's ``raft_small`` in eval mode with the requested weights (see module docstring)."""
    if weights is None:
        return _random_model(), WeightsInfo(
            identity=f"random-seed{RANDOM_WEIGHTS_SEED}",
            pretrained=False,
            description=f"untrained RAFT Small (random init, seed {RANDOM_WEIGHTS_SEED})",
        )
    if isinstance(weights, str) and weights == "DEFAULT" and os.environ.get(WEIGHTS_ENV):
        weights = os.environ[WEIGHTS_ENV]
        logger.info("using RAFT Small weights from $%s=%s", WEIGHTS_ENV, weights)
        return _file_model(Path(weights), from_env=True)
    enum_member = _as_enum(weights)
    if enum_member is not None:
        return _torchvision_model(enum_member, progress)
    return _file_model(Path(weights), from_env=False)


def _as_enum(weights: WeightsSpec) -> Raft_Small_Weights | None:
    if isinstance(weights, Raft_Small_Weights):
        return weights
    if not isinstance(weights, str):
        return None
    name = weights.removeprefix("Raft_Small_Weights.")
    if name in Raft_Small_Weights.__members__:
        return Raft_Small_Weights[name]
    if not re.search(r"[/\\.]", weights):  # not a path either: a mistyped enum name
        names = ", ".join(Raft_Small_Weights.__members__)
        raise ValueError(
            f"weights={weights!r} is neither a Raft_Small_Weights name ({names}) nor a path to a .pth file."
        )
    return None


def _random_model() -> RAFT:
    log_once(
        "random-weights",
        "RAFT Small runs with UNTRAINED random weights (weights=None): flow maps will not show real motion. "
        "Use weights='DEFAULT' or a local .pth file for real results.",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = raft_small(weights=None)
    return model.eval()


def _torchvision_model(member: Raft_Small_Weights, progress: bool) -> tuple[RAFT, WeightsInfo]:
    try:
        model = raft_small(weights=member, progress=progress)
    except Exception as error:  # download errors come in many types (URLError, HTTPError, OSError, ...)
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
        raise RuntimeError(
            f"could not get RAFT Small weights {member} from {member.url} ({type(error).__name__}: {error}). "
            f"On an offline machine, download that file elsewhere and put it at {target} (torchvision's cache), "
            f"or point ${WEIGHTS_ENV} or weights= at a local .pth file."
        ) from error
    name = str(member).split(".")[-1]
    return model.eval(), WeightsInfo(
        identity=f"torchvision-{name}-{Path(member.url).stem}",
        pretrained=True,
        description=f"torchvision Raft_Small_Weights.{name}",
    )


def _file_model(path: Path, from_env: bool) -> tuple[RAFT, WeightsInfo]:
    path = path.expanduser()
    source = f"${WEIGHTS_ENV}" if from_env else "weights="
    if not path.is_file():
        raise FileNotFoundError(
            f"RAFT Small weights file not found: {path} (from {source}). Point it at an existing .pth state dict "
            f"(torchvision's raft_small_C_T_V2-01064c6d.pth or the original RAFT raft-small.pth)."
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"could not read RAFT Small weights from {path}: {type(error).__name__}: {error}. "
            "The file must be a PyTorch state dict saved with torch.save (weights only, no pickled code)."
        ) from error
    state_dict = convert_state_dict(_unwrap_state_dict(loaded, path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = raft_small(weights=None)
    expected = model.state_dict().keys()
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not hold RAFT Small weights: {len(missing)} missing keys (e.g. {missing[:3]}) and "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). RAFT Large or other models' weights "
            "do not fit raft_small."
        )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path} does not hold RAFT Small weights: {error}") from error
    digest = _file_digest(path)
    logger.log(logging.INFO, "loaded RAFT Small weights from %s (sha256 %s)", path, digest)
    return model.eval(), WeightsInfo(identity=f"file-{digest}", pretrained=True, description=f"file {path}")


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = loaded.get(key)
            if isinstance(inner, dict):
                loaded = inner
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not contain a state dict (a mapping of parameter names to tensors).")
    return dict(loaded)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# Original princeton-vl/RAFT (small) names -> torchvision names, applied in order to each key.
_ORIGINAL_TO_TORCHVISION: tuple[tuple[str, str], ...] = (
    (r"^module\.", ""),
    (r"^fnet\.", "feature_encoder."),
    (r"^cnet\.", "context_encoder."),
    (r"^(feature_encoder|context_encoder)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(feature_encoder|context_encoder)\.conv2\.", r"\1.conv."),
    (r"^(feature_encoder|context_encoder)\.(layer\d\.\d)\.conv(\d)\.", r"\1.\2.convnormrelu\3.0."),
    (r"^update_block\.encoder\.convc1\.", "update_block.motion_encoder.convcorr1.0."),
    (r"^update_block\.encoder\.convf1\.", "update_block.motion_encoder.convflow1.0."),
    (r"^update_block\.encoder\.convf2\.", "update_block.motion_encoder.convflow2.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.", "update_block.recurrent_block.convgru1."),
)


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original RAFT keys to torchvision's; torchvision-named keys pass through unchanged."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in _ORIGINAL_TO_TORCHVISION:
            new_key = re.sub(pattern, replacement, new_key)
        converted[new_key] = value
    return converted
