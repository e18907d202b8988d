"""Kernel cells for the token-batch GEMM work (issue 10 item 1), one interleaved group per cell.

    python -m bench.gemm_cells --shapes 768x3072 --ms 64,128 --sparsity 0 --threads 2

Times, in the same interleaved rounds (bench.timing), the sqfx op on each requested path --
"auto" (what dispatch picks; for the dense layout that is oneDNN via aten::_int_mm), and each
forced ISA ("avx512vnni", "avx2": our own kernels) -- against torch dynamic int8 (fbgemm) and ONNX
Runtime int8 (MLAS) when installed. Prints one line per cell: medians in ms and each sqfx path's
ratio to the best dense int8 peer (> 1 means sqfx is faster). Layout: dense below 30% sparsity
(the pack default "auto"), else sparse 1x4.
"""
from __future__ import annotations

import argparse
import platform
import tempfile

import torch

import sqfx
import sqfx.ops
from bench import peers
from bench.timing import TimingPolicy, time_interleaved
from bench.workloads import magnitude_element_mask, parse_shape, random_weight


def cpu_line() -> str:
    model, flags = platform.processor(), set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model in ("", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    isa = " ".join(f for f in ("avx2", "avx512_vnni", "avx512_vbmi", "avx_vnni") if f in flags)
    return f"{model} [{isa}]"


def cpu_interleaved(fns, rounds=9, target_s=0.02):
    """Median CPU seconds per call of each fn (this thread's time.thread_time), interleaved rounds."""
    import statistics
    import time

    inner = {}
    for name, fn in fns.items():
        fn()
        t0 = time.thread_time()
        fn()
        inner[name] = max(1, min(200, int(target_s / max(time.thread_time() - t0, 1e-6))))
    samples = {n: [] for n in fns}
    names = list(fns)
    for r in range(rounds):
        for i in range(len(names)):
            n = names[(i + r) % len(names)]
            t0 = time.thread_time()
            for _ in range(inner[n]):
                fns[n]()
            samples[n].append((time.thread_time() - t0) / inner[n])
    return {n: statistics.median(v) for n, v in samples.items()}


def forced(isa, fn):
    def call():
        with sqfx.ops.force_isa(isa):
            return fn()
    return call


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="768x3072,3072x768,384x1536,4096x4096")
    ap.add_argument("--ms", default="64,128,512,2048")
    ap.add_argument("--sparsity", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", default="auto,avx512vnni,avx2")
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="with --threads 1: per-call CPU time of this thread (time.thread_time) in interleaved "
                         "rounds, median; immune to time slicing on a shared machine (not to SMT sharing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    policy = TimingPolicy(budget_s=args.budget, round_s=0.02, min_rounds=5, max_rounds=15)
    paths = [p for p in args.paths.split(",") if p == "auto" or p in sqfx.ops.available_isas()]
    clock = "CPU time (thread_time)" if args.cpu_time else "wall time"
    print(f"# CPU: {cpu_line()}; threads {args.threads}; {clock}; torch {torch.__version__}")
    print("# shape(out x in) sparsity M | medians ms | sqfx path / best peer")
    tmp = tempfile.TemporaryDirectory()
    for shape in args.shapes.split(","):
        n, k = parse_shape(shape)
        w, b = random_weight(n, k, seed=0)
        for sp in (float(s) for s in args.sparsity.split(",")):
            mask = magnitude_element_mask(w, sp)
            wm = w * mask
            packed = sqfx.pack(w, mask=mask, block=(1, 4), bias=b, layout="auto")
            impl = {"fbgemm": peers.build_int8_fbgemm(wm, b)}
            if not args.no_ort and peers.ort_available():
                impl["ort"] = peers.OrtModel(wm, b, tmp.name, f"{n}x{k}_{sp}").layer(args.threads)
            for m in (int(v) for v in args.ms.split(",")):
                x = torch.randn(m, k)
                fns = {name: layer.bound(x) for name, layer in impl.items()}
                for p in paths:
                    call = (lambda: packed(x)) if p == "auto" else forced(p, lambda: packed(x))
                    fns[f"sqfx-{p}"] = call
                t = cpu_interleaved(fns) if args.cpu_time else time_interleaved(fns, policy)
                best_peer = min(v for name, v in t.items() if not name.startswith("sqfx"))
                med = " ".join(f"{name}={v * 1e3:.3f}" for name, v in t.items())
                ratio = " ".join(f"{name}:{best_peer / v:.2f}x" for name, v in t.items() if name.startswith("sqfx"))
                print(f"{n}x{k} sp={sp:.2f} {packed.layout} M={m} | {med} | {ratio}", flush=True)


if __name__ == "__main__":
    main()
