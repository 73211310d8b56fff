"""Probe: does a CUDA AOTInductor package load with one packaging setting changed?

A one-convolution fp16 model compiled with ``aot_inductor.package_constants_in_so=False`` (weights outside the
shared library, loaded with ``load_constants``) or ``aot_inductor.embed_kernel_binary=True`` (kernels inside it),
then loaded and run in a fresh process. Follows ``probe_aot_load.py``, where every default package crashed on
load (torch 2.11.0+cu130, H200). Result: both variants crashed on load too (``results/aot_load_probe.txt``)::

    python benchmarks/probe_aot_variants.py constants_outside_so
    python benchmarks/probe_aot_variants.py embed_kernel_binary
"""

import json, subprocess, sys, tempfile, time
from pathlib import Path
import torch, torch._inductor

VARIANTS = {
    "constants_outside_so": {"aot_inductor.package_constants_in_so": False},
    "embed_kernel_binary": {"aot_inductor.embed_kernel_binary": True},
}
CHILD = r"""
import sys, faulthandler, torch, torch._inductor
faulthandler.enable()
torch.zeros(1, device="cuda")
runner = torch._inductor.aoti_load_package(sys.argv[1], run_single_threaded=True, device_index=0)
print("loaded", flush=True)
if sys.argv[2] == "1":
    state = torch.load(sys.argv[3], map_location="cuda:0")
    print("fqns", runner.get_constant_fqns(), flush=True)
    runner.load_constants(state, check_full_update=True)
x = torch.load(sys.argv[4], map_location="cuda:0")
with torch.inference_mode():
    out = runner(x)
torch.cuda.synchronize()
print("ran", float((out[0] if isinstance(out, (list, tuple)) else out).float().abs().mean()), flush=True)
"""
variant = sys.argv[1]
temp = Path(tempfile.mkdtemp())
toy = (
    torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU())
    .cuda()
    .half()
    .eval()
)
x = torch.rand(2, 3, 64, 64, device="cuda", dtype=torch.half)
with torch.no_grad():
    ep = torch.export.export(toy, (x,))
    reference = float(toy(x).float().abs().mean())
t = time.perf_counter()
package = temp / "toy.pt2"
torch._inductor.aoti_compile_and_package(
    ep, package_path=str(package), inductor_configs=dict(VARIANTS[variant])
)
compile_s = time.perf_counter() - t
torch.save({k: v for k, v in toy.state_dict().items()}, temp / "state.pt")
torch.save(x.cpu(), temp / "x.pt")
done = subprocess.run(
    [
        sys.executable,
        "-c",
        CHILD,
        str(package),
        "1" if variant == "constants_outside_so" else "0",
        str(temp / "state.pt"),
        str(temp / "x.pt"),
    ],
    capture_output=True,
    text=True,
    timeout=120,
)
print(
    json.dumps(
        {
            "variant": variant,
            "compile_s": round(compile_s, 1),
            "exit": done.returncode,
            "reference": reference,
            "stdout": done.stdout.strip()[-400:],
            "stderr": done.stderr.strip()[-700:],
        }
    ),
    flush=True,
)
