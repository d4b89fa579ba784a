"""A scan's contrast, taught to the first model by its second reader.

A model trained on one scan's contrast reads bones by their grey values as much as by their shape;
the any-contrast second reader (kneeseg.models) reads shape under any contrast, less sharply. Where
the first model is lost, the second reader's labels teach it the scan's contrast: a
piecewise-linear intensity curve (``KNOTS`` knots at quantiles of the scan's body voxels, their
values free) is fitted through the first model's frozen network so that it finds the second
reader's bones in the curve's image, and the first model then reads the whole scan through that
curve. The curve has a dozen numbers, so it can take the scan to a contrast the first model knows,
but cannot copy the second reader's mistakes voxel by voxel. (The curve starts once from the scan
as it is and once inverted; the fit that agrees better is kept.)

Half B of the real scan under a non-monotonic contrast (benchmarks/RESULTS.md), half-A models of
seed 1, prediction with post-processing: the second reader alone scored all-bone Dice 0.888; the
mean of its probabilities and the first model's through the fitted curve 0.949-0.953 (four fits:
seeds and ways of drawing the patches), in 31-36 s instead of 12. A non-monotonic contrast maps
tissues of different brightness to the same grey, so no curve gives back the scan the first model
learnt: the mean keeps what each reads best.

Gradients reach the curve's values only (:func:`torch.autograd.grad`): the network's weights are
neither changed nor given gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kneeseg.inference.sliding_window import BATCH_VOXELS

KNOTS = 12
# Per start. All-bone Dice of the pair on the case above, by steps of the fit: 25 steps 0.949-0.953
# (four fits), 50 steps 0.933 (seed 0; 0.944 with patches z-scored on their own).
# Longer, the curve follows the second reader's mistakes too: an early stop, chosen on that one case.
STEPS = 25
PATCHES_PER_STEP = 4  # half of them centred on the second reader's bone, half anywhere in the body
LEARNING_RATE = 0.1  # in units of the z-scored intensities
STARTS = ("as recorded", "inverted")
MIN_BODY_VOXELS = 1000  # fewer voxels of body than this (all air): no contrast to learn
STATISTICS_SAMPLE = 100_000  # body voxels whose mean and deviation under the curve z-score the patches
# The mean of both readings is kept only where it is about as sure as the second reader's own: its
# unsure share (kneeseg.inference.qc) at most this much above. Two readings that disagree make an
# unsure mean, and one of them, the first model through a curve it could not learn, is then wrong.
# Half B under thirteen contrasts the first model could not read (benchmarks/RESULTS.md), before
# post-processing: where the mean raised the share by 0.19 or less (nine), it read from 0.07 worse to
# 0.07 better than the second reader alone; by 0.31-0.41 (four), 0.06-0.22 worse on three, the same
# on one. Set on those thirteen; checked on three more.
MAX_UNSURE_RISE = 0.25


@dataclass(frozen=True)
class ContrastCurve:
    """A piecewise-linear map of z-scored body intensities: ``knots`` (increasing) to ``values``;
    ``loss``: the first model's cross-entropy against the teacher's labels through it."""
    knots: np.ndarray
    values: np.ndarray
    loss: float
    start: str


def standardised(mapped: torch.Tensor, body: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``mapped`` z-scored with the scan body's ``mean`` and ``std`` under the curve (as the plans
    normalise a scan), air kept 0."""
    return torch.where(body, (mapped - mean) / (std + 1e-6), torch.zeros_like(mapped))


def _hat_basis(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """(N, knots) weights of each of the ``N`` intensities ``x`` on the knots: linear interpolation
    between its two neighbours (constant beyond the end knots), so that the curve's image is this
    times its values. A product rather than a lookup of the values: its gradient is a matrix product,
    the same from run to run, where a lookup's sums its pieces in whatever order threads finish."""
    i = torch.clamp(torch.searchsorted(knots, x) - 1, 0, len(knots) - 2)
    t = torch.clamp((x - knots[i]) / (knots[i + 1] - knots[i]), 0.0, 1.0)
    basis = torch.zeros(x.numel(), len(knots), dtype=x.dtype, device=x.device)
    rows = torch.arange(x.numel(), device=x.device)
    basis[rows, i] = 1.0 - t
    basis[rows, i + 1] = t
    return basis


def apply_curve(data: np.ndarray, curve: ContrastCurve, chunk: int = 1 << 22) -> np.ndarray:
    """Preprocessed ``data`` (C, Z, Y, X; air exactly 0) through ``curve``, z-scored again over the
    body: what the first model reads. ``chunk`` voxels at a time: no float64 copy of a large grid."""
    out = np.zeros(data.shape, np.float32)
    source, target = data.reshape(-1), out.reshape(-1)
    total = squares = 0.0
    count = 0
    for i in range(0, source.size, chunk):
        body = source[i:i + chunk] != 0
        mapped = np.interp(source[i:i + chunk][body], curve.knots, curve.values).astype(np.float32)
        target[i:i + chunk][body] = mapped
        count += mapped.size
        total += float(mapped.sum(dtype=np.float64))
        squares += float(np.square(mapped, dtype=np.float64).sum())
    count = max(count, 1)
    mean = total / count
    std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
    for i in range(0, source.size, chunk):
        body, y = source[i:i + chunk] != 0, target[i:i + chunk]
        y[body] = (y[body] - mean) / (std + 1e-6)
    return out


def _centres(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) random voxels of ``mask`` (drawn with replacement): from the list of its voxels where it
    has few, else by drawing voxels of the grid and keeping the mask's, so that a large grid is never
    listed whole."""
    count = int(np.count_nonzero(mask))
    if count < 1_000_000:
        where = np.argwhere(mask)
        return where[rng.integers(len(where), size=n)]
    flat, kept = mask.reshape(-1), np.zeros(0, np.int64)
    while kept.size < n:  # at least 1e6 voxels of the mask: a share worth drawing for
        draw = rng.integers(flat.size, size=4 * n + int(4 * n * flat.size / count))
        kept = np.concatenate([kept, draw[flat[draw]]])
    return np.stack(np.unravel_index(kept[:n], mask.shape), 1)


def _patch_slices(centre: np.ndarray, patch: list[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    starts = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, p, s in zip(centre, patch, shape)]
    return tuple(slice(a, a + p) for a, p in zip(starts, patch))


def fit_contrast_curve(network: torch.nn.Module, data: np.ndarray, teacher: np.ndarray, patch_size: list[int],
                       device: torch.device, autocast: str = "none", seed: int = 0,
                       progress: bool = False) -> ContrastCurve:
    """The curve through which ``network`` (frozen, evaluation mode) finds the ``teacher``'s labels
    (Z, Y, X class indices on the grid of ``data``, the preprocessed one-channel scan (1, Z, Y, X),
    air exactly 0): ``STEPS`` Adam steps of the cross-entropy on ``PATCHES_PER_STEP`` patches of
    ``patch_size`` from each of ``STARTS``, the one with the lower loss on a fixed set of patches
    kept. ``autocast``: 'bf16' runs the network in bf16 (the predictor asks for it where the device
    runs it natively), anything else in fp32. ``seed`` fixes the patches, and so, on a CPU, the curve."""
    from tqdm import tqdm

    image = data[0]
    body = image != 0
    inside = image[body]
    knots = np.quantile(inside, np.linspace(0.0, 1.0, KNOTS)).astype(np.float32)
    knots += np.arange(KNOTS, dtype=np.float32) * 1e-4  # strictly increasing where quantiles coincide
    rng = np.random.default_rng(seed)
    # Every patch centre the fit will use, drawn once: half on the teacher's bone, half in the body
    needed = (STEPS * len(STARTS) + 2) * PATCHES_PER_STEP
    bone = teacher > 0
    pools = [_centres(bone if bone.any() else body, needed // 2, rng), _centres(body, needed // 2, rng)]
    drawn = 0

    def patches(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal drawn
        xs, ts = [], []
        for _ in range(n):
            centre = pools[drawn % 2][drawn // 2]
            drawn += 1
            where = _patch_slices(centre, patch_size, image.shape)
            x, t = image[where], teacher[where]
            pad = [(0, p - s) for p, s in zip(patch_size, x.shape)]  # a scan smaller than the patch
            xs.append(np.pad(x, pad))
            ts.append(np.pad(t, pad))
        return (torch.from_numpy(np.stack(xs)[:, None]).to(device),
                torch.from_numpy(np.stack(ts).astype(np.int64)).to(device))

    knots_t = torch.from_numpy(knots).to(device)
    # The patches are z-scored as the whole scan will be: with the mean and deviation of its body under
    # the curve (a fixed sample of its voxels), not their own (a patch centred on bone has more bone).
    sample = torch.from_numpy(rng.choice(inside, min(inside.size, STATISTICS_SAMPLE), replace=False)).to(device)
    sample_basis = _hat_basis(sample, knots_t)
    use_bf16 = autocast == "bf16"

    def loss_of(values: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inside_x = x != 0
        mapped = torch.zeros_like(x)
        mapped[inside_x] = _hat_basis(x[inside_x], knots_t) @ values
        body = sample_basis @ values
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = network(standardised(mapped, inside_x, body.mean(), body.std()))
        return F.cross_entropy(logits.float(), target)

    # Patches go through the network as many at a time as the sliding window sends (a large plan's one
    # by one), each batch's gradient added to the step's: the mean cross-entropy of all of them.
    per_batch = max(1, BATCH_VOXELS // int(np.prod(patch_size)))

    def gradient(values: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(values)
        for i in range(0, len(x), per_batch):
            part = slice(i, i + per_batch)
            share = len(x[part]) / len(x)
            total += torch.autograd.grad(loss_of(values, x[part], target[part]) * share, [values])[0]
        return total

    def judged_loss(values: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> float:
        with torch.no_grad():
            return sum(float(loss_of(values, x[i:i + per_batch], target[i:i + per_batch])) * len(x[i:i + per_batch])
                       for i in range(0, len(x), per_batch)) / len(x)

    judged = patches(2 * PATCHES_PER_STEP)
    best: ContrastCurve | None = None
    # Gradients also where the caller predicts under torch.inference_mode
    with torch.inference_mode(False), torch.enable_grad(), \
            tqdm(total=STEPS * len(STARTS), desc="learning the contrast", leave=False, disable=not progress) as bar:
        for start in STARTS:
            values = torch.tensor(knots if start == "as recorded" else -knots, device=device, requires_grad=True)
            optimiser = torch.optim.Adam([values], lr=LEARNING_RATE)
            for _ in range(STEPS):
                values.grad = gradient(values, *patches(PATCHES_PER_STEP))
                optimiser.step()
                bar.update()
            loss = judged_loss(values, *judged)
            if best is None or loss < best.loss:
                best = ContrastCurve(knots, values.detach().cpu().numpy().astype(np.float32), loss, start)
    assert best is not None
    return best
