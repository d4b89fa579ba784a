"""A running mean of the network's weights over the last part of the schedule (tail averaging).

With the poly learning rate the weights of the last epochs still wander around the minimum the
run has found; their mean lies nearer its centre than any one of them (stochastic weight averaging,
Izmailov et al. 2018, without the cyclic rate). On the real scan's half-B hold-out it added
0.0005-0.0015 binary Dice with four test-time scales on each of three models and never lowered it
(git history of benchmarks/RESULTS.md).
The network has instance norm only, so there are no batch statistics to recompute afterwards.
"""

from __future__ import annotations

import torch


class TailAverage:
    """Mean of the weights after each of the last ``fraction`` of the epochs (0: off).

    The number of epochs may change while a time-budgeted run re-estimates it; when the averaging
    window moves past epochs already averaged, the mean starts again, so that it always covers the
    window of the final schedule."""

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.mean: dict[str, torch.Tensor] | None = None
        self.count = 0

    def window_start(self, num_epochs: int) -> int:
        """Epochs completed before the window: the weights after later epochs enter the mean."""
        return num_epochs - max(1, round(self.fraction * num_epochs))

    def update(self, network: torch.nn.Module, epochs_done: int, num_epochs: int) -> None:
        """Call after each epoch with the epochs completed so far and the current schedule length."""
        if self.fraction <= 0:
            return
        if epochs_done <= self.window_start(num_epochs):
            self.mean, self.count = None, 0
            return
        weights = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in network.state_dict().items()}
        self.count += 1
        if self.mean is None:
            self.mean = weights
            return
        for key, value in weights.items():
            self.mean[key] += (value - self.mean[key]) / self.count

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.count = state["mean"], state["count"]

    def averaged(self, network: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The mean in the network's own dtypes, or None when nothing was averaged (or only one epoch)."""
        if self.mean is None or self.count < 2:
            return None
        own = network.state_dict()
        return {k: v.to(own[k].dtype) for k, v in self.mean.items()}
