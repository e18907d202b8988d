"""Quick kernel timing (not the benchmark suite): median of many calls, same-run ratios.

usage: python tools/kernel_timing.py [--threads 1 2] [--isa auto] [--quick]
       python tools/kernel_timing.py --small-m [--isa avx512vnni avx2] [--reps 40]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import sqfx.ops
from sqfx.format import pack


def median_time(fn, reps, warmup=5):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run(p, x, relu=False):
    """One sqfx::qlinear_dynamic call on a packed layer."""
    return torch.ops.sqfx.qlinear_dynamic(x, *p.tensors(), p.in_features, relu)


def layer(N, K, sparsity, block=(1, 4), layout="sparse", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    nrb, ncb = -(-N // block[0]), -(-K // block[1])
    mask = torch.rand(nrb, ncb, generator=g) >= sparsity
    kw = {} if layout == "sparse" else {"layout": layout}
    return w, pack(w, mask, block=block, bias=torch.randn(N, generator=g), **kw)


def ao_dynamic(w, b):
    m = torch.ao.nn.quantized.dynamic.Linear(w.shape[1], w.shape[0], dtype=torch.qint8)
    qw = torch.quantize_per_channel(w, (w.abs().amax(1) / 127).clamp(min=1e-8), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    m.set_weight_bias(qw, b)
    return m


def cpu_median(fn, reps, warmup=3):
    """Median thread CPU time: robust to other processes sharing the machine (1 thread)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.thread_time_ns()
        fn()
        ts.append(time.thread_time_ns() - t0)
    return statistics.median(ts) / 1e3


def crossover(args):
    torch.set_num_threads(1)
    N, K = 3072, 768
    print(f"{N}x{K}, 1 thread, isa={torch.ops.sqfx._set_kernel_isa(args.isa)}; time sparse / time dense")
    with torch.inference_mode():
        for block in [(1, 4), (8, 1), (4, 4)]:
            _, dense = layer(N, K, 0.0, block, layout="dense")
            for M in (1, 32, 128):
                x = torch.randn(M, K)
                td = cpu_median(lambda: dense(x), 60)
                cells = []
                for sp in (0.0, 0.3, 0.5, 0.7, 0.9):
                    _, sparse = layer(N, K, sp, block)
                    cells.append(f"{sp:.1f}:{cpu_median(lambda: sparse(x), 60) / td:5.2f}")
                print(f"block {block[0]}x{block[1]} M={M:4d} dense {td:8.1f} us | " + " ".join(cells))


SMALL_M_SHAPES = [(4096, 4096), (768, 3072), (3072, 768), (384, 1536)]  # out x in


def small_m(args):
    """The small-M table (issue 10 item 2): sqfx with the tiled layout (what PackedLinear and the
    converted graphs run), sqfx's v1 kernels (the op called without the tiled layout), fbgemm
    dynamic int8 (dense, per channel), ONNX Runtime int8 (if installed), fp32 F.linear; 1 thread,
    median thread CPU time (robust to the other jobs of a shared machine), same run."""
    import tempfile

    from bench import peers

    torch.set_num_threads(1)
    torch.backends.quantized.engine = "fbgemm"
    have_ort = peers.ort_available()
    workdir = tempfile.mkdtemp()
    isas = [i for i in args.isas if i in sqfx.ops.available_isas()]
    cols = ["tiled", "v1", "fbgemm"] + (["ort"] if have_ort else []) + ["fp32"]
    print(f"isas={isas}; 1 thread; thread-CPU-time medians in us; ratios = peer / sqfx tiled")
    print(f"{'shape':>10} {'sp':>4} {'M':>3} {'isa':>10} | " + " ".join(f"{c:>8}" for c in cols)
          + " | " + " ".join(f"{c + '/t':>8}" for c in cols[1:]) + " | slots/blk")
    with torch.inference_mode():
        for (N, K) in SMALL_M_SHAPES:
            for sp in (0.8, 0.9):
                w, p = layer(N, K, sp)
                mask = p.block_mask().repeat_interleave(4, 1)[:, :K]
                wm = w * mask
                fb = peers.build_int8_fbgemm(wm, p.bias)
                ort = peers.OrtModel(wm, p.bias, workdir, f"{N}x{K}_{sp}").layer(1) if have_ort else None
                tiled = p.tiled()
                pad = tiled[1].numel() * 16 / p.nnz_blocks
                v1_args = (*p.tensors(), K, False)
                for M in args.ms:
                    x = torch.randn(M, K)
                    peer_t = {"fbgemm": cpu_median(fb.bound(x), args.reps)}
                    if ort is not None:
                        peer_t["ort"] = cpu_median(ort.bound(x), args.reps)
                    peer_t["fp32"] = cpu_median(lambda: F.linear(x, wm, p.bias), args.reps)
                    for isa in isas:
                        with sqfx.ops.force_isa(isa):
                            t = {"tiled": cpu_median(lambda: p(x), args.reps),
                                 "v1": cpu_median(lambda: torch.ops.sqfx.qlinear_dynamic(x, *v1_args), args.reps)}
                        t.update(peer_t)
                        print(f"{N:>4}x{K:<5} {sp:4.1f} {M:3d} {isa:>10} | "
                              + " ".join(f"{t[c]:8.1f}" for c in cols) + " | "
                              + " ".join(f"{t[c] / t['tiled']:8.2f}" for c in cols[1:]) + f" | {pad:.2f}",
                              flush=True)


def dram(args):
    """Batch 1 with the weights streamed from DRAM: 16 different 4096x4096 layers at 90% called
    in turn (their tiled layouts, ~50 MB, do not fit the L3), against the read bandwidth of a
    256 MB sum on the same threads. Bytes counted: everything the call reads for the weight."""
    layers = []
    for i in range(16):
        _, p = layer(4096, 4096, 0.9, seed=100 + i)
        layers.append((p, p.tiled()))
    x = torch.randn(1, 4096)
    big = torch.ones(64 * 2**20, dtype=torch.float32)
    for t in args.threads:
        torch.set_num_threads(t)
        bw = 256 * 2**20 / median_time(lambda: big.sum(), 10)
        for isa in [i for i in args.isas if i in sqfx.ops.available_isas()]:
            with sqfx.ops.force_isa(isa), torch.inference_mode():
                def sweep():
                    for p, tl in layers:
                        torch.ops.sqfx.qlinear_dynamic(x, *p.tensors(), 4096, False, *tl)
                per_layer = median_time(sweep, 20) / len(layers)
            p, tl = layers[0]
            nbytes = sum(z.numel() * z.element_size() for z in tl) + 4096 * 4 * 3
            print(f"threads={t} isa={isa}: {per_layer*1e6:.1f} us per layer, {nbytes/1e6:.2f} MB -> "
                  f"{nbytes/per_layer/1e9:.1f} GB/s = {nbytes/per_layer/bw:.0%} of the {bw/1e9:.1f} GB/s read bandwidth")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--isa", default="auto")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--crossover", action="store_true",
                    help="sparse vs dense layout per block family (calibrates DENSE_BELOW_SPARSITY)")
    ap.add_argument("--small-m", action="store_true", help="M 1..16 table against the old kernel and peers")
    ap.add_argument("--isas", nargs="+", default=["avx512vnni", "avx2"])
    ap.add_argument("--dram", action="store_true", help="batch 1 from DRAM against the read bandwidth")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="M values of --small-m")
    args = ap.parse_args()
    if args.crossover:
        return crossover(args)
    if args.small_m:
        return small_m(args)
    if args.dram:
        return dram(args)
    torch.ops.sqfx._set_kernel_isa(args.isa)
    torch.backends.quantized.engine = "fbgemm"
    reps = 50 if args.quick else 200
    cases = [((4096, 4096), 0.9, [1, 8, 32, 128]), ((768, 768), 0.9, [1, 128]), ((3072, 768), 0.9, [1, 128])]
    print(f"isa={torch.ops.sqfx._set_kernel_isa(args.isa)}")
    print(f"{'shape':>11} {'sp':>4} {'M':>4} {'thr':>3} | {'sqfx us':>9} {'fp32 us':>9} {'ao-dyn us':>9} | {'vs fp32':>7} {'vs ao':>6}")
    with torch.inference_mode():
        for (N, K), sp, Ms in cases:
            w, p = layer(N, K, sp)
            b = torch.randn(N)
            ao = ao_dynamic(w, b)
            for M in Ms:
                x = torch.randn(M, K)
                for t in args.threads:
                    torch.set_num_threads(t)
                    r = reps if N * K * M < 4096 * 4096 * 32 else reps // 4
                    ts = median_time(lambda: run(p, x), r)
                    tf = median_time(lambda: F.linear(x, w, b), r)
                    ta = median_time(lambda: ao(x), r)
                    print(f"{N:>5}x{K:<5} {sp:4.2f} {M:4d} {t:3d} | {ts*1e6:9.1f} {tf*1e6:9.1f} {ta*1e6:9.1f} | {tf/ts:7.2f} {ta/ts:6.2f}")
        # fixed cost per call: 64x64 layer, M=1
        w, p = layer(64, 64, 0.5)
        b = torch.randn(64)
        ao = ao_dynamic(w, b)
        x = torch.randn(1, 64)
        for t in args.threads:
            torch.set_num_threads(t)
            ts = median_time(lambda: run(p, x), 5000, 200)
            tf = median_time(lambda: F.linear(x, w, b), 5000, 200)
            ta = median_time(lambda: ao(x), 5000, 200)
            print(f"fixed cost 64x64 M=1 thr={t}: sqfx {ts*1e6:.2f} us, F.linear {tf*1e6:.2f} us, ao dynamic {ta*1e6:.2f} us")


if __name__ == "__main__":
    main()
