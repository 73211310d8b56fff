"""Where the time of one full preprocessor call goes (flow + visualization), beyond the model itself.

Times, at one size and chunk, with CUDA events: the whole call, ``compute_flow`` alone, the backend's model
call alone, and ``flow_to_image`` alone; for a smooth moving texture and for random uint8 noise (RAFT's
lookups fall outside the image more often on noise, so inputs matter). Then a torch.profiler table of one
call. Usage on a GPU machine::

    python benchmarks/profile_call.py --size 512 --chunk 16
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_flow import moving_texture  # noqa: E402  (same folder; also registers the package)
from _timing import event_ms  # noqa: E402  (same folder)
from scope_optical_flow_tensorrt import OpticalFlowTensorRTPreprocessor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=16)
    args = parser.parse_args()
    device = torch.device("cuda")
    pre = OpticalFlowTensorRTPreprocessor(args.size, args.size, device="cuda", weights=None, backend="torch")
    texture = moving_texture(args.chunk + 1, args.size, device)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (args.chunk + 1, args.size, args.size, 3), generator=generator, dtype=torch.uint8)
    inputs = {"moving texture, float [1,3,F,H,W]": (texture[:, :, :1], texture[:, :, 1:]),
              "random noise, uint8 [F,H,W,C]": (noise[:1].to(device), noise[1:].to(device))}
    for name, (first, body) in inputs.items():
        pre.reset()
        pre(first)
        pre(body)
        backend = pre.load()
        window = torch.cat([pre._previous_frames, pre._previous_frames.expand(args.chunk, -1, -1, -1)])  # shape only
        sequence = torch.rand_like(window) if "noise" in name else texture[0].permute(1, 0, 2, 3).contiguous()
        flow = pre.compute_flow(body)
        print(f"{name}: whole call {event_ms(lambda: pre(body), 10):.2f} ms | compute_flow {event_ms(lambda: pre.compute_flow(body), 10):.2f} ms"
              f" | model {event_ms(lambda: backend.flow(sequence), 10):.2f} ms | flow_to_image {event_ms(lambda: pre.flow_to_image(flow), 10):.2f} ms"
              f" | flow magnitude mean {flow[0, 1:].norm(dim=1).mean().item():.1f} px", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        pre(inputs["moving texture, float [1,3,F,H,W]"][1])
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=20, max_name_column_width=70))


if __name__ == "__main__":
    main()
