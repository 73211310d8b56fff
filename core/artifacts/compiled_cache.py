"""Compiled PyTorch kernels (torch.compile) as cache entries in the models folder, beside the TensorRT engines.

The PyTorch fast path compiles ``encode`` and ``update_step`` with torch.compile on its first call of each window
shape (20-30 s at 512x512 on a fresh machine). Two things keep that work:

- **cache entries** ``{model}_{H}x{W}_{gpu}-{hash}.torchcache``: torch's portable cache artifacts
  (``torch.compiler.save_cache_artifacts``: Inductor's compiled graphs with their Triton kernels, AOTAutograd
  results, autotuning choices) for one window shape (``pairs`` frame pairs per call), written after a warm-up
  compiled them and hot-loaded (``load_cache_artifacts``) before a later process compiles. They follow the
  engine cache's rules (:mod:`core.engine_cache`): a JSON sidecar with the key, size and sha256; atomic writes;
  one inter-process lock per folder, so two processes that need the same entry compile it once; a missing,
  stale, truncated or corrupt entry is rebuilt, never loaded.
- entries are written by the compile process (:mod:`core.backends.compile_worker`) only, so they hold our kernels
  and nothing else the host's process compiled; the host's process only loads them.

The key holds everything the compiled code depends on: the RAFT model, GPU model and compute capability, compute
size, window pairs, precision, flow updates, weights identity, the correlation lookup (fused Triton kernel or
grid_sample), torch and Triton versions, this package's version and a hash of the model
code. Model, size, pairs, precision, updates, weights and lookup name the file (several settings side by
side); the rest are rebuilt in place when they change.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager

import torch

from ..common.log import logger
from ..model import corr_lookup as corr_lookup_module
from ..model import fast_update as fast_update_module
from ..model import raft as raft_module
from ..model import specs as models_module
from .engine_cache import (
    ArtifactBuildError,
    UnusableArtifact,
    artifact_lock_name,
    build_artifact,
    cached_files,
    check_artifact,
    files_digest,
    folder_writable,
    installed_version,
    invalidate,
    key_hash,
    locked,
    package_version,
    read_artifact,
    read_sidecar,
    sanitize_gpu_name,
)

CACHE_FORMAT = 1
ENTRY_SUFFIX = ".torchcache"
TORCH_CACHE_SUBDIR = "torch-compile-cache"
KIND = "torch_compile"

# Routes a warm-up reports (also in logs and benchmarks/results/cold_start.json).
ROUTE_LOADED = "cache-entry"  # kernels came from a valid .torchcache entry (torch's portable cache artifacts)
ROUTE_BUILT = "compiled-and-saved"  # compiled now (no valid entry) and saved as an entry
ROUTE_NOT_SAVED = "compiled-not-saved"  # compiled now, but torch recorded nothing to save
ROUTE_EAGER = "eager"  # compiling failed (or is off): the model runs eagerly
ROUTE_BACKGROUND = "compiling-in-background"  # served uncompiled (CUDA graph) while a worker thread compiles it

_NAME_FIELDS = ("model", "height", "width", "pairs", "precision", "num_flow_updates", "weights", "lookup",
                "device_index")


class CompileUnavailable(RuntimeError):
    """The warm-up ran, but the backend fell back to eager: there is nothing compiled to save."""


# -- keys and names -----------------------------------------------------------------------------------


def model_code_digest() -> str:
    """Hash of the modules whose code torch.compile traces, so an edited model recompiles even at one version."""
    core = Path(__file__).parents[1]
    modules = (raft_module, fast_update_module, corr_lookup_module, models_module)
    return files_digest([*(Path(module.__file__) for module in modules),
                         core / "model" / "_corr_lookup_triton.py",  # the fused lookup's kernel
                         core / "backends" / "torch_backend.py"])  # what is compiled, how


def device_identity(device: torch.device) -> tuple[str, str]:
    """(GPU name, compute capability) of a CUDA device; ``("cpu-<machine>", "")`` for the CPU."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return torch.cuda.get_device_name(index), f"{major}.{minor}"
    return f"cpu-{platform.machine() or 'unknown'}", ""


def compiled_key(
    *,
    model: str,
    height: int,
    width: int,
    pairs: int,
    fp16: bool,
    num_flow_updates: int,
    weights: str,
    device: torch.device,
    fused_lookup: bool,
) -> dict[str, Any]:
    """The full key of the compiled kernels for one window shape (``pairs`` frame pairs per model call)."""
    gpu_name, capability = device_identity(device)
    # torch's compiled graphs are keyed by device index too: kernels compiled on cuda:0 do not serve cuda:1.
    index = (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else 0
    return {
        "format": CACHE_FORMAT,
        "kind": KIND,
        "model": model,
        "height": height,
        "width": width,
        "pairs": pairs,
        "precision": "fp16" if fp16 else "fp32",
        "num_flow_updates": num_flow_updates,
        "weights": weights,
        "lookup": "fused" if fused_lookup else "grid_sample",
        "gpu_name": gpu_name,
        "compute_capability": capability,
        "device_index": index,
        "torch_version": torch.__version__,
        "triton_version": installed_version("triton"),
        "package_version": package_version(),
        "model_code": model_code_digest(),
    }


def entry_path(
    directory: Path, key: dict[str, Any], name_fields: tuple[str, ...] = _NAME_FIELDS, suffix: str = ENTRY_SUFFIX
) -> Path:
    """``{model}_{H}x{W}_{gpu}-{hash of the name fields}{suffix}`` in ``directory``."""
    digest = key_hash({name: key[name] for name in name_fields})
    gpu = sanitize_gpu_name(key["gpu_name"])
    return directory / f"{key['model']}_{key['height']}x{key['width']}_{gpu}-{digest}{suffix}"


# -- torch's caches -------------------------------------------------------------------------------------


def torch_cache_dir(directory: Path) -> Path:
    """Inductor's cache folder that versions before the compile process kept in the models folder (listed and
    cleared by the CLI's ``cache`` commands; nothing writes it any more)."""
    return directory / TORCH_CACHE_SUBDIR


# -- torch's portable cache artifacts (module-level so tests can stand in for them) ----------------------


def save_artifacts() -> bytes | None:
    """Everything torch compiled in this process so far, as portable bytes (``None`` if nothing was recorded)."""
    saved = torch.compiler.save_cache_artifacts()
    return None if saved is None else saved[0]


def load_artifacts(data: bytes) -> None:
    """Hot-load portable cache artifacts into torch's caches (raises if torch cannot read them)."""
    if torch.compiler.load_cache_artifacts(data) is None:
        raise RuntimeError("torch could not read the cache artifacts")


def compile_misses() -> int:
    """How many graphs Inductor has compiled in this process because its cache did not have them."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_miss"])


def fresh_torch_cache() -> ContextManager[None]:
    """A clean temporary Inductor cache for one compile, so torch compiles (and records) every artifact instead
    of serving some from an on-disk cache it would not record. A no-op where torch lacks it."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:
        try:
            from torch._inductor.utils import fresh_inductor_cache as fresh_cache
        except ImportError:
            return nullcontext()
    return fresh_cache()


# -- entries ------------------------------------------------------------------------------------------


class CompiledKernelCache:
    """The cache entries of one compiled model (``base_key``: :func:`compiled_key` without ``pairs``).

    Reading takes no lock: an entry is read whole into memory and its bytes are checked against the sha256 its
    sidecar records, so an entry being replaced while it is read is simply not used, and a folder this process
    cannot write (a read-only models folder) still serves what it holds. Building holds that entry's own lock
    (:func:`.engine_cache.artifact_lock_name`), so a compile of minutes never blocks a process that needs another
    entry, only one that would compile the same.
    """

    def __init__(self, directory: Path, base_key: dict[str, Any]) -> None:
        self.directory = directory
        self.base_key = {name: value for name, value in base_key.items() if name != "pairs"}
        self._loaded: set[Path] = set()
        self.load_seconds = 0.0  # time spent hot-loading entries in this process (for benchmarks)

    def key(self, pairs: int) -> dict[str, Any]:
        return {**self.base_key, "pairs": pairs}

    def path(self, pairs: int) -> Path:
        return entry_path(self.directory, self.key(pairs))

    @property
    def writable(self) -> bool:
        """Whether new entries can be kept here (else only the valid entries already here serve)."""
        return folder_writable(self.directory)

    def why_invalid(self, pairs: int) -> str | None:
        """Why ``pairs``' entry cannot be loaded (not built yet, stale, untrusted, ...), or ``None`` when it is valid
        (no lock, nothing loaded)."""
        return check_artifact(self.path(pairs), self.key(pairs))

    def load(self, pairs: int) -> bool:
        """Hot-load ``pairs``' entry if it is valid (once per process); whether its kernels are now loaded."""
        path = self.path(pairs)
        if path in self._loaded:
            return True
        data = read_entry(path, self.key(pairs))
        return data is not None and self._load(path, data)

    def warm(self, pairs: int, run: Callable[[], None], still_compiled: Callable[[], bool]) -> str:
        """(The compile process.) Run one window shape (``run``) with its compiled kernels from the entry, or
        compile them and save the entry; returns the route (``ROUTE_*``). Holds the entry's own lock, so a second
        process compiling the same entry waits and loads it."""
        key, path = self.key(pairs), self.path(pairs)
        info = {"compiled_by": "compile process"}
        with locked(self.directory, name=artifact_lock_name(path)):
            data = None if path in self._loaded else read_entry(path, key)
            if path in self._loaded or (data is not None and self._load(path, data)):
                misses = compile_misses()
                run()
                if not still_compiled():
                    return ROUTE_EAGER
                if compile_misses() == misses:
                    return ROUTE_LOADED
                # torch compiled although the entry was loaded: it did not hold these kernels (something outside
                # the key changed them). Replace it with what was just compiled.
                logger.warning("compiled kernels %s did not serve %d pairs (torch compiled them anew); replacing it",
                               path.name, pairs)
                saved = save_artifacts()
                if not saved:
                    return ROUTE_NOT_SAVED
                build_artifact(path, key, lambda temp: temp.write_bytes(saved), info)
                return ROUTE_BUILT

            def build(temp: Path) -> None:
                with fresh_torch_cache():
                    run()
                if not still_compiled():
                    raise CompileUnavailable("torch.compile failed; running eagerly")
                saved = save_artifacts()
                if not saved:
                    raise ArtifactBuildError("torch recorded no compiled artifacts to save")
                temp.write_bytes(saved)

            reason = check_artifact(path, key)
            if path.exists() or reason != "not built yet":
                logger.warning("rebuilding compiled PyTorch kernels %s: %s", path.name, reason)
            try:
                build_artifact(path, key, build, info)
            except CompileUnavailable:
                return ROUTE_EAGER
            except ArtifactBuildError as error:
                logger.info("compiled kernels for %d pairs not saved as a cache entry: %s", pairs, error)
                return ROUTE_NOT_SAVED
            self._loaded.add(path)  # this process compiled them: nothing to load
            return ROUTE_BUILT

    def discard(self, pairs: int, reason: str) -> None:
        """Remove ``pairs``' entry after it failed at use (its kernels loaded, then did not run), so that no later
        process loads it again: the next one that needs it builds it anew."""
        path = self.path(pairs)
        self._loaded.discard(path)
        try:
            with locked(self.directory):
                invalidate(path, reason)
        except OSError as error:  # e.g. a read-only models folder: the stream goes on all the same
            logger.warning("could not discard %s (%s): %s", path, reason, error)

    def _load(self, path: Path, data: bytes) -> bool:
        """Hot-load a checked entry's bytes; an entry torch cannot read is discarded (and rebuilt by the caller)."""
        started = time.perf_counter()
        try:
            load_artifacts(data)
        except Exception as error:  # a pickled artifact from another build of torch can fail in many ways
            reason = f"torch could not load its artifacts ({type(error).__name__}: {str(error)[:200]})"
            try:
                invalidate(path, reason)
            except OSError:  # a read-only models folder: it stays, and this process serves uncompiled
                logger.warning("cannot use %s: %s", path, reason)
            return False
        self._loaded.add(path)
        elapsed = time.perf_counter() - started
        self.load_seconds += elapsed
        logger.info("loaded compiled kernels %s (%.2f s)", path.name, elapsed)
        return True


def read_entry(path: Path, key: dict[str, Any]) -> bytes | None:
    """The bytes of a valid, trusted entry for ``key`` (:func:`.engine_cache.read_artifact`: checked in what was
    read, so a file replaced mid-read is never used), or ``None``. Takes no lock and writes nothing."""
    try:
        return read_artifact(path, key)
    except (OSError, UnusableArtifact):
        return None


# -- listing and clearing -------------------------------------------------------------------------------


def list_compiled_entries(directory: Path) -> list[dict[str, Any]]:
    """``path``, ``size_bytes``, ``created`` and ``key`` of each ``.torchcache`` entry, and the torch cache folder's
    size (as a row with ``kind`` ``"torch_cache_dir"``) when it exists."""
    rows: list[dict[str, Any]] = []
    for path in cached_files(directory):
        if path.suffix != ENTRY_SUFFIX:
            continue
        sidecar = read_sidecar(path) or {}
        key = sidecar.get("key") if isinstance(sidecar.get("key"), dict) else {}
        rows.append({"kind": KIND, "path": path, "size_bytes": path.stat().st_size, "created": sidecar.get("created"),
                     "key": key})
    folder = torch_cache_dir(directory)
    if folder.is_dir():
        size = sum(child.stat().st_size for child in folder.rglob("*") if child.is_file())
        rows.append({"kind": "torch_cache_dir", "path": folder, "size_bytes": size, "created": None, "key": {}})
    return rows


def clear_torch_cache_dir(directory: Path) -> int:
    """Remove ``<directory>/torch-compile-cache`` under the cache lock; returns the number of files removed."""
    folder = torch_cache_dir(directory)
    if not folder.is_dir():
        return 0
    with locked(directory):
        count = sum(1 for child in folder.rglob("*") if child.is_file())
        shutil.rmtree(folder, ignore_errors=True)
    return count

