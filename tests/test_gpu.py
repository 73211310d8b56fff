"""CUDA-only checks of the fast PyTorch path (fp16 + CUDA graphs) against the fp32 eager reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import scope_optical_flow_tensorrt
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

from conftest import make_frames

pytestmark = pytest.mark.gpu


def make(**options: object) -> OpticalFlowTensorRTPreprocessor:
    settings: dict[str, object] = dict(height=256, width=256, device="cuda", weights=None, strict_device=True,
                                       backend="torch")
    settings.update(options)
    return OpticalFlowTensorRTPreprocessor(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return make_frames(9, 240, 320)


def test_fast_path_is_the_default_and_matches_fp32_eager(clip: torch.Tensor) -> None:
    fast = make()
    assert fast.fp16 and fast.cuda_graphs and fast.torch_compile and fast.device.type == "cuda"
    reference = make(fp16=False, cuda_graphs=False, fused_lookup=False)
    fast(clip)  # served by the uncompiled graphs while the compiled kernels come in the background
    assert fast.wait_for_compiled(timeout=300) and fast.load().warmed_shapes  # type: ignore[attr-defined]
    fast.reset()
    out_fast, out_ref = fast(clip), reference(clip)
    assert out_fast.device.type == "cuda" and out_fast.shape == (1, 3, 9, 240, 320)
    # visualization within 2/255 on average (the bar), flows within a small fraction of their size
    assert ((out_fast - out_ref).abs().mean() * 127.5).item() < 2.0
    flow_fast = make(compile_in_background=False).compute_flow(clip)
    flow_ref = make(fp16=False, cuda_graphs=False, fused_lookup=False).compute_flow(clip)
    assert (flow_fast - flow_ref).abs().mean() < 0.02 * flow_ref.abs().mean() + 0.05


def test_cuda_graphs_equal_eager_in_the_same_precision(clip: torch.Tensor) -> None:
    graphs = make(fp16=False, cuda_graphs=True, torch_compile=False).compute_flow(clip)
    eager = make(fp16=False, cuda_graphs=False, torch_compile=False).compute_flow(clip)
    assert (graphs - eager).abs().max() < 1e-3


def test_graph_windows_and_streaming_on_gpu(clip: torch.Tensor) -> None:
    # The uncompiled graphs (the compiled ones are checked above and below; each compiled shape costs a compile).
    whole = make(torch_compile=False).compute_flow(clip)
    windowed = make(max_batch_pairs=3, torch_compile=False)  # windows of 3 pairs: two graph shapes
    streamed = torch.cat([windowed.compute_flow(clip[:4]), windowed.compute_flow(clip[4:])], dim=1)
    # fp16 convolutions pick other algorithms for other batch sizes: tiny differences, not continuity errors
    assert (streamed - whole).abs().max() < 0.05
    backend = windowed.load()
    assert len(backend.eager_graphs.captured_shapes) >= 2  # type: ignore[attr-defined]


def test_background_compile_serves_at_once_then_switches_to_the_compiled_graphs(clip: torch.Tensor) -> None:
    """The default: a warm-up captures the uncompiled model's CUDA graph and returns; a worker thread compiles
    (capturing its own graph, thread-local capture mode) while the serving thread replays the uncompiled one;
    then calls replay the compiled graph. Both match fp32 eager within the bar."""
    flow = make()
    backend = flow.load(warmup=4)
    assert flow.warmup_routes == ["compiling-in-background"]
    assert torch.cuda.current_stream().query()  # the warm-up's GPU work is done: the first live call waits for none
    reference = make(fp16=False, cuda_graphs=False, torch_compile=False)
    frames = clip[:8]
    served = [flow.compute_flow(frames[i : i + 4]) for i in range(0, 8, 4)]  # likely while compiling
    assert backend.eager_graphs.captured_shapes  # type: ignore[attr-defined]
    assert flow.wait_for_compiled(timeout=300)
    assert torch.cuda.current_stream().query()  # nor for the switch's graph capture and run
    assert backend.compiled and backend.warmed_shapes[4] in ("compiled-and-saved", "cache-entry")  # type: ignore[attr-defined]
    assert backend.graphs.captured_shapes  # type: ignore[attr-defined]
    flow.reset()
    compiled = [flow.compute_flow(frames[i : i + 4]) for i in range(0, 8, 4)]
    expected = [reference.compute_flow(frames[i : i + 4]) for i in range(0, 8, 4)]
    for out, ref in zip(served + compiled, expected + expected):
        assert (out - ref).abs().mean() < 0.02 * ref.abs().mean() + 0.05


def test_cpu_uint8_input_is_moved_once_and_output_stays_on_gpu(clip: torch.Tensor) -> None:
    frames = (clip * 255).round().to(torch.uint8)
    out = make()(frames)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_raft_large_fast_path_matches_fp32_eager(clip: torch.Tensor) -> None:
    """RAFT Large through the same fast path (fp16, regrouped update block with two GRUs, compile, graphs)."""
    fast = make(model="raft_large", compile_in_background=False)
    flow_fast = fast.compute_flow(clip)
    flow_ref = make(model="raft_large", fp16=False, cuda_graphs=False, torch_compile=False).compute_flow(clip)
    assert fast.load().compiled  # type: ignore[attr-defined]  # compiling worked (no eager fallback)
    assert flow_fast.shape == (1, 9, 2, 256, 256)
    assert (flow_fast - flow_ref).abs().mean() < 0.02 * flow_ref.abs().mean() + 0.05


_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch._dynamo.utils import counters
    sys.path.insert(0, sys.argv[3])
    from conftest import make_frames
    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    flow = OpticalFlowTensorRTPreprocessor(256, 256, device="cuda", weights=None, strict_device=True,
                                           backend="torch", models_dir=sys.argv[1])
    flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=400)  # the kernels load or compile in the background
    clip = make_frames(8, 240, 320)
    # Only 4-frame calls, the shapes the warm-up covered (a 1-frame call would be a new window shape, compiled
    # on the spot and not part of the entry).
    out = torch.cat([flow(clip[i : i + 4]) for i in range(0, 8, 4)], dim=2)
    torch.save(out.cpu(), sys.argv[2])
    print(json.dumps({"routes": list(flow.load().warmed_shapes.values()), "compiled": flow.load().compiled,
                      "hits": counters["inductor"]["fxgraph_cache_hit"],
                      "misses": counters["inductor"]["fxgraph_cache_miss"]}))
    """
)


def test_fresh_process_reuses_the_compiled_entry_with_parity_to_fp32_eager(tmp_path: Path) -> None:
    """Process 1 has its kernels compiled by the compile process (or finds the entry an earlier test kept); process
    2, with an empty Inductor cache, can only get its kernels from the entry: it must compile nothing (no child, no
    compile in its own process) and match fp32 eager within the usual bar."""
    package_parent = str(Path(scope_optical_flow_tensorrt.__file__).parents[1])  # not resolved: it may be a link
    env = {name: value for name, value in os.environ.items() if name not in ("TRITON_CACHE_DIR",)}
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, sys.path)])
    # The GPU tests' shared models folder: process 1 finds the entry an earlier test kept, or has it compiled.
    models = Path(os.environ["DAYDREAM_SCOPE_MODELS_DIR"]) / "optical-flow-tensorrt"

    def fresh_process(output: Path) -> dict:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / f"inductor-{output.stem}")  # empty for each process
        done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(models), str(output),
                               str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=420)
        assert done.returncode == 0, done.stderr[-4000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = fresh_process(tmp_path / "first.pt")
    assert first["compiled"] and first["routes"] in (["compiled-and-saved"], ["cache-entry"]), first
    assert first["misses"] == 0, first  # compiled by the child process (or an earlier one), only loaded here
    second = fresh_process(tmp_path / "second.pt")
    assert second["compiled"] and second["routes"] == ["cache-entry"], second
    assert second["misses"] == 0 and second["hits"] >= 2, second  # encode and update_step from the entry

    clip = make_frames(8, 240, 320)
    reference = make(fp16=False, cuda_graphs=False, torch_compile=False)(clip).cpu()
    for name in ("first.pt", "second.pt"):
        out = torch.load(tmp_path / name)
        assert out.shape == reference.shape
        assert ((out - reference).abs().mean() * 127.5).item() < 2.0  # the bar, as above
    assert (torch.load(tmp_path / "first.pt") - torch.load(tmp_path / "second.pt")).abs().max() < 0.05


def test_a_guest_leaves_the_host_process_as_it_was(tmp_path: Path) -> None:
    """A host compiles its own function first, then our preprocessor loads, warms up, switches to compiled kernels,
    runs and closes: environment, Dynamo and Inductor configuration, cuDNN/TF32 flags and the current device and
    stream are the same afterwards, and nothing was compiled in this process."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    host_fn = torch.compile(lambda x: torch.sin(x) * 2 + x)
    host_fn(torch.randn(64, device="cuda"))

    def snapshot() -> tuple[object, ...]:
        return (dict(os.environ), dynamo_config.get_config_copy(), inductor_config.get_config_copy(),
                torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),
                torch.cuda.current_device(), torch.cuda.current_stream().cuda_stream, sys.getswitchinterval())

    before = snapshot()
    misses = counters["inductor"]["fxgraph_cache_miss"]
    flow = make()  # the default models folder: an entry an earlier test kept loads, else the child compiles it
    flow.load(warmup=4)
    assert flow.wait_for_compiled(timeout=400) and flow.load().warmed_shapes  # type: ignore[attr-defined]
    flow(make_frames(4, 240, 320))
    flow.close()
    assert counters["inductor"]["fxgraph_cache_miss"] == misses  # our kernels were compiled by the child process
    after = snapshot()
    for index, (was, now) in enumerate(zip(before, after)):
        if isinstance(was, dict):
            assert {k: v for k, v in now.items() if was.get(k) != v} == {}, index  # type: ignore[union-attr]
            assert set(was) == set(now), index  # type: ignore[arg-type]
        else:
            assert was == now, index
