"""GPU-machine check of the fp16 ONNX graph (issue 12): it exports on this torch and computes what the fp16
PyTorch path computes on CUDA.

For each exporter this torch has (``dynamo`` needs onnxscript; ``torchscript``): export the fp16 graph through
the engine cache (the TorchScript exporter traces on CUDA, the other on the CPU), check its contract and tensor types (convolutions fp16; MatMul, AveragePool,
GridSample fp32; frames/flow fp32), run it with onnxruntime's CPU provider and compare with RaftSequenceFlow's
fp16 path on CUDA (encoders/update block fp16, correlation fp32) and with the fp32 model. With ``--engines``
and TensorRT installed, also build fp32 and fp16 engines (strongly typed) at this size and compare them with
the same references (each build takes a minute or more). Seeded random weights, 128x128 (or --size), 2 flow
updates: well under a minute without engines. Usage on a GPU machine, from the repository root::

    python benchmarks/check_fp16_graph.py [--engines]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checkout import use_this_checkout  # noqa: E402

use_this_checkout()

import onnx  # noqa: E402
import torch  # noqa: E402
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor  # noqa: E402
from scope_optical_flow_tensorrt.core.artifacts import engine_manager  # noqa: E402
from scope_optical_flow_tensorrt.core.artifacts.onnx_export import check_onnx  # noqa: E402
from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow  # noqa: E402
from scope_optical_flow_tensorrt.core.model.weights import load_raft_small  # noqa: E402

UPDATES = 2
FP32_OPS = ("MatMul", "AveragePool", "GridSample")


def frames_for(size: int, count: int = 4) -> torch.Tensor:
    """Smooth random texture drifting 2 px/frame down and 1 px/frame right: ``[T, 3, H, W]`` in [0, 1]."""
    generator = torch.Generator().manual_seed(11)
    base = torch.rand(3, size + 2 * count, size + 2 * count, generator=generator)
    base = torch.nn.functional.avg_pool2d(base[None], 3, stride=1, padding=1)[0]
    return torch.stack([base[:, 2 * i : 2 * i + size, i : i + size] for i in range(count)])


def type_summary(path: Path) -> str:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    types = {value.name: value.type.tensor_type.elem_type for value in values}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    name = onnx.TensorProto.DataType.Name
    found: dict[str, set[str]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", *FP32_OPS):
            found.setdefault(node.op_type, set()).update(name(types[t]) for t in [*node.input, *node.output]
                                                         if t and t in types and types[t] != onnx.TensorProto.INT64)
    casts = sum(node.op_type == "Cast" for node in model.graph.node)
    ok = found.get("Conv") == {"FLOAT16"} and all(found.get(op) == {"FLOAT"} for op in FP32_OPS)
    summary = dict(sorted((op, sorted(names)) for op, names in found.items()))
    return f"{'OK' if ok else 'UNEXPECTED'} types {summary}, {casts} Cast nodes"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--engines", action="store_true", help="also build and compare TensorRT engines")
    arguments = parser.parse_args()
    size = arguments.size
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, CUDA {torch.cuda.is_available()}")
    import onnxruntime

    frames = frames_for(size)
    with torch.no_grad():
        reference = RaftSequenceFlow(load_raft_small(None)[0], UPDATES).eval()(frames)  # fp32, CPU
        half = RaftSequenceFlow(load_raft_small(None)[0], UPDATES, compute_dtype=torch.float16).eval().cuda()
        half_flow = half(frames.cuda()).float().cpu()
    print(f"torch fp16 (CUDA) vs fp32 (CPU): max {(half_flow - reference).abs().max().item():.4f} px, "
          f"mean |flow| {reference.abs().mean().item():.3f} px")

    exporters = ["torchscript"] + (["dynamo"] if importlib.util.find_spec("onnxscript") else [])
    with tempfile.TemporaryDirectory() as folder:
        for exporter in exporters:
            engine_manager.resolve_exporter = lambda name="auto", chosen=exporter: chosen
            started = time.monotonic()  # the engine cache's own export (the TorchScript one traces on CUDA)
            path = engine_manager.export_onnx_cached(size, size, num_flow_updates=UPDATES, weights=None,
                                                     models_dir=Path(folder) / exporter, fp16=True)
            check_onnx(path, size, size, "fp16")
            elapsed = time.monotonic() - started
            print(f"[{exporter}] fp16 graph exported and checked in {elapsed:.1f} s: {type_summary(path)}")
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                   providers=["CPUExecutionProvider"])
            (result,) = session.run(["flow"], {"frames": frames.numpy()})
            difference = (torch.from_numpy(result) - half_flow).abs()
            print(f"[{exporter}] onnxruntime CPU fp16 graph vs torch fp16 CUDA: max {difference.max().item():.4f} px, "
                  f"mean {difference.mean().item():.5f} px; vs fp32: max "
                  f"{(torch.from_numpy(result) - reference).abs().max().item():.4f} px")

        if not arguments.engines or importlib.util.find_spec("tensorrt") is None:
            installed = importlib.util.find_spec("tensorrt") is not None
            print(f"TensorRT {'installed' if installed else 'not installed'}: engine builds not checked"
                  f"{' (pass --engines)' if installed else ''}.")
            return
        import tensorrt

        print(f"TensorRT {tensorrt.__version__}: building fp32 and fp16 engines (strongly typed) ...")
        options = dict(height=size, width=size, device="cuda", num_flow_updates=UPDATES, weights=None,
                       models_dir=folder, max_batch_pairs=3, backend="tensorrt")
        for fp16 in (False, True):
            started = time.monotonic()
            flow = OpticalFlowTensorRTPreprocessor(fp16=fp16, **options).compute_flow(
                frames.permute(0, 2, 3, 1)).cpu()[0, 1:]  # [F, H, W, C] in; pair i -> output frame i + 1
            target = half_flow if fp16 else reference
            print(f"engine fp16={fp16}: built and run in {time.monotonic() - started:.0f} s; vs torch "
                  f"{'fp16 CUDA' if fp16 else 'fp32'}: max {(flow - target).abs().max().item():.4f} px, "
                  f"vs fp32 mean {(flow - reference).abs().mean().item():.5f} px")


if __name__ == "__main__":
    main()
