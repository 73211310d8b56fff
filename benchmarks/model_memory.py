"""Working memory of one RAFT sequence-model call per frame pair, by model, measured on the CPU (fp32).

Each measurement runs in a fresh process: peak resident memory (``ru_maxrss``) of ``RaftSequenceFlow.forward``
minus the resident memory before the call, at two window lengths; the difference per extra pair is the
per-pair working memory. Large tensors are allocated and freed with mmap on Linux, so the peak follows the
live tensors closely. The per-pair figure minus the correlation pyramid, per compute pixel, is what
``core.models.ModelSpec.extra_bytes_per_pixel`` charges beyond RAFT Small. Usage (about a minute, no GPU)::

    python benchmarks/model_memory.py --size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from _checkout import use_this_checkout  # noqa: E402  (same folder)

use_this_checkout()

FRAMES = (3, 7)


def measure(model: str, size: int, frames: int) -> int:
    """Peak extra resident bytes of one forward call, in a child process."""
    import torch
    from scope_optical_flow_tensorrt.core.model.raft import RaftSequenceFlow
    from scope_optical_flow_tensorrt.core.model.weights import load_raft

    torch.set_num_threads(2)
    raft, _ = load_raft(model, None)
    sequence = RaftSequenceFlow(raft, num_flow_updates=2).eval()
    inputs = torch.rand(frames, 3, size, size)
    with torch.inference_mode():
        sequence(inputs[:2])  # allocator and thread pools settle
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sequence(inputs)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square compute size (multiple of 8, >= 128)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure(args.child[0], args.size, int(args.child[1])))
        return
    cells = (args.size // 8) ** 2
    pyramid = cells * cells * 4 * 4 / 3
    rows = {}
    for model in ("raft_small", "raft_large"):
        peaks = [int(subprocess.check_output([sys.executable, __file__, "--size", str(args.size), "--child", model,
                                              str(frames)], text=True).split()[-1]) for frames in FRAMES]
        per_pair = (peaks[1] - peaks[0]) / (FRAMES[1] - FRAMES[0])
        rows[model] = {"peak_bytes": dict(zip(map(str, FRAMES), peaks)), "per_pair_bytes": per_pair,
                       "beyond_pyramid_bytes_per_pixel": (per_pair - pyramid) / args.size**2}
    extra = rows["raft_large"]["beyond_pyramid_bytes_per_pixel"] - rows["raft_small"]["beyond_pyramid_bytes_per_pixel"]
    print(json.dumps({"size": args.size, "pyramid_bytes_per_pair": pyramid, "models": rows,
                      "large_extra_bytes_per_pixel": round(extra)}, indent=2))


if __name__ == "__main__":
    main()
