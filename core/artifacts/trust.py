"""Which cache entries this process may load: the models folder is not a way in.

Loading an entry runs its bytes through a loader in this process: a ``.torchcache`` entry is pickled data that
torch unpickles, an engine is a plan TensorRT deserializes. The sha256 in an entry's sidecar sits in the same
folder, so it guards against corruption, not against whoever can write that folder. So an entry is loaded only
where one of these holds:

- **ownership**, as ssh treats its keys: the file and its folder belong to this user (or root) and neither can
  be written by anyone else (no group or other write permission);
- **this user's record**: every entry this user builds is recorded (its key and sha256) in a folder outside the
  models folder (:func:`record_dir`, itself private to this user), so a shared or group-writable models folder
  still serves what this user built there.

Anything else is rebuilt (the caller logs one line with the reason :func:`why_untrusted` gives). On Windows,
where permissions are ACLs that this check does not read, only the record counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_module
from pathlib import Path
from typing import Any

from ..common.log import logger

RECORD_ENV = "SCOPE_OPTICAL_FLOW_TRUST_DIR"
RECORD_SUBDIR = ("scope-optical-flow-tensorrt", "trusted-entries")
_OTHERS_WRITE = stat_module.S_IWGRP | stat_module.S_IWOTH
_POSIX = os.name == "posix"


def record_dir() -> Path:
    """Where this user's record of the entries it built lives: ``$SCOPE_OPTICAL_FLOW_TRUST_DIR``, else
    ``$XDG_CACHE_HOME`` (``~/.cache``; ``%LOCALAPPDATA%`` on Windows) ``/scope-optical-flow-tensorrt/trusted-entries``."""
    override = os.environ.get(RECORD_ENV)
    if override:
        return Path(override).expanduser()
    if _POSIX:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    else:
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    return base.joinpath(*RECORD_SUBDIR)


def why_untrusted(path: Path, key: Any, sha256: str, file_stat: os.stat_result | None = None) -> str | None:
    """Why the entry at ``path`` (holding ``key``, content ``sha256``) must not be loaded, or ``None``.

    ``file_stat`` is the ``os.fstat`` of the file as it was read (default: ``os.stat(path)``)."""
    if _recorded(key, sha256):
        return None
    if not _POSIX:
        return (f"this user did not build it (it is not in the record of entries built here, {record_dir()}); on "
                "Windows only those load, because loading an entry can run code")
    try:
        problem = _ownership_problem(file_stat or os.stat(path), f"the file {path.name}") or _ownership_problem(
            os.stat(path.parent), f"its folder {path.parent}")
    except OSError as error:
        return f"its owner and permissions cannot be read ({error})"
    if problem is None:
        return None
    return (f"{problem}, so it may not be an entry this process built, and loading it could run someone else's "
            "code. It is rebuilt and recorded as this user's; to load entries placed there by someone you trust, "
            "make the file and folder yours and writable by you only (chown, chmod go-w)")


def remember(key: Any, sha256: str) -> None:
    """Record an entry this user just built, so it loads from any folder (best effort: a record that cannot be
    written only means a shared folder's entry is rebuilt next time)."""
    folder = record_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _record_folder_problem(folder) is not None:
            return
        (folder / _record_name(key, sha256)).touch()
    except OSError as error:
        logger.debug("could not record the cache entry as this user's in %s: %s", folder, error)


def _recorded(key: Any, sha256: str) -> bool:
    folder = record_dir()
    try:
        return _record_folder_problem(folder) is None and (folder / _record_name(key, sha256)).is_file()
    except OSError:
        return False


def _record_folder_problem(folder: Path) -> str | None:
    """The record counts only where nobody else could have added to it."""
    if not _POSIX:
        return None
    return _ownership_problem(os.stat(folder), f"the record folder {folder}")


def _ownership_problem(status: os.stat_result, what: str) -> str | None:
    if status.st_uid not in (os.geteuid(), 0):
        return f"{what} belongs to another user (uid {status.st_uid})"
    if status.st_mode & _OTHERS_WRITE:
        return f"{what} can be written by others (mode {stat_module.S_IMODE(status.st_mode):04o})"
    return None


def _record_name(key: Any, sha256: str) -> str:
    """One file name per (key, content): a record of one entry never vouches for other bytes or other settings."""
    text = json.dumps({"key": key, "sha256": sha256}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
