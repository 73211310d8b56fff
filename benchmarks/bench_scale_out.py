"""Scale-out benchmark: ``run --devices`` on one GPU, then on two, over the same synthetic clips.

Writes N clips (default 16 x 48 frames at 512x512, a drifting texture) into a temporary folder, then runs the
multi-process path (``cli.batch.run_clips``: one spawn worker per device, one preprocessor each, clips handed
out dynamically, every clip decoded, computed and written as a flow video) with ``--single`` devices and
with ``--multi`` devices, one after the other in this process tree. A short warm-up pass first fills the
on-disk caches (torch.compile, TensorRT engines) so neither timed pass pays for them.

Two figures per pass:

- end to end: clips (frames) / wall time of the whole pass, worker start-up included (what a user waits);
- steady: the sum over workers of frames / busy time, each worker's first clip left out (it carries the
  first-shape compiles and CUDA-graph captures); the throughput once the workers are running.

Prints a table and the scaling factors, and writes ``scale_out.json`` and ``scale_out.md`` to ``--out``.
Needs PyAV for video clips (without it: PNG-folder clips and .npy outputs). Ray is not used. On a machine
with two GPUs::

    python benchmarks/bench_scale_out.py --out benchmarks/results

Smoke test on a CPU: ``--single cpu --multi cpu:2 --clips 4 --frames 4 --clip-size 128 --size 128 --updates 2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from _checkout import ROOT, use_this_checkout  # noqa: E402  (same folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for JSON/Markdown")
    parser.add_argument("--clips", type=int, default=16, help="number of clips")
    parser.add_argument("--frames", type=int, default=48, help="frames per clip")
    parser.add_argument("--clip-size", type=int, default=512, help="clip height and width in pixels")
    parser.add_argument("--size", type=int, default=512, help="compute height and width")
    parser.add_argument("--updates", type=int, default=12, help="RAFT flow updates")
    parser.add_argument("--chunk", type=int, default=16, help="frames decoded and computed at a time")
    parser.add_argument("--backend", default="auto", help="auto, torch, tensorrt, onnxruntime")
    parser.add_argument("--fp32", action="store_true", help="fp32 instead of fp16")
    parser.add_argument("--no-compile", action="store_true", help="PyTorch backend without torch.compile")
    parser.add_argument("--single", default="0", help="--devices of the first pass (default: GPU 0)")
    parser.add_argument("--multi", default="0,1", help="--devices of the second pass (default: GPUs 0 and 1)")
    parser.add_argument("--warmup-clips", type=int, default=2, help="clips of the untimed warm-up pass (0: none)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where clips and outputs go [a temp folder]")
    args = parser.parse_args()

    use_this_checkout()
    import torch
    from scope_optical_flow_tensorrt.cli.batch import parse_devices, run_clips
    from scope_optical_flow_tensorrt.cli.clips import ClipJob, WriteSettings

    single, multi = parse_devices(args.single, strict=True), parse_devices(args.multi, strict=True)
    has_av = importlib.util.find_spec("av") is not None
    work = Path(tempfile.mkdtemp(prefix="bench_scale_out_", dir=args.work_dir))
    try:
        started = time.perf_counter()
        clips = make_clips(work / "clips", args.clips, args.frames, args.clip_size, video=has_av)
        print(f"{len(clips)} clips x {args.frames} frames at {args.clip_size}x{args.clip_size} "
              f"({'mp4' if has_av else 'PNG folders'}) written in {time.perf_counter() - started:.1f} s", flush=True)
        model = {
            "size": (args.size, args.size), "weights": None, "device": single[0], "fp16": not args.fp32,
            "num_flow_updates": args.updates, "backend": args.backend, "strict_device": False,
            "cuda_graphs": True, "models_dir": None, "torch_compile": not args.no_compile,
        }
        write = WriteSettings(chunk=args.chunk)

        def jobs(name: str, subset: list[Path]) -> list[ClipJob]:
            folder = work / name
            return [ClipJob((str(clip),), **({"output": folder / f"{clip.stem}.mp4"} if has_av else
                                             {"flow_npy": folder / f"{clip.stem}.npy"})) for clip in subset]

        if args.warmup_clips:
            print(f"warm-up on {single}: {args.warmup_clips} clip(s) (fills compile/engine caches) ...", flush=True)
            warmup = run_clips(jobs("warmup", clips[: args.warmup_clips]), write, model, single, show_progress=False)
            if warmup.failed:
                raise SystemExit(f"warm-up failed: {warmup.failed[0].job.name}: {warmup.failed[0].error}")
        passes = []
        for label, devices in (("single", single), ("multi", multi)):
            print(f"pass '{label}' on {', '.join(devices)} ...", flush=True)
            report = run_clips(jobs(label, clips), write, model, devices, show_progress=sys.stderr.isatty())
            if report.failed:
                for result in report.failed:
                    print(f"  failed: {result.job.name}: {result.error}", file=sys.stderr)
                raise SystemExit(f"pass '{label}': {len(report.failed)} clip(s) failed")
            passes.append(summarize(label, devices, report))
            print(f"  {passes[-1]['clips_per_s']:.2f} clips/s, {passes[-1]['frames_per_s']:.1f} frames/s end to "
                  f"end ({passes[-1]['wall_s']:.1f} s); steady {passes[-1]['steady_frames_per_s']:.1f} frames/s",
                  flush=True)
        result = {
            "benchmark": "scale_out",
            "clips": args.clips, "frames_per_clip": args.frames, "clip_size": args.clip_size,
            "compute_size": args.size, "updates": args.updates, "chunk": args.chunk, "backend": args.backend,
            "precision": "fp32" if args.fp32 else "fp16", "warmup_clips": args.warmup_clips,
            "torch_compile": not args.no_compile,
            "inputs": "mp4 (libx264)" if has_av else "PNG folders", "outputs": "flow mp4" if has_av else "flow .npy",
            "environment": environment(torch),
            "passes": passes,
            "scaling_end_to_end": passes[1]["clips_per_s"] / passes[0]["clips_per_s"],
            "scaling_steady": passes[1]["steady_frames_per_s"] / passes[0]["steady_frames_per_s"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_out.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (args.out / "scale_out.md").write_text(markdown)
    print()
    print(markdown)
    return 0


def make_clips(folder: Path, count: int, frames: int, size: int, video: bool) -> list[Path]:
    """``count`` clips of a smooth random texture drifting a few pixels per frame (a different drift each)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    margin = 4 * frames + 8
    coarse = rng.random((size // 8 + margin // 8 + 2, size // 8 + margin // 8 + 2, 3), dtype=np.float32)
    texture = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))  # blocky but textured: flow has something
    texture = (texture * 255).astype(np.uint8)
    paths = []
    for index in range(count):
        du, dv = 1 + index % 3, 1 + (index // 3) % 3
        clip = np.stack([texture[t * dv : t * dv + size, t * du : t * du + size] for t in range(frames)])
        if video:
            paths.append(_write_mp4(folder / f"clip_{index:03d}.mp4", clip))
        else:
            paths.append(_write_pngs(folder / f"clip_{index:03d}", clip))
    return paths


def _write_mp4(path: Path, frames: np.ndarray) -> Path:
    from fractions import Fraction

    from scope_optical_flow_tensorrt.cli.outputs import VideoWriter

    writer = VideoWriter(path, Fraction(24))
    writer.write(frames)
    writer.close()
    return path


def _write_pngs(folder: Path, frames: np.ndarray) -> Path:
    from scope_optical_flow_tensorrt.cli.outputs import PngFolderWriter

    folder.mkdir()
    PngFolderWriter(folder).write(frames)
    return folder


def summarize(label: str, devices: list[str], report: Any) -> dict[str, Any]:
    """End-to-end and steady throughput of one pass, and how the clips spread over the workers."""
    by_worker: dict[str, list[Any]] = defaultdict(list)
    for result in report.done:
        by_worker[result.worker].append(result)
    steady = 0.0
    workers = []
    for worker, results in sorted(by_worker.items()):
        results.sort(key=lambda r: r.started_at)
        later = results[1:] or results  # a worker with one clip: nothing to leave out
        busy = sum(r.seconds for r in later)
        steady += sum(r.frames for r in later) / busy if busy else 0.0
        workers.append({"worker": worker, "clips": len(results), "frames": sum(r.frames for r in results),
                        "busy_s": round(sum(r.seconds for r in results), 3),
                        "first_clip_s": round(results[0].seconds, 3),
                        "median_clip_s": round(statistics.median(r.seconds for r in results), 3)})
    clips = len(report.done)
    wall = report.seconds
    return {
        "pass": label, "devices": devices, "clips": clips, "frames": report.frames, "wall_s": round(wall, 3),
        "clips_per_s": clips / wall, "frames_per_s": report.frames / wall,
        "steady_frames_per_s": steady, "steady_clips_per_s": steady / (report.frames / clips),
        "workers": workers,
    }


def environment(torch: Any) -> dict[str, Any]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.cuda.get_device_name(index) for index in range(count)]
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": gpus, "cpu_count": os.cpu_count(), "platform": platform.platform(terse=True)}


def to_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    gpus = ", ".join(env["gpus"]) or "no GPU"
    lines = [
        "# Scale-out: clips per second with one and two devices",
        "",
        (f"{result['clips']} clips x {result['frames_per_clip']} frames at {result['clip_size']}x{result['clip_size']} "
         f"({result['inputs']} in, {result['outputs']} out), "
         f"compute {result['compute_size']}x{result['compute_size']}, "
         f"{result['updates']} updates, {result['precision']}, backend {result['backend']}"
         f"{'' if result['torch_compile'] else ' (no torch.compile)'}, chunk {result['chunk']}; "
         f"untrained weights (speed does not depend on them). {gpus}; torch {env['torch']} (CUDA {env['cuda']}), "
         f"{env['cpu_count']} CPU cores. `run --devices` path: one spawn worker per device, clips handed out "
         "dynamically, each decoded, computed and written in its worker."),
        "",
        "| devices | clips | wall s | clips/s | frames/s | steady frames/s | steady clips/s | clips per worker |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in result["passes"]:
        spread = ", ".join(f"{w['worker'].split(' pid')[0]}: {w['clips']}" for w in p["workers"])
        lines.append(f"| {', '.join(p['devices'])} | {p['clips']} | {p['wall_s']:.1f} | {p['clips_per_s']:.2f} | "
                     f"{p['frames_per_s']:.1f} | {p['steady_frames_per_s']:.1f} | {p['steady_clips_per_s']:.2f} | "
                     f"{spread} |")
    lines += [
        "",
        (f"Scaling from {', '.join(result['passes'][0]['devices'])} to {', '.join(result['passes'][1]['devices'])}: "
         f"**{result['scaling_end_to_end']:.2f}x** end to end (worker start-up included), "
         f"**{result['scaling_steady']:.2f}x** steady (each worker's first clip left out)."),
        "",
        ("End to end = clips / wall time of the pass, including spawning the workers, importing torch and loading "
         "the model in each. Steady = sum over workers of frames / busy time without the worker's first clip "
         "(first-shape compiles, CUDA-graph captures)."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
