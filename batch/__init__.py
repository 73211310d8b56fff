"""Many clips in, flow out: the batch engine, for scripts, notebooks and Ray pipelines.

    from scope_optical_flow_tensorrt.batch import process

    report = process(["a.mp4", "frames/"], output="flow/{stem}.mp4", devices="all")
    for result in report.results:
        print(result.job.name, result.frames, result.error)

A clip goes source -> decode -> compute -> write: :mod:`.inputs` reads it, :mod:`.clips` computes it (with
:mod:`.colour` and :mod:`.transfer` on the device), :mod:`.outputs` writes it, :mod:`.pipeline` overlaps the
three. A batch is planned (:mod:`.plan`, :mod:`.dispatch`), run by workers (:mod:`.workers`: this process,
:mod:`.pool` or :mod:`.ray_runner`) and reported (:mod:`.progress`, :mod:`.report`). Ray Data pipelines use
:class:`FlowMapBatches`; :func:`clip_task` is one clip as a plain Ray task.

This module's names are the package's whole public face; the command line (``cli/``) imports nothing else.
"""

from .api import BatchReport, process
from .clips import ClipJob, ClipResult, WriteSettings, to_uint8_frames
from .errors import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, CliError, InputError, ModelError
from .errors import OutputError, UsageError
from .inputs import DECODER_CHOICES
from .outputs import DEFAULT_X264_PRESET, X264_PRESETS, StagedOutputs, VideoWriter
from .preprocessor import build_preprocessor, load_model
from .progress import Progress, ProgressBar
from .ray_runner import FlowMapBatches, clip_task
from .startup import timeline

__all__ = [
    "DECODER_CHOICES",
    "DEFAULT_X264_PRESET",
    "EXIT_FAILURE",
    "EXIT_INPUT",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_USAGE",
    "X264_PRESETS",
    "BatchReport",
    "CliError",
    "ClipJob",
    "ClipResult",
    "FlowMapBatches",
    "InputError",
    "ModelError",
    "OutputError",
    "Progress",
    "ProgressBar",
    "StagedOutputs",
    "UsageError",
    "VideoWriter",
    "WriteSettings",
    "build_preprocessor",
    "clip_task",
    "load_model",
    "process",
    "timeline",
    "to_uint8_frames",
]
