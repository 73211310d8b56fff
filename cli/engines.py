"""``prebuild``, ``info`` and ``cache clear``: the engine cache and the environment, through the core's
engine manager (``core.engine_manager``)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from ..batch import CliError, UsageError
from .options import SizeType, cli_words, model_option, weights_spec
from .state import say

PACKAGES = ("torch", "torchvision", "tensorrt", "tensorrt_rtx", "onnx", "onnxruntime", "polygraphy", "av")


def engine_manager() -> ModuleType:
    """``core.engine_manager``, or a clear error if this installation has none."""
    try:
        from ..core.artifacts import engine_manager as module
    except ModuleNotFoundError as error:
        if error.name and error.name.endswith("core.engine_manager"):
            raise CliError(
                "the engine manager (core/engine_manager.py) is not available in this installation, so ONNX "
                "export, engine builds and the engine cache cannot be used; update the package."
            ) from error
        raise
    return module


@click.command("prebuild", short_help="Build TensorRT engines (or compiled PyTorch kernels) ahead of time.")
@model_option()
@click.option("--size", "sizes", type=SizeType(), multiple=True, required=True,
              help="Compute resolution HEIGHTxWIDTH to build for; repeat for several.")
@click.option("--fp16/--fp32", "fp16", default=True, show_default=True, help="Engine precision.")
@click.option("--updates", "num_flow_updates", type=click.IntRange(min=1), default=12, show_default=True,
              help="RAFT refinement iterations baked into the graph.")
@click.option("--max-pairs", type=click.IntRange(min=1), default=None,
              help="Largest frame-pair batch the engine accepts [default: by resolution].")
@click.option("--weights", default="DEFAULT", show_default=True,
              help="DEFAULT, a torchvision weights name of the --model (C_T_V2, ...), a .pth path, or 'untrained'.")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None,
              help="Cache folder [default: <models root>/optical-flow-tensorrt].")
@click.option("--device", default="cuda", show_default=True, help="GPU to build for (engines are per GPU model).")
@click.option("--onnx-only", is_flag=True, help="Only export the ONNX graph (works without TensorRT or a GPU).")
@click.option("--tensorrt-targets", "tensorrt_targets", default=None, metavar="SM,...",
              help="Build portable TensorRT for RTX engines for these compute capabilities (e.g. sm86,sm89,sm120) "
                   "without a GPU; a GPU of a listed capability loads them without building. Needs tensorrt-rtx "
                   "(pip install 'scope-optical-flow-tensorrt[tensorrt-rtx]'). Without it, the engine is built for "
                   "--device with the TensorRT flavour that fits it (TensorRT 10/11 first, then TensorRT for RTX; "
                   "$SCOPE_OPTICAL_FLOW_TENSORRT picks one).")
@click.option("--torch", "torch_path", is_flag=True,
              help="Compile the PyTorch path (torch.compile) instead and keep its kernels in the cache (needs CUDA).")
@click.option("--chunk", "chunks", type=click.IntRange(min=1), multiple=True, default=(4, 16), show_default=True,
              help="With --torch: frames per call to compile for (Scope uses 4, run/bench 16); repeat for several.")
def prebuild_command(
    raft_model: str,
    sizes: tuple[tuple[int, int], ...],
    fp16: bool,
    num_flow_updates: int,
    max_pairs: int | None,
    weights: str,
    models_dir: Path | None,
    device: str,
    onnx_only: bool,
    tensorrt_targets: str | None,
    torch_path: bool,
    chunks: tuple[int, ...],
) -> None:
    """Export ONNX graphs and build TensorRT engines ahead of time (or, with --torch, compile the PyTorch path),
    so the first run starts at once. Each line printed names the file built and the TensorRT flavour, version
    and compute capabilities it was built with."""
    manager = engine_manager()
    from ..core.artifacts.trt_rtx import parse_targets
    from ..core.model.specs import model_spec

    try:
        with cli_words():
            model_spec(raft_model)
    except ValueError as error:
        raise UsageError(str(error)) from error
    try:
        targets = parse_targets(tensorrt_targets) if tensorrt_targets is not None else None
    except ValueError as error:
        raise UsageError(f"--tensorrt-targets: {error}") from error
    if any(height is None for height, _ in sizes):
        raise UsageError("prebuild needs sizes (--size HEIGHTxWIDTH): at --size native a run builds for each input's "
                         "size when it meets it; prebuild that size here to have it ready.")
    with cli_words():  # the core's messages name these flags (--weights untrained, --tensorrt-targets ...)
        for height, width in sizes:
            _prebuild_size(manager, height, width, torch_path=torch_path, onnx_only=onnx_only, chunks=chunks,
                           targets=targets, fp16=fp16, num_flow_updates=num_flow_updates, max_pairs=max_pairs,
                           weights=weights_spec(weights), models_dir=models_dir, device=device, model=raft_model)


def _prebuild_size(
    manager: ModuleType, height: int, width: int, *, torch_path: bool, onnx_only: bool, chunks: tuple[int, ...],
    targets: tuple[str, ...] | None, **arguments: Any,
) -> None:
    """``prebuild`` for one size: what it builds, and a line per file. A bad option or weights file is a usage
    error (exit code 2); a build that cannot run here (no GPU, no TensorRT) a failure (1)."""
    try:
        if torch_path:
            from ..core.prebuild import prebuild_compiled

            for path in prebuild_compiled(height, width, chunk_frames=chunks, **arguments):
                say(f"{height}x{width}: {path}")
        elif onnx_only:
            say(f"{height}x{width}: {manager.export_onnx_cached(height, width, **arguments)}")
        else:
            try:
                path = manager.prebuild_engine(height, width, tensorrt_targets=targets, **arguments)
            except RuntimeError as error:
                raise CliError(f"{error} (To export only the ONNX graph: prebuild --onnx-only.)") from error
            say(f"{height}x{width}: {path} ({built_with(path)})")
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    except RuntimeError as error:
        raise CliError(str(error)) from error


def built_with(path: Path) -> str:
    """``"TensorRT for RTX 1.7.1.116, compute capabilities 8.6, 8.9, 12.0"``, from an engine's sidecar."""
    from ..core.artifacts.engine_cache import read_sidecar

    sidecar = read_sidecar(path) or {}
    key = sidecar.get("key") or {}
    text = str((sidecar.get("info") or {}).get("built_with") or key.get("tensorrt_version", "unknown TensorRT"))
    targets = key.get("compute_targets") or ([key["compute_capability"]] if key.get("compute_capability") else [])
    return f"{text}, compute capabilities {', '.join(targets)}" if targets else text


@click.command("info", short_help="GPU, versions, backends, weights, models folder, cached engines.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None,
              help="Cache folder to list [default: <models root>/optical-flow-tensorrt].")
@model_option()
def info_command(as_json: bool, models_dir: Path | None, raft_model: str) -> None:
    """GPUs, library versions, backends, the --model and the weights it would load, models folder and cached
    engines."""
    report = collect_info(models_dir, raft_model)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"python      {report['python']} ({report['platform']})")
    for name, version in report["packages"].items():
        click.echo(f"{name:<11} {version or 'not installed'}")
    gpus = report["gpus"]
    click.echo("gpus        " + ("; ".join(f"{g['index']}: {g['name']} ({g['memory_gib']} GiB, sm_{g['capability']})"
                                          for g in gpus) if gpus else f"none ({report['cuda_note']})"))
    flavours = ", ".join(report["tensorrt_flavours"]) or "none installed"
    click.echo(f"backends    {', '.join(report['backends'])} (TensorRT flavours: {flavours})")
    for line in report["tensorrt_choice"]:
        click.echo(f"engines     {line}")
    weights = report["weights"]
    click.echo(f"model       {report['model']}")
    click.echo(f"weights     {weights['status']}")
    click.echo(f"models dir  {report['models_dir']}")
    engines = report["engines"]
    if isinstance(engines, str):
        click.echo(f"cache       {engines}")
    elif not engines:
        click.echo("cache       empty")
    else:
        total_mib = sum(entry.get("size_bytes", 0) for entry in engines) / 2**20
        click.echo(f"cache       {len(engines)} file(s), {total_mib:.1f} MiB")
        for entry in engines:
            key = entry.get("key")
            key_text = " ".join(f"{k}={v}" for k, v in key.items()) if isinstance(key, dict) else str(key)
            built = f"  [{entry['built_with']}]" if entry.get("built_with") else ""
            click.echo(f"  {entry.get('kind', '?'):<5} {entry.get('size_bytes', 0) / 2**20:8.1f} MiB  "
                       f"{entry.get('path')}{built}  {key_text}")


def collect_info(models_dir: Path | None = None, model: str = "raft_small") -> dict[str, Any]:
    import torch

    from ..core.artifacts.trt_build import choose_flavour, installed_flavours
    from ..core.backends import BACKENDS, tensorrt_available
    from ..core.common.paths import plugin_models_dir

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}{props.minor}"})
    cuda_note = "CUDA build, no GPU visible" if torch.version.cuda else "CPU-only PyTorch build"
    choice = []
    if not gpus and "tensorrt_rtx" in installed_flavours():
        choice.append("no GPU here: prebuild --tensorrt-targets sm86,sm89,sm120 builds portable TensorRT for RTX "
                      "engines for those GPUs")
    for gpu in gpus:  # which flavour each GPU would run, and why (or why none)
        capability = f"{gpu['capability'][:-1]}.{gpu['capability'][-1]}"
        try:
            choice.append(f"gpu {gpu['index']}: {choose_flavour(capability, gpu['name'])[1]}")
        except RuntimeError as error:
            choice.append(f"gpu {gpu['index']}: {error}")
    try:
        engines: list[dict[str, Any]] | str = [
            {key: (str(value) if isinstance(value, Path) else value) for key, value in entry.items()}
            for entry in engine_manager().list_cached_engines(models_dir)
        ]
    except CliError as error:
        engines = str(error)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "gpus": gpus,
        "cuda_note": cuda_note,
        "backends": list(BACKENDS),
        "tensorrt_available": tensorrt_available(),
        "tensorrt_flavours": list(installed_flavours()),
        "tensorrt_choice": choice,
        "model": model,
        "weights": weights_status(model),
        "models_dir": str(plugin_models_dir(models_dir)),
        "engines": engines,
    }


def weights_status(model: str = "raft_small") -> dict[str, Any]:
    """Which weights file ``weights="DEFAULT"`` would use for ``model``, and whether it is on this machine."""
    import os

    import torch

    from ..core.model.specs import model_spec
    from ..core.model.weights import WEIGHTS_ENV, default_weights_file

    try:
        with cli_words():
            spec = model_spec(model)
    except ValueError as error:
        raise UsageError(str(error)) from error
    default = spec.weights_enum.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(default.url).name
    env_value = os.environ.get(WEIGHTS_ENV)
    if env_value:
        try:
            env_path = default_weights_file(spec)
        except (FileNotFoundError, ValueError) as error:  # what loading would say, shown instead of raised
            return {"source": "env", "path": env_value, "present": False, "status": f"${WEIGHTS_ENV}: {error}"}
        if env_path is not None:
            status = f"{spec.title} weights from ${WEIGHTS_ENV}: {env_path}"
            return {"source": "env", "path": str(env_path), "present": True, "status": status}
    present = cached.is_file()
    status = (f"{default} cached at {cached}" if present else
              f"{default} not cached; first use downloads {default.url} to {cached} (offline: put the file there "
              f"or set ${WEIGHTS_ENV})")
    return {"source": "torchvision", "path": str(cached), "present": present, "url": default.url, "status": status}


def _version(name: str) -> str | None:
    from ..core.artifacts.engine_cache import installed_version

    version = installed_version(name)
    if version is not None:
        return version
    if name == "tensorrt":  # NVIDIA also ships it as tensorrt-cu12 / -cu13 wheels without a "tensorrt" dist
        import importlib.util

        if importlib.util.find_spec("tensorrt") is not None:
            try:
                import tensorrt

                return str(tensorrt.__version__)
            except Exception as error:  # a broken install should show in `info`, not crash it
                return f"installed but not importable ({type(error).__name__}: {error})"
    return None


@click.group("cache", short_help="Manage the ONNX/engine/compiled-kernel cache (cache clear).")
def cache_group() -> None:
    """The ONNX/engine/compiled-kernel cache."""


@cache_group.command("clear")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None,
              help="Cache folder [default: <models root>/optical-flow-tensorrt].")
def cache_clear_command(models_dir: Path | None) -> None:
    """Remove cached ONNX graphs, TensorRT engines and compiled PyTorch kernels (rebuilt on next use)."""
    removed = engine_manager().clear_cache(models_dir)
    say(f"removed {removed} cached file(s)")
