"""Where a prediction's time goes: wall seconds per stage of one case, and the network's work.

``kneeseg_predict --timings`` prints one line per case (TotalSegmentator's ``-v`` prints the same
kind of line); benchmarks/predict_real.py reads it to say how far the network runs from what the
planner measured this machine to do. The network's work is counted as the planner counts it
(kneeseg.planning.estimate: forward FLOPs of one patch) times the windows, mirrors and folds run:
the unit of the GFLOP/s the planner measured, so that the two compare. That count puts each
transposed convolution at its output resolution, 10-12 % above torch's own count of the same run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageClock:
    """Wall seconds per named stage, summed over repeats, in the order the stages were first timed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.network_gflop = 0.0  # forward GFLOP the network ran (windows x mirrors x folds)
        self.network_precision = ""  # as kneeseg.hardware.precision_name names it: fp32, bf16, fp16

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def line(self) -> str:
        """'read 1.2 s, preprocess 2.0 s, network 10.1 s (bf16, 812.0 GFLOP, 80 GFLOP/s), ..., total 16.0 s'."""
        parts = []
        for name, seconds in self.seconds.items():
            part = f"{name} {seconds:.1f} s"
            if name == "network" and self.network_gflop and seconds > 0:
                part += f" ({self.network_precision}, {self.network_gflop:.1f} GFLOP, {self.network_gflop / seconds:.0f} GFLOP/s)"
            parts.append(part)
        return ", ".join([*parts, f"total {sum(self.seconds.values()):.1f} s"])


@contextmanager
def timed(clock: StageClock | None, name: str) -> Iterator[None]:
    """``clock.stage(name)``, or nothing where no clock is kept."""
    if clock is None:
        yield
    else:
        with clock.stage(name):
            yield
