"""Compute-size rules shared by the preprocessor and the engine manager: which sizes RAFT accepts, and how many
frame pairs fit one model call by default."""

from __future__ import annotations

from ..common.errors import FrameError
from .raft import DOWNSAMPLE, MIN_SIZE
from .specs import DEFAULT_MODEL, ModelSpec, model_spec
from ..common.vocabulary import option_name, setting, words

# Pairs per model call are bounded so that a call's working memory stays within this many bytes: the all-pairs
# correlation pyramid, plus what a model needs beyond RAFT Small (RAFT Small's own activations are the headroom
# this budget was sized with: 2.3 GB peak GPU memory for 16 frames at 512x512, README).
CORRELATION_BUDGET_BYTES = 2 << 30
MAX_PAIRS_CAP = 32


def default_max_pairs(height: int, width: int, model: str | ModelSpec = DEFAULT_MODEL) -> int:
    """Pairs per model call so that the fp32 correlation pyramid (4 levels, ~4/3 of level 0) and the model's extra
    working memory (:attr:`ModelSpec.extra_bytes_per_pixel`) fit the budget."""
    spec = model_spec(model)
    cells = (height // DOWNSAMPLE) * (width // DOWNSAMPLE)
    pyramid_bytes_per_pair = cells * cells * 4 * 4 / 3
    pair_bytes = pyramid_bytes_per_pair + height * width * spec.extra_bytes_per_pixel
    return int(max(1, min(MAX_PAIRS_CAP, CORRELATION_BUDGET_BYTES // pair_bytes)))


def check_compute_size(height: object, width: object) -> None:
    """Raise unless ``height`` x ``width`` is a valid compute size (integers, multiples of 8, at least 128), or
    both are ``None`` (the input's own size)."""
    if height is None and width is None:
        return
    if height is None or width is None:
        raise ValueError(words(
            "{height=none} and {width=none} go together (compute at the input's own size); otherwise both are "
            "numbers of pixels, got {height=height} and {width=width}.",
            none=None, height=height, width=width,
        ))
    for key, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{option_name(key)} must be an integer number of pixels, got {value!r}.")
        if value % DOWNSAMPLE != 0 or value < MIN_SIZE:
            suggestion = max(MIN_SIZE, int(round(value / DOWNSAMPLE)) * DOWNSAMPLE)
            raise ValueError(
                f"{setting(key, value)} must be a multiple of {DOWNSAMPLE} and at least {MIN_SIZE} "
                f"(RAFT's correlation pyramid); try {suggestion}."
            )


def native_compute_size(height: int, width: int) -> tuple[int, int]:
    """The compute size for frames of ``height`` x ``width`` computed at their own size: rounded up to a multiple
    of 8 (padding); frames too small for RAFT get an error naming the fix."""
    padded = (-(-height // DOWNSAMPLE) * DOWNSAMPLE, -(-width // DOWNSAMPLE) * DOWNSAMPLE)
    if min(padded) < MIN_SIZE:
        raise FrameError(words(
            f"the frames are {height}x{width} (height x width), too small to compute flow at their own size: "
            f"RAFT's correlation pyramid needs at least {MIN_SIZE} pixels on each side.",
            "Resize the frames to at least {0}x{0}, or compute at a fixed size ({{size=fixed}}).".format(MIN_SIZE),
            fixed=(MIN_SIZE, MIN_SIZE),
        ))
    return padded
