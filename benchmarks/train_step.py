"""Benchmark: the trainer's training step against a bare PyTorch loop, same network and patch.

1. Bare loop (fp32, channels_last_3d, bf16 autocast): forward, loss, backward, SGD step on one
   in-memory batch; prints the throughput behind the "reference" machine profile (planning/machine.py).
   ``--more-variants`` adds bf16 with channels_last_3d and bf16 with torch.compile (the compile itself,
   ~45 s on 2 cores, falls in the warm-up step and is printed apart).
2. The trainer (kneeseg.training.trainer.Trainer) on a phantom cache with the same patch: its step
   includes fetching the augmented batch from the background worker, deep-supervision loss and
   gradient clipping. Target: within 10 % of the bare loop in the same precision.

    python benchmarks/train_step.py [--patch 64 64 64] [--batch 2] [--iters 6] [--more-variants]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from kneeseg.dataset.layout import DatasetJson
from kneeseg.dataset.phantom import PhantomOptions, synthesize_dataset
from kneeseg.paths import KneesegPaths
from kneeseg.planning.estimate import count_network
from kneeseg.planning.planner import CPU_FEATURES, build_network
from kneeseg.preprocessing.pipeline import plan_and_preprocess
from kneeseg.training.loss import DeepSupervisionLoss
from kneeseg.training.network import UNet
from kneeseg.training.trainer import Trainer, TrainOptions


def bare_step_seconds(plan, patch, batch, iters, autocast=False, channels_last=False, compiled=False):
    torch.manual_seed(0)
    net = UNet(plan, 1, 4).train()
    loss_fn = DeepSupervisionLoss(plan.num_stages - 1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *patch)
    y = torch.randint(0, 4, (batch, *patch))
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    forward = torch.compile(net) if compiled else net
    times = []
    for i in range(iters + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = forward(x)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step warms up (and compiles)
            times.append(time.perf_counter() - t)
        else:
            warm_up = time.perf_counter() - t
    if compiled:
        print(f"        (torch.compile: first step {warm_up:.1f} s)")
    return sorted(times)[len(times) // 2]


def trainer_step_seconds(patch, batch, iters, autocast):
    with tempfile.TemporaryDirectory() as tmp:
        paths = KneesegPaths(Path(tmp, "raw"), Path(tmp, "pre"), Path(tmp, "res"))
        synthesize_dataset(paths.raw / "Dataset900_KneePhantom", 2, 0, PhantomOptions(), progress=False)
        result = plan_and_preprocess(paths, 900, device="cpu", progress=False)
        config = result.plans.configuration("3d_cpu")
        config.patch_size, config.batch_size = list(patch), batch
        config.network = build_network(config.spacing, list(patch), CPU_FEATURES)
        config.training.optimizer = "sgd"
        ds = DatasetJson.load(paths.preprocessed / "Dataset900_KneePhantom" / "dataset.json")
        options = TrainOptions(device="cpu", autocast="bf16" if autocast else "none", progress=False)
        trainer = Trainer(result.plans, config, ds, paths.preprocessed, paths.results, options)
        trainer._setup()
        times = []
        try:
            for i in range(iters + 1):
                t = time.perf_counter()
                trainer.train_step(next(trainer.train_batches))
                if i:
                    times.append(time.perf_counter() - t)
        finally:
            trainer.train_batches._finish()
        return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--more-variants", action="store_true", help="also bf16 + channels_last_3d and bf16 + torch.compile")
    args = p.parse_args()
    plan = build_network([1.0, 1.0, 1.0], args.patch, CPU_FEATURES)
    flops, _, _ = count_network(args.patch, plan, 1, 4)
    threads = torch.get_num_threads()
    print(f"patch {args.patch} batch {args.batch} features {plan.features_per_stage} threads {threads}")
    bare = {}
    variants = [("fp32", {}), ("fp32 channels_last_3d", {"channels_last": True}), ("bf16 autocast", {"autocast": True})]
    if args.more_variants:
        variants += [("bf16 channels_last_3d", {"autocast": True, "channels_last": True}),
                     ("bf16 torch.compile", {"autocast": True, "compiled": True})]
    for name, kw in variants:
        sec = bare_step_seconds(plan, args.patch, args.batch, args.iters, **kw)
        bare[name] = sec
        gflops = 3 * flops * args.batch / sec / 1e9
        print(f"bare    {name:22s} {sec:6.2f} s/step  {gflops:6.1f} GFLOP/s  ({gflops / threads:5.1f} per thread)")
    for name, autocast in (("fp32", False), ("bf16 autocast", True)):
        sec = trainer_step_seconds(args.patch, args.batch, args.iters, autocast)
        print(f"trainer {name:22s} {sec:6.2f} s/step  ({100 * (sec / bare[name] - 1):+.1f}% vs bare loop; target within 10%)")


if __name__ == "__main__":
    main()
