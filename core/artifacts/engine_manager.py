"""The ONNX/TensorRT engine cache of RAFT Small and Large: names, keys, export, build, load, listing and clearing.

Files live in ``core.paths.plugin_models_dir(models_dir)``, named after the model (``raft_small``, ``raft_large``):

- ``{model}_{H}x{W}-{hash}.onnx`` and ``{model}_{H}x{W}_fp16-{hash}.onnx``: the fp32 and fp16 graphs
  (dynamic frame axis; see ``core.onnx_export``), ``hash`` over the settings that change them (size, flow
  updates, weights identity, opset);
- ``{model}_{H}x{W}_{gpu}-{hash}.trt``: an engine for one GPU model (sanitized name), built from the graph
  of its precision, ``hash`` over precision, flow updates, weights identity and the frame profile;
- ``{model}_{H}x{W}_portable-{hash}.trt``: a TensorRT-for-RTX engine built without a GPU for a list of
  compute capabilities (``prebuild --tensorrt-targets``); a GPU of a listed capability loads it when no engine
  of its own exists;
- ``<engine stem>.rtcache``: TensorRT for RTX's runtime cache (the kernels compiled just in time for that
  engine on this GPU), keyed by the engine's sha256, GPU and TensorRT version;
- ``<file>.json`` next to each: the full key, size, sha256 and build information.

The hash keeps differently configured files of one size side by side (switching settings never rebuilds
what was built before). Environment fields (TensorRT version, compute capability, package version, a hash
of the model/export code, the ONNX file's sha256, workspace, the export and build recipes) are in the key but
not the hash: when they change, the file is rebuilt in place rather than accumulating stale copies. See
:mod:`core.engine_cache` for validation, atomic writes and locking.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..common.log import logger
from ..common.paths import plugin_models_dir
from ..common.vocabulary import setting, words
from ..model import fast_update as fast_update_module
from ..model import raft as raft_module
from ..model import specs as models_module
from ..model.compute_size import check_compute_size, default_max_pairs
from ..model.raft import RaftSequenceFlow
from ..model.specs import DEFAULT_MODEL, model_spec
from ..model.weights import WeightsInfo, WeightsSpec, load_raft
from . import onnx_export as onnx_export_module
from .compiled_cache import clear_torch_cache_dir, list_compiled_entries
from .engine_cache import (
    UnusableArtifact,
    build_artifact,
    cached_files,
    check_artifact,
    clear_directory,
    ensure_artifact,
    files_digest,
    invalidate,
    key_hash,
    locked,
    package_version,
    read_artifact,
    read_sidecar,
    sanitize_gpu_name,
)
from .onnx_export import EXPORT_RECIPE, INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, export_raft_onnx, resolve_exporter
from .trt_build import (
    BUILD_RECIPE,
    FLAVOUR_TITLES,
    TENSORRT_INSTALL_HINT,
    TENSORRT_RTX,
    BuildTarget,
    build_engine_bytes,
    build_target,
    flavour_available,
    portable_target,
    require_tensorrt,
)

CACHE_FORMAT = 1
# Compute capabilities of the portable-engine example in messages (RTX 30xx, 40xx, 50xx).
PORTABLE_EXAMPLE = ("8.6", "8.9", "12.0")

Engine = TypeVar("Engine")
# (onnx_path, engine_path_being_written, spec, target) -> None: writes a serialized engine to the path.
EngineBuilder = Callable[[Path, Path, "EngineSpec", BuildTarget], None]


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is for: compute size, precision, flow updates, frames per call, model."""

    height: int
    width: int
    fp16: bool = True
    num_flow_updates: int = 12
    max_pairs: int = 1
    model: str = DEFAULT_MODEL

    @property
    def max_frames(self) -> int:
        return self.max_pairs + 1


def model_code_digest() -> str:
    """Hash of the code that defines the exported graph, so an edited model re-exports even at one version."""
    return files_digest(Path(module.__file__)
                        for module in (raft_module, fast_update_module, onnx_export_module, models_module))


# -- keys and names -----------------------------------------------------------------------------------


def precision_name(fp16: bool) -> str:
    return "fp16" if fp16 else "fp32"


def onnx_key(
    height: int,
    width: int,
    num_flow_updates: int,
    weights_identity: str,
    precision: str = "fp32",
    model: str = DEFAULT_MODEL,
) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "kind": "onnx",
        "model": model,
        "height": height,
        "width": width,
        "num_flow_updates": num_flow_updates,
        "weights": weights_identity,
        "precision": precision,
        "export_recipe": EXPORT_RECIPE,
        "opset": ONNX_OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "package_version": package_version(),
        "model_code": model_code_digest(),
    }


def engine_key(spec: EngineSpec, weights_identity: str, target: BuildTarget, onnx_sha256: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "kind": "tensorrt",
        "model": spec.model,
        "height": spec.height,
        "width": spec.width,
        "num_flow_updates": spec.num_flow_updates,
        "weights": weights_identity,
        "precision": precision_name(spec.fp16),
        "build_recipe": BUILD_RECIPE,
        "profile_frames": [2, spec.max_frames, spec.max_frames],  # min / opt / max frames per call
        "gpu_name": target.gpu_name,
        "compute_capability": target.compute_capability,
        "tensorrt_flavour": target.flavour,
        "tensorrt_version": target.tensorrt_version,
        "compute_targets": list(target.compute_targets),
        "workspace_bytes": target.workspace_bytes,
        "onnx_sha256": onnx_sha256,
        "package_version": package_version(),
    }


_ONNX_NAME_FIELDS = ("height", "width", "num_flow_updates", "weights", "opset")
_ENGINE_NAME_FIELDS = ("height", "width", "num_flow_updates", "weights", "precision", "profile_frames",
                       "tensorrt_flavour", "compute_targets")
# Fields a portable TensorRT-for-RTX engine may differ in from the engine a GPU would build for itself.
_TARGET_FIELDS = ("gpu_name", "compute_capability", "compute_targets", "workspace_bytes")
RUNTIME_CACHE_SUFFIX = ".rtcache"


def onnx_path(directory: Path, key: dict[str, Any]) -> Path:
    # The fp32 graph keeps the name it had before graphs carried their precision, so a graph exported the old
    # way is replaced in place (its key differs) instead of lingering beside the new one.
    digest = key_hash({name: key[name] for name in _ONNX_NAME_FIELDS})
    suffix = "_fp16" if key["precision"] == "fp16" else ""
    return directory / f"{key['model']}_{key['height']}x{key['width']}{suffix}-{digest}.onnx"


def engine_path(directory: Path, key: dict[str, Any]) -> Path:
    digest = key_hash({name: key[name] for name in _ENGINE_NAME_FIELDS})
    gpu = sanitize_gpu_name(key["gpu_name"])
    return directory / f"{key['model']}_{key['height']}x{key['width']}_{gpu}-{digest}.trt"


def runtime_cache_path(engine: Path) -> Path:
    """Where TensorRT for RTX's runtime cache of ``engine`` is kept (beside it, same stem)."""
    return engine.with_suffix(RUNTIME_CACHE_SUFFIX)


def runtime_cache_key(engine: Path, target: BuildTarget) -> dict[str, Any]:
    sidecar = read_sidecar(engine) or {}
    return {
        "format": CACHE_FORMAT,
        "kind": "tensorrt_runtime_cache",
        "engine_file": engine.name,
        "engine_sha256": sidecar.get("sha256"),
        "gpu_name": target.gpu_name,
        "compute_capability": target.compute_capability,
        "tensorrt_flavour": target.flavour,
        "tensorrt_version": target.tensorrt_version,
    }


def portable_engine(directory: Path, key: dict[str, Any], capability: str) -> Path | None:
    """A valid portable engine in ``directory`` for ``key`` whose targets include ``capability``, or ``None``."""
    wanted = {name: value for name, value in key.items() if name not in _TARGET_FIELDS}
    for path in cached_files(directory):
        stored = (read_sidecar(path) or {}).get("key")
        if path.suffix != ".trt" or not isinstance(stored, dict) or stored.get("gpu_name") != "portable":
            continue
        same = {name: value for name, value in stored.items() if name not in _TARGET_FIELDS} == wanted
        targets = stored.get("compute_targets")
        if same and isinstance(targets, list) and capability in targets and check_artifact(path, stored) is None:
            return path
    return None


# -- ONNX -----------------------------------------------------------------------------------------------


def ensure_onnx(
    directory: Path,
    height: int,
    width: int,
    num_flow_updates: int,
    weights: WeightsSpec,
    fp16: bool = False,
    model: str = DEFAULT_MODEL,
) -> tuple[Path, WeightsInfo]:
    """The cached fp32 (or, with ``fp16``, fp16) ONNX graph of ``model`` for these settings, exported first if
    missing or stale."""
    check_compute_size(height, width)
    spec = model_spec(model)
    raft, info = load_raft(spec, weights)
    precision = precision_name(fp16)
    key = onnx_key(height, width, num_flow_updates, info.identity, precision, spec.name)
    path = onnx_path(directory, key)
    exporter = resolve_exporter()

    def export(temp: Path) -> None:
        device = export_device(fp16, exporter)
        logger.info("exporting %s to ONNX (%dx%d, %s, %d flow updates, %s exporter, on %s)", spec.title, height,
                    width, precision, num_flow_updates, exporter, device)
        # fp16: encoders and update block in half precision, correlation and lookup kept in fp32 (explicit casts)
        compute_dtype = torch.float16 if fp16 else torch.float32
        sequence = RaftSequenceFlow(raft, num_flow_updates, compute_dtype=compute_dtype, corr_dtype=torch.float32,
                                    fast_update_block=True)
        export_raft_onnx(sequence.to(device), temp, height, width, exporter=exporter)

    extra = {"exporter": exporter, "torch_version": torch.__version__, "weights_description": info.description}
    ensure_artifact(path, key, export, info=extra, label="ONNX graph")
    return path, info


def export_device(fp16: bool, exporter: str) -> torch.device:
    """Where a graph is exported: the CPU, except the fp16 graph with the TorchScript exporter.

    That exporter runs the model once, and PyTorch's fp16 CPU kernels are slow (an fp16 512x512, 12-update
    trace took 11 minutes on a busy 2-core CPU, the fp32 one 21 s), so it traces on the current CUDA device
    when there is one. The ``torch.export``-based exporter traces with fake tensors (no kernels run: 12 s for
    the same fp16 graph), so it stays on the CPU.
    """
    if not (fp16 and exporter == "torchscript"):
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    logger.warning(
        "exporting the fp16 ONNX graph with the TorchScript exporter on the CPU: PyTorch's fp16 CPU kernels are "
        "slow, so this can take minutes at large sizes (pip install onnxscript for the faster exporter)."
    )
    return torch.device("cpu")


def export_onnx_cached(
    height: int,
    width: int,
    *,
    num_flow_updates: int = 12,
    max_pairs: int | None = None,
    weights: WeightsSpec = "DEFAULT",
    models_dir: str | os.PathLike[str] | None = None,
    fp16: bool | None = None,
    device: str | torch.device | None = None,
    model: str = DEFAULT_MODEL,
) -> Path:
    """Path of the cached ONNX graph for ``height`` x ``width`` (exported now if needed; no TensorRT needed).

    ``fp16=True`` gives the fp16 graph (the one an fp16 engine is built from), ``False`` or ``None`` the fp32
    one. ``max_pairs`` and ``device`` are accepted so callers can pass :func:`prebuild_engine`'s arguments
    unchanged; they do not change the graph (dynamic frame axis; where it is exported: :func:`export_device`).
    """
    check_positive("num_flow_updates", num_flow_updates)
    if max_pairs is not None:
        check_positive("max_pairs", max_pairs)
    directory = plugin_models_dir(models_dir)
    return ensure_onnx(directory, height, width, num_flow_updates, weights, fp16=bool(fp16), model=model)[0]


# -- engines --------------------------------------------------------------------------------------------


def write_engine_with_tensorrt(onnx: Path, destination: Path, spec: EngineSpec, target: BuildTarget) -> None:
    """The real :data:`EngineBuilder`: polygraphy/TensorRT build of a strongly typed network, bytes written to
    ``destination`` (``onnx`` is the graph of ``spec``'s precision)."""
    device = None if target.portable else torch.device("cuda", torch.cuda.current_device())
    data = build_engine_bytes(
        onnx, height=spec.height, width=spec.width, fp16=spec.fp16, max_frames=spec.max_frames,
        workspace_bytes=target.workspace_bytes, device=device, flavour=target.flavour,
        compute_targets=target.compute_targets,
    )
    destination.write_bytes(data)


def ensure_engine(
    directory: Path,
    spec: EngineSpec,
    weights: WeightsSpec,
    target: BuildTarget,
    builder: EngineBuilder | None = None,
) -> tuple[Path, WeightsInfo]:
    """The cached engine for ``spec`` on ``target``, exporting ONNX and building first where needed.

    ``builder`` defaults to :func:`write_engine_with_tensorrt` (tests inject a fake one). On a GPU that a
    TensorRT-for-RTX target describes, a valid portable engine listing its compute capability
    (:func:`portable_engine`) is used when the GPU has no engine of its own: nothing is built.
    """
    build = builder or write_engine_with_tensorrt
    with locked(directory):
        onnx, info = ensure_onnx(directory, spec.height, spec.width, spec.num_flow_updates, weights, fp16=spec.fp16,
                                 model=spec.model)
        sidecar = read_sidecar(onnx) or {}
        key = engine_key(spec, info.identity, target, str(sidecar.get("sha256", "")))
        path = engine_path(directory, key)
        if target.flavour == TENSORRT_RTX and not target.portable and check_artifact(path, key) is not None:
            shipped = portable_engine(directory, key, target.compute_capability)
            if shipped is not None:
                logger.info("using the portable TensorRT for RTX engine %s (built for compute capabilities %s)",
                            shipped.name, ", ".join((read_sidecar(shipped) or {})["key"]["compute_targets"]))
                return shipped, info
        extra = {"onnx_file": onnx.name, "weights_description": info.description,
                 "built_with": f"{FLAVOUR_TITLES[target.flavour]} {target.tensorrt_version}"}
        ensure_artifact(path, key, lambda temp: build(onnx, temp, spec, target), info=extra, label="TensorRT engine")
    return path, info


def load_runtime_cache(engine: Path, target: BuildTarget) -> bytes | None:
    """TensorRT for RTX's runtime cache kept for ``engine`` on this GPU, or ``None`` (none, stale or corrupt)."""
    path = runtime_cache_path(engine)
    with locked(engine.parent):
        key = runtime_cache_key(engine, target)
        if check_artifact(path, key) is not None:
            return None
        try:
            return read_artifact(path, key)
        except UnusableArtifact as error:  # replaced since the check: treated as absent (rebuilt by the runtime)
            logger.warning("not using TensorRT for RTX's runtime cache %s", error)
            return None


def save_runtime_cache(engine: Path, target: BuildTarget, data: bytes) -> Path | None:
    """Keep ``data`` (a serialized runtime cache) beside ``engine`` under the cache's key/sidecar/lock rules."""
    if not data:
        return None
    path = runtime_cache_path(engine)
    with locked(engine.parent):
        return build_artifact(path, runtime_cache_key(engine, target), lambda temp: temp.write_bytes(data),
                              info={"built_with": f"{FLAVOUR_TITLES[target.flavour]} {target.tensorrt_version}"})


def load_engine(
    directory: Path,
    spec: EngineSpec,
    weights: WeightsSpec,
    target: BuildTarget,
    deserialize: Callable[[bytes], Engine | None],
    builder: EngineBuilder | None = None,
) -> tuple[Engine, Path, WeightsInfo]:
    """Ensure the engine and deserialize it; an engine that fails to deserialize is discarded and rebuilt once."""
    with locked(directory):
        for attempt in (1, 2):
            path, info = ensure_engine(directory, spec, weights, target, builder)
            try:
                engine = deserialize(read_artifact(path))
            except Exception as error:  # TensorRT raises or returns None for a bad plan, depending on the damage
                engine, failure = None, f"{type(error).__name__}: {error}"
            else:
                failure = "TensorRT could not deserialize it"
            if engine is not None:
                return engine, path, info
            if attempt == 2:
                raise RuntimeError(f"the freshly built TensorRT engine {path} does not load ({failure}).")
            invalidate(path, failure)
    raise AssertionError("unreachable")


def prebuild_engine(
    height: int,
    width: int,
    *,
    fp16: bool = True,
    num_flow_updates: int = 12,
    max_pairs: int | None = None,
    weights: WeightsSpec = "DEFAULT",
    models_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cuda",
    model: str = DEFAULT_MODEL,
    tensorrt_targets: tuple[str, ...] | None = None,
) -> Path:
    """Export ONNX if needed and build the TensorRT engine for these settings ahead of time; returns its path.

    ``max_pairs=None`` uses the preprocessor's default for this size, so the preprocessor with the same
    settings finds this engine. Raises ``RuntimeError`` (with the install hint) without TensorRT or CUDA.

    ``tensorrt_targets`` (compute capabilities such as ``("8.6", "8.9", "12.0")``) builds a portable TensorRT
    for RTX engine instead, without a GPU (``device`` is not used): a GPU of a listed capability loads it.
    """
    check_compute_size(height, width)
    check_positive("num_flow_updates", num_flow_updates)
    if max_pairs is not None:
        check_positive("max_pairs", max_pairs)
    name = model_spec(model).name
    spec = EngineSpec(height, width, bool(fp16), num_flow_updates, max_pairs or default_max_pairs(height, width, name),
                      model=name)
    if tensorrt_targets:
        return ensure_engine(plugin_models_dir(models_dir), spec, weights, portable_target(tuple(tensorrt_targets)))[0]
    require_tensorrt()  # first, so a machine without TensorRT gets the install hint
    try:
        resolved = cuda_device(device, hint="")
    except RuntimeError as error:
        if not flavour_available(TENSORRT_RTX):
            raise RuntimeError(f"{error} TensorRT: {TENSORRT_INSTALL_HINT}.") from error
        raise RuntimeError(words(  # TensorRT for RTX builds without a GPU, for GPUs it is told of
            f"{error}",
            "Without a GPU, TensorRT for RTX (installed) builds portable engines for the compute capabilities "
            "you list: {tensorrt_targets=example} (RTX 30xx, 40xx and 50xx).",
            example=PORTABLE_EXAMPLE,
        )) from error
    target = build_target(resolved)
    with torch.cuda.device(resolved):
        return ensure_engine(plugin_models_dir(models_dir), spec, weights, target)[0]


# -- listing and clearing -------------------------------------------------------------------------------


def list_cached_engines(models_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One dict per cached ``.onnx`` / ``.trt`` / ``.torchcache`` file: ``path``, ``kind`` (``"onnx"``,
    ``"tensorrt"`` or ``"torch_compile"``; a last row of kind ``"torch_cache_dir"`` is torch's cache folder),
    ``size_bytes``, ``valid_metadata``, ``created``, and the key fields from its sidecar, both flat and as
    ``key`` (a dict; empty when the file has no readable sidecar)."""
    rows: list[dict[str, Any]] = []
    for path in cached_files(plugin_models_dir(models_dir)):
        sidecar = read_sidecar(path) or {}
        key = sidecar.get("key") if isinstance(sidecar.get("key"), dict) else {}
        row: dict[str, Any] = dict(key)
        row.update(
            key=key,
            path=path,
            kind={".onnx": "onnx", ".trt": "tensorrt", RUNTIME_CACHE_SUFFIX: "tensorrt_runtime_cache"}.get(
                path.suffix, str(key.get("kind", path.suffix))),
            built_with=(sidecar.get("info") or {}).get("built_with") if isinstance(sidecar.get("info"), dict) else None,
            size_bytes=path.stat().st_size,
            valid_metadata=bool(key) and sidecar.get("size_bytes") == path.stat().st_size,
            created=sidecar.get("created"),
        )
        rows.append(row)
    # torch.compile's own on-disk cache folder (core.compiled_cache), one row with its total size
    rows.extend(row for row in list_compiled_entries(plugin_models_dir(models_dir)) if row["kind"] == "torch_cache_dir")
    return rows


def clear_cache(models_dir: str | os.PathLike[str] | None = None) -> int:
    """Delete cached ONNX graphs, engines, compiled PyTorch kernels (entries and torch's cache folder), their
    sidecars and leftover temporary files (under the cache lock).

    Returns the number of files removed. Other files in the folder (e.g. weights) are left alone.
    """
    directory = plugin_models_dir(models_dir)
    removed = clear_directory(directory) + clear_torch_cache_dir(directory)
    logger.info("cleared %d file(s) from the engine cache %s", removed, directory)
    return removed


def engine_status(path: Path, key: dict[str, Any]) -> str | None:
    """Why the engine at ``path`` would be rebuilt for ``key`` (``None`` if it is valid). For diagnostics."""
    return check_artifact(path, key)


def cuda_device(
    device: str | torch.device,
    what: str = "building a TensorRT engine",
    hint: str = f" TensorRT: {TENSORRT_INSTALL_HINT}.",
) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a valid torch device; use 'cuda' or 'cuda:N'.") from error
    if resolved.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(
            f"{what} needs a CUDA GPU ({setting('device', str(device))}, CUDA available: "
            f"{torch.cuda.is_available()}).{hint}"
        )
    return torch.device("cuda", resolved.index if resolved.index is not None else torch.cuda.current_device())


def check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
