"""Warm means fast in every face: fresh processes, one after another, on one fresh models folder per face.

For each face, ``--processes`` (3) fresh Python processes run in turn on one models folder that starts empty, as a
user's first, second and third start:

- ``api``: ``OpticalFlowTensorRTPreprocessor`` built, ``load(warmup=4)`` (``load_s``), 120 4-frame calls of uint8
  CPU frames at once (``first_call_after_load_ms``, ``before_switch_chunk_ms``: the uncompiled graphs, beside the
  compile process where one runs, as ``compile_process_busy_meanwhile`` says; each includes the caller's
  ``torch.cat`` of its four frames, timed apart as ``first_call_after_load_cat_ms`` and ``before_switch_cat_ms``,
  the median), ``wait_for_compiled()``
  (``constructor_s`` = ``load_s`` + its seconds), then the steady calls (``chunk_ms``: their median), and the same
  calls of an uncompiled preprocessor in the same process, right after its own ``load(warmup=4)``
  (``uncompiled_chunk_ms``, ``uncompiled_first_call_ms``);
- ``scope``: the ``FlowPipeline`` class that our plugin registers through Scope's own hook specification and
  ``PipelineRegistry`` (``--scope-src``: a Scope v0.2.4 ``src`` folder), built as Scope's pipeline manager builds a
  plugin pipeline (the config's defaults as keyword arguments; ``constructor_s``), then called as Scope's
  pipeline processor calls it: ``prepare(video=True)``, lists of four ``[1, 512, 512, 3]`` uint8 CPU frames,
  ``init_cache=True`` on the first call (``chunk_ms``); then, in the same process, the core's own call on the same
  frames (``core_chunk_ms``: ``pipeline.preprocessor(torch.cat(chunk), layout="FHWC")``);
- ``cli``: ``run`` on a 2,400-frame 512x512 H.264 clip to ``--flow-npy`` (``first_output_s`` after the process
  started, ``steady_fps`` from the first output frame to the last, as ``bench_e2e.py`` counts it); then one run
  per ``--cli-warm-outputs`` kind (mp4, PNG) on the warm folder (``cli_warm_outputs``).

Each process records ``compile_processes`` (compile processes it started) and ``entries_on_disk`` (compiled-kernel
entries in the folder when it ended; a compile process that outlives it finishes its shapes before the next
process starts: ``entries_after_compile``). ``--gpu-tests`` also runs the GPU test suite (``pytest -m "gpu or
tensorrt"``, stopped after the seconds given) and records ``passed``, ``failed``, ``seconds`` and the commit
(``$BENCH_COMMIT``).

Writes ``{"environment": {"device": ...}, "api": [p1, p2, p3], "scope": [...], "cli": [...], "gpu_tests": {...}}``
to ``--out``. Bytecode of every process is kept in ``$PYTHONPYCACHEPREFIX`` (the GPU machine's torch ships
none; a normal install has it), set here for the children when unset; ``--compile-bytecode`` first compiles the
bytecode of torch, torchvision and Triton there, as pip does at install, so that the first process does not
compile it on its imports (the environment records ``bytecode``).

    python benchmarks/bench_faces.py --scope-src external/scope-v0.2.4/src --gpu-tests 300 \
        --out benchmarks/results/faces.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _checkout import ROOT, use_this_checkout  # noqa: E402  (same folder)

FACES = ("api", "scope", "cli")
CHUNK_FRAMES = 4  # Scope's chunks; the API face uses the same
SIZE = 512
STEADY_CALLS = 200
DURING_COMPILE_CALLS = 120  # API face: calls right after load(), while a first compile runs in process 1
SETTLE_CALLS = 20
COMPILE_TAIL_LIMIT_S = 600.0
CHILD_STARTED = "@@child-started "


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faces.json")
    parser.add_argument("--faces", default=",".join(FACES), help="faces to run, in order")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--scope-src", type=Path, default=None, help="the src folder of a Scope v0.2.4 checkout")
    parser.add_argument("--frames", type=int, default=2400, help="frames of the command line's clip")
    parser.add_argument("--size", type=int, default=SIZE, help="frame and compute height and width")
    parser.add_argument("--calls", type=int, default=STEADY_CALLS, help="timed calls per face and process")
    parser.add_argument("--smoke", action="store_true", help="a CPU check of this script (tiny sizes, 2 updates)")
    parser.add_argument("--gpu-tests", type=float, default=0.0, metavar="SECONDS",
                        help="also run the GPU test suite (stopped after SECONDS) and record it")
    parser.add_argument("--cli-warm-outputs", default="mp4,png",
                        help="after the cli face's processes, one more run per output kind on its warm folder")
    parser.add_argument("--compile-bytecode", action="store_true",
                        help="first compile torch's, torchvision's and Triton's bytecode (as a normal install has it)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=None, help="write every process's log into this one file")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the API face's wait_for_compiled (cProfile) and the Scope face's calls "
                             "(torch.profiler) into the logs")
    parser.add_argument("--child", choices=FACES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(CHILD_STARTED + str(time.time()), flush=True)
        use_this_checkout()
        result = CHILDREN[args.child](args)
        args.json.write_text(json.dumps(result, indent=2))
        return 0

    use_this_checkout()
    work = Path(tempfile.mkdtemp(prefix="bench_faces_", dir=args.work_dir))
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(work / "pycache"))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    result: dict[str, Any] = {"environment": describe_environment()}
    result["environment"]["bytecode"] = compile_bytecode() if args.compile_bytecode else "as installed"
    print(f"# {result['environment']['device']}", flush=True)
    clip = None
    for face in [face for face in args.faces.split(",") if face]:
        if face == "scope" and args.scope_src is None:
            raise SystemExit("--faces scope needs --scope-src (the src folder of a Scope v0.2.4 checkout)")
        if face == "cli" and clip is None:
            from bench_e2e import make_clip

            clip = make_clip(work / "clip.mp4", args.frames, args.size)
        models = work / f"models-{face}"
        rows = []
        for index in range(args.processes):
            row = run_process(face, index, models, work, args, clip)
            rows.append(row)
            print(f"{face} process {index + 1}: {format_row(row)}", flush=True)
        result[face] = rows
        if face == "cli":  # the other outputs, each once more on the warm folder
            for index, output in enumerate(kind for kind in args.cli_warm_outputs.split(",") if kind):
                log = work / f"cli-warm-{output}.log"
                row = run_cli_process(clip, models, work / f"cli-warm-{output}", log, time.time(), args, output)
                row["log_tail"] = log.read_text().splitlines()[-12:]
                result.setdefault("cli_warm_outputs", []).append(row)
                print(f"cli warm {output}: {format_row(row)}", flush=True)
        write_outputs(args, result, work)  # after each face, so that a run cut short keeps what it measured
    if args.gpu_tests:
        result["gpu_tests"] = run_gpu_tests(args.gpu_tests)
        print(f"gpu tests: {result['gpu_tests']}", flush=True)
    write_outputs(args, result, work)
    print(f"wrote {args.out}")
    return 0


def write_outputs(args: argparse.Namespace, result: dict[str, Any], work: Path) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.logs is not None:
        args.logs.parent.mkdir(parents=True, exist_ok=True)
        args.logs.write_text("".join(f"===== {log.name}\n{log.read_text()}\n" for log in sorted(work.glob("*.log"))))


# -- the parent -------------------------------------------------------------------------------------------------


def describe_environment() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": f"{device} ({os.cpu_count()} cores)", "torch": torch.__version__, "python":
            platform.python_version(), "size": f"{SIZE}x{SIZE}", "weights": "seeded random",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": os.environ.get("BENCH_COMMIT")}


def compile_bytecode() -> str:
    """Compile the bytecode of torch, torchvision and Triton into ``$PYTHONPYCACHEPREFIX`` (or beside the sources),
    as pip does at install; says what was done, and how long it took."""
    import importlib.util

    folders = [str(Path(spec.origin).parent) for name in ("torch", "torchvision", "triton")
               if (spec := importlib.util.find_spec(name)) is not None and spec.origin]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *folders], check=False,
                   stdout=subprocess.DEVNULL)
    return f"compiled before the faces, as pip does at install ({len(folders)} packages, " \
           f"{time.perf_counter() - started:.0f} s)"


def run_process(face: str, index: int, models: Path, work: Path, args: argparse.Namespace, clip: Path | None
                ) -> dict[str, Any]:
    models.mkdir(parents=True, exist_ok=True)
    log = work / f"{face}-{index + 1}.log"
    launched = time.time()
    if face == "cli":
        row = run_cli_process(clip, models, work / f"cli-{index + 1}", log, launched, args)
    else:
        out = work / f"{face}-{index + 1}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", face, "--models-dir", str(models),
                   "--json", str(out), "--size", str(args.size), "--calls", str(args.calls)]
        if args.smoke:
            command.append("--smoke")
        if args.scope_src is not None:
            command += ["--scope-src", str(args.scope_src.resolve())]
        if args.profile:
            command.append("--profile")
        with log.open("w") as stream:
            subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, check=True)
        row = json.loads(out.read_text())
    row["entries_on_disk"] = count_entries(models)
    row["entries_after_compile"] = wait_for_compile_processes(models)
    row["log_tail"] = log.read_text().splitlines()[-12:]
    return row


def count_entries(models: Path) -> int:
    return len(list(models.rglob("*.torchcache")))


def wait_for_compile_processes(models: Path) -> int:
    """Let compile processes that outlived their host finish (as between a user's runs); entries then."""
    deadline = time.monotonic() + COMPILE_TAIL_LIMIT_S
    while time.monotonic() < deadline:
        listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if str(models) not in listing:  # the worker's job names the models folder
            break
        time.sleep(0.5)
    return count_entries(models)


CLI_OUTPUTS = {"npy": ["--flow-npy", "flow.npy"], "mp4": ["-o", "flow.mp4"], "png": ["-o", "pngs/"]}


def run_cli_process(clip: Path | None, models: Path, folder: Path, log: Path, launched: float,
                    args: argparse.Namespace, output: str = "npy") -> dict[str, Any]:
    assert clip is not None
    folder.mkdir(parents=True)
    report = folder / "report.json"
    flag, name = CLI_OUTPUTS[output]
    command = [sys.executable, "-m", "scope_optical_flow_tensorrt", "-v", "run", str(clip), flag, str(folder / name),
               "--size", f"{args.size}x{args.size}", "--weights", "untrained",
               "--models-dir", str(models), "--report", str(report)]
    if args.smoke:
        command += ["--device", "cpu", "--updates", "2"]
    with log.open("w") as stream:
        completed = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT)
    wall = time.time() - launched
    text = log.read_text()
    row: dict[str, Any] = {"output": output, "wall_s": round(wall, 2), "returncode": completed.returncode,
                           "compile_processes": text.count("in a child process (pid"),
                           "entries_loaded": re.findall(r"loaded compiled kernels (\S+)", text),
                           "switches": re.findall(r"compiled kernels serve windows of .*", text)}
    if completed.returncode != 0:
        return row
    clip_report = json.loads(report.read_text())["clips"][0]
    first, last, frames = clip_report["first_output_at"], clip_report["last_output_at"], clip_report["frames"]
    row.update({
        "frames": frames,
        "first_output_s": round(first - launched, 2),
        "steady_fps": round((frames - 16) / (last - first), 1) if last > first else None,
        "stages": clip_report["stages"],
    })
    return row


def run_gpu_tests(limit_s: float) -> dict[str, Any]:
    """The GPU test suite (``-m "gpu or tensorrt"``), stopped after ``limit_s``; what passed and failed by then, and
    how long each test took (from when its result line came), so that a run cut short still says where time went."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu or tensorrt", "tests"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    seconds_by_test: dict[str, float] = {}
    last_result = started

    def read() -> None:
        nonlocal last_result
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "::" in line and line.rstrip().endswith("%]"):
                now = time.perf_counter()
                seconds_by_test[line.split(" ")[0]] = round(now - last_result, 1)
                last_result = now

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode: int | None = process.wait(timeout=limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        timed_out, returncode = True, None
    reader.join(timeout=5)
    seconds = time.perf_counter() - started
    progress = [line for line in lines if "::" in line and line.rstrip().endswith("%]")]  # one line per test
    failed = [line.split(" ")[0] for line in progress if " FAILED" in line or " ERROR" in line]
    return {"passed": sum(" PASSED" in line for line in progress), "failed": len(failed),
            "skipped": sum(" SKIPPED" in line for line in progress), "failures": failed, "seconds": round(seconds, 1),
            "timed_out": timed_out, "summary": lines[-1] if lines else "", "returncode": returncode,
            "commit": os.environ.get("BENCH_COMMIT"), "seconds_by_test": seconds_by_test,
            "output_tail": lines[-60:]}


def format_row(row: dict[str, Any]) -> str:
    keys = ("constructor_s", "chunk_ms", "core_chunk_ms", "first_call_after_load_ms", "first_call_after_load_cat_ms",
            "before_switch_chunk_ms", "before_switch_cat_ms",
            "uncompiled_chunk_ms", "first_output_s", "steady_fps", "wall_s",
            "compile_processes", "entries_on_disk", "entries_after_compile")
    return ", ".join(f"{key} {row[key]}" for key in keys if key in row)


# -- the children: one fresh process each -----------------------------------------------------------------------


def moving_chunks(count: int, size: int) -> list[list[Any]]:
    """``count`` chunks of four ``[1, H, W, 3]`` uint8 CPU frames: a smooth texture panning 3 px right, 1 px down."""
    import torch
    import torch.nn.functional as F

    frames_needed = count * CHUNK_FRAMES
    generator = torch.Generator().manual_seed(0)
    margin = 4 * 64 + 8
    texture = torch.rand(1, 3, size + margin, size + margin, generator=generator)
    texture = ((F.avg_pool2d(texture, 5, stride=1, padding=2)[0] - 0.5) * 4 + 0.5).clamp(0, 1)
    frames = []
    for i in range(frames_needed):
        step = i % 64
        top, left = margin - step - 4, margin - 3 * step - 4
        crop = texture[:, top : top + size, left : left + size]
        frames.append((crop * 255).round().to(torch.uint8).permute(1, 2, 0).unsqueeze(0).contiguous())
    return [frames[i : i + CHUNK_FRAMES] for i in range(0, frames_needed, CHUNK_FRAMES)]


def timed_calls(call: Any, chunks: list[Any]) -> list[float]:
    import torch

    times = []
    for index, chunk in enumerate(chunks):
        began = time.perf_counter()
        call(chunk, index)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return times


def steady_ms(times: list[float]) -> float:
    return round(statistics.median(times[min(SETTLE_CALLS, len(times) - 1):]) * 1000, 3)


def compile_processes_started() -> int:
    from scope_optical_flow_tensorrt.core.backends.compile_process import CompileProcess

    return CompileProcess.started_in_this_process


def profiled(enabled: bool, call: Any) -> Any:
    """``call()``, under cProfile when ``enabled`` (the 35 costliest functions by cumulative time are printed)."""
    if not enabled:
        return call()
    import cProfile
    import pstats

    profile = cProfile.Profile()
    result = profile.runcall(call)
    print("--- cProfile of wait_for_compiled", flush=True)
    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(35)
    sys.stdout.flush()
    return result


def compile_counters() -> dict[str, Any]:
    from torch._dynamo.utils import counters

    return {group: dict(values) for group, values in counters.items() if group in ("inductor", "aot_autograd")}


def use_seeded_weights(folder: Path) -> None:
    """Point ``$SCOPE_OPTICAL_FLOW_WEIGHTS`` (what "DEFAULT" loads offline) at seeded random RAFT Small weights."""
    import torch

    from scope_optical_flow_tensorrt.core.model.weights import load_raft

    path = folder / "raft_small_seeded.pth"
    if not path.exists():
        raft, _ = load_raft("raft_small", None)
        torch.save(raft.state_dict(), path)
    os.environ["SCOPE_OPTICAL_FLOW_WEIGHTS"] = str(path)


def smoke_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"num_flow_updates": 2, "device": "cpu"} if args.smoke else {}


def child_api(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor

    chunks = moving_chunks(args.calls + SETTLE_CALLS, args.size)
    began = time.perf_counter()
    flow = OpticalFlowTensorRTPreprocessor(args.size, args.size, weights=None, models_dir=args.models_dir,
                                           **smoke_settings(args))
    flow.load(warmup=CHUNK_FRAMES)
    loaded = time.perf_counter() - began

    cat_times: list[float] = []

    def call(chunk: list[Any], index: int) -> None:
        began = time.perf_counter()
        frames = torch.cat(chunk)  # the caller's own work, timed apart (its intra-op threads, on the CPU)
        cat_times.append(time.perf_counter() - began)
        flow(frames, layout="FHWC")

    # Live calls right after load(): uncompiled graphs, beside the compile process where one runs (process 1)
    before_switch = timed_calls(call, chunks[:DURING_COMPILE_CALLS])
    children_busy = bool(getattr(getattr(flow.load(), "compiler", None), "busy", False))  # still compiling?
    waited = time.perf_counter()
    profiled(args.profile, flow.wait_for_compiled)
    waited = time.perf_counter() - waited
    times = timed_calls(call, chunks)
    backend = flow.load()
    uncompiled = OpticalFlowTensorRTPreprocessor(args.size, args.size, weights=None, models_dir=args.models_dir,
                                                 torch_compile=False, **smoke_settings(args))
    uncompiled.load(warmup=CHUNK_FRAMES)
    uncompiled_times = timed_calls(lambda chunk, index: uncompiled(torch.cat(chunk), layout="FHWC"), chunks)
    return {"constructor_s": round(loaded + waited, 3), "load_s": round(loaded, 3),
            "wait_for_compiled_s": round(waited, 3), "chunk_ms": steady_ms(times),
            "first_call_ms": round(times[0] * 1000, 2),
            "first_call_after_load_ms": round(before_switch[0] * 1000, 2),
            "first_call_after_load_cat_ms": round(cat_times[0] * 1000, 3),
            "before_switch_cat_ms": round(statistics.median(cat_times[:DURING_COMPILE_CALLS]) * 1000, 3),
            "before_switch_chunk_ms": steady_ms(before_switch), "compile_process_busy_meanwhile": children_busy,
            "uncompiled_chunk_ms": steady_ms(uncompiled_times),
            "uncompiled_first_call_ms": round(uncompiled_times[0] * 1000, 2),
            "compile_processes": compile_processes_started(), "compile_counters": compile_counters(),
            "shapes": {str(k): v for k, v in getattr(backend, "warmed_shapes", {}).items()},
            "switch_seconds": {str(k): v for k, v in getattr(backend, "switch_seconds", {}).items()}}


def child_scope(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(args.scope_src))
    import pluggy
    from scope.core.pipelines.registry import PipelineRegistry
    from scope.core.plugins.hookspecs import ScopeHookSpec

    from scope_optical_flow_tensorrt import scope_adapter

    os.environ["DAYDREAM_SCOPE_MODELS_DIR"] = str(args.models_dir)  # Scope's models root; ours is a folder in it
    use_seeded_weights(args.models_dir)
    plugins = pluggy.PluginManager("scope")
    plugins.add_hookspecs(ScopeHookSpec)
    plugins.register(scope_adapter)
    plugins.hook.register_pipelines(register=lambda cls: PipelineRegistry.register(
        cls.get_config_class().pipeline_id, cls))
    pipeline_class = PipelineRegistry.get(scope_adapter.PREPROCESSOR_ID)
    config_class = pipeline_class.get_config_class()
    # As Scope's pipeline manager builds a plugin pipeline: the schema's defaults as keyword arguments.
    params = {name: field.default for name, field in config_class.model_fields.items() if field.default is not None}
    if args.smoke:
        params.update(compute_height=args.size, compute_width=args.size, num_flow_updates=2)
    chunks = moving_chunks(args.calls + SETTLE_CALLS, args.size)
    began = time.perf_counter()
    pipeline = pipeline_class(**params)
    constructor = time.perf_counter() - began

    def scope_call(chunk: list[Any], index: int) -> None:
        pipeline.prepare(video=True)
        pipeline(video=list(chunk), init_cache=index == 0)

    def core_call(chunk: list[Any], index: int) -> None:
        pipeline.preprocessor(torch.cat(chunk), layout="FHWC")

    times = timed_calls(scope_call, chunks)
    core_times = timed_calls(core_call, chunks)
    if args.profile:
        for name, call in (("scope", scope_call), ("core", core_call)):
            with torch.profiler.profile() as profile:
                timed_calls(call, chunks[1:9])
            print(f"--- torch.profiler, 8 {name} calls\n" + profile.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=25), flush=True)
    backend = pipeline.preprocessor.load()
    return {"constructor_s": round(constructor, 3), "chunk_ms": steady_ms(times), "core_chunk_ms":
            steady_ms(core_times), "first_call_ms": round(times[0] * 1000, 2),
            "chunk_ms_first_20": [round(t * 1000, 2) for t in times[:20]],
            "compile_processes": compile_processes_started(), "compile_counters": compile_counters(),
            "shapes": {str(k): v for k, v in getattr(backend, "warmed_shapes", {}).items()},
            "switch_seconds": {str(k): v for k, v in getattr(backend, "switch_seconds", {}).items()}}


CHILDREN = {"api": child_api, "scope": child_scope}

if __name__ == "__main__":
    sys.exit(main())
