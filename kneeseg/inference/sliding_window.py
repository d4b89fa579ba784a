"""Sliding-window prediction of a whole preprocessed volume.

Tiles overlap by (1 - step) of the patch; each tile's softmax is weighted by a Gaussian centred on
the tile (sigma = patch / 8), because predictions near a tile's border see less context. With
mirroring, every tile is also predicted flipped along each combination of the mirror axes and the
results are averaged. Windows go through the network in small batches (BATCH_VOXELS).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

# Windows (tiles x mirrored copies) run through the network together, up to this many voxels: a small
# network on a CPU spends most of a single window's time on per-operation overhead. The built-in
# model's 40x56x56 patch goes four at a time: the full real scan's 160 windows took 31-43 s one by
# one and 7.5 s four at a time, in fp32 on 2 cores (benchmarks/RESULTS.md); large patches go one by one.
BATCH_VOXELS = 2**19


def gaussian_importance(patch: list[int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    grids = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    g = torch.ones(())
    for axis, (grid, p) in enumerate(zip(grids, patch)):
        one = torch.exp(-0.5 * (grid / (p * sigma_scale)) ** 2)
        shape = [1, 1, 1]
        shape[axis] = p
        g = g * one.view(shape)
    # Never exactly zero: every voxel must get some weight from some tile.
    return (g / g.max()).clamp(min=1e-4)


def window_starts(size: int, patch: int, step: float) -> list[int]:
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * step))) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def window_count(shape: list[int], patch: list[int], step: float) -> int:
    """How many tiles cover a (Z, Y, X) volume of ``shape`` (padded to the patch where smaller)."""
    return int(np.prod([len(window_starts(max(s, p), p, step)) for s, p in zip(shape, patch)]))


def mirror_combinations(axes: list[int]) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes (the empty one first), as tensor dims of a (B, C, Z, Y, X) batch."""
    return [tuple(a + 2 for a in combo) for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.inference_mode()
def predict_sliding_window(
    network: torch.nn.Module,
    data: np.ndarray,
    patch: list[int],
    num_classes: int,
    step: float = 0.5,
    mirror_axes: list[int] | None = None,
    device: torch.device | str = "cpu",
    autocast: str = "none",
    progress: bool = False,
) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) for preprocessed ``data`` (C, Z, Y, X)."""
    from tqdm import tqdm

    device = torch.device(device)
    volume = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    shape = list(volume.shape[1:])
    pad = [max(0, p - s) for p, s in zip(patch, shape)]
    if any(pad):  # smaller than a patch: pad evenly, crop back at the end
        widths = []
        for p in reversed(pad):
            widths += [p // 2, p - p // 2]
        volume = F.pad(volume, widths)
    padded = list(volume.shape[1:])
    weights = gaussian_importance(patch).to(device)
    flips = mirror_combinations(mirror_axes or [])
    flip_weights = weights / len(flips)  # each mirrored copy's share of a tile's Gaussian weight
    scores = torch.zeros((num_classes, *padded), dtype=torch.float32, device=device)
    norm = torch.zeros(padded, dtype=torch.float32, device=device)
    tiles = list(itertools.product(*(window_starts(s, p, step) for s, p in zip(padded, patch))))
    enabled = autocast in ("bf16", "fp16") and device.type in ("cpu", "cuda")
    dtype = torch.float16 if autocast == "fp16" else torch.bfloat16
    jobs = [(start, dims) for start in tiles for dims in flips]  # every tile in every mirrored copy
    per_batch = max(1, BATCH_VOXELS // int(np.prod(patch)))
    with tqdm(total=len(jobs), desc="windows", leave=False, disable=not progress) as bar:
        for first in range(0, len(jobs), per_batch):
            batch = jobs[first:first + per_batch]
            regions = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start, _ in batch]
            x = torch.stack([torch.flip(volume[(slice(None),) + region], [d - 1 for d in dims]) if dims
                             else volume[(slice(None),) + region] for region, (_, dims) in zip(regions, batch)]).to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=enabled):
                logits = network(x)
            if isinstance(logits, (list, tuple)):
                logits = logits[0]
            out = torch.softmax(logits.float(), 1)
            for k, (region, (_, dims)) in enumerate(zip(regions, batch)):
                scores[(slice(None),) + region] += (torch.flip(out[k], [d - 1 for d in dims]) if dims else out[k]).mul_(flip_weights)
                if not dims:  # each tile once (its unflipped copy): the flips' weights sum to the tile's
                    norm[region] += weights
            bar.update(len(batch))
    scores /= norm
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, shape))
    return scores[(slice(None),) + crop].cpu().numpy()
