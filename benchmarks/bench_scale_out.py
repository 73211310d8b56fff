"""Scale-out benchmark: ``run --devices`` on one GPU, then on two, over the same synthetic clips.

Writes N clips (default 48 x 480 frames at 512x512, a drifting texture) into a temporary folder, then runs the
multi-process path (``batch.process(..., devices=...)``: one spawn worker per device, started before the clips are probed
and ordered, one preprocessor each, clips handed out dynamically and the largest first, every clip decoded,
computed and written as a flow video) with ``--single`` devices and with ``--multi`` devices, one after the
other in this process tree. A short warm-up pass first fills the on-disk caches (torch.compile, TensorRT
engines) so neither timed pass pays for them.

The job must be worth scaling: at least ``--min-work-s`` (60) seconds of work for one GPU, or the figure
measures worker start-up. The warm-up pass measures one worker's frames/s, and clips too short for that are
lengthened (at most ``--max-frames``); ``--min-work-s 0`` keeps ``--frames`` as given.

Two figures per pass:

- end to end: clips (frames) / wall time of the whole pass, worker start-up included (what a user waits);
- steady: the sum over workers of frames / busy time, each worker's first clip left out; the throughput once
  the workers are running.

Prints a table and the scaling factors, and writes ``scale_out.json`` and ``scale_out.md`` to ``--out``.
Needs PyAV for video clips (without it: PNG-folder clips and .npy outputs). Ray is not used. On a machine
with two GPUs (about 4-6 minutes: warm-up, two passes of at least 60 s and 30 s of work plus start-up)::

    python benchmarks/bench_scale_out.py --out benchmarks/results

Smoke test on a CPU: ``--single cpu --multi cpu:2 --clips 4 --frames 4 --clip-size 128 --size 128 --updates 2
--min-work-s 0 --out /tmp/scale_out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
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

MOTIONS = 9  # distinct drifts (1-3 px right, 1-3 px down); clips beyond these are copies of the same content
MIN_WORK_MARGIN = 1.15  # lengthened clips aim this much above --min-work-s: the estimate is one clip's speed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for JSON/Markdown")
    parser.add_argument("--clips", type=int, default=48, help="number of clips")
    parser.add_argument("--frames", type=int, default=480, help="frames per clip (at least; see --min-work-s)")
    parser.add_argument("--min-work-s", type=float, default=60.0,
                        help="lengthen the clips until one GPU has at least this many seconds of work (0: never)")
    parser.add_argument("--max-frames", type=int, default=3000, help="longest clips --min-work-s may ask for")
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
    from scope_optical_flow_tensorrt.batch import BatchReport, process
    from scope_optical_flow_tensorrt.batch.plan import parse_devices

    single, multi = parse_devices(args.single, strict=True), parse_devices(args.multi, strict=True)
    has_av = importlib.util.find_spec("av") is not None
    work = Path(tempfile.mkdtemp(prefix="bench_scale_out_", dir=args.work_dir))
    bench_started = time.perf_counter()
    try:
        model = {
            "height": args.size, "width": args.size, "weights": None, "device": single[0], "fp16": not args.fp32,
            "num_flow_updates": args.updates, "backend": args.backend, "strict_device": False,
            "cuda_graphs": True, "models_dir": None, "torch_compile": not args.no_compile,
        }

        def run_pass(name: str, subset: list[Path], devices: list[str], show_progress: bool) -> BatchReport:
            folder = work / name
            outputs = {"output": folder / "{stem}.mp4"} if has_av else {"flow_npy": folder / "{stem}.npy"}
            return process([str(clip) for clip in subset], **outputs, devices=devices, chunk=args.chunk,
                           progress=None if show_progress else False, **model)

        frames = args.frames
        estimate = None
        if args.warmup_clips:
            warmup_clips = make_clips(work / "warmup_clips", args.warmup_clips, frames, args.clip_size, has_av)
            print(f"warm-up on {single}: {args.warmup_clips} clip(s) of {frames} frames (fills compile/engine "
                  "caches) ...", flush=True)
            warmup = run_pass("warmup", warmup_clips, single, show_progress=False)
            if warmup.failed:
                raise SystemExit(f"warm-up failed: {warmup.failed[0].job.name}: {warmup.failed[0].error}")
            estimate = one_worker_frames_per_s(warmup)
            print(f"  {warmup.seconds:.1f} s; one worker ~{estimate:.0f} frames/s on its last clip", flush=True)
            frames = clip_frames(args.clips, frames, estimate, args.min_work_s, args.max_frames)
        started = time.perf_counter()
        clips = make_clips(work / "clips", args.clips, frames, args.clip_size, video=has_av)
        print(f"{len(clips)} clips x {frames} frames at {args.clip_size}x{args.clip_size} "
              f"({'mp4' if has_av else 'PNG folders'}) written in {time.perf_counter() - started:.1f} s"
              + (f"; ~{len(clips) * frames / estimate:.0f} s of one-GPU work expected" if estimate else ""),
              flush=True)
        passes = []
        for label, devices in (("single", single), ("multi", multi)):
            print(f"pass '{label}' on {', '.join(devices)} ...", flush=True)
            report = run_pass(label, clips, devices, show_progress=sys.stderr.isatty())
            if report.failed:
                for result in report.failed:
                    print(f"  failed: {result.job.name}: {result.error}", file=sys.stderr)
                raise SystemExit(f"pass '{label}': {len(report.failed)} clip(s) failed")
            passes.append(summarize(label, devices, report))
            print(f"  {passes[-1]['clips_per_s']:.2f} clips/s, {passes[-1]['frames_per_s']:.1f} frames/s end to "
                  f"end ({passes[-1]['wall_s']:.1f} s, workers ready after "
                  f"{', '.join(f'{s:.1f}' for s in passes[-1]['worker_ready_s'].values())} s); "
                  f"steady {passes[-1]['steady_frames_per_s']:.1f} frames/s", flush=True)
        env = environment(torch)
        work_s = passes[0]["busy_s"]
        result = {
            "benchmark": "scale_out",
            "device": ", ".join(env["gpus"]) or "cpu",
            "clips": args.clips, "frames_per_clip": frames, "clip_size": args.clip_size,
            "compute_size": args.size, "updates": args.updates, "chunk": args.chunk, "backend": args.backend,
            "precision": "fp32" if args.fp32 else "fp16", "warmup_clips": args.warmup_clips,
            "torch_compile": not args.no_compile,
            "inputs": "mp4 (libx264)" if has_av else "PNG folders", "outputs": "flow mp4" if has_av else "flow .npy",
            "dispatch": "largest first; workers start (load, warm up) while the clips are probed and ordered",
            "single_gpu_work_s": round(work_s, 3), "min_work_s": args.min_work_s,
            "work_below_minimum": work_s < args.min_work_s,
            "environment": env,
            "passes": passes,
            "scaling_end_to_end": passes[1]["clips_per_s"] / passes[0]["clips_per_s"],
            "scaling_steady": passes[1]["steady_frames_per_s"] / passes[0]["steady_frames_per_s"],
            "bench_wall_s": round(time.perf_counter() - bench_started, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result["work_below_minimum"]:
        print(f"WARNING: the one-GPU pass had {work_s:.1f} s of work, under --min-work-s {args.min_work_s:g}; "
              f"rerun with --frames {math.ceil(frames * args.min_work_s * MIN_WORK_MARGIN / max(work_s, 1e-9))}.",
              file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_out.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (args.out / "scale_out.md").write_text(markdown)
    print()
    print(markdown)
    return 0


def one_worker_frames_per_s(report: Any) -> float:
    """One worker's frames/s on the warm-up pass's last clip (its first may still pay for first-use work)."""
    last = max(report.done, key=lambda result: result.started_at)
    return last.frames / max(last.seconds, 1e-9)


def clip_frames(clips: int, frames: int, frames_per_s: float, min_work_s: float, max_frames: int) -> int:
    """``frames``, or more so that ``clips`` clips are ``min_work_s`` seconds of work at ``frames_per_s``."""
    if min_work_s <= 0 or clips * frames / frames_per_s >= min_work_s:
        return frames
    needed = math.ceil(min_work_s * MIN_WORK_MARGIN * frames_per_s / clips)
    longest = min(needed, max_frames)
    print(f"  {clips} clips x {frames} frames would be {clips * frames / frames_per_s:.0f} s of one-GPU work, under "
          f"{min_work_s:g} s: clips lengthened to {longest} frames", flush=True)
    return longest


def make_clips(folder: Path, count: int, frames: int, size: int, video: bool) -> list[Path]:
    """``count`` clips of a smooth random texture drifting a few pixels per frame (one of ``MOTIONS`` drifts
    each; clips with the same drift are copies of one file, which costs the workers the same)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    margin = 4 * frames + 8
    coarse = rng.random((size // 8 + margin // 8 + 2, size // 8 + margin // 8 + 2, 3), dtype=np.float32)
    texture = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))  # blocky but textured: flow has something
    texture = (texture * 255).astype(np.uint8)
    paths: list[Path] = []
    for index in range(count):
        path = folder / (f"clip_{index:03d}.mp4" if video else f"clip_{index:03d}")
        if index >= MOTIONS:
            copy = shutil.copyfile if video else shutil.copytree
            copy(paths[index % MOTIONS], path)
            paths.append(path)
            continue
        du, dv = 1 + index % 3, 1 + (index // 3) % 3
        chunks = (np.stack([texture[t * dv : t * dv + size, t * du : t * du + size]
                            for t in range(start, min(start + 64, frames))]) for start in range(0, frames, 64))
        paths.append(_write_mp4(path, chunks) if video else _write_pngs(path, chunks))
    return paths


def _write_mp4(path: Path, chunks: Any) -> Path:
    from fractions import Fraction

    from scope_optical_flow_tensorrt.batch.outputs import VideoWriter

    writer = VideoWriter(path, Fraction(24))
    for chunk in chunks:
        writer.write(chunk)
    writer.close()
    return path


def _write_pngs(folder: Path, chunks: Any) -> Path:
    from scope_optical_flow_tensorrt.batch.outputs import PngFolderWriter

    folder.mkdir()
    writer = PngFolderWriter(folder)
    for chunk in chunks:
        writer.write(chunk)
    writer.close()
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
        "busy_s": round(sum(result.seconds for result in report.done), 3),
        # Seconds from the pass's start until each worker had its model loaded and warmed up (before any clip).
        "worker_ready_s": {worker: round(seconds, 3) for worker, seconds in report.worker_ready_s.items()},
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
        (f"One-GPU work: {result['single_gpu_work_s']:.1f} s of busy clip time (the job is meant to be at least "
         f"{result['min_work_s']:g} s{'; it was NOT' if result['work_below_minimum'] else ''}). Dispatch: "
         f"{result['dispatch']}."),
        "",
        "| devices | clips | wall s | workers ready after s | clips/s | frames/s | steady frames/s | steady clips/s "
        "| clips per worker |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in result["passes"]:
        spread = ", ".join(f"{w['worker'].split(' pid')[0]}: {w['clips']}" for w in p["workers"])
        ready = ", ".join(f"{seconds:.1f}" for seconds in p["worker_ready_s"].values()) or "-"
        lines.append(f"| {', '.join(p['devices'])} | {p['clips']} | {p['wall_s']:.1f} | {ready} | "
                     f"{p['clips_per_s']:.2f} | {p['frames_per_s']:.1f} | {p['steady_frames_per_s']:.1f} | "
                     f"{p['steady_clips_per_s']:.2f} | {spread} |")
    lines += [
        "",
        (f"Scaling from {', '.join(result['passes'][0]['devices'])} to {', '.join(result['passes'][1]['devices'])}: "
         f"**{result['scaling_end_to_end']:.2f}x** end to end (worker start-up included), "
         f"**{result['scaling_steady']:.2f}x** steady (each worker's first clip left out)."),
        "",
        ("End to end = clips / wall time of the pass, including spawning the workers, importing torch, loading "
         "and warming up the model in each. Steady = sum over workers of frames / busy time without the worker's "
         "first clip."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
