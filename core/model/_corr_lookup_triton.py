"""The Triton kernel behind :mod:`.corr_lookup` (imported only where Triton is).

One program handles ``BLOCK_PIXELS`` pixels of one pair and all pyramid levels. At each level the window's
offsets are whole pixels, so all (2r+1)^2 samples of a pixel share one pair of bilinear weights; each sample
reads its four taps (zero outside the level, as ``grid_sample(padding_mode="zeros")``) and is written straight
into its output channel (torchvision's order: x offset major, y offset minor). For an NCHW output the window
is walked row by row, so consecutive lanes read consecutive x (the stores are regrouped along pixels through
shared memory); for a channels-last output it is walked in channel order, so the stores are contiguous.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sample_level(
    level_ptr, out_ptr, rows, cx, cy, out_offsets, out_stride_c, pixel_mask, level_h, level_w,
    LEVEL: tl.constexpr, RADIUS: tl.constexpr, WINDOW: tl.constexpr, X_MAJOR: tl.constexpr,
):
    m = tl.arange(0, WINDOW)  # window position
    in_window = m < (2 * RADIUS + 1) * (2 * RADIUS + 1)
    if X_MAJOR:  # torchvision's channel order: consecutive positions are consecutive channels
        dx = m // (2 * RADIUS + 1) - RADIUS
        dy = m % (2 * RADIUS + 1) - RADIUS
    else:  # row-major: consecutive positions read consecutive x
        dy = m // (2 * RADIUS + 1) - RADIUS
        dx = m % (2 * RADIUS + 1) - RADIUS
    # torchvision's CorrBlock.index_pyramid: channel i * (2r+1) + j samples x + (i - r), y + (j - r)
    channel = (LEVEL * (2 * RADIUS + 1) + dx + RADIUS) * (2 * RADIUS + 1) + (dy + RADIUS)
    x = cx
    y = cy
    for _ in tl.static_range(LEVEL):  # centroid / 2^level (exact in float)
        x = x * 0.5
        y = y * 0.5
    # Clamping far-out coordinates keeps the integer conversion in range and changes nothing: every tap of
    # the window stays outside the level, so the samples stay zero.
    x = tl.minimum(tl.maximum(x, -(RADIUS + 2.0)), level_w + (RADIUS + 1.0))
    y = tl.minimum(tl.maximum(y, -(RADIUS + 2.0)), level_h + (RADIUS + 1.0))
    x0 = tl.floor(x)
    y0 = tl.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    ix = x0.to(tl.int32)[:, None] + dx[None, :]
    iy = y0.to(tl.int32)[:, None] + dy[None, :]
    valid = pixel_mask[:, None] & in_window[None, :]
    x_in0 = (ix >= 0) & (ix < level_w)
    x_in1 = (ix >= -1) & (ix < level_w - 1)
    y_in0 = (iy >= 0) & (iy < level_h)
    y_in1 = (iy >= -1) & (iy < level_h - 1)
    taps = level_ptr + rows[:, None] * (level_h * level_w) + (iy * level_w + ix)
    v00 = tl.load(taps, mask=valid & y_in0 & x_in0, other=0.0).to(tl.float32)
    v01 = tl.load(taps + 1, mask=valid & y_in0 & x_in1, other=0.0).to(tl.float32)
    v10 = tl.load(taps + level_w, mask=valid & y_in1 & x_in0, other=0.0).to(tl.float32)
    v11 = tl.load(taps + level_w + 1, mask=valid & y_in1 & x_in1, other=0.0).to(tl.float32)
    gx = 1.0 - fx
    gy = 1.0 - fy
    value = v00 * (gx * gy) + v01 * (fx * gy) + v10 * (gx * fy) + v11 * (fx * fy)
    target = out_ptr + out_offsets[:, None] + channel[None, :] * out_stride_c
    tl.store(target, value.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def corr_lookup_kernel(
    coords_ptr, out_ptr, level0_ptr, level1_ptr, level2_ptr, level3_ptr,
    h0, w0, h1, w1, h2, w2, h3, w3,
    pixels_per_pair, coords_stride_p, coords_stride_c, coords_stride_pixel,
    out_stride_p, out_stride_c, out_stride_pixel, out_channels,
    NUM_LEVELS: tl.constexpr, RADIUS: tl.constexpr, WINDOW: tl.constexpr, PAD_BLOCK: tl.constexpr,
    BLOCK_PIXELS: tl.constexpr, X_MAJOR: tl.constexpr,
):
    """Grid: (pixel blocks, pairs). Pyramid level l is ``[pairs * pixels_per_pair, H_l, W_l]`` (contiguous)."""
    pair = tl.program_id(1).to(tl.int64)
    pixel = tl.program_id(0) * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    pixel_mask = pixel < pixels_per_pair
    coords = coords_ptr + pair * coords_stride_p + pixel * coords_stride_pixel
    cx = tl.load(coords, mask=pixel_mask, other=0.0).to(tl.float32)
    cy = tl.load(coords + coords_stride_c, mask=pixel_mask, other=0.0).to(tl.float32)
    rows = pair * pixels_per_pair + pixel  # this pixel's correlation map in every level (int64)
    out_offsets = pair * out_stride_p + pixel * out_stride_pixel
    _sample_level(level0_ptr, out_ptr, rows, cx, cy, out_offsets, out_stride_c, pixel_mask, h0, w0,
                  0, RADIUS, WINDOW, X_MAJOR)
    if NUM_LEVELS > 1:
        _sample_level(level1_ptr, out_ptr, rows, cx, cy, out_offsets, out_stride_c, pixel_mask, h1, w1,
                      1, RADIUS, WINDOW, X_MAJOR)
    if NUM_LEVELS > 2:
        _sample_level(level2_ptr, out_ptr, rows, cx, cy, out_offsets, out_stride_c, pixel_mask, h2, w2,
                      2, RADIUS, WINDOW, X_MAJOR)
    if NUM_LEVELS > 3:
        _sample_level(level3_ptr, out_ptr, rows, cx, cy, out_offsets, out_stride_c, pixel_mask, h3, w3,
                      3, RADIUS, WINDOW, X_MAJOR)
    if PAD_BLOCK > 0:  # the zero channels the padded update block expects after the samples
        channel = NUM_LEVELS * (2 * RADIUS + 1) * (2 * RADIUS + 1) + tl.arange(0, PAD_BLOCK)
        zeros = tl.zeros([BLOCK_PIXELS, PAD_BLOCK], dtype=out_ptr.dtype.element_ty)
        target = out_ptr + out_offsets[:, None] + channel[None, :] * out_stride_c
        tl.store(target, zeros, mask=pixel_mask[:, None] & (channel < out_channels)[None, :])
