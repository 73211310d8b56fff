"""The models folder is not a way in (core.artifacts.trust, engine_cache's sidecar checks).

A cache entry is loaded into this process (a ``.torchcache`` entry is pickled data torch unpickles), so one is
loaded only where its file and folder are this user's and nobody else can write them, or where this user's
record (outside the models folder) lists it as one this user built. These tests run as root as well as a user:
what they refuse (a group- or world-writable file or folder, another user's file) is refused for root too.

The compiled path runs with the stand-in compiler (tests/fake_compile.py); torch's loader is replaced by one that
unpickles pickles, because unpickling is what torch does with an entry's bytes and what a hostile entry abuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from fake_compile import FakeTorchCompile, make_preprocessor
from scope_optical_flow_tensorrt.core.artifacts import compiled_cache, trust
from scope_optical_flow_tensorrt.core.artifacts.compiled_cache import ENTRY_SUFFIX, ROUTE_BUILT, ROUTE_LOADED
from scope_optical_flow_tensorrt.core.artifacts.engine_cache import (
    UnusableArtifact,
    check_artifact,
    ensure_artifact,
    read_artifact,
    read_sidecar,
    sidecar_path,
)
from scope_optical_flow_tensorrt.core.backends import torch_backend
from scope_optical_flow_tensorrt.core.backends.torch_backend import ROUTE_FAILED

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file ownership and modes are POSIX")


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def only_entry(folder: Path) -> Path:
    [entry] = sorted(folder.glob(f"*{ENTRY_SUFFIX}"))
    return entry


def rewrite(entry: Path, data: bytes) -> None:
    """Replace an entry's bytes and refresh its sidecar's size and sha256, as someone who can write there can."""
    entry.write_bytes(data)
    meta = json.loads(sidecar_path(entry).read_text())
    meta.update(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    sidecar_path(entry).write_text(json.dumps(meta))


@pytest.fixture
def unpickling_loader(fake: FakeTorchCompile, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's loader as far as a hostile entry is concerned: pickles are unpickled (the stand-in's own bytes load
    as before)."""

    def load(data: bytes) -> None:
        if data[:1] == b"\x80":  # a pickle protocol header
            pickle.loads(data)
        else:
            fake.load(data)

    monkeypatch.setattr(compiled_cache, "load_artifacts", load)


def built_entry(fake: FakeTorchCompile, folder: Path) -> Path:
    make_preprocessor(folder).warm_up([1])
    fake.new_process()
    fake.loads.clear()
    return only_entry(folder)


def _group_writable_folder(entry: Path) -> str:
    entry.parent.chmod(0o775)
    return "can be written by others (mode 0775)"


def _world_writable_file(entry: Path) -> str:
    entry.chmod(0o666)
    return "can be written by others (mode 0666)"


def _another_users_file(entry: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(entry, 12345, 12345)
    return "belongs to another user (uid 12345)"


UNTRUSTED = {"group-writable folder": _group_writable_folder, "world-writable file": _world_writable_file,
             "another user's file": _another_users_file}


@pytest.mark.parametrize("make_untrusted", list(UNTRUSTED.values()), ids=list(UNTRUSTED))
def test_hostile_entry_with_a_refreshed_sha256_does_not_run(
    fake: FakeTorchCompile, unpickling_loader: None, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    make_untrusted: Any,
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    entry = built_entry(fake, folder)
    marker = tmp_path / "payload-ran"
    hostile = pickle.dumps(Payload(marker))
    rewrite(entry, hostile)
    problem = make_untrusted(entry)
    with caplog.at_level(logging.WARNING, logger="scope_optical_flow_tensorrt"):
        assert make_preprocessor(folder).warm_up([1]) == [ROUTE_BUILT]  # rebuilt by the compile process
    assert not marker.exists(), "the hostile entry's payload ran in this process"
    assert entry.read_bytes() != hostile and fake.loads == [entry.read_bytes()]  # only the rebuilt entry loaded
    said = [record.getMessage() for record in caplog.records if "rebuilding compiled kernels" in record.getMessage()]
    assert len(said) == 1 and problem in said[0] and "chmod go-w" in said[0]


def test_an_entry_this_user_built_loads_from_a_shared_folder_through_the_record(
    fake: FakeTorchCompile, tmp_path: Path
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)  # anyone may write here: only what the record vouches for loads
    entry = built_entry(fake, folder)
    assert make_preprocessor(folder).warm_up([1]) == [ROUTE_LOADED] and fake.loads == [entry.read_bytes()]


def test_an_entry_in_a_private_folder_loads_without_a_record(
    fake: FakeTorchCompile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ssh with its keys: a file and folder only this user can write are trusted, e.g. entries copied in."""
    folder = tmp_path / "private"
    folder.mkdir()
    entry = built_entry(fake, folder)
    for path, mode in ((folder, 0o755), (entry, 0o644)):  # whatever the umask made them
        path.chmod(mode)
    monkeypatch.setenv(trust.RECORD_ENV, str(tmp_path / "empty-record"))  # built on another machine, say
    assert make_preprocessor(folder).warm_up([1]) == [ROUTE_LOADED]


def test_a_record_folder_others_can_write_vouches_for_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record"
    monkeypatch.setenv(trust.RECORD_ENV, str(record))
    folder = tmp_path / "shared"
    folder.mkdir()
    entry = folder / "raft_small_1x1-0.onnx"
    ensure_artifact(entry, {"kind": "test"}, lambda temp: temp.write_bytes(b"graph"))
    folder.chmod(0o777)
    assert check_artifact(entry, {"kind": "test"}) is None  # recorded when it was built
    record.chmod(0o777)  # anyone could add records now
    assert "can be written by others" in (check_artifact(entry, {"kind": "test"}) or "")


def test_entry_swapped_after_its_check_is_never_used(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    entry = folder / "raft_small_1x1-0.trt"
    ensure_artifact(entry, {"kind": "test"}, lambda temp: temp.write_bytes(b"our engine"))
    folder.chmod(0o777)
    assert check_artifact(entry, {"kind": "test"}) is None
    rewrite(entry, b"their engine")  # between the check and the read
    with pytest.raises(UnusableArtifact, match="can be written by others"):
        read_artifact(entry)
    rewrite(entry, b"our engine")
    assert read_artifact(entry, {"kind": "test"}) == b"our engine"


def test_entry_that_fails_at_use_is_discarded_and_rebuilt(
    fake: FakeTorchCompile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    entry = built_entry(fake, tmp_path)

    def fail(self: Any, frames: Any) -> Any:
        raise RuntimeError("the loaded kernels crashed")

    with monkeypatch.context() as patch:
        patch.setattr(torch_backend.TorchFlowBackend, "_forward_compiled", fail)
        assert make_preprocessor(tmp_path).warm_up([1]) == [ROUTE_FAILED]
    assert not entry.exists() and not sidecar_path(entry).exists()  # no later process loads it again
    assert any("discarding" in r.getMessage() and "failed at use" in r.getMessage() for r in caplog.records)
    fake.new_process()
    assert make_preprocessor(tmp_path).warm_up([1]) == [ROUTE_BUILT] and entry.is_file()


MALFORMED = {
    "key not an object": {"key": "x"},
    "key a list": {"key": ["kind", "test"]},
    "size a string": {"size_bytes": "5"},
    "size a bool": {"size_bytes": True},
    "negative size": {"size_bytes": -1},
    "sha256 a number": {"sha256": 5},
    "sha256 not hex": {"sha256": "z" * 64},
    "info a string": {"info": "built"},
    "created a number": {"created": 5},
    "build_seconds a string": {"build_seconds": "1"},
    "an unknown field": {"loader": "pickle"},
    "no sha256": {"sha256": None},
}


@pytest.mark.parametrize("change", list(MALFORMED.values()), ids=list(MALFORMED))
def test_every_sidecar_field_is_type_checked_and_anything_unexpected_rebuilds(
    tmp_path: Path, change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    entry = tmp_path / "raft_small_1x1-0.onnx"
    key = {"kind": "test"}
    ensure_artifact(entry, key, lambda temp: temp.write_bytes(b"graph"))
    meta = json.loads(sidecar_path(entry).read_text())
    meta.update(change)
    meta = {name: value for name, value in meta.items() if value is not None}
    sidecar_path(entry).write_text(json.dumps(meta))
    assert read_sidecar(entry) is None
    assert "missing, unreadable or malformed" in (check_artifact(entry, key) or "")  # a reason, not an exception
    builds: list[Path] = []
    ensure_artifact(entry, key, lambda temp: builds.append(temp) or temp.write_bytes(b"graph"))
    assert len(builds) == 1 and read_sidecar(entry) is not None
    assert any("rebuilding" in r.getMessage() and "malformed" in r.getMessage() for r in caplog.records)


def test_a_live_call_with_a_malformed_sidecar_rebuilds_the_entry(fake: FakeTorchCompile, tmp_path: Path) -> None:
    entry = built_entry(fake, tmp_path)
    sidecar_path(entry).write_text(json.dumps({"key": "x"}))  # raised AttributeError out of check_artifact before
    assert make_preprocessor(tmp_path).warm_up([1]) == [ROUTE_BUILT]
    assert read_sidecar(entry) is not None
