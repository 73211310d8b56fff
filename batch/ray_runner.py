"""Ray integration (optional: ``pip install "scope-optical-flow-tensorrt[ray]"``; ``ray`` is imported lazily).

Two ways to use a Ray cluster:

- **One Ray call per clip** (what ``process(..., ray_address=ADDRESS)`` and ``scope-optical-flow run ... --ray
  ADDRESS`` do): :class:`RayWorkers`
  starts one :class:`ClipWorker` actor per GPU of the cluster (``num_gpus=1``; per CPU with ``--device cpu``),
  each loading one preprocessor for its life while the clips are planned, and hands the clips to whichever
  actor is free (``ray.util.ActorPool``), the largest first. A clip runs entirely in one call, so its
  temporal state never leaves it; a failed clip is reported, the others go on. :func:`clip_task` is the same
  work as a plain Ray task. Inputs and outputs must be on storage every node sees (the paths are used as
  they are).
- **Ray Data**: :class:`FlowMapBatches` is a callable class for ``map_batches``/``map_groups`` with one actor
  per GPU. Rows are frames (columns ``clip``, ``frame``, ``image``); it adds ``flow_map`` (and ``flow``)::

      import ray
      from scope_optical_flow_tensorrt.batch import FlowMapBatches

      frames = ray.data.from_items(rows)   # {"clip": "a.mp4", "frame": 0, "image": uint8 [H, W, 3]}, ...
      maps = frames.groupby("clip").map_groups(
          FlowMapBatches, fn_constructor_kwargs={"height": 512, "width": 512},
          concurrency=2, num_gpus=1, batch_format="numpy")     # 2 actors, one GPU each

  ``groupby("clip")`` hands each actor whole clips, which is what makes the flow exact. With plain
  ``map_batches(FlowMapBatches, concurrency=N, num_gpus=1, batch_size=...)`` a batch may continue a clip only
  on the actor that saw the clip's previous frame (e.g. ``concurrency=1``); otherwise it raises a ValueError.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .clips import ClipJob, ClipResult, WriteSettings, run_job, to_uint8_frames
from .errors import EXIT_FAILURE, CliError
from .preprocessor import worker_preprocessor
from .words import option_name, setting

RAY_INSTALL_HINT = 'pip install "scope-optical-flow-tensorrt[ray]" (or pip install ray)'


def import_ray() -> Any:
    """``ray``, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise CliError(f"{option_name('ray_address')} needs Ray, which is not installed: "
                       f"{RAY_INSTALL_HINT}.") from error
    return ray


def clip_task(job: ClipJob, write: WriteSettings, model: dict[str, Any], verbose: bool = False) -> ClipResult:
    """One clip as a plain Ray task: ``ray.remote(num_gpus=1)(clip_task).remote(job, write, model)``.

    The Ray worker process keeps its preprocessor for later clips only when Ray reuses it (``max_calls=0``);
    Ray's default for GPU tasks (``max_calls=1``) loads the model for every clip. ``--ray`` uses
    :class:`ClipWorker` actors instead, which keep one GPU and one preprocessor for their whole life."""
    return run_job(job, write, model, verbose=verbose)


class ClipWorker:
    """Ray actor body: one preprocessor on the actor's device, one clip per call. Given ``model``
    (``build_preprocessor``'s arguments) it loads it at creation, warmed up at ``warmup`` frames per call,
    so actors load while the driver is still planning; otherwise on its first clip."""

    def __init__(self, model: dict[str, Any] | None = None, warmup: int | bool = False) -> None:
        if model is not None:
            try:
                worker_preprocessor(model, warmup=warmup)
            except Exception:  # reported with the first clip (run_job retries and marks it fatal)
                pass

    def run(self, job: ClipJob, write: WriteSettings, model: dict[str, Any], verbose: bool = False) -> ClipResult:
        return run_job(job, write, model, verbose=verbose)


class RayWorkers:
    """One :class:`ClipWorker` actor per GPU of the Ray cluster at ``address`` (per CPU with ``--device cpu``),
    at most ``max_workers``, created now so they load the model while the caller plans (a context manager:
    leaving it kills them). ``address``: ``auto``, ``ray://HOST:PORT``, ``local``; an already initialized Ray
    is used as it is."""

    def __init__(self, address: str, write: WriteSettings, model: dict[str, Any], max_workers: int,
                 verbose: bool = False) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=verbose)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise CliError(f"cannot connect to the Ray cluster at {address!r}: {error} (start one with 'ray "
                               f"start --head', or pass {setting('ray_address', 'local')} for a Ray instance on this "
                               "machine).") from error
        on_gpu = str(model.get("device", "cuda")).startswith("cuda")
        slots = int(ray.cluster_resources().get("GPU" if on_gpu else "CPU", 0))
        if slots < 1:
            raise CliError(f"the Ray cluster at {address!r} has no {'GPU' if on_gpu else 'CPU'}; add nodes with "
                           f"GPUs, or pass {setting('device', 'cpu')} to run on its CPUs.")
        self.write, self.verbose = write, verbose
        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so "cuda" is the actor's GPU.
        self.model = {**model, "device": "cuda" if on_gpu else "cpu"}
        actor_class = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=1, max_restarts=1)(ClipWorker)
        self.actors = [actor_class.remote(self.model, write.chunk) for _ in range(min(slots, max_workers))]
        self.labels = [f"Ray cluster, {len(self.actors)} {'GPU' if on_gpu else 'CPU'} worker(s)"]
        self._ray = ray

    def run(self, jobs: list[ClipJob], on_result: Callable[[ClipResult], None],
            on_frames: Callable[[int], None] | None = None) -> None:
        """Run ``jobs``, handed to free actors in this order (``ray.util.ActorPool``), each result passed to
        ``on_result`` as it arrives (Ray reports no frame progress: ``on_frames`` is not called)."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        originals = {_absolute(job): job for job in jobs}  # workers may run elsewhere: no paths relative to here
        for job in originals:
            pool.submit(lambda actor, clip: actor.run.remote(clip, self.write, self.model, self.verbose), job)
        finished: set[ClipJob] = set()
        lost: list[str] = []
        while pool.has_next() and len(lost) < len(jobs):
            try:
                result = pool.get_next_unordered()
            except Exception as error:  # the actor died (out of memory, crash in native code) or Ray failed
                lost.append(" ".join(str(error).split())[:300])
                continue
            result.job = originals.get(result.job, result.job)
            finished.add(result.job)
            on_result(result)
        for job in jobs:
            if job not in finished:
                reason = lost[0] if lost else "no result came back"
                on_result(ClipResult(job, error=f"its Ray worker failed: {reason}", exit_code=EXIT_FAILURE))

    def ready_seconds(self) -> dict[str, float]:
        """Empty: actors do not report when they are loaded (their first clip's start shows it)."""
        return {}

    def __enter__(self) -> RayWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for actor in self.actors:
            self._ray.kill(actor)


def _absolute(job: ClipJob) -> ClipJob:
    def absolute(path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().absolute()

    inputs = tuple(str(Path(spec).expanduser().absolute()) for spec in job.inputs)
    return ClipJob(inputs, absolute(job.output), absolute(job.flow_npy), absolute(job.flow_flo))


class FlowMapBatches:
    """Ray Data callable class: frame batches in, flow maps out, keeping each clip's temporal state.

    Args:
        height, width, device, fp16, **preprocessor: as for ``OpticalFlowTensorRTPreprocessor`` (``device``
            defaults to ``"cuda"``, which in an actor with ``num_gpus=1`` is that actor's GPU).
        raw_flow: also return raw flow ``flow`` ``[N, 2, H, W]`` float32 in input pixels.
        clip_column, frame_column, image_column: column names of the clip id, the frame index within the
            clip (0, 1, 2, ...) and the frame (``[H, W, 3]`` uint8 RGB).

    ``__call__(batch)`` takes a numpy batch (dict of columns) and returns it with ``flow_map`` added:
    ``[N, H, W, 3]`` uint8, the same colours as the command line's videos. Rows may hold several clips, in any
    order; within a clip they are computed in frame order. Frame 0 of a clip shows zero flow (white). A clip
    continued by a later batch compares with its previous frame, kept by the actor (the last frame of up to
    ``keep_clips`` recent clips); a batch that continues a clip this actor never saw raises ValueError.
    Exact with ``normalization="per_frame"`` (default) or ``"fixed"``; ``"running"`` restarts its running
    scale whenever the actor switches between clips.
    """

    def __init__(
        self,
        height: int = 512,
        width: int = 512,
        device: str = "cuda",
        fp16: bool = True,
        *,
        raw_flow: bool = False,
        clip_column: str = "clip",
        frame_column: str = "frame",
        image_column: str = "image",
        keep_clips: int = 256,
        **preprocessor: Any,
    ) -> None:
        from ..core import OpticalFlowTensorRTPreprocessor

        self.flow = OpticalFlowTensorRTPreprocessor(height, width, device=device, fp16=fp16, **preprocessor)
        self.flow.load()  # once per actor
        self.raw_flow = raw_flow
        self.columns = (clip_column, frame_column, image_column)
        self.keep_clips = keep_clips
        self._current: tuple[Any, int] | None = None  # (clip, frame) the preprocessor's stream ended with
        self._last_frames: OrderedDict[Any, tuple[int, np.ndarray]] = OrderedDict()  # clip -> (frame, image)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clip_column, frame_column, image_column = self.columns
        missing = [name for name in self.columns if name not in batch]
        if missing:
            raise ValueError(f"FlowMapBatches: the batch has no column(s) {missing} (it has {sorted(batch)}); "
                             "pass clip_column=/frame_column=/image_column= to name yours.")
        clips = np.asarray(batch[clip_column])
        frame_numbers = np.asarray(batch[frame_column]).astype(np.int64)
        images = batch[image_column]
        count = len(clips)
        maps: list[np.ndarray | None] = [None] * count
        vectors: list[np.ndarray | None] = [None] * count
        for clip in dict.fromkeys(clips.tolist()):  # clips in order of first appearance
            rows = np.flatnonzero(clips == clip)
            rows = rows[np.argsort(frame_numbers[rows], kind="stable")]
            clip_maps, clip_flow = self._clip(clip, frame_numbers[rows], np.stack([images[i] for i in rows]))
            for position, row in enumerate(rows):
                maps[row] = clip_maps[position]
                if self.raw_flow:
                    vectors[row] = clip_flow[position]
        out = dict(batch)
        out["flow_map"] = np.stack(maps)
        if self.raw_flow:
            out["flow"] = np.stack(vectors)
        return out

    def _clip(self, clip: Any, numbers: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flow maps (and raw flow) for consecutive frames ``numbers`` of ``clip``, ``frames`` [F, H, W, 3]."""
        import torch

        from ..core.resize import resize_flow

        first = int(numbers[0])
        if np.any(np.diff(numbers) != 1):
            raise ValueError(f"FlowMapBatches: clip {clip!r} has frames {numbers.tolist()} in one batch; a clip's "
                             "frames must be consecutive (no gaps or repeats).")
        prepend = None
        if first == 0:
            self.flow.reset()
        elif self._current != (clip, first - 1):
            kept = self._last_frames.get(clip)
            if kept is None or kept[0] != first - 1:
                raise ValueError(
                    f"FlowMapBatches: clip {clip!r} continues at frame {first}, but this actor has not seen frame "
                    f"{first - 1}. Send each clip to one actor in order: ds.groupby({self.columns[0]!r})"
                    ".map_groups(FlowMapBatches, ...), or map_batches with concurrency=1."
                )
            self.flow.reset()
            prepend = kept[1]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"FlowMapBatches: images must be [H, W, 3] uint8 RGB, got {frames.dtype} "
                             f"{list(frames.shape[1:])}; convert with .astype(np.uint8).")
        stream = frames if prepend is None else np.concatenate([prepend[None], frames])
        raw = self.flow.compute_flow(torch.from_numpy(stream), layout="FHWC")  # [1, F(+1), 2, h, w]
        if prepend is not None:
            raw = raw[:, 1:]  # the kept frame only served as frame `first`'s reference
        size = frames.shape[1:3]
        maps = to_uint8_frames(self.flow.flow_to_image(raw, size=size))
        flow = resize_flow(raw[0], *size).float().cpu().numpy() if self.raw_flow else np.empty(0)
        self._current = (clip, int(numbers[-1]))
        self._last_frames[clip] = (int(numbers[-1]), frames[-1].copy())
        self._last_frames.move_to_end(clip)
        while len(self._last_frames) > self.keep_clips:
            self._last_frames.popitem(last=False)
        return maps, flow
