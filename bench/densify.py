"""Where the densify row pays: a sparse 1x4 weight at large M, run by the VNNI sparse GEMM
(SQFX_DENSIFY=0) or scattered to a dense scratch for oneDNN's int8 GEMM (SQFX_DENSIFY=1),
against the same weight packed dense (layout="dense"), in the same interleaved rounds.

    python -m bench.densify --shapes 768x3072,4096x4096 --ms 1024,2048 --sparsity 0.8 --stat min

The row's thresholds (csrc/kernels/kernels.h: kDensifyMinPercent, kDensifyMinInFeatures,
kDensifyMinRows) come from this script's output on an AMX Xeon (docs/benchmarks.md). With
SQFX_DENSIFY=1 the row runs on any VNNI CPU whose oneDNN int8 GEMM is exact, so the same
comparison can be made on CPUs without AMX, where it is off by default.
"""
from __future__ import annotations

import argparse
import os
from unittest import mock

import torch

import sqfx
from bench.cpuinfo import describe
from bench.timing import TimingPolicy, time_interleaved
from bench.workloads import magnitude_element_mask, parse_shape, random_weight


def _densify(value: str):
    return mock.patch.dict(os.environ, {"SQFX_DENSIFY": value})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="768x3072,3072x768,4096x4096", help="OUTxIN list")
    ap.add_argument("--ms", default="1024,2048,4096", help="batch sizes M")
    ap.add_argument("--sparsity", type=float, default=0.8, help="1x4 block sparsity")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stat", choices=["median", "min"], default="min")
    ap.add_argument("--budget-s", type=float, default=6.0, help="timing budget per cell")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = describe()
    print(f"# {cpu['model']} ({cpu['family']}; {cpu['flags_line']}), {args.threads} threads, "
          f"{args.stat} of interleaved rounds, 1x4 at {args.sparsity:.0%}")
    print("shape | M | sparse GEMM ms | densify ms | dense layout ms | densify vs sparse | kernel at this M")
    policy = TimingPolicy(budget_s=args.budget_s, stat=args.stat)
    for shape in args.shapes.split(","):
        n, k = parse_shape(shape)
        w, _ = random_weight(n, k, seed=0)
        sparse = sqfx.pack(w, mask=magnitude_element_mask(w, args.sparsity), block=(1, 4), layout="sparse")
        dense = sqfx.pack(w, block=(1, 4), layout="dense")
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k)
            fns = {"sparse": lambda: sparse(x), "densify": lambda: sparse(x), "dense": lambda: dense(x)}
            around = {"sparse": lambda: _densify("0"), "densify": lambda: _densify("1"),
                      "dense": lambda: _densify("0")}
            with _densify("1"):
                kernel = sparse.kernel_for(m)
            t = time_interleaved(fns, policy, around=around)
            print(f"{shape} | {m} | {t['sparse'] * 1e3:.2f} | {t['densify'] * 1e3:.2f} | {t['dense'] * 1e3:.2f} | "
                  f"{t['sparse'] / t['densify']:.2f}x | {kernel}", flush=True)


if __name__ == "__main__":
    main()
