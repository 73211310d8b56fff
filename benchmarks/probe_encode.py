"""Which libx264 settings encode flow maps fastest on this machine: presets x thread type x thread count, RGB
input (PyAV converts to yuv420p on the CPU) or yuv420p input (converted beforehand), through the CLI's
``VideoWriter`` where it applies. Prints frames/s and kB per frame for each.

    python benchmarks/probe_encode.py --frames 600 --size 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from _checkout import use_this_checkout  # noqa: E402  (same folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--presets", default="ultrafast,superfast,veryfast,faster")
    parser.add_argument("--threads", default="SLICE:0,FRAME:0,FRAME:4,FRAME:8,FRAME:16",
                        help="thread type:count pairs (count 0: FFmpeg's automatic choice)")
    args = parser.parse_args()
    use_this_checkout()
    import av

    from bench_e2e import flow_like_frames
    from scope_optical_flow_tensorrt.cli.outputs import VideoWriter

    maps = flow_like_frames(args.frames, args.size, seed=3)
    maps = (255 - (255 - maps) // 3).astype(np.uint8)  # pale, like flow maps
    yuv = [av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p").to_ndarray() for frame in maps]
    folder = Path(tempfile.mkdtemp(prefix="probe_encode_"))
    print(f"{os.cpu_count()} cores, PyAV {av.__version__}, {args.frames} frames {args.size}x{args.size}")
    settings = [(kind, int(count)) for kind, _, count in (pair.partition(":") for pair in args.threads.split(","))]
    for preset in args.presets.split(","):
        for thread_type, threads in settings:
            for source in ("rgb24", "yuv420p"):
                path = folder / f"{preset}_{thread_type}_{threads}_{source}.mp4"
                started = time.perf_counter()
                with av.open(str(path), "w") as container:
                    stream = container.add_stream("libx264", rate=Fraction(30))
                    stream.width = stream.height = args.size
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.options = {"crf": "18", "preset": preset}
                    stream.codec_context.thread_type = thread_type
                    stream.codec_context.thread_count = threads
                    for index in range(args.frames):
                        if source == "rgb24":
                            frame = av.VideoFrame.from_ndarray(maps[index], format="rgb24")
                        else:
                            frame = av.VideoFrame.from_ndarray(yuv[index], format="yuv420p")
                        frame.pts = index
                        for packet in stream.encode(frame):
                            container.mux(packet)
                    for packet in stream.encode(None):
                        container.mux(packet)
                seconds = time.perf_counter() - started
                print(f"{preset:9s} {thread_type:5s} threads={threads:2d} {source:7s}: {args.frames / seconds:7.1f} "
                      f"frames/s, {path.stat().st_size / args.frames / 1e3:6.2f} kB/frame", flush=True)
    started = time.perf_counter()
    writer = VideoWriter(folder / "writer.mp4", Fraction(30))
    writer.write(maps)
    writer.close()
    print(f"VideoWriter (defaults: preset {writer.preset}): {args.frames / (time.perf_counter() - started):.1f} "
          "frames/s")


if __name__ == "__main__":
    main()
