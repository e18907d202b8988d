"""Weight-only op against fp32 F.linear, same run, medians (issue 10 item 3).

    python scripts/bench_weight_only.py --shapes 768x3072 --ms 1,8,128 --sparsity 0,0.8 --isa avx2,avx512vnni

Prints one line per cell: shape (out x in), M, sparsity, ISA, op and F.linear medians in us, and
F.linear time / op time (> 1: the op is faster)."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import sqfx


def interleaved_us(fns, min_time, samples, clock=time.perf_counter):
    """Per-call times of each fn, sampled alternately (a loaded machine slows all alike):
    (median, min) in us per fn."""
    for fn in fns:
        fn()
    per = []
    for fn in fns:  # calls per sample: about min_time / samples seconds
        t = time.perf_counter()
        n = 0
        while time.perf_counter() - t < 0.02:
            fn()
            n += 1
        per.append(max(1, int(n * min_time / samples / 0.02)))
    times = [[] for _ in fns]
    for _ in range(samples):
        for i, fn in enumerate(fns):
            t = clock()
            for _ in range(per[i]):
                fn()
            times[i].append((clock() - t) / per[i] * 1e6)
    return [(statistics.median(ts), min(ts)) for ts in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="384x1536,768x3072,3072x768,4096x4096")
    ap.add_argument("--ms", default="1,8,32,128,512,2048")
    ap.add_argument("--sparsity", default="0,0.8")
    ap.add_argument("--isa", default=",".join(sqfx.ops.available_isas()[1:]))
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per fn per cell")
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--clock", choices=["auto", "thread", "wall"], default="auto",
                    help="thread: this thread's CPU time, which a loaded machine's waits do not inflate "
                         "(valid with --threads 1 only: every kernel then runs on the calling thread); "
                         "auto: thread with --threads 1, else wall")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock_name = args.clock if args.clock != "auto" else ("thread" if args.threads == 1 else "wall")
    clock = time.thread_time if clock_name == "thread" else time.perf_counter
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {clock_name} clock")
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        lin = torch.nn.Linear(k, n)
        for sp in map(float, args.sparsity.split(",")):
            nb = k // 4
            mask = torch.rand(n, nb) >= sp
            layer = sqfx.SparseQuantLinear.from_float(lin, mask=mask, act_mode="weight_only")
            p = layer.packed
            w = p.unpack()
            for m in map(int, args.ms.split(",")):
                x = torch.randn(m, k)
                def op():
                    return torch.ops.sqfx.qlinear_weight_only(x, p.values, p.row_ptr, p.col_idx, p.w_scale,
                                                              p.bias, k, False)

                def fp32():
                    return torch.nn.functional.linear(x, w, lin.bias)

                for isa in args.isa.split(","):
                    with torch.inference_mode(), sqfx.ops.force_isa(isa):
                        (o, o_min), (f, f_min) = interleaved_us([op, fp32], args.min_time, args.samples, clock)
                    print(f"{n}x{k} M={m:<5d} sp={sp:.2f} {isa:<10s} op {o:9.1f} us (min {o_min:9.1f})  "
                          f"F.linear {f:9.1f} us (min {f_min:9.1f})  ratio {f / o:5.2f}x (min {f_min / o_min:5.2f}x)",
                          flush=True)


if __name__ == "__main__":
    main()
