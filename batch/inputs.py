"""Reading frames in bounded chunks from a video file (PyAV), a folder of images or a glob (Pillow).

Every source yields ``[F, H, W, 3]`` uint8 RGB numpy chunks of at most ``chunk_size`` frames, in order.
Problems with the input become :class:`InputError` (exit code 3) naming the file.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .colour import YuvFormat
from .errors import InputError, UsageError
from .words import option_name, words

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Files taken as videos when a folder or glob is a collection of clips (any file PyAV reads works as INPUT).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif")
DEFAULT_IMAGE_FPS = Fraction(30)

logger = logging.getLogger("scope_optical_flow_tensorrt.batch")


@dataclass
class FrameChunk:
    """Consecutive decoded frames of one size: ``data`` is RGB ``[F, H, W, 3]`` uint8, or, when ``yuv`` is set,
    4:2:0 YUV planes ``[F, H * 3 / 2, W]`` uint8 as PyAV lays them out (see :mod:`.colour`)."""

    data: np.ndarray
    height: int
    width: int
    yuv: YuvFormat | None = None

    def __len__(self) -> int:
        return int(self.data.shape[0])


@dataclass
class FrameSource:
    """Where frames come from: ``kind`` is ``"video"`` or ``"images"``; ``num_frames`` may be unknown (None)."""

    path: str
    kind: str
    frame_rate: Fraction
    num_frames: int | None
    files: list[Path] | None = None  # image files, in order

    def chunks(
        self,
        chunk_size: int,
        allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None,
        readers: int = 1,
        decoder: str = "cpu",
    ) -> Iterator[np.ndarray]:
        """``[F, H, W, 3]`` uint8 RGB chunks of ``chunk_size`` frames (the last may be shorter), in order.

        ``allocate(shape)`` makes each chunk's array (pinned host memory for fast copies to the GPU, say);
        frames are decoded straight into it. ``readers`` threads decode image files in parallel; ``decoder``
        (videos) is ``"cpu"`` (FFmpeg's threaded software decoder) or ``"nvdec"`` (the GPU's decoder through
        FFmpeg's CUDA hardware device, frames downloaded to host memory).
        """
        for chunk in self.decoded_chunks(chunk_size, allocate, readers, decoder, keep_yuv=False):
            yield chunk.data

    def decoded_chunks(
        self,
        chunk_size: int,
        allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None,
        readers: int = 1,
        decoder: str = "cpu",
        keep_yuv: bool = False,
        threads: int = 0,
    ) -> Iterator[FrameChunk]:
        """As :meth:`chunks`, as :class:`FrameChunk` s; with ``keep_yuv`` a video that decodes to 4:2:0 YUV of
        even size stays YUV (planes ``[F, H * 3 / 2, W]``), for conversion to RGB on the compute device.
        ``threads``: the video decoder's threads (0: FFmpeg's choice)."""
        allocate = allocate or _allocate_numpy
        if self.kind == "video":
            frames = self._video_frames(decoder, keep_yuv, threads)
        else:
            frames = ((image, None) for image in self._image_frames(readers))
        size: tuple[int, int] | None = None
        yuv: YuvFormat | None = None
        batch: np.ndarray | None = None
        count = 0
        for index, (frame, frame_yuv) in enumerate(frames):
            frame_size = (frame.shape[0] * 2 // 3, frame.shape[1]) if frame_yuv else frame.shape[:2]
            if size is None:
                size, yuv = frame_size, frame_yuv
            elif frame_size != size:
                raise InputError(
                    f"{self.path}: frame {index} is {frame_size[0]}x{frame_size[1]} (height x width, as "
                    f"{option_name('size')}) but earlier frames are {size[0]}x{size[1]}; all frames must have one "
                    "size (resize them first)."
                )
            if batch is None:
                batch = allocate((chunk_size, *frame.shape))
            batch[count] = frame
            count += 1
            if count == chunk_size:
                yield FrameChunk(batch, size[0], size[1], yuv)
                batch, count = None, 0
        if batch is not None and count and size is not None:
            yield FrameChunk(batch[:count], size[0], size[1], yuv)
        if size is None:
            what = "video" if self.kind == "video" else "image sequence"
            raise InputError(f"{self.path}: the {what} has no frames; give a video or images with at least one frame.")

    def _video_frames(
        self, decoder: str = "cpu", keep_yuv: bool = False, threads: int = 0
    ) -> Iterator[tuple[np.ndarray, YuvFormat | None]]:
        """Decoded frames as RGB arrays, or (``keep_yuv``, when the first frame is 4:2:0 YUV of even size) as YUV
        planes in the first frame's layout, each with its :class:`YuvFormat` (None for RGB)."""
        import av

        try:
            with av.open(self.path, **_decoder_options(decoder)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = threads
                yuv: YuvFormat | None = None
                first = True
                for frame in container.decode(stream):
                    if first:
                        yuv = YuvFormat.of_frame(frame) if keep_yuv else None
                        first = False
                    if yuv is None:
                        yield frame.to_ndarray(format="rgb24"), None
                    elif frame.format.name == yuv.layout:
                        yield frame.to_ndarray(), yuv
                    else:  # a stream whose pixel format changes midway (rare): FFmpeg converts the odd frame
                        yield frame.reformat(format=yuv.layout).to_ndarray(), yuv
        except (av.error.FFmpegError, OSError) as error:
            raise InputError(f"cannot decode video {self.path}: {library_reason(error)}.") from error

    def _image_frames(self, readers: int = 1) -> Iterator[np.ndarray]:
        files = self.files or []
        if readers <= 1 or len(files) <= 1:
            yield from map(read_image, files)
            return
        # Decoding runs ahead in windows, so memory stays bounded however many files there are.
        window = readers * 4
        with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="optical-flow-image-reader") as pool:
            for start in range(0, len(files), window):
                yield from pool.map(read_image, files[start : start + window])


def read_image(path: Path) -> np.ndarray:
    """One image file as ``[H, W, 3]`` uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"cannot read image {path}: {library_reason(error)}.") from error


def library_reason(error: BaseException) -> str:
    """What went wrong, in the library's words without its noise: FFmpeg's and the OS's error text without the
    error number (``[Errno 1094995529]`` means nothing to a user) or the path (the message names it already)."""
    reason = getattr(error, "strerror", None)
    if not isinstance(reason, str) or not reason:
        reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(error)) or type(error).__name__
    return reason.rstrip(".")


def _allocate_numpy(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.uint8)


DECODERS = ("cpu", "nvdec")
DECODER_CHOICES = ("auto", *DECODERS)  # what --decoder takes; auto picks cpu (measured faster)


def _decoder_options(decoder: str) -> dict[str, Any]:
    """``av.open`` keyword arguments for ``decoder``."""
    if decoder == "cpu":
        return {}
    if decoder == "nvdec":
        from av.codec.hwaccel import HWAccel

        return {"hwaccel": HWAccel(device_type="cuda", allow_software_fallback=False)}
    raise ValueError(f"decoder={decoder!r} is not supported; use one of {', '.join(DECODERS)}.")


def nvdec_available() -> bool:
    """Whether the installed PyAV/FFmpeg has the CUDA hardware device (NVDEC decoding)."""
    try:
        from av.codec.hwaccel import hwdevices_available
    except ImportError:
        return False
    return "cuda" in hwdevices_available()


def open_inputs(specs: list[str], fps: float | None = None) -> FrameSource:
    """One INPUT as :func:`open_input`; several must be image files (e.g. a glob the shell expanded)."""
    if len(specs) == 1:
        return open_input(specs[0], fps)
    paths = [Path(spec).expanduser() for spec in specs]
    for path in paths:
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(
                f"several inputs must all be image files ({', '.join(IMAGE_SUFFIXES)}), but {path} is not; give "
                "one video, one folder, or a quoted glob such as 'frames/*.png'."
            )
    rate = Fraction(fps).limit_denominator(1001) if fps is not None else None
    return _images(f"{len(paths)} images", paths, rate)


def open_input(spec: str, fps: float | None = None) -> FrameSource:
    """A video file, a folder of images (sorted by name, numbers in natural order) or a glob pattern."""
    rate = Fraction(fps).limit_denominator(1001) if fps is not None else None
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}; give a folder of frames, "
                             "a glob such as 'frames/*.png' or a video file.")
        return _images(spec, files, rate)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _images(spec, [path], rate)
        return _video(path, rate)
    if any(char in spec for char in "*?["):
        files = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
        files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise InputError(f"the pattern {spec!r} matches no image files ({', '.join(IMAGE_SUFFIXES)}).")
        return _images(spec, files, rate)
    raise InputError(f"input not found: {spec} (give a video file, a folder of images or a glob like 'frames/*.png').")


def _images(spec: str, files: list[Path], rate: Fraction | None) -> FrameSource:
    files = sorted(files, key=natural_key)
    return FrameSource(spec, "images", rate or DEFAULT_IMAGE_FPS, len(files), files)


def _video(path: Path, rate: Fraction | None) -> FrameSource:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream; give a video file, a folder of images or a glob.")
            stream = container.streams.video[0]
            source_rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            frames = stream.frames or None  # container metadata; 0 means unknown
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(
            f"{path} is not a readable video ({library_reason(error)}); give a video file FFmpeg can read "
            f"({', '.join(VIDEO_SUFFIXES[:5])}, ...), a folder of images or a glob like 'frames/*.png'."
        ) from error
    if rate is None:
        rate = Fraction(source_rate) if source_rate else DEFAULT_IMAGE_FPS
    return FrameSource(str(path), "video", rate, frames)


def natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def choose_decoder(requested: str, source: Any, device: Any) -> str:
    """``"auto"`` -> ``"cpu"`` (FFmpeg's threaded software decoder; measured faster end to end than NVDEC with
    frames downloaded to host memory, see benchmarks/NOTES.md); ``"nvdec"`` needs a CUDA device and a
    PyAV/FFmpeg with the CUDA hardware device."""
    if requested in ("auto", "cpu"):
        decoder = "cpu"
    elif requested == "nvdec":
        if device.type != "cuda" or not nvdec_available():
            raise UsageError(words("{decoder='nvdec'} needs a CUDA device and a PyAV whose FFmpeg has the CUDA "
                                   "hardware device (av.codec.hwaccel.hwdevices_available() lists 'cuda'); use "
                                   "{decoder='cpu'}."))
        decoder = "nvdec"
    else:
        raise UsageError(f"{option_name('decoder')} {requested!r} is not supported; use one of "
                         f"{', '.join(DECODER_CHOICES)}.")
    logger.info("decoding %s with the %s decoder", source.path, decoder)
    return decoder


def image_readers() -> int:
    """Threads decoding image files (PNG/JPEG decoders release the GIL)."""
    return min(4, os.cpu_count() or 1)
