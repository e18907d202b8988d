"""Memory-side measurements: DRAM read bandwidth and batch-1 time with weights streamed from DRAM.

At batch 1 a linear layer reads each weight once, so its floor is (bytes of packed weight) / (read
bandwidth). A single layer timed in a loop stays in the 32 MiB L3, which hides DRAM; here the timing
loop cycles through enough distinct copies of the layer that the working set is several times the
L3, so every call streams its weights from DRAM, the way a deep model's layers are met.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path

import torch

MiB = 1 << 20


def l3_bytes(default: int = 32 * MiB) -> int:
    """Size of the largest cache (sysfs), or the default where it can't be read."""
    best = 0
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        mult = {"K": 1 << 10, "M": MiB, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or default


def read_bandwidth(nbytes: int = 512 * MiB, repeats: int = 7) -> tuple[float, str]:
    """Bytes/s of the fastest of a few read-only reductions over a large tensor, best of repeats.

    The ceiling the layers are compared with, so it takes the best: which reduction streams fastest
    differs with the thread count (on the dev machine fp32 sum() reached ~12 GB/s on 1 thread, int8
    amax() ~20 GB/s), and load from other jobs only ever lowers a sample. Returns (bytes/s, how).
    """
    t = torch.ones(nbytes // 4, dtype=torch.float32)
    probes = {"fp32 sum": t.sum, "fp32 amax": t.amax, "int8 amax": t.view(torch.int8).amax,
              "fp32 dot": lambda: torch.dot(t, t)}
    best, how = 0.0, ""
    for name, fn in probes.items():
        fn()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            bw = nbytes / (time.perf_counter() - t0)
            if bw > best:
                best, how = bw, name
    return best, how


def parallel_region_cost(repeats: int = 200) -> float:
    """Median seconds of a small op that torch splits across its thread pool (1M-element add_).

    A health check of the machine, not of sqfx: on a quiet machine 2 threads make it faster than 1;
    when other jobs hold the cores, every parallel region waits for a descheduled pool thread and
    this jumps to milliseconds, and so does every multi-threaded timing of the run.
    """
    a = torch.zeros(1 << 20)
    a.add_(1)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.add_(1)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def copy_packed(packed, remake=None):
    """An independent copy of a PackedLinear (fresh memory for every tensor).

    Falls back to remake() if the installed sqfx's PackedLinear is not a dataclass any more.
    """
    if not dataclasses.is_dataclass(packed):
        return remake()
    changes = {f.name: getattr(packed, f.name).clone() for f in dataclasses.fields(packed)
               if f.init and isinstance(getattr(packed, f.name), torch.Tensor)}
    return dataclasses.replace(packed, **changes)


def streamed_batch1(make, nbytes: int, working_set: int, x: torch.Tensor, rounds: int = 5,
                    max_copies: int = 4096) -> tuple[float, int]:
    """Median seconds per batch-1 call while cycling through copies of a layer.

    make() builds one independent copy; enough copies are made that together they hold
    `working_set` bytes (several times the L3), so each call reads its weights from DRAM.
    Returns (seconds per call, number of copies).
    """
    n_copies = max(2, min(max_copies, math.ceil(working_set / max(nbytes, 1))))
    copies = [make() for _ in range(n_copies)]
    for c in copies:  # first touch, and warms the code path
        c(x)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for c in copies:
            c(x)
        samples.append((time.perf_counter() - t0) / n_copies)
    return statistics.median(samples), n_copies
