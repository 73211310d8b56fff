"""YUV 4:2:0 frames to RGB on the compute device, a whole chunk at once.

Most videos decode to YUV 4:2:0. Converting on the CPU (FFmpeg's swscale, one frame at a time) costs the reader
more than decoding itself; on the GPU it is a few pointwise kernels per chunk, and the planes are half the bytes
of RGB to copy. The matrix (BT.601, BT.709, BT.2020) and range (limited or full) come from the video's own tags,
as FFmpeg reads them; untagged video is BT.601 limited range, FFmpeg's default. Chroma is upsampled bilinearly
(centre-sited). Results differ from swscale's by rounding and chroma interpolation (a few levels at sharp colour
edges), well below what changes optical flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# (Kr, Kb) luma coefficients per matrix.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}
# FFmpeg's AVColorSpace values -> matrix; anything else (unspecified, FCC, ...) is read as BT.601.
_COLORSPACE_MATRIX = {1: "bt709", 5: "bt601", 6: "bt601", 9: "bt2020", 10: "bt2020"}
YUV_LAYOUTS = ("yuv420p", "nv12")  # planar U, V / interleaved UV


@dataclass(frozen=True)
class YuvFormat:
    """How a chunk of YUV planes is laid out and what its numbers mean."""

    layout: str  # "yuv420p" or "nv12"
    matrix: str  # key of MATRICES
    full_range: bool

    @staticmethod
    def of_frame(frame: Any) -> YuvFormat | None:
        """The format of a decoded PyAV frame, or None if it is not 4:2:0 YUV of even size."""
        layout = frame.format.name
        if layout not in YUV_LAYOUTS or frame.width % 2 or frame.height % 2:
            return None
        matrix = _COLORSPACE_MATRIX.get(int(frame.colorspace), "bt601")
        return YuvFormat(layout, matrix, int(frame.color_range) == 2)  # AVCOL_RANGE_JPEG: full range


def yuv_planes_shape(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of one frame's planes as PyAV's ``to_ndarray`` returns them: ``[H * 3 / 2, W]``."""
    return height * 3 // 2, width


def yuv_to_rgb(planes: Any, yuv: YuvFormat, height: int, width: int) -> Any:
    """``[F, H * 3 / 2, W]`` uint8 planes (Y then chroma, as PyAV lays them out) -> ``[F, H, W, 3]`` uint8 RGB, on
    the planes' device."""
    import torch
    import torch.nn.functional as F

    frames = planes.shape[0]
    flat = planes.reshape(frames, -1)
    luma = flat[:, : height * width].reshape(frames, 1, height, width).float()
    chroma_pixels = (height // 2) * (width // 2)
    if yuv.layout == "yuv420p":
        chroma = flat[:, height * width :].reshape(frames, 2, height // 2, width // 2)
    else:  # nv12: U and V interleaved
        chroma = flat[:, height * width : height * width + 2 * chroma_pixels]
        chroma = chroma.reshape(frames, height // 2, width // 2, 2).permute(0, 3, 1, 2)
    chroma = F.interpolate(chroma.float(), scale_factor=2, mode="bilinear", align_corners=False)
    if yuv.full_range:
        luma = luma / 255.0
        chroma = (chroma - 128.0) / 255.0
    else:
        luma = (luma - 16.0) / 219.0
        chroma = (chroma - 128.0) / 224.0
    kr, kb = MATRICES[yuv.matrix]
    cb, cr = chroma[:, 0:1], chroma[:, 1:2]
    red = luma + (2.0 - 2.0 * kr) * cr
    blue = luma + (2.0 - 2.0 * kb) * cb
    green = (luma - kr * red - kb * blue) / (1.0 - kr - kb)
    rgb = torch.cat([red, green, blue], dim=1).mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    return rgb.permute(0, 2, 3, 1).contiguous()


# BT.601 limited range, what FFmpeg's swscale writes for untagged 4:2:0 video: rows are the Y, Cb, Cr weights of
# R, G, B in [0, 255] (Y' = 16 + 219 * luma / 255, chroma = 128 + 224 * colour difference / 255).
_BT601_LIMITED = (
    (65.481 / 255, 128.553 / 255, 24.966 / 255),
    (-37.797 / 255, -74.203 / 255, 112.0 / 255),
    (112.0 / 255, -93.786 / 255, -18.214 / 255),
)


_weights: dict[Any, Any] = {}


def rgb_to_yuv420p(images: Any) -> Any:
    """``[F, H, W, 3]`` uint8 RGB (H, W even) -> ``[F, H * 3 / 2, W]`` uint8 yuv420p planes (BT.601 limited range,
    chroma from 2x2 averages), on the images' device, laid out as PyAV's ``VideoFrame.from_ndarray`` takes them.

    Encoders want 4:2:0 YUV; converting here (a whole chunk on the GPU) instead of in the writer thread (swscale,
    one frame at a time) is what lets libx264 run at its own speed."""
    import torch
    import torch.nn.functional as F

    frames, height, width, _ = images.shape
    rgb = images.permute(0, 3, 1, 2).float()  # [F, 3, H, W]
    weights = _weights.get(images.device)
    if weights is None:  # once per device: a tensor built from a list is a host-to-device copy
        weights = _weights[images.device] = torch.tensor(_BT601_LIMITED, dtype=torch.float32, device=images.device)
    luma = torch.einsum("fchw,c->fhw", rgb, weights[0]) + 16.0
    rgb_half = F.avg_pool2d(rgb, 2)  # [F, 3, H/2, W/2]
    chroma = torch.einsum("fchw,kc->fkhw", rgb_half, weights[1:]) + 128.0
    planes = torch.cat([luma.reshape(frames, -1), chroma.reshape(frames, -1)], dim=1)
    return planes.round_().clamp_(0.0, 255.0).to(torch.uint8).reshape(frames, height * 3 // 2, width)
