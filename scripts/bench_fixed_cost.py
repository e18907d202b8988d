"""Fixed cost per call on a 64x64 layer (issue 10 item 4): nn.Linear against the sqfx ops
(boxed torch.ops call) and the SparseQuantLinear module, interleaved samples, medians.

    python scripts/bench_fixed_cost.py [--m 1] [--samples 31] [--number 2000]
"""
from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch

import sqfx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--samples", type=int, default=31)
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--mode", choices=["inference_mode", "no_grad", "grad"], default="inference_mode")
    ap.add_argument("--clock", choices=["thread", "wall"], default="thread",
                    help="thread: CPU time of this thread (a loaded machine's waits excluded; these "
                         "calls are too small for the thread pool)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(args.m, 64)
    dyn = sqfx.SparseQuantLinear.from_float(lin)
    wo = sqfx.SparseQuantLinear.from_float(lin, act_mode="weight_only")
    p = dyn.packed
    op_d, op_w = torch.ops.sqfx.qlinear_dynamic.default, torch.ops.sqfx.qlinear_weight_only.default
    cases = {
        "nn.Linear": lambda: lin(x),
        "F.linear": lambda: torch.nn.functional.linear(x, lin.weight, lin.bias),
        "op qlinear_dynamic": lambda: op_d(x, p.values, p.row_ptr, p.col_idx, p.w_scale, p.w_sum, p.bias, 64, False),
        "op qlinear_weight_only": lambda: op_w(x, p.values, p.row_ptr, p.col_idx, p.w_scale, p.bias, 64, False),
        "module dynamic_int8": lambda: dyn(x),
        "module weight_only": lambda: wo(x),
    }
    timer = time.thread_time if args.clock == "thread" else time.perf_counter
    times = {k: [] for k in cases}
    mode = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}[args.mode]
    with mode():
        for fn in cases.values():
            fn()
        for _ in range(args.samples):
            for name, fn in cases.items():
                times[name].append(timeit.timeit(fn, number=args.number, timer=timer) / args.number * 1e6)
    base = statistics.median(times["nn.Linear"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, x [{args.m}, 64], "
          f"{args.samples} samples x {args.number} calls, {args.mode}, {args.clock} clock")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24s} median {med:6.2f} us  min {min(ts):6.2f} us  {med / base:5.2f}x nn.Linear")


if __name__ == "__main__":
    main()
