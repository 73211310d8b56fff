"""``run``: flow maps (and optionally raw flow) for a whole video, image folder or glob, in bounded memory;
or for many clips (a folder of videos, a glob, a manifest) on several devices or a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..batch import DECODER_CHOICES, DEFAULT_X264_PRESET, X264_PRESETS, BatchReport, CliError, process
from .options import cli_words, display_options, model_options, preprocessor_options, weights_spec
from .state import PROG_NAME, notice, say, settings


@click.command("run", short_help="Flow maps (video, PNGs, raw .npy/.flo) for a video, folder, glob or many clips.")
@click.argument("input_specs", metavar="INPUT...", nargs=-1)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Flow visualization: a video (.mp4, .mkv, .mov, .webm, .avi; same frame rate as the input) "
                   "or, for any other path, a folder of PNGs. For many clips: a folder or a {stem} template.")
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
@click.option("--x264-preset", "x264_preset", type=click.Choice(X264_PRESETS), default=DEFAULT_X264_PRESET,
              show_default=True,
              help="libx264 preset for video outputs: slower ones make smaller files at about the same quality (crf 18).")
@click.option("--decoder", type=click.Choice(DECODER_CHOICES), default="auto", show_default=True,
              help="Video decoding: FFmpeg's threaded CPU decoder, or the GPU's NVDEC (needs CUDA and a PyAV with "
                   "FFmpeg's CUDA device); auto picks the faster, cpu (see the README).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Write a JSON report: per clip frames, seconds, busy seconds per stage, first/last output times.")
@click.option("-y", "--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--max-batch-pairs", type=click.IntRange(min=1), default=None,
              help="Frame pairs per model call [default: by resolution, bounded memory].")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="CSV file listing clips (header: input,output,flow_npy,flow_flo; see the README).")
@click.option("--devices", default=None, metavar="LIST",
              help="Many clips in parallel, one worker process per device: all (every GPU), 0,1, cuda:0,cuda:2, "
                   "cpu or cpu:N (N CPU workers).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Send the clips to a Ray cluster: auto (the running cluster), ray://HOST:10001, or local.")
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
    x264_preset: str,
    decoder: str,
    report_path: Path | None,
    overwrite: bool,
    manifest: Path | None,
    devices: str | None,
    ray_address: str | None,
    weights: str,
    **options: Any,
) -> None:
    """Compute flow maps for INPUT: a video file, a folder of images or a glob such as 'frames/*.png'
    (several image files, e.g. an unquoted glob, are taken in natural name order).

    Many clips: a folder of videos, a glob or several video files, or --manifest; outputs go to -o FOLDER
    (FOLDER/<stem>.mp4) or a template such as -o 'flow/{stem}.mp4'. Clips whose outputs exist are skipped.

    Frame 0 has no reference and shows zero flow (white), or frame 1's map with --first-frame repeat; frame i
    shows the motion from frame i-1 to i. --preset vace gives VACE's own flow maps (see the README).
    """
    with cli_words():  # the batch's messages name these flags (--overwrite, --devices ...), in its workers too
        report = process(
            input_specs, output, flow_npy=flow_npy, flow_flo=flow_flo, manifest=manifest, overwrite=overwrite,
            devices=devices, ray_address=ray_address, chunk=chunk, decoder=decoder, fps=fps, codec=codec,
            x264_preset=x264_preset, flow_size=flow_size, report=report_path,
            progress=False if settings.quiet else None, verbose=settings.verbose,
            **preprocessor_options(weights=weights_spec(weights), **options),
        )
    if report.collection:
        _summarize(report, ray_address, options["device"])
        return
    result = report.results[0]
    if not result.ok:
        raise result.exception or CliError(result.error)
    written = ", ".join(str(path) for path in result.job.outputs)
    height, width = result.size
    say(f"{result.frames} frames ({height}x{width}) in {result.seconds:.1f} s "
        f"({result.frames / result.seconds:.1f} frames/s) -> {written}")


def _summarize(report: BatchReport, ray_address: str | None, device: str) -> None:
    """``run`` for many clips: a summary line, the failures, and a non-zero exit if any."""
    ran_on = sorted({result.worker.split(" pid ")[0] for result in report.results if result.worker})  # CPU fallback
    where = ", ".join(report.workers) or (f"Ray ({ray_address})" if ray_address is not None
                                          else ", ".join(ran_on) or device)
    seconds = max(report.seconds, 1e-9)
    say(f"{len(report.done)} clip(s) done, {len(report.skipped)} skipped (outputs exist), {len(report.failed)} "
        f"failed: {report.frames} frames in {report.seconds:.1f} s ({len(report.done) / seconds:.2f} clips/s, "
        f"{report.frames / seconds:.1f} frames/s) on {where}")
    for result in report.failed:
        if settings.verbose and result.detail:
            notice(result.detail.rstrip())
        notice(f"{PROG_NAME}: failed: {result.job.name}: {result.error}")
    if report.failed:
        clips = len(report.results) + len(report.skipped)
        raise CliError(f"{len(report.failed)} of {clips} clip(s) failed (listed above); the others are written. "
                       "Run the same command again to retry them (finished clips are skipped).")
