"""End-to-end benchmark of ``scope-optical-flow run``: a video file in, flow out, for each output kind.

Makes a synthetic H.264 clip (default 2,400 frames at 512x512, a drifting smooth texture; or takes ``--clip``),
then, in this process tree and on one GPU:

1. the model alone: ``scope-optical-flow bench --chunk 16 --json`` (random frames already on the GPU);
2. the CPU-side ceilings of this machine, each stage alone: decoding the clip (FFmpeg's CPU decoder, and NVDEC
   where PyAV has the CUDA device), libx264 encoding of flow-like frames at several presets, PNG compression
   at the level ``run`` uses (one thread and the pool), and writing raw flow;
3. ``run`` end to end in a fresh process per output kind (``-o flow.mp4``, ``--flow-npy flow.npy``,
   ``-o pngs/``, plus variants: NVDEC decoding, NVENC encoding), each with ``--report``: steady-state frames/s
   from the first output frame written to the last, wall time from process start, time to the first output
   frame, busy seconds per stage (decode, compute, GPU compute, write), peak host and GPU memory.

Writes ``e2e.json`` (``{"environment": {...}, "model_only_frames_per_s": ..., "runs": [{"output", "size",
"frames", "frames_per_s", "wall_s", "first_frame_s", "stages", ...}]}``) and ``e2e.md`` to ``--out``. A first,
untimed ``run`` fills the on-disk compile caches, so the timed runs are warm processes (as a user's second run).

    python benchmarks/bench_e2e.py --out benchmarks/results

CPU smoke test: ``--device cpu --frames 24 --clip-size 128 --size 128 --updates 2 --skip-probes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from _checkout import ROOT, use_this_checkout  # noqa: E402  (same folder)

TARGETS = {"npy": 1000.0, "mp4": 500.0, "png": 300.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for JSON/Markdown")
    parser.add_argument("--clip", type=Path, default=None, help="an input video instead of the synthetic clip")
    parser.add_argument("--frames", type=int, default=2400, help="frames of the synthetic clip")
    parser.add_argument("--clip-size", type=int, default=512, help="synthetic clip height and width")
    parser.add_argument("--size", type=int, default=512, help="compute height and width")
    parser.add_argument("--updates", type=int, default=12, help="RAFT flow updates")
    parser.add_argument("--chunk", type=int, default=16, help="run --chunk")
    parser.add_argument("--device", default="cuda", help="compute device")
    parser.add_argument("--outputs", default="npy,mp4,png", help="output kinds to time, in order")
    parser.add_argument("--variants", default="mp4-nvdec,mp4-nvenc", help="extra runs (mp4-nvdec, mp4-nvenc, ...)")
    parser.add_argument("--skip-probes", action="store_true", help="skip the CPU-side ceilings")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the clip and outputs go [a temp folder]")
    args = parser.parse_args()

    use_this_checkout()
    work = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.work_dir))
    try:
        clip = args.clip or make_clip(work / "clip.mp4", args.frames, args.clip_size)
        common = ["--size", f"{args.size}x{args.size}", "--updates", str(args.updates), "--weights", "untrained",
                  "--device", args.device]
        environment = describe_environment(args.device)
        print(f"# {environment['device']}; clip {clip} ({count_frames(clip)} frames)", flush=True)

        model_only = run_model_only(common, args.chunk)
        print(f"model only: {model_only['frames_per_s']:.0f} frames/s ({model_only['ms_per_chunk_mean']} ms per "
              f"{args.chunk}-frame chunk)", flush=True)
        probes = {} if args.skip_probes else run_probes(clip, work)

        # Untimed: fills torch's compile cache for these shapes, so every timed run is a warm process.
        run_cli(clip, work / "warmup", "npy", common, args.chunk, [])
        runs = []
        kinds = [kind for kind in args.outputs.split(",") if kind]
        variants = [variant for variant in args.variants.split(",") if variant]
        for name in kinds + variants:
            kind, _, variant = name.partition("-")
            extra = {"": [], "nvdec": ["--decoder", "nvdec"], "nvenc": ["--codec", "h264_nvenc"]}.get(variant)
            if extra is None:
                raise SystemExit(f"unknown variant {name!r}")
            row = run_cli(clip, work / name, kind, common, args.chunk, extra)
            row["output"] = kind
            row["variant"] = variant or "default"
            row["size"] = args.size
            row["target_frames_per_s"] = TARGETS.get(kind)
            runs.append(row)
            print(format_row(row), flush=True)
        result = {
            "environment": environment,
            "clip": {"path": str(args.clip) if args.clip else "synthetic", "frames": count_frames(clip),
                     "size": list(video_size(clip))},
            "settings": {"compute_size": args.size, "updates": args.updates, "chunk": args.chunk,
                         "weights": "untrained (random; speed does not depend on weights)"},
            "model_only_frames_per_s": model_only["frames_per_s"],
            "model_only": model_only,
            "probes": probes,
            "runs": runs,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "e2e.md").write_text(markdown(result))
        print(f"wrote {args.out / 'e2e.json'} and {args.out / 'e2e.md'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# -- the clip ---------------------------------------------------------------------------------------------------


def flow_like_frames(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``[count, size, size, 3]`` uint8: a smooth random texture drifting 2 px right and 1 px down per frame."""
    import torch

    rng = np.random.default_rng(seed)
    coarse = rng.random((3, size // 8 + count // 4 + 4, size // 8 + count // 4 + 4), dtype=np.float32)
    texture = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], scale_factor=8, mode="bilinear")[0]
    texture = (texture.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    frames = []
    for index in range(count):
        top, left = (index // 2) % (texture.shape[0] - size), index % (texture.shape[1] - size)
        frames.append(texture[top : top + size, left : left + size])
    return np.stack(frames)


def make_clip(path: Path, frames: int, size: int) -> Path:
    from scope_optical_flow_tensorrt.batch.outputs import VideoWriter

    started = time.perf_counter()
    writer = VideoWriter(path, Fraction(30), "libx264", preset="veryfast")
    for start in range(0, frames, 256):
        writer.write(flow_like_frames(min(256, frames - start), size, seed=start))
    writer.close()
    print(f"clip: {frames} frames {size}x{size} H.264 written in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.demux(stream) if _.size)


def video_size(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.height, stream.width


# -- measurements ---------------------------------------------------------------------------------------------


def cli_command() -> list[str]:
    return [sys.executable, "-m", "scope_optical_flow_tensorrt"]


def run_model_only(common: list[str], chunk: int) -> dict[str, Any]:
    completed = subprocess.run([*cli_command(), "bench", *common, "--chunk", str(chunk), "--runs", "30", "--json"],
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def run_cli(clip: Path, folder: Path, kind: str, common: list[str], chunk: int, extra: list[str]) -> dict[str, Any]:
    """``run`` in a fresh process; the figures come from its ``--report`` and the wall clock around it."""
    folder.mkdir(parents=True)
    target = {"npy": ["--flow-npy", folder / "flow.npy"], "mp4": ["-o", folder / "flow.mp4"],
              "png": ["-o", folder / "pngs"], "flo": ["--flow-flo", folder / "flo"]}[kind]
    report_path = folder / "report.json"
    command = [*cli_command(), "run", clip, *target, *common, "--chunk", str(chunk), "--report", report_path,
               "--quiet", *extra]
    launched = time.time()
    completed = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    wall = time.time() - launched
    if completed.returncode != 0:
        return {"error": completed.stderr.strip()[-2000:], "wall_s": round(wall, 2), "frames": 0,
                "frames_per_s": 0.0, "first_frame_s": None, "stages": {}, "extra_args": extra}
    report = json.loads(report_path.read_text())
    clip_report = report["clips"][0]
    stages = clip_report["stages"]
    frames = clip_report["frames"]
    first, last = clip_report["first_output_at"], clip_report["last_output_at"]
    # Steady state: frames written after the first output chunk over the time they took.
    steady = (frames - chunk) / (last - first) if last and first and last > first else 0.0
    busiest = max((name for name in stages if name != "load"), key=lambda name: stages[name], default="")
    return {
        "frames": frames,
        "frames_per_s": round(steady, 1),
        "end_to_end_frames_per_s": round(frames / wall, 1),
        "wall_s": round(wall, 2),
        "first_frame_s": round(first - launched, 2) if first else None,
        "process_start_to_clip_s": round(clip_report["started_at"] - launched, 2),
        # Seconds after the process started (the report's own clock) at which start-up milestones were reached.
        "start_up": {**report.get("timeline", {}),
                     "clip_started": round(clip_report["started_at"] - report["process_started_at"], 3),
                     "model_loaded": round(clip_report["started_at"] - report["process_started_at"]
                                           + stages.get("load", 0.0), 3),
                     "first_output": round(first - report["process_started_at"], 3) if first else None},
        "clip_seconds": clip_report["seconds"],
        "decoder": clip_report["decoder"],
        "stages": stages,
        "busiest_stage": busiest,
        "host_peak_rss_gb": round(report.get("host_peak_rss_bytes", 0) / 1e9, 2),
        "gpu_peak_memory_gb": round(report.get("gpu_peak_memory_bytes", 0) / 1e9, 2),
        "output_bytes": sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()
                            and path.name != "report.json"),
        "extra_args": extra,
    }


def run_probes(clip: Path, work: Path) -> dict[str, Any]:
    """Each CPU-side stage alone on this machine, for reading the end-to-end figures against."""
    import av
    from PIL import Image

    from scope_optical_flow_tensorrt.batch.inputs import nvdec_available, open_input
    from scope_optical_flow_tensorrt.batch.outputs import PNG_COMPRESS_LEVEL, NpyArrayWriter, VideoWriter

    probes: dict[str, Any] = {}
    source = open_input(str(clip))
    for decoder in ["cpu"] + (["nvdec"] if nvdec_available() else []):
        started = time.perf_counter()
        try:
            frames = sum(len(chunk) for chunk in source.chunks(16, decoder=decoder))
            probes[f"decode_{decoder}_frames_per_s"] = round(frames / (time.perf_counter() - started), 1)
        except Exception as error:  # NVDEC may be listed but unusable
            probes[f"decode_{decoder}_error"] = f"{type(error).__name__}: {error}"[:300]
    maps = flow_like_frames(480, video_size(clip)[0], seed=99)
    maps = (255 - (255 - maps) // 3).astype(np.uint8)  # pale like flow maps
    for preset in ("ultrafast", "superfast", "veryfast", "faster", "medium"):
        path = work / f"probe_{preset}.mp4"
        started = time.perf_counter()
        writer = VideoWriter(path, Fraction(30), "libx264", preset=preset)
        writer.write(maps)
        writer.close()
        seconds = time.perf_counter() - started
        probes[f"x264_{preset}_frames_per_s"] = round(len(maps) / seconds, 1)
        probes[f"x264_{preset}_kb_per_frame"] = round(path.stat().st_size / len(maps) / 1e3, 2)
    if "h264_nvenc" in av.codec.codecs_available:
        try:
            started = time.perf_counter()
            writer = VideoWriter(work / "probe_nvenc.mp4", Fraction(30), "h264_nvenc")
            writer.write(maps)
            writer.close()
            probes["nvenc_frames_per_s"] = round(len(maps) / (time.perf_counter() - started), 1)
        except Exception as error:
            probes["nvenc_error"] = f"{type(error).__name__}: {error}"[:300]
    (work / "probe_png").mkdir()
    started = time.perf_counter()
    for index, frame in enumerate(maps[:96]):
        Image.fromarray(frame).save(work / "probe_png" / f"{index}.png", compress_level=PNG_COMPRESS_LEVEL)
    probes[f"png_level{PNG_COMPRESS_LEVEL}_one_thread_frames_per_s"] = round(96 / (time.perf_counter() - started), 1)
    raw = np.random.default_rng(0).standard_normal((64, 2, *maps.shape[1:3]), dtype=np.float32)
    writer = NpyArrayWriter(work / "probe.npy")
    started = time.perf_counter()
    for _ in range(8):
        writer.write(raw)
    writer.close()
    probes["npy_write_frames_per_s"] = round(8 * len(raw) / (time.perf_counter() - started), 1)
    print("probes: " + ", ".join(f"{k} {v}" for k, v in probes.items()), flush=True)
    return probes


def describe_environment(device: str) -> dict[str, Any]:
    import av
    import torch

    environment: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pyav": av.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return environment


# -- report ---------------------------------------------------------------------------------------------------


def format_row(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"{row['output']} ({row['variant']}): FAILED: {row['error'][-300:]}"
    stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in row["stages"].items())
    return (f"{row['output']} ({row['variant']}): {row['frames_per_s']:.0f} frames/s steady, "
            f"{row['end_to_end_frames_per_s']:.0f} end to end, wall {row['wall_s']:.1f} s, first frame "
            f"{row['first_frame_s']} s; busy s: {stages}; start-up (s after process start): {row['start_up']}")


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# End to end: `scope-optical-flow run`, a video file in, flow out",
        "",
        f"{env['device']}, {env.get('cpu_cores_usable', env['cpu_cores'])} of {env['cpu_cores']} CPU cores; torch {env['torch']} (CUDA {env['cuda']}), PyAV "
        f"{env['pyav']}, Python {env['python']}; {env['date']}. Clip: {result['clip']['frames']} frames "
        f"{result['clip']['size'][1]}x{result['clip']['size'][0]} H.264; compute "
        f"{result['settings']['compute_size']}x{result['settings']['compute_size']}, "
        f"{result['settings']['updates']} updates, chunk {result['settings']['chunk']}, random weights. "
        "Each run is a fresh process with torch's compile cache already warm.",
        "",
        f"Model only (`bench --chunk {result['settings']['chunk']}`): "
        f"**{result['model_only_frames_per_s']:.0f} frames/s**.",
        "",
        "| output | variant | steady frames/s | target | end to end frames/s | wall s | first frame s | "
        "busiest stage | busy s: decode / compute (GPU) / write | peak host GB | peak GPU GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        if row.get("error"):
            lines.append(f"| {row['output']} | {row['variant']} | failed | | | | | | {row['error'][-120:]} | | |")
            continue
        stages = row["stages"]
        write = sum(seconds for name, seconds in stages.items() if name.startswith("write_"))
        target = row.get("target_frames_per_s")
        lines.append(
            f"| {row['output']} | {row['variant']} | **{row['frames_per_s']:.0f}** | {target or ''} | "
            f"{row['end_to_end_frames_per_s']:.0f} | {row['wall_s']:.1f} | {row['first_frame_s']} | "
            f"{row['busiest_stage']} | {stages.get('decode', 0):.2f} / {stages.get('compute', 0):.2f} "
            f"({stages.get('compute_gpu', 0):.2f}) / {write:.2f} | {row['host_peak_rss_gb']} | "
            f"{row['gpu_peak_memory_gb']} |"
        )
    if result["probes"]:
        lines += ["", "Each CPU-side stage alone on this machine (frames/s):", ""]
        lines += [f"- {name}: {value}" for name, value in result["probes"].items()]
    lines += [
        "",
        "Steady = frames written after the first output chunk / time from the first output chunk to the last. "
        "End to end = frames / wall time of the process (start-up included). Busy seconds are the time each stage "
        "spent working (decode: reader thread; compute: the calling thread's time in flow + outputs, GPU: CUDA "
        "event time of that work; write: each writer thread).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
