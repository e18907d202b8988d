"""Where does sqfx's sparse path start beating dense int8? A sparsity sweep for the cost model.

    python -m bench.calibrate                                   # default shapes, M, 2 threads
    python -m bench.calibrate --shapes 4096x4096 --ms 1,32 --sparsities 0,0.2,0.4,0.6,0.8
    python -m bench.calibrate --pack-kwargs '{"layout": "sparse"}'   # force a path, if pack() has one

For each (shape, M) it times sqfx at every sparsity and the dense int8 peers (torch fbgemm and, if
installed, ONNX Runtime) in interleaved rounds, and reports the crossover: the lowest sparsity from
which sqfx is at least as fast as the best dense int8 peer at every swept sparsity above it. The
kernels' cost model (which picks dense or sparse at pack time) owns the constant; this tool only
measures. `--pack-kwargs` is passed to `sqfx.pack` as is, so a pack-time choice can be overridden.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from . import peers
from .timing import QUICK, TimingPolicy, time_interleaved
from .workloads import magnitude_element_mask, parse_shape, random_weight

DEFAULT_SPARSITIES = tuple(round(0.05 * i, 2) for i in range(20))  # 0.00 .. 0.95


def crossover(sparsities, sqfx_times, dense_time) -> float | None:
    """Lowest swept sparsity s such that sqfx <= dense at s and at every swept sparsity above s."""
    best = None
    for s, t in sorted(zip(sparsities, sqfx_times), reverse=True):
        if t > dense_time:
            break
        best = s
    return best


def sweep(shape, ms, sparsities, threads, policy, pack_kwargs, use_ort, workdir, seed=0) -> list[dict]:
    out_f, in_f = shape
    w, b = random_weight(out_f, in_f, seed)
    masks = {s: magnitude_element_mask(w, s) for s in sparsities}
    sq = {s: peers.build_sqfx(w, masks[s], b, **pack_kwargs) for s in sparsities}
    w_dense = w * masks[max(sparsities)]
    dense = {peers.INT8_FBGEMM: peers.build_int8_fbgemm(w_dense, b)}
    if use_ort:
        dense[peers.ORT_INT8] = peers.OrtModel(w_dense, b, workdir, f"cal{out_f}x{in_f}").layer(threads)
    rows = []
    for m in ms:
        x = torch.randn(m, in_f, generator=torch.Generator().manual_seed(seed + m))
        fns = {f"sqfx@{s}": sq[s].bound(x) for s in sparsities}
        fns.update({n: l.bound(x) for n, l in dense.items()})
        with peers.quantized_engine("qnnpack"):
            times = time_interleaved(fns, policy)
        best_name = min(dense, key=lambda n: times[n])
        sq_times = [times[f"sqfx@{s}"] for s in sparsities]
        rows.append({"shape": list(shape), "m": m, "threads": threads, "best_dense": best_name,
                     "dense_s": times[best_name], "sparsities": list(sparsities), "sqfx_s": sq_times,
                     "kernels": [sq[s].kernel for s in sparsities],
                     "crossover": crossover(sparsities, sq_times, times[best_name])})
    return rows


def format_rows(rows) -> str:
    lines = []
    for r in rows:
        c = r["crossover"]
        verdict = ("never (sqfx slower at every swept sparsity)" if c is None
                   else f"{c:.2f} (break-even density {1 - c:.2f})")
        lines.append(f"{r['shape'][0]}x{r['shape'][1]} M={r['m']} threads={r['threads']}: best dense int8 "
                     f"{peers.SHORT[r['best_dense']]} {r['dense_s'] * 1e6:.1f} us; crossover sparsity {verdict}")
        lines.append("    " + "  ".join(f"{s:.2f}:{t / r['dense_s']:.2f}" for s, t in zip(r["sparsities"], r["sqfx_s"]))
                     + "   (sqfx time / dense int8 time per sparsity)")
        kernels = sorted(set(k for k in r["kernels"] if k))
        if kernels:
            lines.append("    sqfx kernels: " + ", ".join(kernels))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="768x768,3072x768,4096x4096")
    p.add_argument("--ms", default="1,8,32,128")
    p.add_argument("--sparsities", default=",".join(str(s) for s in DEFAULT_SPARSITIES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=8.0, help="timing seconds per (shape, M)")
    p.add_argument("--pack-kwargs", default=None,
                   help='JSON dict of extra sqfx.pack keyword arguments (default: {"layout": "sparse"} where '
                        "pack() takes a layout, so the sparse path is what gets timed)")
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--quick", action="store_true", help="few repeats (for trying it out)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    try:
        shapes = [parse_shape(s) for s in args.shapes.split(",")]
        ms = [int(m) for m in args.ms.split(",")]
        sparsities = sorted(float(s) for s in args.sparsities.split(","))
        pack_kwargs = (json.loads(args.pack_kwargs) if args.pack_kwargs is not None
                       else {"layout": "sparse"} if peers.default_pack_kwargs() else {})
    except ValueError as e:
        p.error(str(e))
    if not isinstance(pack_kwargs, dict):
        p.error("--pack-kwargs must be a JSON object")
    if any(not 0 <= s < 1 for s in sparsities) or any(m < 1 for m in ms) or args.threads < 1:
        p.error("sparsities must be in [0, 1); M and threads positive")
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
    torch.set_num_threads(args.threads)
    policy = QUICK if args.quick else TimingPolicy(budget_s=args.budget_s)
    use_ort = peers.ort_available() and not args.no_ort
    rows = []
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="sqfx_cal_") as workdir:
        for shape in shapes:
            new = sweep(shape, ms, sparsities, args.threads, policy, pack_kwargs, use_ort, workdir)
            print(format_rows(new), flush=True)
            rows += new
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
