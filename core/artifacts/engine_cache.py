"""A small on-disk cache of build artifacts (ONNX graphs, TensorRT engines) with a JSON sidecar per file.

Every artifact ``<name>`` has a sidecar ``<name>.json`` holding the key it was built for, its size and
sha256. An artifact is used only if its sidecar exists, its key equals the wanted key and size and sha256
match the file; anything else (missing, stale, truncated, corrupt) is rebuilt. Writes are atomic: the
artifact is built into a temporary file in the same folder, then ``os.replace``-d into place; the old
sidecar is removed first and the new one written last, so a crash in between leaves an artifact without a
sidecar, which counts as stale. One inter-process lock per cache folder (``filelock``) serializes checks,
builds, loads and clearing, so two processes that need the same engine build it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..common.log import logger
from ..model.specs import MODEL_NAMES
from . import trust

PACKAGE_NAME = "scope-optical-flow-tensorrt"

SIDECAR_SUFFIX = ".json"
LOCK_NAME = ".raft_small.lock"
TEMP_MARKER = ".tmp-"
ARTIFACT_PREFIXES = tuple(f"{name}_" for name in MODEL_NAMES)  # raft_small_..., raft_large_...
# .torchcache: compiled PyTorch kernels (core.compiled_cache)
# .rtcache: TensorRT for RTX's runtime cache beside its engine (core.engine_manager)
ARTIFACT_SUFFIXES = (".onnx", ".trt", ".rtcache", ".torchcache")
# A first TensorRT build takes minutes; a process waiting for another one's build waits this long at most.
LOCK_TIMEOUT_S = 3600.0
LOCK_NOTICE_S = 2.0

# Every field a sidecar holds and its type (build_artifact writes exactly these): anything else means a rebuild.
SIDECAR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "key": dict, "info": dict, "size_bytes": int, "sha256": str, "created": str, "build_seconds": (int, float),
}
SIDECAR_REQUIRED = ("key", "size_bytes", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")

_locks: dict[str, FileLock] = {}
_locks_guard = threading.Lock()


class ArtifactBuildError(RuntimeError):
    """A build function did not produce a usable file."""


class UnusableArtifact(RuntimeError):
    """An artifact read for use failed its checks (see :func:`read_artifact`)."""


def sanitize_gpu_name(name: str) -> str:
    """A GPU name made safe for file names: ``"NVIDIA GeForce RTX 4090"`` -> ``"NVIDIA_GeForce_RTX_4090"``.

    Anything but letters, digits, ``.``, ``-`` and ``_`` (path separators, spaces, colons, ...) becomes ``_``.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:64].strip("._-")
    return cleaned or "gpu"


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (``importlib.metadata``), or ``None``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def package_version() -> str:
    """This package's installed version (part of every cache key), ``"unknown"`` when run from a bare checkout."""
    return installed_version(PACKAGE_NAME) or "unknown"


def files_digest(paths: Iterable[Path]) -> str:
    """Short hash (16 hex digits) of these files' contents, in order: the version of the code a key depends on."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def key_hash(fields: dict[str, Any]) -> str:
    """Short stable hash of key fields (8 hex digits), used in file names."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (never a partial file)."""
    temp = _temp_path(path)
    try:
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar of artifact ``path`` as a dict, or ``None`` if missing, unreadable or malformed (a field of
    the wrong type, a field it never holds, a required one missing: see :data:`SIDECAR_FIELDS`)."""
    try:
        data = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if sidecar_is_well_formed(data) else None


def sidecar_is_well_formed(data: object) -> bool:
    """Whether ``data`` is a sidecar as :func:`build_artifact` writes one, every field of its type."""
    if not isinstance(data, dict) or not all(name in data for name in SIDECAR_REQUIRED):
        return False
    for name, value in data.items():
        wanted = SIDECAR_FIELDS.get(name)
        if wanted is None or isinstance(value, bool) or not isinstance(value, wanted):
            return False
    return data["size_bytes"] >= 0 and _SHA256.fullmatch(data["sha256"]) is not None


def cache_lock(directory: Path, name: str = LOCK_NAME) -> FileLock:
    """The inter-process lock ``name`` of a cache folder (one object per lock file in this process, so it nests):
    the folder's own lock by default, or an artifact's (:func:`artifact_lock_name`)."""
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = str((directory / name).resolve())
    with _locks_guard:
        if lock_path not in _locks:
            _locks[lock_path] = FileLock(lock_path)
        return _locks[lock_path]


def artifact_lock_name(path: Path) -> str:
    """The lock file of one artifact (``.<name>.lock``): held while that artifact alone is built, so that a long
    build (a compile of minutes) blocks nobody who needs another artifact, or only reads this one."""
    return f".{path.name}.lock"


@contextmanager
def locked(directory: Path, timeout: float = LOCK_TIMEOUT_S, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold the folder's lock (or lock ``name`` in it); say so in the log if another process holds it (it may be
    building)."""
    lock = cache_lock(directory, name)
    try:
        lock.acquire(timeout=min(LOCK_NOTICE_S, timeout))
    except Timeout:
        logger.info("waiting for another process using the engine cache %s (it may be building an engine)", directory)
        try:
            lock.acquire(timeout=max(0.0, timeout - min(LOCK_NOTICE_S, timeout)))
        except Timeout as error:
            raise RuntimeError(
                f"timed out after {timeout:.0f} s waiting for the engine cache lock {lock.lock_file}. If no other "
                "process is building an engine, delete that lock file and try again."
            ) from error
    try:
        yield
    finally:
        lock.release()


def check_artifact(path: Path, key: dict[str, Any]) -> str | None:
    """Why ``path`` cannot be used for ``key`` (a short reason), or ``None`` when it is valid: its sidecar is well
    formed and holds ``key``, its size and sha256 match, and it is an entry this process may load
    (:func:`.trust.why_untrusted`)."""
    if not path.is_file():
        return "not built yet"
    sidecar = read_sidecar(path)
    if sidecar is None:
        return f"its metadata {sidecar_path(path).name} is missing, unreadable or malformed"
    stored = sidecar["key"]
    if stored != key:
        changed = sorted(name for name in set(key) | set(stored) if stored.get(name) != key.get(name))
        return f"it was built for other settings (changed: {', '.join(changed)})"
    size = path.stat().st_size
    if size != sidecar["size_bytes"]:
        return f"its size is {size} bytes, not the {sidecar['size_bytes']} recorded (truncated or replaced)"
    sha256 = file_sha256(path)
    if sha256 != sidecar["sha256"]:
        return "its sha256 does not match the recorded one (corrupt)"
    return trust.why_untrusted(path, key, sha256)


def read_artifact(path: Path, key: dict[str, Any] | None = None) -> bytes:
    """The bytes of an artifact, read once and checked as :func:`check_artifact` checks (against ``key``, or
    ``None``: the key its sidecar holds) in what was read, so a file swapped after an earlier check is never
    used. Raises :class:`UnusableArtifact` with the reason."""
    with path.open("rb") as handle:
        status = os.fstat(handle.fileno())
        data = handle.read()
    sidecar = read_sidecar(path)
    if sidecar is None:
        raise UnusableArtifact(f"{path.name}: its metadata is missing, unreadable or malformed")
    if key is not None and sidecar["key"] != key:
        raise UnusableArtifact(f"{path.name}: it was built for other settings")
    sha256 = hashlib.sha256(data).hexdigest()
    if len(data) != sidecar["size_bytes"] or sha256 != sidecar["sha256"]:
        raise UnusableArtifact(f"{path.name}: its size or sha256 does not match the recorded ones")
    reason = trust.why_untrusted(path, sidecar["key"], sha256, status)
    if reason is not None:
        raise UnusableArtifact(f"{path.name}: {reason}")
    return data


def build_artifact(
    path: Path, key: dict[str, Any], build: Callable[[Path], None], info: dict[str, Any] | None = None
) -> Path:
    """Run ``build(temp_path)`` and move the result to ``path`` with a fresh sidecar (atomic; caller holds the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(path)
    sidecar_path(path).unlink(missing_ok=True)
    started = time.monotonic()
    try:
        build(temp)
        if not temp.is_file() or temp.stat().st_size == 0:
            raise ArtifactBuildError(f"building {path.name} produced no file (or an empty one)")
        size, sha256 = temp.stat().st_size, file_sha256(temp)
        _fsync(temp)  # the bytes reach the disk before the name does
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    sidecar = {
        "key": key,
        "info": dict(info or {}),
        "size_bytes": size,
        "sha256": sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 3),
    }
    atomic_write_bytes(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True).encode())
    trust.remember(key, sha256)
    return path


def ensure_artifact(
    path: Path,
    key: dict[str, Any],
    build: Callable[[Path], None],
    *,
    info: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    label: str = "artifact",
) -> Path:
    """``path`` valid for ``key``, building it first if it is missing, stale or corrupt (takes the lock)."""
    with locked(path.parent):
        reason = check_artifact(path, key)
        if reason is None:
            logger.debug("using cached %s %s", label, path)
            return path
        if path.exists() or sidecar_path(path).exists():
            logger.warning("rebuilding %s %s: %s", label, path.name, reason)
        extra = info() if callable(info) else info
        return build_artifact(path, key, build, extra)


def invalidate(path: Path, reason: str) -> None:
    """Remove an artifact found unusable after it passed :func:`check_artifact` (e.g. it failed to load)."""
    logger.warning("discarding %s: %s; it will be rebuilt", path, reason)
    sidecar_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def cached_files(directory: Path) -> list[Path]:
    """Artifacts in ``directory`` (``raft_small_*`` / ``raft_large_*`` ``.onnx`` / ``.trt``), sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(
        child for child in directory.iterdir()
        if child.is_file() and child.name.startswith(ARTIFACT_PREFIXES) and child.suffix in ARTIFACT_SUFFIXES
    )


def clear_directory(directory: Path) -> int:
    """Remove every artifact, sidecar and leftover temporary file in ``directory`` under the lock; returns the count."""
    if not directory.is_dir():
        return 0
    removed = 0
    with locked(directory):
        for child in sorted(directory.iterdir()):
            name = child.name
            ours = (name.startswith(ARTIFACT_PREFIXES) and (
                child.suffix in ARTIFACT_SUFFIXES
                or name.endswith(tuple(suffix + SIDECAR_SUFFIX for suffix in ARTIFACT_SUFFIXES))
                or TEMP_MARKER in name
            )) or (name.startswith(tuple("." + prefix for prefix in ARTIFACT_PREFIXES)) and name.endswith(".lock"))
            if ours and child.is_file():
                child.unlink()
                removed += 1
    return removed


def sweep_stale_temps(directory: Path) -> int:
    """Remove temporary files that processes which no longer run left behind (a build killed mid-write); returns
    the count. A temporary file's name holds its writer's process id, so a live writer's file is never touched."""
    if not directory.is_dir():
        return 0
    removed = 0
    for child in directory.iterdir():
        writer = temp_writer(child.name)
        if writer is None or process_alive(writer):
            continue
        try:
            child.unlink()
            removed += 1
        except OSError:  # gone already, or a folder we cannot write: nothing to sweep here
            continue
    if removed:
        logger.info("removed %d temporary file(s) that stopped builds left in %s", removed, directory)
    return removed


def temp_writer(name: str) -> int | None:
    """The process id in a temporary artifact file's name (:func:`_temp_path`), or ``None`` for other names."""
    if not name.startswith(ARTIFACT_PREFIXES) or TEMP_MARKER not in name:
        return None
    pid = name.rsplit(TEMP_MARKER, 1)[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OSError:  # e.g. Windows, where signal 0 is not a probe: assume alive, never remove a live file
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def folder_writable(directory: Path) -> bool:
    """Whether artifacts can be written to ``directory`` (made if missing): a read-only models folder can still
    serve what it holds."""
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            return False
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _fsync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _temp_path(path: Path) -> Path:
    # Same folder as the target (os.replace must not cross file systems); unique per process and thread.
    return path.with_name(f"{path.name}{TEMP_MARKER}{os.getpid()}-{threading.get_ident()}")
