"""``demo``: flow for an embedded synthetic clip with known motion, so a first run needs no input.

The clip: a textured background panning by a fixed number of pixels per frame, and a textured disk in the
middle turning by a fixed angle per frame. The demo writes the input and the flow side by side (video and PNG
strip), a colour-wheel legend, and prints the measured motion next to the true one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from ..batch import StagedOutputs, UsageError, VideoWriter, build_preprocessor, load_model, to_uint8_frames
from .options import cli_words, frame_size, model_options, preprocessor_options, weights_spec
from .state import notice, say

PAN = (4.0, 2.0)  # background motion (right, down) in pixels per frame
SPIN_DEGREES = 5.0  # disk rotation per frame, counter-clockwise on screen
DEMO_MARKER = "scope-optical-flow demo"
AUTO = "auto"
WEIGHTS_HELP = (
    "auto (torchvision's DEFAULT weights, or untrained with a notice when they cannot be loaded offline), "
    "DEFAULT, a torchvision weights name of the --model (C_T_V2, ...), a .pth path, or 'untrained'."
)


@dataclass
class SyntheticClip:
    frames: Any  # [F, H, W, 3] uint8 tensor
    pan_mask: Any  # [H, W] bool: background far from the disk and the borders
    spin_mask: Any  # [H, W] bool: inside the disk, away from its centre and rim
    centre: tuple[float, float]  # (x, y) in pixels (pixel centres at i + 0.5)


def synthetic_clip(num_frames: int, height: int, width: int, seed: int = 0) -> SyntheticClip:
    """Background panning by :data:`PAN` px/frame with a disk turning :data:`SPIN_DEGREES`/frame (ccw)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    pan_x, pan_y = int(PAN[0]), int(PAN[1])
    margin = 8
    big_h = height + pan_y * num_frames + 2 * margin
    big_w = width + pan_x * num_frames + 2 * margin
    background = _texture(big_h, big_w, generator)
    radius = 0.27 * min(height, width)
    side = int(2 * radius) + 8
    disk_texture = _texture(side, side, generator, contrast=1.4)
    # Radial bars make the turning visible to a person too.
    ys, xs = torch.meshgrid(torch.arange(side) + 0.5 - side / 2, torch.arange(side) + 0.5 - side / 2, indexing="ij")
    bars = (torch.cos(6 * torch.atan2(ys, xs)) > 0.6).float()
    disk_texture = disk_texture * (1 - 0.5 * bars) + torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1) * 0.5 * bars

    ys, xs = torch.meshgrid(torch.arange(height) + 0.5 - height / 2, torch.arange(width) + 0.5 - width / 2,
                            indexing="ij")
    distance = torch.sqrt(xs * xs + ys * ys)
    alpha = (radius + 0.5 - distance).clamp(0, 1)
    frames = []
    for t in range(num_frames):
        # Content at texture column c is at screen x = c - margin - left: moving right by pan_x per frame.
        left = margin + pan_x * (num_frames - 1 - t)
        top = margin + pan_y * (num_frames - 1 - t)
        crop = background[:, top : top + height, left : left + width]
        angle = math.radians(SPIN_DEGREES) * t
        # Inverse map: the screen point p shows the texture at rotation(-angle) p (ccw on screen, y down).
        source_x = xs * math.cos(angle) - ys * math.sin(angle)
        source_y = xs * math.sin(angle) + ys * math.cos(angle)
        grid = torch.stack([source_x, source_y], dim=-1)[None] * (2.0 / side)
        disk = F.grid_sample(disk_texture[None], grid, mode="bilinear", align_corners=False)[0]
        frames.append(crop * (1 - alpha) + disk * alpha)
    clip = (torch.stack(frames).permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8)
    border = int(0.06 * min(height, width)) + pan_x + pan_y
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[border : height - border, border : width - border] = True
    return SyntheticClip(
        frames=clip,
        pan_mask=inside & (distance > radius + 10),
        spin_mask=(distance > 0.35 * radius) & (distance < 0.85 * radius),
        centre=(width / 2, height / 2),
    )


def _texture(height: int, width: int, generator: Any, contrast: float = 1.0) -> Any:
    """Smooth multi-scale colour noise ``[3, H, W]`` in ``[0, 1]`` (structure at every scale for matching)."""
    import torch
    import torch.nn.functional as F

    texture = torch.zeros(3, height, width)
    for cell, weight in ((32, 1.0), (16, 0.8), (8, 0.6), (4, 0.4)):
        coarse = torch.rand(1, 3, height // cell + 2, width // cell + 2, generator=generator)
        up = F.interpolate(coarse, scale_factor=cell, mode="bicubic", align_corners=False)[0]
        texture += weight * up[:, :height, :width]
    texture = (texture - texture.mean()) / (texture.std() + 1e-6)
    return (0.5 + 0.18 * contrast * texture).clamp(0, 1)


def measure_motion(flow: Any, clip: SyntheticClip) -> dict[str, float]:
    """Median background flow (px/frame) and median disk rotation (degrees/frame, ccw positive) from
    ``[F, 2, H, W]`` flow whose frame 0 has no reference."""
    import torch

    moving = flow[1:].float().cpu()
    u, v = moving[:, 0], moving[:, 1]
    height, width = u.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5 - clip.centre[1], torch.arange(width) + 0.5 - clip.centre[0],
                            indexing="ij")
    pan_u = u[:, clip.pan_mask].median().item()
    pan_v = v[:, clip.pan_mask].median().item()
    # For a ccw (on screen, y down) turn by a: (y*u - x*v) / r^2 = sin(a) at every point of the disk.
    spin = (ys * u - xs * v) / (xs * xs + ys * ys).clamp_min(1.0)
    sine = spin[:, clip.spin_mask].median().clamp(-1, 1).item()
    return {"pan_u": pan_u, "pan_v": pan_v, "spin_degrees": math.degrees(math.asin(sine))}


def legend_image(size: int = 256) -> Any:
    """The colour wheel as ``[H, W, 3]`` uint8: the colour at offset (x, y) from the centre is the colour of
    motion in that direction (y down); saturation grows to the rim (full = the normalization's scale)."""
    import torch

    from ..core.visualize import flow_to_rgb

    radius = size / 2 - 2
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5 - size / 2, torch.arange(size) + 0.5 - size / 2, indexing="ij")
    flow = torch.stack([xs, ys])[None] / radius
    rgb = flow_to_rgb(flow, 1.0)[0]
    distance = torch.sqrt(xs * xs + ys * ys)
    rgb = torch.where((distance > radius)[None], torch.ones_like(rgb), rgb)
    rim = ((distance - radius).abs() < 0.8)[None]
    rgb = torch.where(rim, torch.full_like(rgb, 0.5), rgb)
    return (rgb.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def save_legend(path: Path, size: int = 256) -> None:
    from PIL import Image, ImageDraw

    pad = 48
    canvas = Image.new("RGB", (size + 2 * pad, size + 2 * pad + 20), "white")
    canvas.paste(Image.fromarray(legend_image(size)), (pad, pad))
    draw = ImageDraw.Draw(canvas)
    middle = pad + size // 2
    draw.text((pad + size + 6, middle - 5), "right", fill="black")
    draw.text((4, middle - 5), "left", fill="black")
    draw.text((middle - 6, pad - 16), "up", fill="black")
    draw.text((middle - 12, pad + size + 4), "down", fill="black")
    draw.text((8, size + 2 * pad - 2), "hue = direction of motion, saturation = speed (white = still)", fill="black")
    canvas.save(path)


def save_strip(path: Path, frames: Any, maps: Any, count: int = 6) -> None:
    """Input frames over their flow maps, ``count`` frames (after frame 0) spread over the clip."""
    import numpy as np
    from PIL import Image

    total = frames.shape[0]
    picks = sorted({round(1 + i * (total - 2) / max(count - 1, 1)) for i in range(count)} & set(range(1, total)))
    gap = 4
    height, width = frames.shape[1:3]
    strip = np.full((2 * height + gap, len(picks) * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for column, index in enumerate(picks):
        x = column * (width + gap)
        strip[:height, x : x + width] = frames[index]
        strip[height + gap :, x : x + width] = maps[index]
    Image.fromarray(strip).save(path)


@click.command("demo", short_help="Flow for a built-in synthetic clip; prints measured vs true motion.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("optical-flow-demo"), show_default=True,
              help="Folder for the demo's files (replaced if it holds an earlier demo).")
@click.option("--frames", "num_frames", type=click.IntRange(min=3, max=300), default=12, show_default=True,
              help="Frames in the synthetic clip.")
@click.option("-y", "--overwrite", is_flag=True, help="Replace the output folder even if it is not an earlier demo.")
@model_options(default_size="256x256", default_weights=AUTO, weights_help=WEIGHTS_HELP)
def demo_command(output: Path, num_frames: int, overwrite: bool, weights: str, **options: Any) -> None:
    """Flow for a built-in synthetic clip with known motion (needs no input), with measured vs true motion.

    Writes OUTPUT/demo.mp4 (input | flow), OUTPUT/strip.png, OUTPUT/legend.png and OUTPUT/summary.json.
    """
    import torch

    overwrite = overwrite or _is_old_demo(output)
    with cli_words(), StagedOutputs(overwrite) as staged:  # the batch's messages name flags (--overwrite)
        folder = staged.add(output, folder=True)
        height, width = frame_size(options["size"], (256, 256))
        flow = _load_with_fallback(weights, options, (height, width))
        clip = synthetic_clip(num_frames, height, width)
        started = time.perf_counter()
        raw = flow.compute_flow(clip.frames, layout="FHWC")[0]  # [F, 2, h, w] at the clip's size
        maps = to_uint8_frames(flow.flow_to_image(raw[None], size=(height, width)))
        seconds = time.perf_counter() - started
        measured = measure_motion(raw, clip)
        info = flow.weights_info
        frames = clip.frames.numpy()
        video = VideoWriter(folder / "demo.mp4", Fraction(8))
        video.write(_side_by_side(frames, maps))
        video.close()
        save_strip(folder / "strip.png", frames, maps)
        save_legend(folder / "legend.png")
        summary = {
            "what": DEMO_MARKER,
            "model": flow.model,
            "weights": info.description,
            "pretrained": info.pretrained,
            "device": str(flow.device),
            "backend": flow.backend_name,
            "compute_size": list(flow.compute_size or (height, width)),
            "frames": num_frames,
            "flow_updates": flow.num_flow_updates,
            "seconds": round(seconds, 3),
            "true": {"pan_u": PAN[0], "pan_v": PAN[1], "spin_degrees": SPIN_DEGREES},
            "measured": {key: round(value, 3) for key, value in measured.items()},
        }
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _report(summary, info.pretrained, output, torch.device(flow.device))


def _load_with_fallback(weights: str, options: dict[str, Any], size: tuple[int, int]) -> Any:
    """``--weights auto``: DEFAULT weights if they load, else untrained with a notice nobody can miss."""
    spec = weights_spec(weights)
    if weights.strip().lower() == AUTO:
        spec = "DEFAULT" if _default_weights_load(options.get("raft_model", "raft_small")) else None
    flow = build_preprocessor(**preprocessor_options(weights=spec, **options))
    load_model(flow, size=size)
    return flow


def _default_weights_load(model: str) -> bool:
    """Whether ``weights="DEFAULT"`` loads here (a small file; torchvision caches it). Only a failure to get the
    weights (offline, no cached file) falls back; a missing ``$SCOPE_OPTICAL_FLOW_WEIGHTS`` file stays an error."""
    from ..core.model.specs import model_spec
    from ..core.model.weights import load_raft

    try:
        title = model_spec(model).title
    except ValueError as error:
        raise UsageError(f"--model: {error}") from error
    try:
        load_raft(model, "DEFAULT", progress=False)
    except RuntimeError as error:
        notice(f"NOTICE: pretrained {title} weights are not available ({_first_sentence(error)}).")
        notice("NOTICE: running the demo with UNTRAINED weights: it runs end to end, but the flow is NOT real "
               "motion. See 'scope-optical-flow info' for where to put the weights file.")
        return False
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--weights auto: {error}") from error
    return True


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text.split(". ")[0].rstrip(".")


def _side_by_side(frames: Any, maps: Any) -> Any:
    import numpy as np

    return np.concatenate([frames, maps], axis=2)


def _is_old_demo(folder: Path) -> bool:
    """Whether ``folder`` is empty or an earlier demo's output (safe to replace without --overwrite)."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    try:
        return json.loads((folder / "summary.json").read_text()).get("what") == DEMO_MARKER
    except (OSError, ValueError, AttributeError):
        return False


def _report(summary: dict[str, Any], pretrained: bool, output: Path, device: Any) -> None:
    true, measured = summary["true"], summary["measured"]

    def sense(degrees: float) -> str:
        return "counter-clockwise" if degrees > 0 else "clockwise"

    say(f"Synthetic clip: {summary['frames']} frames at {summary['compute_size'][0]}x{summary['compute_size'][1]}; "
        f"the background pans {true['pan_u']:+.0f} px right and {true['pan_v']:+.0f} px down per frame, "
        f"a disk turns {true['spin_degrees']:.0f} degrees per frame {sense(true['spin_degrees'])}.")
    say(f"Flow: {summary['model']}, {summary['weights']}, {summary['backend']} backend on {device}, "
        f"{summary['flow_updates']} updates, {summary['seconds']:.2f} s.")
    say(f"  {'':22}{'true':>24}{'measured':>24}")
    say(f"  {'pan (u, v) px/frame':22}{_pair(true['pan_u'], true['pan_v']):>24}"
        f"{_pair(measured['pan_u'], measured['pan_v']):>24}")
    say(f"  {'rotation deg/frame':22}{_spin(true['spin_degrees']):>24}{_spin(measured['spin_degrees']):>24}")
    if pretrained:
        error = math.hypot(measured["pan_u"] - true["pan_u"], measured["pan_v"] - true["pan_v"])
        same_sense = (measured["spin_degrees"] > 0) == (true["spin_degrees"] > 0)
        verdict = "matches" if error < 1.0 and same_sense else "does NOT match"
        say(f"Measured motion {verdict} the true motion (pan error {error:.2f} px; rotation sense "
            f"{'right' if same_sense else 'wrong'}).")
    else:
        notice("NOTICE: the weights are UNTRAINED (random), so the measured motion above is meaningless; "
               "real flow needs the pretrained weights (see 'scope-optical-flow info').")
    say(f"Wrote {output}/demo.mp4 (input | flow), strip.png, legend.png, summary.json")


def _pair(u: float, v: float) -> str:
    return f"({u:+.2f}, {v:+.2f})"


def _spin(degrees: float) -> str:
    return f"{abs(degrees):.2f} {'ccw' if degrees > 0 else 'cw'}"
