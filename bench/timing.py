"""Interleaved median timing.

The machine is shared and noisy (runs differ by 25-50%), so the implementations compared in one
cell are timed in interleaved rounds (the order rotates each round): a burst of load hits all of
them alike, and the ratios stay meaningful. Each round times `inner` back-to-back calls of one
implementation (inner chosen so a round lasts ~round_s); the result is the median over rounds
(or, with stat="min", the fastest round: the statistic for a loaded machine).

Two limits keep the full grid within its wall-time budget without touching the fast cells:
a call slower than `slow_call_s` is timed in only the first `slow_rounds` rounds (one call each),
and a call whose warmup alone exceeds `max_call_s` keeps that one time (reported as a single
sample: at that length first-call effects are noise).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class TimingPolicy:
    budget_s: float = 20.0  # wall time for one interleaved group (all its implementations)
    round_s: float = 0.01  # target length of one implementation's burst in a round
    min_rounds: int = 3
    max_rounds: int = 25
    max_inner: int = 2000
    warmup_s: float = 0.02  # minimum time of the estimate after one warmup call
    slow_call_s: float = 0.25  # calls slower than this are timed in the first slow_rounds rounds only
    slow_rounds: int = 2
    max_call_s: float = 3.0  # a warmup call slower than this is the only sample
    stat: str = "median"  # or "min": on a loaded machine, load only ever adds time, so the minimum
    #                       over rounds is the steadier estimate of what the code costs


QUICK = TimingPolicy(budget_s=0.5, round_s=0.001, min_rounds=3, max_rounds=3, max_inner=20, warmup_s=0.0)


def _estimate(fn: Callable[[], object], warmup_s: float, max_call_s: float = float("inf")) -> tuple[float, bool]:
    """Warms fn up (one call) and returns (rough seconds per call, whether that is the only sample)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > max_call_s:
        return first, True
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= warmup_s:
            return elapsed / calls, False


def time_interleaved(fns: dict[str, Callable[[], object]], policy: TimingPolicy,
                     around: Optional[dict[str, Callable[[], object]]] = None,
                     single: Optional[set] = None) -> dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds.

    around: {name: factory of a context manager} entered around each burst of that fn's calls
    (and its warmup). single: if given, receives the names timed from one call only.
    """
    if not fns:
        return {}
    around = around or {}
    ctx = {n: around.get(n, contextlib.nullcontext) for n in fns}
    names = list(fns)
    est, only_one = {}, set()
    for n in names:
        with ctx[n]():
            est[n], one = _estimate(fns[n], policy.warmup_s, policy.max_call_s)
        if one:
            only_one.add(n)
    timed = [n for n in names if n not in only_one]
    slow = {n for n in timed if est[n] > policy.slow_call_s}
    inner = {n: max(1, min(policy.max_inner, int(policy.round_s / max(est[n], 1e-9)))) for n in timed}
    slow_cost = policy.slow_rounds * sum(est[n] for n in slow)
    round_cost = sum(inner[n] * est[n] for n in timed if n not in slow)
    rounds = int(max(policy.budget_s - slow_cost, 0.0) / max(round_cost, 1e-9))
    rounds = max(policy.min_rounds, min(policy.max_rounds, rounds))
    samples: dict[str, list[float]] = {n: [] for n in timed}
    clock = time.perf_counter_ns
    for r in range(rounds):
        for i in range(len(timed)):
            n = timed[(i + r) % len(timed)]
            if n in slow and r >= policy.slow_rounds:
                continue
            fn, k = fns[n], inner[n]
            with ctx[n]():
                t0 = clock()
                for _ in range(k):
                    fn()
                samples[n].append((clock() - t0) * 1e-9 / k)
    if single is not None:
        single.update(only_one)
    reduce = min if policy.stat == "min" else statistics.median
    out = {n: reduce(samples[n]) for n in timed}
    out.update({n: est[n] for n in only_one})
    return {n: out[n] for n in names}
