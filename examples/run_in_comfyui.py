"""Load the nodes into a real ComfyUI and run examples/optical_flow_video.json with them, on the CPU.

    python examples/run_in_comfyui.py /path/to/ComfyUI --form typed     # comfy_api.latest (comfy_entrypoint)
    python examples/run_in_comfyui.py /path/to/ComfyUI --form classic   # NODE_CLASS_MAPPINGS
    python examples/run_in_comfyui.py /path/to/ComfyUI --vace           # Optical Flow (VACE annotator) instead

``typed`` loads this repository as ComfyUI loads a custom node folder (its root ``__init__.py``, through
``nodes.load_custom_node``); ``classic`` loads a one-line custom node that re-exports the classic mappings, the
form older ComfyUI reads. Then the example workflow (API format) is validated and executed by ComfyUI's own
executor, on a short synthetic clip written as ``input/optical_flow_example.mp4``, with untrained weights (no
download) unless ``--weights`` says otherwise. ``--vace`` swaps its Optical Flow (RAFT) node for the Optical Flow
(VACE annotator) node (same links, the inputs that node has); ``--first-frame`` sets the RAFT node's first_frame (a
value saved by an earlier version, ``copy_next``, must still validate and run). It prints one JSON line (form,
node classes, outputs written, the package's log lines that state the settings) and exits 0 when the workflow
ran.

Needs ComfyUI's requirements in this Python (aiohttp, safetensors, transformers, ...), and this package importable
as ``scope_optical_flow_tensorrt``. tests/test_comfyui.py runs it where ``COMFYUI_PATH`` points at a checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "examples" / "optical_flow_video.json"
CLIP_NAME = "optical_flow_example.mp4"
EXTRAS = ("nodes_video.py", "nodes_mask.py")  # LoadVideo, GetVideoComponents, CreateVideo, SaveVideo; MaskToImage


class _Server:
    """What ComfyUI's executor asks of its server, without a server."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, *args: Any, **kwargs: Any) -> None:
        pass

    def queue_updated(self) -> None:
        pass


def write_clip(path: Path, frames: int = 6, height: int = 128, width: int = 160) -> None:
    """A short clip of a drifting random texture (H.264 in MP4)."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height + 2 * frames, width + 3 * frames, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = np.ascontiguousarray(texture[2 * index : 2 * index + height, 3 * index : 3 * index + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


class _SettingsLines(logging.Handler):
    """Keeps the package's log lines that state the settings that run ("optical flow ready: ...", "... runs: ...")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("optical flow ready:", "optical flow runs:")):
            self.lines.append(message)


async def run(comfyui: Path, form: str, weights: str, vace: bool, first_frame: str | None) -> dict[str, Any]:
    sys.argv = [str(comfyui / "main.py"), "--cpu"]
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing()
    import execution
    import folder_paths
    import nodes

    work = Path(tempfile.mkdtemp(prefix="optical-flow-comfyui-"))
    for kind in ("input", "output", "temp"):
        (work / kind).mkdir()
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_output_directory(str(work / "output"))
    folder_paths.set_temp_directory(str(work / "temp"))
    write_clip(work / "input" / CLIP_NAME)

    await nodes.init_public_apis()
    for extra in EXTRAS:
        if not await nodes.load_custom_node(str(comfyui / "comfy_extras" / extra), module_parent="comfy_extras"):
            raise RuntimeError(f"ComfyUI's {extra} did not load")
    if form == "typed":
        loaded = await nodes.load_custom_node(str(REPO))
    else:
        shim = work / "optical_flow_classic"
        shim.mkdir()
        (shim / "__init__.py").write_text(
            "from scope_optical_flow_tensorrt.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n"
        )
        loaded = await nodes.load_custom_node(str(shim))
    if not loaded:
        raise RuntimeError(f"ComfyUI did not load the {form} nodes (see its log above)")
    classes = {node_id: nodes.NODE_CLASS_MAPPINGS[node_id] for node_id in
               ("OpticalFlowRAFT", "OpticalFlowVACE", "OpticalFlowToImage", "OpticalFlowMagnitudeMask")}
    from comfy_api.latest import io

    typed = {node_id: issubclass(cls, io.ComfyNode) for node_id, cls in classes.items()}
    if set(typed.values()) != {form == "typed"}:
        raise RuntimeError(f"expected the {form} form, ComfyUI registered {typed}")

    prompt = {key: value for key, value in json.loads(WORKFLOW.read_text()).items() if not key.startswith("_")}
    flow_node = next(node for node in prompt.values() if node["class_type"] == "OpticalFlowRAFT")
    flow_node["inputs"]["weights"] = weights
    if first_frame is not None:
        flow_node["inputs"]["first_frame"] = first_frame
    if vace:
        kept = ("images", "precision", "backend", "weights")
        flow_node.update(class_type="OpticalFlowVACE",
                         inputs={name: value for name, value in flow_node["inputs"].items() if name in kept})
    settings_lines = _SettingsLines()
    logging.getLogger("scope_optical_flow_tensorrt").addHandler(settings_lines)
    logging.getLogger("scope_optical_flow_tensorrt").setLevel(logging.INFO)
    valid, error, outputs, node_errors = await execution.validate_prompt("example", prompt, None)
    if not valid:
        raise RuntimeError(f"ComfyUI rejected the example workflow: {error} {node_errors}")
    from comfy.cli_args import args

    executor = execution.PromptExecutor(_Server(), cache_args={"lru": args.cache_lru, "ram": args.cache_ram})
    await executor.execute_async(prompt, "example", {}, outputs)
    if not executor.success:
        messages = [message for message in executor.status_messages if message[0] == "execution_error"]
        raise RuntimeError(f"the example workflow failed: {messages}")
    written = sorted(str(path.relative_to(work / "output")) for path in (work / "output").rglob("*") if path.is_file())
    return {"form": form, "typed_nodes": typed, "outputs": written, "node": flow_node["class_type"],
            "inputs": {name: value for name, value in flow_node["inputs"].items() if not isinstance(value, list)},
            "settings_lines": settings_lines.lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comfyui", type=Path, help="a ComfyUI checkout (its folder with main.py)")
    parser.add_argument("--form", choices=("typed", "classic"), default="typed")
    parser.add_argument("--weights", default="untrained (random)", help="the node's weights input")
    parser.add_argument("--vace", action="store_true", help="run the Optical Flow (VACE annotator) node instead")
    parser.add_argument("--first-frame", default=None, help="the RAFT node's first_frame input")
    options = parser.parse_args()
    result = asyncio.run(run(options.comfyui.resolve(), options.form, options.weights, options.vace,
                             options.first_frame))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
