"""Benchmark: one training step of the planned U-Net on this CPU.

Compares the bare PyTorch step (forward, loss, backward, SGD) in fp32, with channels_last_3d and with
bf16 autocast, and prints the measured throughput that calibrates CPU_GFLOPS_PER_THREAD in
kneeseg/planning/estimate.py.

    python benchmarks/train_step.py [--patch 64 64 64] [--batch 2] [--iters 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from kneeseg.planning.estimate import count_network
from kneeseg.planning.planner import CPU_FEATURES, build_network
from kneeseg.training.network import UNet


def time_steps(net, x, y, iters, autocast=False, channels_last=False):
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    times = []
    for i in range(iters + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x)
            loss = sum(torch.nn.functional.cross_entropy(o.float(), torch.nn.functional.interpolate(y[:, None].float(), o.shape[2:]).long()[:, 0]) for o in out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    plan = build_network([1.0, 1.0, 1.0], args.patch, CPU_FEATURES)
    flops, _, _ = count_network(args.patch, plan, 1, 4)
    x = torch.randn(args.batch, 1, *args.patch)
    y = torch.randint(0, 4, (args.batch, *args.patch))
    threads = torch.get_num_threads()
    print(f"patch {args.patch} batch {args.batch} features {plan.features_per_stage} threads {threads}")
    for name, kw in [("fp32", {}), ("fp32 channels_last_3d", {"channels_last": True}), ("bf16 autocast", {"autocast": True})]:
        torch.manual_seed(0)
        net = UNet(plan, 1, 4).train()
        sec = time_steps(net, x, y, args.iters, **kw)
        gflops = 3 * flops * args.batch / sec / 1e9
        print(f"{name:24s} {sec:6.2f} s/step   {gflops:6.1f} GFLOP/s   {gflops / threads:5.1f} GFLOP/s per thread")


if __name__ == "__main__":
    main()
