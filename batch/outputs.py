"""Writing results atomically: every output is written under a temporary name beside its destination and
moved into place only when the whole run succeeded, so a failure leaves no half-written file or folder.

Outputs are never clobbered unasked: each destination is claimed when it is staged (an OS lock on a hidden
``.NAME.claim`` file beside it, held until the output is moved into place or discarded and released by the OS
if the process dies), so a second run writing the same path fails at once instead of silently replacing the
first one's result; without ``--overwrite`` the final move never replaces a file that appeared meanwhile; and an
output that is one of the run's inputs (or a folder holding one) is refused even with ``--overwrite``.

Writers: flow-visualization video (PyAV), PNG folder (Pillow), raw flow as one ``.npy`` array, per-frame
``.npy`` files, or Middlebury ``.flo`` files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from .errors import OutputError
from .words import option_name, setting

VIDEO_CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "libx264",
                ".webm": "libvpx-vp9", ".avi": "mpeg4"}
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Flow maps are smooth colour fields: fast presets lose little at crf 18 and encode several times faster than
# "medium" (benchmarks/results/e2e.md has the measured rates).
DEFAULT_X264_PRESET = "veryfast"
# zlib level 1: flow maps compress nearly as well as at the default level 6, at a few times the speed.
PNG_COMPRESS_LEVEL = 1
FLO_MAGIC = 202021.25


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_CODECS


def cannot_write(destination: Path, error: OSError) -> OutputError:
    """The error for an output that cannot be created in its folder (``error`` says why)."""
    parent = destination.parent
    reason = error.strerror or str(error)
    if isinstance(error, FileNotFoundError) and parent.is_dir():  # e.g. /proc: it exists, takes no new files
        reason = f"the folder exists but takes no new files ({reason})"
    return OutputError(f"cannot write {destination} in {parent}: {reason}. Choose an output in a folder you can "
                       "write to.")


class OutputClaim:
    """This run's exclusive claim on an output path: a lock on ``.NAME.claim`` beside it (the OS releases it if
    the process dies, so a killed run never blocks the next). :meth:`release` removes the file while it still
    holds the lock, so a waiting run never locks a file that is gone."""

    def __init__(self, destination: Path) -> None:
        self.path = destination.with_name(f".{destination.name}.claim")
        self._lock = FileLock(str(self.path))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            if not self.path.exists():  # filelock could not even make the file: the folder takes no new files
                raise cannot_write(destination, FileNotFoundError(2, "No such file or directory")) from None
            raise OutputError(
                f"output {destination} is being written by another run (it holds {self.path.name}); wait for that "
                "run to finish, or choose another output path."
            ) from None
        except OSError as error:
            raise cannot_write(destination, error) from error

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        with contextlib.suppress(OSError):  # Windows cannot remove an open file: filelock removes it on release
            self.path.unlink(missing_ok=True)
        self._lock.release()


class StagedPath:
    """A file or folder written at ``temporary`` and moved to ``destination`` by :meth:`commit`; the destination
    is claimed (:class:`OutputClaim`) from staging until commit or discard."""

    def __init__(self, destination: Path, *, folder: bool, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
        self.destination = destination.expanduser().absolute()
        self.folder = folder
        self.overwrite = overwrite
        check_not_an_input(self.destination, inputs)
        parent = self.destination.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create the output folder {parent}: {error.strerror or error}") from error
        self.claim = OutputClaim(self.destination)
        try:
            if self.destination.exists() and not overwrite:
                raise OutputError(f"output {destination} already exists; pass {setting('overwrite', True)} to "
                                  "replace it.")
            if self.destination.exists() and self.destination.is_dir() != folder:
                kind = "a folder" if self.destination.is_dir() else "a file"
                raise OutputError(f"output {destination} is {kind}; choose another path.")
            token = f"partial-{os.getpid()}-{secrets.token_hex(3)}"
            name = self.destination.name
            # The real suffix stays last, so encoders that pick a format by extension still do.
            suffix = "" if folder else self.destination.suffix
            self.temporary = parent / f".{name}.{token}{suffix}"
            try:
                if folder:
                    self.temporary.mkdir()
                else:
                    self.temporary.touch(exist_ok=False)
            except OSError as error:
                raise cannot_write(destination, error) from error
        except BaseException:
            self.claim.release()
            raise

    def commit(self) -> None:
        """Move the output into place (without ``overwrite``, never over anything there) and release the claim;
        on failure the output is discarded."""
        try:
            if not self.overwrite:
                self._move_without_replacing()
            elif self.folder and self.destination.exists():
                old = self.destination.with_name(f".{self.destination.name}.old-{secrets.token_hex(3)}")
                self.destination.rename(old)
                self.temporary.rename(self.destination)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.temporary, self.destination)
        except OSError as error:
            self.discard()
            if isinstance(error, FileExistsError):
                raise OutputError(f"output {self.destination} appeared while this run wrote it (another program made "
                                  f"it); it was kept. Pass {setting('overwrite', True)} to replace it, or choose "
                                  "another path.") from None
            raise OutputError(f"cannot move the finished output into place at {self.destination}: {error}") from error
        self.claim.release()

    def discard(self) -> None:
        try:
            if self.folder:
                shutil.rmtree(self.temporary, ignore_errors=True)
            else:
                self.temporary.unlink(missing_ok=True)
        finally:
            self.claim.release()

    def _move_without_replacing(self) -> None:
        """Move into place only if nothing is there (a hard link fails on an existing name; a folder's rename
        fails on a non-empty one), so no output made meanwhile is replaced."""
        if self.destination.exists():
            raise FileExistsError(self.destination)
        if self.folder:
            self.temporary.rename(self.destination)
            return
        try:
            os.link(self.temporary, self.destination)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: checked just above, under this run's claim
            os.replace(self.temporary, self.destination)
            return
        self.temporary.unlink()


def check_not_an_input(destination: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output that is one of ``inputs`` or a folder holding one (writing it would destroy the input),
    whatever ``overwrite`` says."""
    target = _resolved(destination)
    sources = [(Path(source), _resolved(Path(source))) for source in inputs]
    same = [source for source, resolved in sources
            if resolved == target or (destination.exists() and _same_file(destination, source))]
    held = [source for source, resolved in sources if target in resolved.parents]
    if same or held:
        what, source = ("is", same[0]) if same else ("holds", held[0])
        raise OutputError(
            f"output {destination} {what} an input of this run ({source}); writing it would destroy the input. "
            f"Choose another output path ({setting('overwrite', True)} never replaces an input)."
        )


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


class StagedOutputs:
    """Context manager: outputs added inside are committed together on success and discarded on any error.
    ``inputs`` (the run's input files and folders) are never accepted as outputs."""

    def __init__(self, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
        self.overwrite = overwrite
        self.inputs = [Path(path) for path in inputs]
        self._staged: list[StagedPath] = []

    def add(self, destination: Path, *, folder: bool) -> Path:
        """Stage ``destination`` (claimed for this run until commit or discard); returns the temporary path to
        write to."""
        for staged in self._staged:
            if staged.destination == destination.expanduser().absolute():
                raise OutputError(f"{destination} is given as two different outputs; give each its own path.")
        staged = StagedPath(destination, folder=folder, overwrite=self.overwrite, inputs=self.inputs)
        self._staged.append(staged)
        return staged.temporary

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            for index, staged in enumerate(self._staged):
                try:
                    staged.commit()
                except BaseException:
                    for rest in self._staged[index + 1:]:
                        rest.discard()
                    raise
        else:
            for staged in self._staged:
                staged.discard()


@dataclass
class Sink:
    """One output: its writer, which kind of array it takes (``"images"``: RGB, ``"yuv420p"``: video planes,
    ``"flow"``), a short name."""

    writer: Any
    takes: str
    kind: str

    def takes_for(self, height: int, width: int) -> str:
        if self.kind == "video" and self.writer.input_format(height, width) == "yuv420p":
            return "yuv420p"
        return self.takes

    def write(self, chunk: Any) -> None:  # a transfer.HostChunk
        self.writer.write(chunk.array(self.takes_for(chunk.height, chunk.width)))


def _open_sinks(job: Any, staged: StagedOutputs, frame_rate: Fraction, settings: Any) -> list[Sink]:
    sinks: list[Sink] = []
    if job.output is not None:
        if is_video_path(job.output):
            writer = VideoWriter(staged.add(job.output, folder=False), frame_rate, settings.codec,
                                 settings.preset, threads=settings.codec_threads or 0)
            sinks.append(Sink(writer, "images", "video"))
        else:
            threads = settings.png_threads or png_threads(settings.codec_threads)
            sinks.append(Sink(PngFolderWriter(staged.add(job.output, folder=True), threads=threads), "images", "png"))
    if job.flow_npy is not None:
        if job.flow_npy.suffix.lower() == ".npy":
            sinks.append(Sink(NpyArrayWriter(staged.add(job.flow_npy, folder=False)), "flow", "npy"))
        else:
            sinks.append(Sink(NpyFolderWriter(staged.add(job.flow_npy, folder=True)), "flow", "npy_folder"))
    if job.flow_flo is not None:
        sinks.append(Sink(FloFolderWriter(staged.add(job.flow_flo, folder=True)), "flow", "flo"))
    return sinks


class ClipOutputs:
    """A clip's outputs, staged and open for writing: a context manager whose value is one :class:`Sink` per
    output. Leaving it normally closes the writers and moves every output into place; leaving it with an error
    aborts the writers and discards every output.

    ``job`` names the outputs (``output``: a video or a PNG folder; ``flow_npy``: one ``.npy`` array or a folder
    of them; ``flow_flo``: a ``.flo`` folder; ``None``: not written) and ``settings`` how they are written
    (``overwrite``, ``codec``, ``preset``, ``codec_threads``, ``png_threads``): a ``clips.ClipJob`` and
    ``clips.WriteSettings``, which this module, below them, does not import. Each output is claimed as it is
    staged (:class:`StagedOutputs`); one that is one of ``inputs`` (the clip's input files and folders) is
    refused."""

    def __init__(self, job: Any, frame_rate: Fraction, settings: Any, inputs: Iterable[Path] = ()) -> None:
        self._staged = StagedOutputs(settings.overwrite, inputs=inputs)
        try:
            self.sinks = _open_sinks(job, self._staged, frame_rate, settings)
        except BaseException as error:
            self._staged.__exit__(type(error), error, error.__traceback__)
            raise

    def __enter__(self) -> list[Sink]:
        return self.sinks

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            try:
                for sink in self.sinks:
                    sink.writer.close()
            except BaseException as failure:
                self._abort(type(failure), failure, failure.__traceback__)
                raise
            self._staged.__exit__(None, None, None)
        else:
            self._abort(kind, error, tb)

    def _abort(self, kind: type[BaseException], error: BaseException | None, tb: TracebackType | None) -> None:
        for sink in self.sinks:
            sink.writer.abort()
        self._staged.__exit__(kind, error, tb)


def png_threads(cores: int | None = None) -> int:
    """Threads compressing PNGs by default: half the cores (of the machine, or ``cores`` when a worker shares it
    with others; the other stages need the rest), 1 to 16."""
    return max(1, min(16, (cores or os.cpu_count() or 1) // 2))


class VideoWriter:
    """Encodes uint8 chunks (RGB frames or yuv420p planes) to a video; the stream opens on the first chunk.

    ``preset`` is libx264's speed/size trade-off (ignored by other codecs); ``threads`` the encoder's threads."""

    def __init__(
        self,
        path: Path,
        frame_rate: Fraction,
        codec: str | None = None,
        preset: str = DEFAULT_X264_PRESET,
        threads: int = 0,
    ) -> None:
        self.path = path
        self.frame_rate = frame_rate
        self.codec = codec or _default_codec(path)
        self.preset = preset
        self.threads = threads  # the encoder's threads; 0: FFmpeg's choice
        self._container = None
        self._stream = None
        self.frames_written = 0

    @staticmethod
    def input_format(height: int, width: int) -> str:
        """What :meth:`write` should be given for frames of this size: ``"yuv420p"`` planes when the stream is
        4:2:0 (even sizes; convert with ``colour.rgb_to_yuv420p``, on the GPU), else ``"rgb24"``."""
        return "yuv420p" if height % 2 == 0 and width % 2 == 0 else "rgb24"

    def write(self, frames: np.ndarray) -> None:
        """Encode ``[F, H, W, 3]`` uint8 RGB, or ``[F, H * 3 / 2, W]`` uint8 yuv420p planes (see :meth:`input_format`),
        which the encoder takes without a colour conversion of its own."""
        import av

        planes = frames.ndim == 3
        pixel_format = "yuv420p" if planes else "rgb24"
        try:
            if self._container is None:
                self._open(frames.shape[2], frames.shape[1] * 2 // 3 if planes else frames.shape[1])
            for frame_array in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_array), format=pixel_format)
                frame.pts = self.frames_written
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames_written += 1
        except av.error.FFmpegError as error:
            raise OutputError(f"cannot encode video {self.path} with codec {self.codec}: {error}") from error

    def close(self) -> None:
        import av

        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except av.error.FFmpegError as error:
            raise OutputError(f"cannot finish video {self.path}: {error}") from error
        finally:
            self._container.close()
            self._container = None

    def abort(self) -> None:
        import av

        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError, OSError):  # the file is discarded anyway
                self._container.close()
            self._container = None

    def _open(self, width: int, height: int) -> None:
        import av

        self._container = av.open(str(self.path), mode="w")
        try:
            stream = self._container.add_stream(self.codec, rate=self.frame_rate)
        except (av.error.FFmpegError, ValueError) as error:
            raise OutputError(
                f"codec {self.codec!r} is not available for {self.path.suffix or 'this'} output ({error}); "
                f"pick another with {option_name('codec')} (e.g. libx264, mpeg4) or another file extension."
            ) from error
        stream.width = width
        stream.height = height
        stream.time_base = Fraction(1) / self.frame_rate
        # yuv420p needs even sizes; odd frames keep full chroma instead of being cropped.
        even = width % 2 == 0 and height % 2 == 0
        stream.pix_fmt = "yuv420p" if even or self.codec == "mpeg4" else "yuv444p"
        if self.codec == "libx264":
            stream.codec_context.options = {"crf": "18", "preset": self.preset}
            # PyAV's default thread type is SLICE, which makes x264 split every frame into slices, one per thread:
            # on many cores and small frames that ran at ~350 frames/s whatever the preset. Frame threads scale.
            stream.codec_context.thread_type = "FRAME"
        elif self.codec == "mpeg4":
            stream.codec_context.options = {"qscale": "3"}
        stream.codec_context.thread_count = self.threads
        self._stream = stream


def _default_codec(path: Path) -> str:
    import av

    codec = VIDEO_CODECS.get(path.suffix.lower(), "libx264")
    return codec if codec in av.codec.codecs_available else "mpeg4"


class FolderWriter:
    """Writers of one raw-flow file per frame, ``flow_000000.<suffix>`` ...: nothing to finish or abort (the staged
    folder is moved or removed)."""

    suffix = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.frames_written = 0

    def write(self, flow: np.ndarray) -> None:
        for frame_flow in flow:
            self.save(self.folder / f"flow_{self.frames_written:06d}.{self.suffix}", frame_flow)
            self.frames_written += 1

    def save(self, path: Path, frame_flow: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class PngFolderWriter:
    """Numbered PNGs ``frame_000000.png`` ... in a folder, compressed by ``threads`` threads in parallel.

    :meth:`write` returns while its chunk is still being compressed (at most one chunk behind); :meth:`close`
    waits for every file and raises the first error."""

    def __init__(self, folder: Path, prefix: str = "frame", threads: int = 1) -> None:
        self.folder = folder
        self.prefix = prefix
        self.frames_written = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="optical-flow-png") if threads > 1 else None
        self._pending: list[Future[None]] = []

    def write(self, frames: np.ndarray) -> None:
        paths = [self.folder / f"{self.prefix}_{self.frames_written + i:06d}.png" for i in range(len(frames))]
        self.frames_written += len(frames)
        if self._pool is None:
            for frame, path in zip(frames, paths):
                _save_png(frame, path)
            return
        previous, self._pending = self._pending, [self._pool.submit(_save_png, f, p) for f, p in zip(frames, paths)]
        _wait_all(previous)

    def close(self) -> None:
        try:
            _wait_all(self._pending)
        finally:
            self._pending = []
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def abort(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _save_png(frame: np.ndarray, path: Path) -> None:
    from PIL import Image

    try:
        Image.fromarray(frame).save(path, compress_level=PNG_COMPRESS_LEVEL)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error}") from error


def _wait_all(futures: list[Future[None]]) -> None:
    """Wait for every future, then raise the first one's error."""
    for future in futures:
        future.exception()
    for future in futures:
        future.result()


class NpyArrayWriter:
    """One ``.npy`` array ``[F, 2, H, W]`` float32 written chunk by chunk; the frame count goes into the header
    at the end (the header is reserved at full length up front and padded with spaces, as numpy itself pads)."""

    HEADER_BYTES = 128

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("wb")
        self._handle.write(b"\0" * self.HEADER_BYTES)
        self._frame_shape: tuple[int, ...] | None = None
        self.frames_written = 0

    def write(self, flow: np.ndarray) -> None:
        if self._frame_shape is None:
            self._frame_shape = flow.shape[1:]
        np.ascontiguousarray(flow, dtype="<f4").tofile(self._handle)  # no intermediate bytes copy
        self.frames_written += flow.shape[0]

    def close(self) -> None:
        shape = (self.frames_written, *(self._frame_shape or (2, 0, 0)))
        self._handle.seek(0)
        self._handle.write(npy_header(shape, "<f4", self.HEADER_BYTES))
        self._handle.close()

    def abort(self) -> None:
        self._handle.close()


def npy_header(shape: tuple[int, ...], descr: str, total_bytes: int) -> bytes:
    """An ``.npy`` version 1.0 header of exactly ``total_bytes`` (a multiple of 64) for a C-order array."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    prefix_bytes = 10  # magic (6) + version (2) + header length (2)
    padding = total_bytes - prefix_bytes - len(text) - 1
    if padding < 0 or total_bytes % 64:
        raise ValueError(f"npy header for shape {shape} does not fit in {total_bytes} bytes")
    body = (text + " " * padding + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


class NpyFolderWriter(FolderWriter):
    """One ``[2, H, W]`` float32 ``.npy`` per frame: ``flow_000000.npy`` ..."""

    suffix = "npy"

    def save(self, path: Path, frame_flow: np.ndarray) -> None:
        np.save(path, frame_flow.astype(np.float32))


class FloFolderWriter(FolderWriter):
    """Middlebury ``.flo`` per frame: float32 202021.25, int32 width, int32 height, then u, v interleaved."""

    suffix = "flo"

    def save(self, path: Path, frame_flow: np.ndarray) -> None:
        write_flo(path, frame_flow)


def write_flo(path: Path, flow: np.ndarray) -> None:
    """Write ``[2, H, W]`` flow (u, v in pixels) as a Middlebury ``.flo`` file."""
    _, height, width = flow.shape
    with path.open("wb") as handle:
        np.array([FLO_MAGIC], dtype="<f4").tofile(handle)
        np.array([width, height], dtype="<i4").tofile(handle)
        np.ascontiguousarray(flow.transpose(1, 2, 0), dtype="<f4").tofile(handle)


def read_flo(path: Path) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as ``[2, H, W]`` float32."""
    with path.open("rb") as handle:
        magic = np.fromfile(handle, "<f4", 1)
        if magic.size != 1 or magic[0] != FLO_MAGIC:
            raise ValueError(f"{path} is not a Middlebury .flo file (bad magic number)")
        width, height = np.fromfile(handle, "<i4", 2)
        data = np.fromfile(handle, "<f4", int(width) * int(height) * 2)
    return data.reshape(int(height), int(width), 2).transpose(2, 0, 1)
