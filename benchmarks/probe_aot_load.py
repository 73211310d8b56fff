"""Probe: can a fresh process load a CUDA AOTInductor package on this machine?

Compiles a one-convolution fp16 model and this package's two RAFT Small programs (256x256, 1 pair; exported as
``core.aot_package`` does) into ``.pt2`` packages, then loads and runs each in new processes (CUDA initialised
before loading or not; single-threaded runner or not), and in this process. Prints one JSON line per attempt
(exit code -11: the process crashed). Result on torch 2.11.0+cu130, H200: every load crashed, the toy model's
too (``results/aot_load_probe.txt``); that is why the aot compile route is opt-in. Usage::

    python benchmarks/probe_aot_load.py     # needs CUDA; about three minutes
"""

import json, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r"""
import sys, time, faulthandler, json
faulthandler.enable()
import torch, torch._inductor
package, init_first, single, inputs_file = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4]
if init_first:
    torch.cuda.set_device(0); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t = time.perf_counter()
runner = torch._inductor.aoti_load_package(package, run_single_threaded=single, device_index=0)
print("loaded", round(time.perf_counter() - t, 3), flush=True)
inputs = torch.load(inputs_file, map_location="cuda:0")
with torch.inference_mode():
    out = runner(*inputs)
torch.cuda.synchronize()
print("ran", [tuple(o.shape) for o in out], flush=True)
"""


def child(package, inputs, init_first, single):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(package),
            "1" if init_first else "0",
            "1" if single else "0",
            str(inputs),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {
        "init_first": init_first,
        "single": single,
        "exit": done.returncode,
        "stdout": done.stdout.strip()[-300:],
        "stderr": done.stderr.strip()[-1500:],
    }


def main():
    import torch, torch._inductor
    from _checkout import use_this_checkout  # same folder

    use_this_checkout()
    from scope_optical_flow_tensorrt.core.aot_package import (
        example_inputs,
        export_program,
        compile_package,
    )
    from scope_optical_flow_tensorrt.core.raft import RaftSequenceFlow
    from scope_optical_flow_tensorrt.core.weights import load_raft_small

    temp = Path(tempfile.mkdtemp())
    device = torch.device("cuda", 0)
    # toy model
    toy = (
        torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU())
        .to(device)
        .half()
        .eval()
    )
    x = torch.rand(2, 3, 64, 64, device=device, dtype=torch.half)
    t = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(toy, (x,))
    toy_pkg = temp / "toy.pt2"
    torch._inductor.aoti_compile_and_package(ep, package_path=str(toy_pkg))
    print(json.dumps({"toy_compile_s": round(time.perf_counter() - t, 1)}), flush=True)
    torch.save((x.cpu(),), temp / "toy_in.pt")
    for init_first in (False, True):
        print(
            json.dumps(
                {"model": "toy", **child(toy_pkg, temp / "toy_in.pt", init_first, True)}
            ),
            flush=True,
        )
    # ours, 256x256, 1 pair, fp16 like the fast path
    raft, _ = load_raft_small(None)
    model = (
        RaftSequenceFlow(
            raft,
            12,
            compute_dtype=torch.float16,
            corr_dtype=torch.float16,
            fast_update_block=True,
        )
        .to(device)
        .eval()
    )
    inputs = example_inputs(model, 1, 256, 256, device)
    for program in ("update_step", "encode"):
        t = time.perf_counter()
        package = temp / f"{program}.pt2"
        compile_package(export_program(model, program, inputs[program]), package)
        print(
            json.dumps(
                {"program": program, "compile_s": round(time.perf_counter() - t, 1)}
            ),
            flush=True,
        )

        def cpu(v):
            return [cpu(i) for i in v] if isinstance(v, list) else v.detach().cpu()

        torch.save(tuple(cpu(v) for v in inputs[program]), temp / f"{program}_in.pt")
        for init_first, single in ((False, True), (True, True), (True, False)):
            print(
                json.dumps(
                    {
                        "model": program,
                        **child(package, temp / f"{program}_in.pt", init_first, single),
                    }
                ),
                flush=True,
            )
        # in this process (CUDA initialized, model alive)
        try:
            runner = torch._inductor.aoti_load_package(
                str(package), run_single_threaded=True, device_index=0
            )
            with torch.inference_mode():
                runner(*inputs[program])
            torch.cuda.synchronize()
            print(json.dumps({"model": program, "in_process": "ok"}), flush=True)
        except Exception as e:
            print(
                json.dumps({"model": program, "in_process": repr(e)[:500]}), flush=True
            )


main()
