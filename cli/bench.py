"""``bench``: frames/s and latency per chunk of the full preprocessor call on this machine."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import click

from ..batch import build_preprocessor, load_model
from .options import frame_size, model_options, preprocessor_options, weights_spec


@click.command("bench", short_help="Frames/s and ms per chunk on this machine.")
@click.option("--chunk", type=click.IntRange(min=2), default=16, show_default=True, help="Frames per call.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls first.")
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True, help="Timed calls.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@model_options(default_size="512x512", default_weights="untrained",
               weights_help="Weights to load; speed does not depend on their values.")
def bench_command(chunk: int, warmup: int, runs: int, as_json: bool, weights: str, **options: Any) -> None:
    """Time the preprocessor (flow and visualization) on random frames already on the device.

    Each timed call continues the stream (chunk frames = chunk flow pairs), as in live use.
    """
    import torch

    flow = build_preprocessor(**preprocessor_options(weights=weights_spec(weights), **options))
    load_start = time.perf_counter()
    height, width = frame_size(options["size"], (512, 512))
    load_model(flow, warmup=chunk, size=(height, width))
    flow.wait_for_compiled()  # timed with the compiled kernels, not the uncompiled graphs that serve meanwhile
    load_seconds = time.perf_counter() - load_start
    device = flow.device
    generator = torch.Generator(device="cpu").manual_seed(0)
    frames = torch.randint(0, 256, (chunk, height, width, 3), dtype=torch.uint8, generator=generator).to(device)
    is_cuda = device.type == "cuda"
    if is_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        flow(frames, layout="FHWC")
    _synchronize(device)
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        flow(frames, layout="FHWC")
        _synchronize(device)
        times.append(time.perf_counter() - start)
    mean = statistics.fmean(times)
    result = {
        "device": torch.cuda.get_device_name(device) if is_cuda else "cpu",
        "model": flow.model,
        "backend": flow.backend_name,
        "size": f"{height}x{width}",
        "chunk": chunk,
        "fp16": flow.fp16 and is_cuda,
        "flow_updates": flow.num_flow_updates,
        "weights": flow.weights_info.description,
        "runs": runs,
        "load_s": round(load_seconds, 3),
        "ms_per_chunk_mean": round(mean * 1e3, 2),
        "ms_per_chunk_median": round(statistics.median(times) * 1e3, 2),
        "ms_per_chunk_min": round(min(times) * 1e3, 2),
        "ms_per_chunk_max": round(max(times) * 1e3, 2),
        "frames_per_s": round(chunk / mean, 1),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if is_cuda else None,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    rows = [
        ("device", f"{result['device']} ({result['backend']} backend{', fp16' if result['fp16'] else ''})"),
        ("model", result["model"]),
        ("size / chunk / updates", f"{result['size']} / {chunk} frames / {result['flow_updates']}"),
        ("ms per chunk", (f"mean {result['ms_per_chunk_mean']}, median {result['ms_per_chunk_median']}, "
                          f"min {result['ms_per_chunk_min']}, max {result['ms_per_chunk_max']} ({runs} runs)")),
        ("frames/s", f"{result['frames_per_s']}"),
        ("model load and warm-up", f"{result['load_s']} s ({result['weights']})"),
    ]
    if is_cuda:
        rows.append(("peak GPU memory", f"{result['peak_gpu_memory_mib']} MiB"))
    for name, value in rows:
        click.echo(f"{name:<24}{value}")


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
