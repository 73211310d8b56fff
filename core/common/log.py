"""The package logger and a once-only warning helper (fallbacks are announced once, not per call)."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("scope_optical_flow_tensorrt")

_said: set[str] = set()
_said_lock = threading.Lock()


def log_once(key: str, message: str, level: int = logging.WARNING) -> bool:
    """Log ``message`` the first time ``key`` is seen in this process; return whether it was logged."""
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
    logger.log(level, message)
    return True
