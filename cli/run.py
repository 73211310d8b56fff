"""``run``: flow maps (and optionally raw flow) for a whole video, image folder or glob, in bounded memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .errors import UsageError
from .inputs import IMAGE_SUFFIXES, open_inputs
from .options import build_preprocessor, display_options, load_model, model_options, weights_spec
from .outputs import (
    FloFolderWriter,
    NpyArrayWriter,
    NpyFolderWriter,
    PngFolderWriter,
    StagedOutputs,
    VideoWriter,
    is_video_path,
)
from .state import progress_bar, say


@click.command("run", short_help="Flow maps (video, PNGs, raw .npy/.flo) for a video, folder or glob.")
@click.argument("input_specs", metavar="INPUT...", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Flow visualization: a video (.mp4, .mkv, .mov, .webm, .avi; same frame rate as the input) "
                   "or, for any other path, a folder of PNGs.")
@click.option("--flow-npy", type=click.Path(path_type=Path),
              help="Raw flow as .npy: a path ending in .npy gets one [F, 2, H, W] float32 array, any other path a "
                   "folder of per-frame [2, H, W] files.")
@click.option("--flow-flo", type=click.Path(path_type=Path), help="Raw flow as a folder of Middlebury .flo files.")
@click.option("--flow-size", type=click.Choice(["input", "compute"]), default="input", show_default=True,
              help="Raw flow at the input resolution (vectors scaled to input pixels) or the compute resolution.")
@click.option("--chunk", type=click.IntRange(min=1), default=16, show_default=True,
              help="Frames decoded and processed at a time (bounds memory); results do not depend on it.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frame rate of the output video [default: the input video's, 30 for images].")
@click.option("--codec", default=None, help="Video codec [default: libx264 for .mp4/.mkv/.mov, libvpx-vp9 for .webm].")
@click.option("-y", "--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--max-batch-pairs", type=click.IntRange(min=1), default=None,
              help="Frame pairs per model call [default: by resolution, bounded memory].")
@model_options(default_size="512x512")
@display_options
def run_command(
    input_specs: tuple[str, ...],
    output: Path | None,
    flow_npy: Path | None,
    flow_flo: Path | None,
    flow_size: str,
    chunk: int,
    fps: float | None,
    codec: str | None,
    overwrite: bool,
    weights: str,
    **options: Any,
) -> None:
    """Compute flow maps for INPUT: a video file, a folder of images or a glob such as 'frames/*.png'
    (several image files, e.g. an unquoted glob, are taken in natural name order).

    Frame 0 has no reference and shows zero flow (white); frame i shows the motion from frame i-1 to i.
    """
    if output is None and flow_npy is None and flow_flo is None:
        raise UsageError("nothing to write: give -o/--output, --flow-npy and/or --flow-flo.")
    if output is not None and output.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"-o {output}: an image file cannot hold a sequence; give a folder for PNG frames "
                         f"(e.g. -o {output.with_suffix('')}/) or a video file (.mp4).")
    source = open_inputs(list(input_specs), fps)
    flow = build_preprocessor(weights=weights_spec(weights), **options)
    started = time.perf_counter()
    with StagedOutputs(overwrite) as staged:
        image_writers: list[Any] = []
        flow_writers: list[Any] = []
        if output is not None:
            if is_video_path(output):
                image_writers.append(VideoWriter(staged.add(output, folder=False), source.frame_rate, codec))
            else:
                image_writers.append(PngFolderWriter(staged.add(output, folder=True)))
        if flow_npy is not None:
            if flow_npy.suffix.lower() == ".npy":
                flow_writers.append(NpyArrayWriter(staged.add(flow_npy, folder=False)))
            else:
                flow_writers.append(NpyFolderWriter(staged.add(flow_npy, folder=True)))
        if flow_flo is not None:
            flow_writers.append(FloFolderWriter(staged.add(flow_flo, folder=True)))
        writers = image_writers + flow_writers
        try:
            load_model(flow)
            frames_done, size = _stream(flow, source, chunk, image_writers, flow_writers, flow_size == "input")
            for writer in writers:
                writer.close()
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
    seconds = time.perf_counter() - started
    written = ", ".join(str(path) for path in (output, flow_npy, flow_flo) if path is not None)
    say(f"{frames_done} frames ({size[1]}x{size[0]}) in {seconds:.1f} s ({frames_done / seconds:.1f} frames/s) "
        f"-> {written}")


def _stream(
    flow: Any,
    source: Any,
    chunk: int,
    image_writers: list[Any],
    flow_writers: list[Any],
    flow_at_input_size: bool,
) -> tuple[int, tuple[int, int]]:
    """Decode, compute and write chunk by chunk; the preprocessor carries the last frame across chunks."""
    import torch

    from ..core.resize import resize_flow

    frames_done = 0
    size = (0, 0)
    with progress_bar(total=source.num_frames, unit="frame", desc="flow") as bar:
        for frames in source.chunks(chunk):
            size = frames.shape[1:3]
            raw = flow.compute_flow(torch.from_numpy(frames), layout="FHWC")  # [1, F, 2, h, w]
            if image_writers:
                images = to_uint8_frames(flow.flow_to_image(raw, size=size))
                for writer in image_writers:
                    writer.write(images)
            if flow_writers:
                vectors = resize_flow(raw[0], *size) if flow_at_input_size else raw[0]
                vectors = vectors.float().cpu().numpy()
                for writer in flow_writers:
                    writer.write(vectors)
            frames_done += frames.shape[0]
            bar.update(frames.shape[0])
    return frames_done, size


def to_uint8_frames(maps: Any) -> Any:
    """``[1, 3, F, H, W]`` in ``[-1, 1]`` -> ``[F, H, W, 3]`` uint8 numpy."""
    import torch

    images = ((maps[0] + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return images.permute(1, 2, 3, 0).contiguous().cpu().numpy()
