"""The clip pipeline (``batch.clips.process_clip``: reader thread, compute, writer threads): the same outputs as a
plain serial loop for every output kind, every stage stopped with nothing left behind on a decode error, a
writer error or an interrupt, and memory bounded by the queues on a long clip. CPU, 128x128 compute, untrained
weights, 1-2 flow updates."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("PIL")
from PIL import Image
from scope_optical_flow_tensorrt.batch import clips as clips_module
from scope_optical_flow_tensorrt.batch.clips import ClipJob, WriteSettings, process_clip, to_uint8_frames
from scope_optical_flow_tensorrt.batch.colour import YuvFormat, rgb_to_yuv420p, yuv_to_rgb
from scope_optical_flow_tensorrt.batch.errors import InputError, OutputError
from scope_optical_flow_tensorrt.batch.inputs import FrameChunk, FrameSource, open_inputs
from scope_optical_flow_tensorrt.batch.outputs import (
    FloFolderWriter,
    NpyArrayWriter,
    NpyFolderWriter,
    PngFolderWriter,
    VideoWriter,
)
from scope_optical_flow_tensorrt.batch.pipeline import Prefetcher, StageStopped, StopSignal, WriterThread
from scope_optical_flow_tensorrt.core import OpticalFlowTensorRTPreprocessor
from scope_optical_flow_tensorrt.core.resize import resize_flow
from test_cli import moving_frames, read_video, write_images, write_video

CHUNK = 3
# libx264 with its own threads is not bit-reproducible from run to run (seen here at preset medium and veryfast,
# for the same frames in one process), so frame-exact comparisons of videos use MPEG-4 Part 2.
DETERMINISTIC_CODEC = "mpeg4"


def make_flow(updates: int = 2) -> OpticalFlowTensorRTPreprocessor:
    return OpticalFlowTensorRTPreprocessor(128, 128, device="cpu", weights=None, num_flow_updates=updates)


def pipeline_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("optical-flow-")]


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "in.mp4"
    write_video(path, moving_frames(8, 72, 88, seed=4), fps=12)
    return path


def serial_reference(source_path: Path, folder: Path) -> dict[str, Path]:
    """The straightforward loop the pipeline replaces: decode a chunk, compute, convert, write, in turn."""
    flow = make_flow()
    source = open_inputs([str(source_path)])
    outputs = {"video": folder / "ref.mp4", "png": folder / "ref_png", "npy": folder / "ref.npy",
               "npy_folder": folder / "ref_npy", "flo": folder / "ref_flo"}
    for name in ("png", "npy_folder", "flo"):
        outputs[name].mkdir()
    video = VideoWriter(outputs["video"], source.frame_rate, codec=DETERMINISTIC_CODEC)
    pngs = PngFolderWriter(outputs["png"])
    flows = [NpyArrayWriter(outputs["npy"]), NpyFolderWriter(outputs["npy_folder"]), FloFolderWriter(outputs["flo"])]
    for frames in source.chunks(CHUNK):
        raw = flow.compute_flow(torch.from_numpy(frames), layout="FHWC")
        images = to_uint8_frames(flow.flow_to_image(raw, size=frames.shape[1:3]))
        video.write(rgb_to_yuv420p(torch.from_numpy(images)).numpy())  # the encoder's input, as the pipeline makes it
        pngs.write(images)
        vectors = resize_flow(raw[0], *frames.shape[1:3]).float().numpy()
        for writer in flows:
            writer.write(vectors)
    for writer in [video, pngs, *flows]:
        writer.close()
    return outputs


def read_folder(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_pipeline_writes_what_the_serial_loop_writes(video: Path, tmp_path: Path) -> None:
    reference = serial_reference(video, tmp_path)
    settings = WriteSettings(chunk=CHUNK, png_threads=3, codec=DETERMINISTIC_CODEC)
    flow = make_flow()
    jobs = [ClipJob((str(video),), tmp_path / "out.mp4", tmp_path / "out.npy", tmp_path / "out_flo"),
            ClipJob((str(video),), tmp_path / "out_png", tmp_path / "out_npy")]
    results = [process_clip(flow, job, settings, on_frames=lambda n: None) for job in jobs]
    assert [r.frames for r in results] == [8, 8] and results[0].size == (72, 88)
    # Raw flow: the same bytes, in the same order.
    assert (tmp_path / "out.npy").read_bytes() == reference["npy"].read_bytes()
    assert read_folder(tmp_path / "out_flo") == read_folder(reference["flo"])
    assert read_folder(tmp_path / "out_npy") == read_folder(reference["npy_folder"])
    # Images: the same pixels in the same frames (PNGs compressed by a pool: compare the decoded images).
    png_names = sorted(p.name for p in (tmp_path / "out_png").iterdir())
    assert png_names == sorted(p.name for p in reference["png"].iterdir()) and len(png_names) == 8
    for name in png_names:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out_png" / name)),
                                      np.asarray(Image.open(reference["png"] / name)))
    written, rate = read_video(tmp_path / "out.mp4")
    expected, expected_rate = read_video(reference["video"])
    assert rate == expected_rate == 12
    np.testing.assert_array_equal(written, expected)
    # The result reports each stage's busy time and when output frames were written.
    stages = results[0].stages
    assert {"load", "decode", "compute", "write_video", "write_npy", "write_flo"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values()) and stages["compute"] > 0
    assert results[0].decoder == "cpu"
    assert results[0].started_at <= results[0].first_output_at <= results[0].last_output_at <= time.time()
    assert pipeline_threads() == []


def test_decode_error_mid_clip_stops_every_stage(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "frames", moving_frames(12, 64, 64, seed=5), names="f{}.png")
    paths[7].write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    out = tmp_path / "out"
    out.mkdir()
    job = ClipJob((str(tmp_path / "frames"),), out / "flow.mp4", out / "flow.npy", out / "flo")
    with pytest.raises(InputError, match="f7.png"):
        process_clip(make_flow(1), job, WriteSettings(chunk=2), on_frames=lambda n: None)
    assert list(out.iterdir()) == []  # no output, no temporary leftovers
    assert pipeline_threads() == []


def test_writer_error_stops_every_stage(video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = NpyArrayWriter.write

    def failing_write(self: NpyArrayWriter, flow: np.ndarray) -> None:
        calls.append(len(flow))
        if len(calls) == 2:
            raise OutputError("disk full (test)")
        original(self, flow)

    monkeypatch.setattr(NpyArrayWriter, "write", failing_write)
    out = tmp_path / "out"
    out.mkdir()
    job = ClipJob((str(video),), out / "flow.mp4", out / "flow.npy", out / "flo")
    with pytest.raises(OutputError, match="disk full"):
        process_clip(make_flow(1), job, WriteSettings(chunk=2), on_frames=lambda n: None)
    assert list(out.iterdir()) == []
    assert pipeline_threads() == []


def test_interrupt_stops_every_stage(video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job = ClipJob((str(video),), out / "pngs", out / "flow.npy")
    seen = []

    def interrupt(count: int) -> None:
        seen.append(count)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        process_clip(make_flow(1), job, WriteSettings(chunk=2), on_frames=interrupt)
    assert seen == [2]
    assert list(out.iterdir()) == []
    assert pipeline_threads() == []


class LongSource:
    """A synthetic clip of many chunks that counts how many chunk buffers are alive at once."""

    def __init__(self, chunks: int, height: int = 64, width: int = 64) -> None:
        self.path = "synthetic"
        self.kind = "images"
        self.frame_rate = Fraction(30)
        self.num_frames = chunks * 2
        self.total_chunks = chunks
        self.height, self.width = height, width
        self.alive = 0
        self.peak = 0
        self.made = 0
        self._lock = threading.Lock()

    def _released(self) -> None:
        with self._lock:
            self.alive -= 1

    def decoded_chunks(self, chunk_size: int, allocate, readers: int = 1, decoder: str = "cpu",
                       keep_yuv: bool = False, threads: int = 0) -> Iterator[FrameChunk]:
        frames = moving_frames(2, self.height, self.width, seed=6)
        for _ in range(self.total_chunks):
            batch = allocate((2, self.height, self.width, 3))
            batch[:] = frames
            with self._lock:
                self.alive += 1
                self.made += 1
                self.peak = max(self.peak, self.alive)
            weakref.finalize(batch, self._released)
            yield FrameChunk(batch, self.height, self.width)


def test_queues_bound_memory_on_a_long_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = LongSource(chunks=40)
    monkeypatch.setattr(clips_module, "open_inputs", lambda specs, fps=None: source)
    original = NpyArrayWriter.write

    def slow_write(self: NpyArrayWriter, flow: np.ndarray) -> None:  # the slowest stage: the others must wait
        time.sleep(0.01)
        original(self, flow)

    monkeypatch.setattr(NpyArrayWriter, "write", slow_write)
    depth = 2
    result = process_clip(make_flow(1), ClipJob(("synthetic",), flow_npy=tmp_path / "flow.npy"),
                          WriteSettings(chunk=2, queue_depth=depth), on_frames=lambda n: None)
    assert result.frames == 80 and source.made == 40
    assert np.load(tmp_path / "flow.npy", mmap_mode="r").shape == (80, 2, 64, 64)
    # Reader queue + the chunk being decoded + the one computing + writer queue + the one being written (+1 slack
    # for a reference a thread still holds): never the whole clip.
    assert source.peak <= 2 * depth + 4, source.peak


def test_prefetcher_passes_items_in_order_and_raises_where_the_source_failed() -> None:
    def numbers() -> Iterator[int]:
        yield from range(5)
        raise InputError("bad frame 5")

    stop = StopSignal()
    prefetcher = Prefetcher(numbers(), depth=2, stop=stop).start()
    seen = []
    with pytest.raises(InputError, match="bad frame 5"):
        for item in prefetcher:
            seen.append(item)
    prefetcher.join()
    assert seen == [0, 1, 2, 3, 4]


def test_writer_thread_error_reaches_the_submitter_and_stops_the_reader() -> None:
    stop = StopSignal()
    produced = []

    def endless() -> Iterator[int]:
        count = 0
        while True:
            produced.append(count)
            yield count
            count += 1

    def write(item: int) -> None:
        if item == 3:
            raise OutputError("cannot write item 3")

    reader = Prefetcher(endless(), depth=2, stop=stop).start()
    writer = WriterThread(write, depth=2, stop=stop, name="test").start()
    with pytest.raises(OutputError, match="item 3"):
        for item in reader:
            writer.submit(item)
        writer.finish()
    reader.join()
    writer.join()
    assert len(produced) < 20  # the reader stopped soon after the writer failed
    with pytest.raises(OutputError):
        stop.raise_if_set()
    assert not isinstance(stop.error, StageStopped)


def test_image_folder_is_read_in_order_by_several_readers(tmp_path: Path) -> None:
    frames = moving_frames(11, 40, 48, seed=7)
    write_images(tmp_path / "frames", frames, names="frame_{}.png")
    source = open_inputs([str(tmp_path / "frames")])
    assert isinstance(source, FrameSource)
    chunks = list(source.chunks(4, readers=3))
    assert [len(chunk) for chunk in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), frames)


@pytest.mark.gpu
def test_pipeline_on_cuda_matches_the_serial_loop(video: Path, tmp_path: Path) -> None:
    """Pinned input chunks, device-side outputs and the copy stream give what a plain loop on the GPU gives."""
    flow = OpticalFlowTensorRTPreprocessor(128, 128, device="cuda", weights=None, num_flow_updates=2,
                                           torch_compile=False)
    reference = OpticalFlowTensorRTPreprocessor(128, 128, device="cuda", weights=None, num_flow_updates=2,
                                                torch_compile=False)
    expected_flow, expected_images = [], []
    for chunk in open_inputs([str(video)]).decoded_chunks(CHUNK, keep_yuv=True):
        assert chunk.yuv is not None  # H.264 decodes to 4:2:0: converted on the GPU
        frames = yuv_to_rgb(torch.from_numpy(chunk.data).cuda(), chunk.yuv, chunk.height, chunk.width)
        raw = reference.compute_flow(frames, layout="FHWC")
        size = (chunk.height, chunk.width)
        expected_images.append(to_uint8_frames(reference.flow_to_image(raw, size=size)))
        expected_flow.append(resize_flow(raw[0], *size).float().cpu().numpy())
    result = process_clip(flow, ClipJob((str(video),), tmp_path / "pngs", tmp_path / "flow.npy"),
                          WriteSettings(chunk=CHUNK), on_frames=lambda n: None)
    assert result.frames == 8 and result.stages["compute_gpu"] > 0
    np.testing.assert_allclose(np.load(tmp_path / "flow.npy"), np.concatenate(expected_flow), atol=1e-3)
    written = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "pngs").iterdir())])
    assert np.abs(written.astype(int) - np.concatenate(expected_images).astype(int)).max() <= 1
    assert pipeline_threads() == []


def test_yuv_chunks_convert_to_the_video_frames(tmp_path: Path) -> None:
    """4:2:0 planes converted by yuv_to_rgb (the GPU path, run here on the CPU) match the source frames at least as
    well as FFmpeg's own conversion does."""
    original = moving_frames(6, 64, 80, seed=8)
    write_video(tmp_path / "in.mp4", original)
    source = open_inputs([str(tmp_path / "in.mp4")])
    swscale = np.concatenate(list(source.chunks(4))).astype(int)
    chunks = list(source.decoded_chunks(4, keep_yuv=True))
    assert [len(chunk) for chunk in chunks] == [4, 2]
    assert chunks[0].yuv == YuvFormat("yuv420p", "bt601", False) and chunks[0].data.shape == (4, 96, 80)
    converted = np.concatenate([yuv_to_rgb(torch.from_numpy(c.data), c.yuv, c.height, c.width).numpy()
                                for c in chunks]).astype(int)
    assert converted.shape == original.shape
    error_ours = np.abs(converted - original.astype(int)).mean()
    error_ffmpeg = np.abs(swscale - original.astype(int)).mean()
    assert error_ours <= error_ffmpeg + 0.5, (error_ours, error_ffmpeg)
    assert np.abs(converted - swscale).mean() < 8


def test_yuv_matrix_and_range_follow_the_tags() -> None:
    """A mid-grey and a saturated red decode to the right RGB for each matrix and range."""
    def planes(y: int, u: int, v: int) -> torch.Tensor:  # a 2x2 frame, yuv420p layout
        return torch.tensor([y, y, y, y, u, v], dtype=torch.uint8).reshape(1, 3, 2)

    grey = yuv_to_rgb(planes(126, 128, 128), YuvFormat("yuv420p", "bt601", False), 2, 2)
    assert grey.unique().tolist() == [128]  # (126 - 16) / 219 * 255 = 128.1
    # Pure red in BT.709 limited range: Y 63, Cb 102, Cr 240.
    red = yuv_to_rgb(planes(63, 102, 240), YuvFormat("yuv420p", "bt709", False), 2, 2)[0, 0, 0].tolist()
    assert red[0] >= 253 and red[1] <= 2 and red[2] <= 2
    # The same numbers read as full range are a different colour: the tag matters.
    assert yuv_to_rgb(planes(63, 102, 240), YuvFormat("yuv420p", "bt709", True), 2, 2)[0, 0, 0].tolist() != red
    nv12 = torch.tensor([63, 63, 63, 63, 102, 240], dtype=torch.uint8).reshape(1, 3, 2)
    assert yuv_to_rgb(nv12, YuvFormat("nv12", "bt709", False), 2, 2)[0, 0, 0].tolist() == red


def test_video_planes_made_for_the_encoder_match_ffmpegs_conversion(tmp_path: Path) -> None:
    """rgb_to_yuv420p (run on the GPU in the pipeline) writes the planes swscale would, within rounding, and a
    video written from them decodes to the same frames as one written from RGB."""
    images = moving_frames(5, 48, 64, seed=9)
    planes = rgb_to_yuv420p(torch.from_numpy(images)).numpy()
    assert planes.shape == (5, 72, 64) and planes.dtype == np.uint8
    swscale = np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray()
                        for f in images])
    difference = np.abs(planes.astype(int) - swscale.astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 4
    for name, frames in (("rgb.mp4", images), ("planes.mp4", planes)):
        writer = VideoWriter(tmp_path / name, Fraction(24), codec=DETERMINISTIC_CODEC)
        writer.write(frames[:3])
        writer.write(frames[3:])
        writer.close()
    from_rgb, _ = read_video(tmp_path / "rgb.mp4")
    from_planes, rate = read_video(tmp_path / "planes.mp4")
    assert from_planes.shape == (5, 48, 64, 3) and rate == 24
    # Lossy coding moves both by a few levels; from the planes it is as faithful to the images as from RGB.
    error_planes = np.abs(from_planes.astype(int) - images.astype(int)).mean()
    error_rgb = np.abs(from_rgb.astype(int) - images.astype(int)).mean()
    assert error_planes < error_rgb + 0.25, (error_planes, error_rgb)
    assert VideoWriter.input_format(48, 64) == "yuv420p" and VideoWriter.input_format(49, 64) == "rgb24"
