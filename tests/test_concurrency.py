"""The op has no mutable shared state: concurrent forwards from Python threads and any
intra-op thread count give bit-identical results to a serial run."""
from __future__ import annotations

import threading

import pytest
import torch

from sqfx import SparseQuantLinear

from sqfx_testing import assert_same, random_packed

N_THREADS = 8


@pytest.fixture(scope="module")
def layers():
    # Big enough that parallel_for splits both the quantizer and the kernel into chunks.
    return [SparseQuantLinear(random_packed(256, 384, block, sparsity=0.5, seed=i), relu=i % 2 == 1)
            for i, block in enumerate([(1, 4), (4, 4), (8, 1), (16, 16)])]


def _inputs(seed, k=384):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(m, k, generator=g) for m in (1, 7, 64, 130)]
    xs[2][5, 3] = float("nan")
    return xs


def test_threads_match_serial(layers):
    work = [(layer, x) for t in range(N_THREADS) for layer in layers for x in _inputs(100 + t)]
    expected = [layer(x) for layer, x in work]
    results = [None] * len(work)
    errors = []
    barrier = threading.Barrier(N_THREADS)

    def worker(t):
        try:
            barrier.wait()
            for rep in range(2):  # interleave: every thread runs every layer
                for i in range(t, len(work), N_THREADS):
                    layer, x = work[i]
                    y = layer(x)
                    if rep == 0:
                        results[i] = y
                        continue
                    try:
                        assert_same(y, results[i])
                    except AssertionError as e:
                        errors.append(f"thread {t} item {i} changed between repetitions: {e}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, errors
    for i, (y, e) in enumerate(zip(results, expected)):
        assert_same(y, e, f"item {i} differs from the serial result:")


def test_num_threads_do_not_change_results(layers):
    old = torch.get_num_threads()
    xs = _inputs(7)
    try:
        torch.set_num_threads(1)
        expected = [[layer(x) for x in xs] for layer in layers]
        for n in (2, 3, 4, 8):
            torch.set_num_threads(n)
            for layer, exp in zip(layers, expected):
                for x, e in zip(xs, exp):
                    assert_same(layer(x), e, f"num_threads={n}:")
    finally:
        torch.set_num_threads(old)
