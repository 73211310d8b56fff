"""What a Scope user runs today: Scope's built-in optical-flow pipeline beside this project's Flow pipeline.

Both pipelines are driven the way Scope's pipeline processor drives a preprocessor: ``prepare(video=True)``
gives the frames per call, each call gets a list of ``[1, H, W, 3]`` uint8 frames (on the CPU, as decoded) with
``init_cache=True`` on the first call of a stream, and returns ``{"video": [F, H, W, 3]}`` in ``[0, 1]``. Both
get the same seeded random RAFT Small weights: the built-in through its model loader (patched to load them
instead of downloading), ours through ``$SCOPE_OPTICAL_FLOW_WEIGHTS``. The built-in is built as Scope builds it
(``OpticalFlowPipeline(config, device)``, model_size "small"; its constructor compiles and warms up).

Each pipeline is built once (construction time) and, for each input size, runs a first pass over the clip
(compiles, graph captures), then a timed second pass over the same clip as a new stream: ms per call,
frames/s; and each output map (every frame but the stream's first) against torchvision's flow of the true
consecutive pair (fp32, 12 updates, the same weights) through ``flow_to_image``, at the input resolution and
at the pipelines' 512x512 compute size: mean difference in /255 and how many frames are within 2/255.
Scope's source is read from a folder given on the command line and never copied into this repository.

Preparation, on a machine with internet (both folders are ignored by git; pass them to the GPU machine)::

    git clone --depth 1 --branch v0.2.4 https://github.com/daydreamlive/scope /tmp/scope
    mkdir -p external/scope-v0.2.4 && cp -r /tmp/scope/src external/scope-v0.2.4/
    pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        -d .whl/scope-bench pydantic pluggy

Usage on the GPU machine::

    pip install --no-index --find-links .whl/scope-bench pydantic pluggy
    python benchmarks/bench_scope_builtin.py --scope-src external/scope-v0.2.4/src --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _checkout import use_this_checkout  # noqa: E402  (same folder)

use_this_checkout()

from scope_optical_flow_tensorrt.core.model.weights import load_raft_small  # noqa: E402
from scope_optical_flow_tensorrt.core.resize import resize_images  # noqa: E402

UPDATES = 12  # the built-in runs torchvision's default; ours is set to the same
COMPUTE_SIZE = (512, 512)  # both pipelines compute flow at 512x512 whatever the input size


def import_scope(source: Path) -> None:
    """Make ``import scope`` load the given source tree (``<checkout>/src``)."""
    marker = source / "scope" / "core" / "pipelines" / "optical_flow" / "pipeline.py"
    if not marker.is_file():
        raise SystemExit(f"--scope-src {source}: no scope/core/pipelines/optical_flow/pipeline.py there; pass the "
                         "src folder of a daydreamlive/scope checkout (v0.2.4).")
    try:
        import pluggy  # noqa: F401
        import pydantic  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"Scope's modules need pydantic and pluggy ({error}); install them first, e.g. "
                         "pip install --no-index --find-links .whl/scope-bench pydantic pluggy") from error
    sys.path.insert(0, str(source.resolve()))


def moving_frames(count: int, height: int, width: int) -> list[torch.Tensor]:
    """``count`` frames ``[1, H, W, 3]`` uint8 (CPU): a smooth random texture panning 3 px right, 1 px down."""
    generator = torch.Generator().manual_seed(0)
    margin = 4 * count + 8
    texture = torch.rand(1, 3, height + margin, width + margin, generator=generator)
    texture = F.avg_pool2d(texture, 5, stride=1, padding=2)[0]
    texture = ((texture - 0.5) * 4 + 0.5).clamp(0, 1)  # averaging flattened the contrast
    frames = []
    for i in range(count):
        top, left = margin - i - 4, margin - 3 * i - 4
        crop = texture[:, top : top + height, left : left + width]
        frames.append((crop * 255).round().to(torch.uint8).permute(1, 2, 0).unsqueeze(0).contiguous())
    return frames


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def drive(pipeline: Any, frames: list[torch.Tensor]) -> tuple[list[float], torch.Tensor]:
    """One stream through ``pipeline`` as Scope's processor runs it: seconds per call and ``[T, H, W, 3]`` maps."""
    size = pipeline.prepare(video=True).input_size
    times, maps = [], []
    for start in range(0, len(frames) - size + 1, size):
        chunk = frames[start : start + size]
        began = time.perf_counter()
        out = pipeline(video=chunk, init_cache=start == 0)["video"]
        synchronize()
        times.append(time.perf_counter() - began)
        maps.append(out.float().cpu())
    return times, torch.cat(maps)


@torch.inference_mode()
def reference_maps(raft: torch.nn.Module, frames: list[torch.Tensor], device: torch.device,
                   compute: tuple[int, int] | None = None) -> torch.Tensor:
    """torchvision's flow of every consecutive pair as ``[T-1, H, W, 3]`` maps in [0, 1]: at the input size, or
    at ``compute`` size (frames resized to it, maps resized back, as both pipelines do)."""
    from torchvision.utils import flow_to_image

    images = torch.cat(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [-1, 1], as RAFT expects
    height, width = images.shape[-2:]
    maps = []
    for start in range(0, images.shape[0] - 1, 8):
        first = images[start : start + 8].to(device)
        second = images[start + 1 : start + 9].to(device)
        first = first[: second.shape[0]]
        if compute is not None:
            first, second = resize_images(first, *compute), resize_images(second, *compute)
        flow = raft(first, second, num_flow_updates=UPDATES)[-1]
        pictures = resize_images(flow_to_image(flow).float() / 255, height, width)
        maps.append(pictures.permute(0, 2, 3, 1).cpu())
    return torch.cat(maps)


def agreement(maps: torch.Tensor, reference: torch.Tensor, key: str) -> dict[str, Any]:
    """Per-frame mean |difference| in /255 of frames 1..T-1 against the reference of pairs (0,1)..(T-2,T-1)."""
    frames = min(maps.shape[0], reference.shape[0] + 1)
    per_frame = ((maps[1:frames] - reference[: frames - 1]).abs().mean(dim=(1, 2, 3)) * 255).tolist()
    return {
        "frames_compared": len(per_frame),
        f"vis_mean_diff_255{key}": statistics.mean(per_frame),
        f"vis_worst_frame_255{key}": max(per_frame),
        f"frames_within_2_255{key}": sum(value <= 2.0 for value in per_frame),
        f"per_frame_255{key}": [round(value, 3) for value in per_frame],
    }


def build_builtin(scope_engine: types.ModuleType, raft_state: dict[str, torch.Tensor], device: torch.device,
                  compile_model: bool) -> Any:
    """Scope's ``OpticalFlowPipeline`` as its pipeline manager builds it, with our weights instead of a download."""
    from scope.core.pipelines.optical_flow.pipeline import OpticalFlowPipeline
    from torchvision.models.optical_flow import raft_small

    def load_raft_model(use_large_model: bool, device: str = "cuda") -> tuple[torch.nn.Module, None]:
        if use_large_model:
            raise SystemExit("this comparison is for RAFT Small")
        model = raft_small(weights=None)
        model.load_state_dict(raft_state)
        return model.to(device=device).eval(), None

    scope_engine.load_raft_model = load_raft_model  # the pipeline imports it from the module when it loads
    if not compile_model:  # --smoke only: a CPU check of this script, not a measurement
        torch_compile = torch.compile
        torch.compile = lambda model, **_: model  # type: ignore[assignment]
        try:
            return OpticalFlowPipeline(types.SimpleNamespace(model_size="small"), device=device)
        finally:
            torch.compile = torch_compile
    return OpticalFlowPipeline(types.SimpleNamespace(model_size="small"), device=device)


def measure(name: str, pipeline: Any, construction: float, frames: list[torch.Tensor],
            references: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, Any]:
    began = time.perf_counter()
    first_times, _ = drive(pipeline, frames)  # compiles, captures (for the first size)
    first_pass = time.perf_counter() - began
    times, maps = drive(pipeline, frames)  # a new stream over the same frames (init_cache on its first call)
    per_call = pipeline.prepare(video=True).input_size
    result: dict[str, Any] = {
        "pipeline": name, "height": size[0], "width": size[1], "frames_per_call": per_call, "calls": len(times),
        "construction_s": construction, "first_pass_s": first_pass, "first_call_s": first_times[0],
        "ms_per_call": statistics.median(times) * 1000, "ms_per_call_max": max(times) * 1000,
        "frames_per_s": per_call / statistics.median(times),
        "output_shape": list(maps.shape),
    }
    for key, reference in references.items():
        result.update(agreement(maps, reference, key))
    backend = getattr(getattr(pipeline, "preprocessor", None), "backend_name", None)
    if backend is not None:
        result["backend"] = backend
    print(f"[{size[0]}x{size[1]}] {name}: {result['ms_per_call']:.2f} ms per {per_call}-frame call, "
          f"{result['frames_per_s']:.0f} frames/s; construction {construction:.1f} s, first pass {first_pass:.1f} s; "
          f"vs torchvision pairs at the input size: mean {result['vis_mean_diff_255']:.2f}/255, "
          f"{result['frames_within_2_255']} of {result['frames_compared']} frames within 2/255; at 512x512: mean "
          f"{result['vis_mean_diff_255_at_compute']:.2f}/255, {result['frames_within_2_255_at_compute']} within 2/255",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scope-src", type=Path, required=True, help="the src folder of a Scope v0.2.4 checkout")
    parser.add_argument("--sizes", nargs="+", default=["512x512", "480x832"], help="input sizes HEIGHTxWIDTH")
    parser.add_argument("--frames", type=int, default=64, help="frames per stream")
    parser.add_argument("--only", choices=["builtin", "ours"], default=None)
    parser.add_argument("--smoke", action="store_true", help="check the script on the CPU: no compile, few frames")
    parser.add_argument("--out", type=Path, default=None, help="folder for scope_builtin.json and .md")
    args = parser.parse_args()
    import_scope(args.scope_src)
    import scope.core.pipelines.optical_flow.engine as scope_engine
    from scope_optical_flow_tensorrt.scope_adapter.pipeline import FlowPipeline

    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("bench_scope_builtin.py needs a CUDA GPU (or --smoke for a CPU check of the script).")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raft, info = load_raft_small(None)  # seeded random weights, the same in both pipelines
    raft = raft.to(device).eval()
    state = {key: value.detach().clone() for key, value in raft.state_dict().items()}
    weights_file = Path(tempfile.mkdtemp()) / "raft_small_random_seed0.pth"
    torch.save(state, weights_file)
    os.environ["SCOPE_OPTICAL_FLOW_WEIGHTS"] = str(weights_file)  # what our FlowPipeline's "DEFAULT" loads

    clips = []
    for text in args.sizes:
        height, width = (int(part) for part in text.lower().split("x"))
        frames = moving_frames(6 if args.smoke else args.frames, height, width)
        references = {"": reference_maps(raft, frames, device),
                      "_at_compute": reference_maps(raft, frames, device, COMPUTE_SIZE)}
        clips.append(((height, width), frames, references))

    builders: list[tuple[str, Callable[[], Any]]] = [
        ("this project's Flow pipeline", FlowPipeline),
        ("Scope v0.2.4 built-in optical-flow", lambda: build_builtin(scope_engine, state, device, not args.smoke)),
    ]
    results = []
    for name, build in builders:  # each built once, as Scope does, then fed every clip as a new stream
        if args.only is not None and (args.only == "ours") != name.startswith("this project"):
            continue
        try:
            synchronize()
            began = time.perf_counter()
            pipeline = build()
            synchronize()
            construction = time.perf_counter() - began
            for size, frames, references in clips:
                results.append(measure(name, pipeline, construction, frames, references, size))
        except Exception as error:  # one pipeline failing must not hide the other
            print(f"{name}: FAILED {type(error).__name__}: {error}", flush=True)
        pipeline = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    environment = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke check)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "weights": f"seeded random ({info.identity}), the same state dict in both pipelines",
        "input": "smooth random texture panning 3 px right and 1 px down per frame, uint8 [1, H, W, 3] per frame",
        "scope_source": str(args.scope_src), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    table = render_markdown(results, environment)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scope_builtin.json").write_text(json.dumps({"environment": environment, "results": results},
                                                                indent=2))
        (args.out / "scope_builtin.md").write_text(table)


def render_markdown(results: list[dict[str, Any]], environment: dict[str, Any]) -> str:
    lines = [f"{key}: {value}  " for key, value in environment.items()]
    lines += ["", "Agreement: each output map against torchvision's flow of the true consecutive pair (fp32, same "
              "weights) through flow_to_image, computed at the input size, and at 512x512 (the pipelines' compute "
              "size) resized back.", "",
              "| size | pipeline | frames/call | ms/call | frames/s | construction s | first pass s | "
              "vs torchvision at input size: mean /255, frames within 2/255 | at 512x512: mean /255, within 2/255 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['height']}x{r['width']} | {r['pipeline']} | {r['frames_per_call']} | {r['ms_per_call']:.2f} | "
                     f"{r['frames_per_s']:.0f} | {r['construction_s']:.1f} | {r['first_pass_s']:.1f} | "
                     f"{r['vis_mean_diff_255']:.2f}, {r['frames_within_2_255']} of {r['frames_compared']} | "
                     f"{r['vis_mean_diff_255_at_compute']:.2f}, {r['frames_within_2_255_at_compute']} of "
                     f"{r['frames_compared']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
