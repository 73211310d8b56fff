"""RAFT weights, per model: torchvision's weights API, local files (torchvision or original RAFT key names), or
seeded random init.

``weights`` may be:

- ``"DEFAULT"`` (the default): the model's torchvision ``DEFAULT`` weights (``Raft_Small_Weights.C_T_V2``,
  ``Raft_Large_Weights.C_T_SKHT_V2``) through torchvision's normal download and cache, unless the environment
  variable ``SCOPE_OPTICAL_FLOW_WEIGHTS`` lists a local file holding that model's weights, which then wins
  (see :func:`default_weights_file`);
- a member or name of that model's weights enum (``"C_T_V2"``, ``"Raft_Small_Weights.C_T_V2"``,
  ``"C_T_SKHT_V2"`` for RAFT Large, ...);
- a path to a ``.pth`` state dict of that model, with torchvision key names or the original princeton-vl/RAFT
  names (``raft-small.pth``; ``raft-things.pth``, ``raft-sintel.pth`` for RAFT Large); loaded with
  ``weights_only=True``. A checkpoint of the other model is refused with a one-line error naming both;
- ``None``: untrained weights, deterministically seeded (for tests and offline smoke runs), with a warning.

Every model is built with its random initial values drawn from a private generator (:mod:`.private_random`), so
building one never moves the host's random stream, and ``None`` gives the same seeded weights in any thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models import WeightsEnum
from torchvision.models.optical_flow import RAFT

from ..common.log import log_once, logger
from .private_random import drawing_from, seeded_generator
from .specs import DEFAULT_MODEL, MODELS, ModelSpec, model_spec
from ..common.vocabulary import current_vocabulary, option_name, words

WEIGHTS_ENV = "SCOPE_OPTICAL_FLOW_WEIGHTS"
RANDOM_WEIGHTS_SEED = 0

WeightsSpec = str | os.PathLike[str] | WeightsEnum | None


@dataclass(frozen=True)
class WeightsInfo:
    """What was loaded: ``identity`` is stable across processes and goes into engine cache keys."""

    identity: str
    pretrained: bool
    description: str
    model: str = DEFAULT_MODEL


def load_raft(
    model: str | ModelSpec = DEFAULT_MODEL, weights: WeightsSpec = "DEFAULT", progress: bool = True
) -> tuple[RAFT, WeightsInfo]:
    """Build torchvision's ``model`` (``"raft_small"`` or ``"raft_large"``) in eval mode with the requested
    weights (see the module docstring)."""
    spec = model_spec(model)
    if weights is None:
        return _random_model(spec), WeightsInfo(
            identity=f"random-seed{RANDOM_WEIGHTS_SEED}",
            pretrained=False,
            description=f"untrained {spec.title} (random init, seed {RANDOM_WEIGHTS_SEED})",
            model=spec.name,
        )
    if isinstance(weights, str) and weights == "DEFAULT":
        path = default_weights_file(spec)
        if path is not None:
            logger.info("using %s weights from $%s: %s", spec.title, WEIGHTS_ENV, path)
            return _file_model(spec, path, source=f"${WEIGHTS_ENV}")
    enum_member = _as_enum(spec, weights)
    if enum_member is not None:
        return _torchvision_model(spec, enum_member, progress)
    return _file_model(spec, Path(weights), source=option_name("weights"))  # type: ignore[arg-type]


def load_raft_small(weights: WeightsSpec = "DEFAULT", progress: bool = True) -> tuple[RAFT, WeightsInfo]:
    """``load_raft("raft_small", weights, progress)``."""
    return load_raft(DEFAULT_MODEL, weights, progress)


def default_weights_file(model: str | ModelSpec = DEFAULT_MODEL) -> Path | None:
    """The file ``weights="DEFAULT"`` loads for ``model`` instead of torchvision's download, if any.

    ``$SCOPE_OPTICAL_FLOW_WEIGHTS`` holds one path, or several separated by ``os.pathsep`` (``:``; ``;`` on
    Windows), e.g. ``raft_small.pth:raft-things.pth``. Each model uses the first listed file that holds its
    weights; a model with no file there uses torchvision's ``DEFAULT`` weights. A listed file that is missing,
    unreadable or holds neither model is an error (a typo must not silently fall back to a download).
    """
    spec = model_spec(model)
    listed = [Path(part).expanduser() for part in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if part.strip()]
    for path in listed:
        held = checkpoint_model(_read_checkpoint(path, source=f"${WEIGHTS_ENV}"), path)
        if held is spec:
            return path
    if listed:
        log_once(
            f"env-weights-other-model-{spec.name}",
            f"${WEIGHTS_ENV} lists no {spec.title} checkpoint ({os.pathsep.join(map(str, listed))}); "
            f"{spec.title} uses torchvision's DEFAULT weights.",
            logging.INFO,
        )
    return None


def checkpoint_model(state_dict: dict[str, torch.Tensor], path: Path | None = None) -> ModelSpec:
    """Which model a state dict (torchvision or princeton-vl names) holds weights of; ``ValueError`` if none."""
    for spec in MODELS.values():
        if _key_mismatch(spec, convert_state_dict(state_dict, spec)) is None:
            return spec
    where = f"{path} " if path is not None else "the state dict "
    titles = " or ".join(spec.title for spec in MODELS.values())
    raise ValueError(f"{where}holds neither {titles} weights (its parameter names match neither model).")


def _as_enum(spec: ModelSpec, weights: WeightsSpec) -> WeightsEnum | None:
    enum = spec.weights_enum
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(words(
                f"{{weights=given}} are not {spec.title} weights ({{model=model}}); pass a {enum.__name__} "
                "member, or the model these weights belong to.",
                given=str(weights), model=spec.name,
            ))
        return weights
    if not isinstance(weights, str):
        return None
    name = weights.removeprefix(f"{enum.__name__}.")
    if name in enum.__members__:
        return enum[name]
    if not re.search(r"[/\\.]", weights):  # not a path either: a mistyped enum name, or another model's
        names = ", ".join(enum.__members__)
        owners = [other for other in MODELS.values() if other is not spec and name in other.weights_enum.__members__]
        raise ValueError(words(
            f"{{weights=given}} is neither a {enum.__name__} name ({names}) nor a path to a .pth file "
            "({model=model}).",
            *(f"It is a {owner.weights_enum.__name__} name: add {{model=owner}}." for owner in owners[:1]),
            given=weights, model=spec.name, owner=owners[0].name if owners else None,
        ))
    return None


def _seeded_model(spec: ModelSpec) -> RAFT:
    """``spec``'s model with the weights ``torch.manual_seed(RANDOM_WEIGHTS_SEED)`` would give, drawn from a private
    generator (the global one neither used nor moved)."""
    with drawing_from(seeded_generator(RANDOM_WEIGHTS_SEED)):
        return spec.build(weights=None)


def _random_model(spec: ModelSpec) -> RAFT:
    log_once(
        f"random-weights-{spec.name}",
        words(
            f"{spec.title} runs with UNTRAINED random weights: flow maps will not show real motion.",
            "That is {weights=None}; use {weights='DEFAULT'} or a local .pth file for real results.",
        ),
    )
    return _seeded_model(spec).eval()


def _torchvision_model(spec: ModelSpec, member: WeightsEnum, progress: bool) -> tuple[RAFT, WeightsInfo]:
    try:
        with drawing_from(seeded_generator(RANDOM_WEIGHTS_SEED)):  # the initial values the weights then replace
            model = spec.build(weights=member, progress=progress)
    except Exception as error:  # download errors come in many types (URLError, HTTPError, OSError, ...)
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
        raise RuntimeError(
            f"could not get {spec.title} weights {member} from {member.url} ({type(error).__name__}: {error}). "
            f"On an offline machine, download that file elsewhere and put it at {target} (torchvision's cache), "
            f"or point ${WEIGHTS_ENV} or {option_name('weights')} at a local .pth file."
        ) from error
    name = str(member).split(".")[-1]
    return model.eval(), WeightsInfo(
        identity=f"torchvision-{name}-{Path(member.url).stem}",
        pretrained=True,
        description=f"torchvision {spec.weights_enum.__name__}.{name}",
        model=spec.name,
    )


def _read_checkpoint(path: Path, source: str) -> dict[str, torch.Tensor]:
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"RAFT weights file not found: {path} (from {source}). Point it at an existing .pth state dict "
            f"(e.g. torchvision's raft_small_C_T_V2-01064c6d.pth, or the original RAFT raft-small.pth or "
            f"raft-things.pth)."
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"could not read RAFT weights from {path}: {type(error).__name__}: {error}. "
            "The file must be a PyTorch state dict saved with torch.save (weights only, no pickled code)."
        ) from error
    return _unwrap_state_dict(loaded, path)


def _file_model(spec: ModelSpec, path: Path, source: str) -> tuple[RAFT, WeightsInfo]:
    path = path.expanduser()
    original = _read_checkpoint(path, source)
    state_dict = convert_state_dict(original, spec)
    mismatch = _key_mismatch(spec, state_dict)
    if mismatch is not None:
        try:
            other = checkpoint_model(original, path)
        except ValueError:  # no model's weights: say what differs from the requested model
            raise ValueError(f"{path} does not hold {spec.title} weights: {mismatch}.") from None
        fix = (f"pass {{model=other}} to use it, or a {spec.title} checkpoint" if current_vocabulary().has("model")
               else f"choose a {spec.title} checkpoint")  # a face with the model fixed (VACE's annotator)
        raise ValueError(words(f"{path} holds {other.title} weights, but the model is {spec.title}: {fix}.",
                               other=other.name))
    model = _seeded_model(spec)
    for key, value in model.state_dict().items():  # BatchNorm counters: absent from some original checkpoints
        if key.endswith("num_batches_tracked"):
            state_dict.setdefault(key, value)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path} does not hold {spec.title} weights: {error}") from error
    digest = _file_digest(path)
    logger.log(logging.INFO, "loaded %s weights from %s (sha256 %s)", spec.title, path, digest)
    return model.eval(), WeightsInfo(
        identity=f"file-{digest}", pretrained=True, description=f"file {path}", model=spec.name
    )


def _key_mismatch(spec: ModelSpec, state_dict: dict[str, torch.Tensor]) -> str | None:
    """``None`` if ``state_dict`` (torchvision names) has exactly ``spec``'s parameter names, else what differs."""
    expected = _expected_keys(spec)
    given = {key for key in state_dict if not key.endswith("num_batches_tracked")}
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if not missing and not unexpected:
        return None
    return (f"{len(missing)} missing keys (e.g. {missing[:3]}) and {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]})")


_EXPECTED_KEYS: dict[str, frozenset[str]] = {}


def _expected_keys(spec: ModelSpec) -> frozenset[str]:
    if spec.name not in _EXPECTED_KEYS:
        _EXPECTED_KEYS[spec.name] = frozenset(
            key for key in spec.state_dict_shapes() if not key.endswith("num_batches_tracked")
        )
    return _EXPECTED_KEYS[spec.name]


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


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], model: str | ModelSpec = DEFAULT_MODEL
) -> dict[str, torch.Tensor]:
    """Rename original princeton-vl/RAFT keys of ``model`` to torchvision's; torchvision-named keys pass through
    unchanged. The original residual blocks' second name for their downsampling norm is dropped."""
    spec = model_spec(model)
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if re.search(spec.original_duplicates, key):
            continue
        new_key = key
        for pattern, replacement in spec.renames:
            new_key = re.sub(pattern, replacement, new_key)
        converted[new_key] = value
    return converted
