"""Interleaved median timing.

The machine is shared and noisy (runs differ by 25-50%), so the implementations compared in one
cell are timed in interleaved rounds (the order rotates each round): a burst of load hits all of
them alike, and the ratios stay meaningful. Each round times `inner` back-to-back calls of one
implementation (inner chosen so a round lasts ~round_s); the result is the median over rounds.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class TimingPolicy:
    budget_s: float = 20.0  # wall time for one interleaved group (all its implementations)
    round_s: float = 0.01  # target length of one implementation's burst in a round
    min_rounds: int = 3
    max_rounds: int = 25
    max_inner: int = 2000
    warmup_s: float = 0.02  # minimum time of the estimate after one warmup call


QUICK = TimingPolicy(budget_s=0.5, round_s=0.001, min_rounds=3, max_rounds=3, max_inner=20, warmup_s=0.0)


def _estimate(fn: Callable[[], object], warmup_s: float) -> float:
    """Warms fn up (one call) and returns a rough seconds-per-call estimate (>= 1 more call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= warmup_s:
            return elapsed / calls


def time_interleaved(fns: dict[str, Callable[[], object]], policy: TimingPolicy) -> dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds."""
    if not fns:
        return {}
    names = list(fns)
    est = {n: _estimate(fns[n], policy.warmup_s) for n in names}
    inner = {n: max(1, min(policy.max_inner, int(policy.round_s / max(est[n], 1e-9)))) for n in names}
    round_cost = sum(inner[n] * est[n] for n in names)
    rounds = int(policy.budget_s / max(round_cost, 1e-9))
    rounds = max(policy.min_rounds, min(policy.max_rounds, rounds))
    samples: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    for r in range(rounds):
        for i in range(len(names)):
            n = names[(i + r) % len(names)]
            fn, k = fns[n], inner[n]
            t0 = clock()
            for _ in range(k):
                fn()
            samples[n].append((clock() - t0) * 1e-9 / k)
    return {n: statistics.median(samples[n]) for n in names}
