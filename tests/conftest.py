"""Shared test fixtures. Tests run on the CPU at small sizes with seeded random RAFT weights unless
pretrained weights are found in ``../shared/weights/`` (then tests marked ``pretrained`` use them)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS_DIR = REPO_ROOT.parent / "shared" / "weights"
COMPUTE_SIZE = 128  # RAFT Small's smallest input
# Stand-ins for torch.compile and its cache artifacts (fixture `fake`), registered here so
# that test modules can also import their helpers.
pytest_plugins = ("fake_compile",)


def find_pretrained_weights() -> Path | None:
    """A RAFT Small state dict from ``../shared/weights`` (or ``$SCOPE_OPTICAL_FLOW_WEIGHTS``), if present."""
    env = os.environ.get("SCOPE_OPTICAL_FLOW_WEIGHTS")
    if env and Path(env).is_file():
        return Path(env)
    if SHARED_WEIGHTS_DIR.is_dir():
        for candidate in sorted(SHARED_WEIGHTS_DIR.glob("*.pth")):
            if "small" in candidate.name.lower():
                return candidate
    return None


PRETRAINED_WEIGHTS = find_pretrained_weights()


def pytest_report_header(config: pytest.Config) -> str:
    if PRETRAINED_WEIGHTS is None:
        return "RAFT weights: seeded random (no pretrained file in ../shared/weights); 'pretrained' tests skip"
    return f"RAFT weights: pretrained tests use {PRETRAINED_WEIGHTS}; other tests use seeded random weights"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_tensorrt = True
    except Exception:
        has_tensorrt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "tensorrt" in item.keywords and not (has_cuda and has_tensorrt):
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU"))
        if "pretrained" in item.keywords and PRETRAINED_WEIGHTS is None:
            item.add_marker(pytest.mark.skip(reason="no pretrained RAFT Small weights in ../shared/weights"))


@pytest.fixture(scope="session")
def _gpu_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-models")


@pytest.fixture(autouse=True)
def _isolated_models_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Never touch the user's real models/engine cache (or its record of trusted entries) from tests. GPU tests share
    one folder for the session, so the compiled kernels one test makes serve the next (a compile costs tens of
    seconds there)."""
    if request.node.get_closest_marker("gpu") is not None:
        models_root = request.getfixturevalue("_gpu_models_root")
        trust = models_root.parent / f"{models_root.name}-trusted-entries"
    else:
        models_root = tmp_path_factory.mktemp("models")
        trust = tmp_path_factory.mktemp("trusted-entries")
    monkeypatch.setenv("DAYDREAM_SCOPE_MODELS_DIR", str(models_root))
    monkeypatch.setenv("SCOPE_OPTICAL_FLOW_TRUST_DIR", str(trust))
    monkeypatch.delenv("SCOPE_OPTICAL_FLOW_WEIGHTS", raising=False)
    return models_root


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scope_optical_flow_tensorrt")


@pytest.fixture
def pretrained_weights() -> Path:
    if PRETRAINED_WEIGHTS is None:
        pytest.skip("no pretrained RAFT Small weights in ../shared/weights")
    return PRETRAINED_WEIGHTS


def make_frames(num_frames: int = 4, height: int = 96, width: int = 112, seed: int = 0) -> torch.Tensor:
    """Random-texture RGB frames ``[F, H, W, C]`` float in [0, 1] with a small drift between frames."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(3, height + num_frames * 2, width + num_frames * 2, generator=generator)
    base = torch.nn.functional.avg_pool2d(base[None], 3, stride=1, padding=1)[0]
    frames = [base[:, i * 2 : i * 2 + height, i : i + width] for i in range(num_frames)]
    return torch.stack(frames).permute(0, 2, 3, 1).contiguous()


def run_in_two_processes(target: Any, *args: Any) -> None:
    """Run ``target(*args, barrier)`` in two forked processes that pass a barrier together (so they ask for the
    same cached artifact at the same moment); both must exit cleanly within a minute."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    processes = [context.Process(target=target, args=(*args, barrier)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
