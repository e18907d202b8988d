"""sqfx benchmark suite: one command, one run, every number in docs/benchmarks.md.

    python -m bench.run                       # full grid (~15 min on 2 cores), writes docs/
    python -m bench.run --quick --out /tmp/b  # tiny grid, few repeats (the smoke test)
    python -m bench.run --shapes 4096x4096 --threads 2

For each shape (out x in), thread count, batch M and 1x4 block sparsity it times sqfx against fp32
F.linear, torch dynamic int8 (fbgemm), torch sparse dynamic int8 (qnnpack) and ONNX Runtime dynamic
int8 (if installed), interleaved in one group per (shape, threads, M). It also measures the DRAM read
bandwidth, sqfx's batch-1 time with weights streamed from DRAM, and the fixed cost per call of every
implementation on a 64x64 layer. See bench/report.py for the targets it checks.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import sqfx

from . import memory, peers, report
from .timing import QUICK, TimingPolicy, time_interleaved
from .workloads import block_magnitude_mask, parse_shape, random_weight

REPO = Path(__file__).resolve().parent.parent
FULL_SHAPES = ("768x768", "3072x768", "768x3072", "4096x4096")
FULL_MS = (1, 8, 32, 128)
FULL_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
QUICK_SHAPES = ("64x128", "128x64")
QUICK_MS = (1, 8)
QUICK_SPARSITIES = (0.0, 0.9)
TARGET_SPARSITY = 0.9
FIXED_COST_SHAPE = (64, 64)


def _csv(convert):
    def parse(text):
        return [convert(v) for v in text.split(",") if v.strip()]
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny grid and few repeats (smoke test)")
    p.add_argument("--shapes", type=_csv(str), help="OUTxIN list, e.g. 768x768,4096x4096")
    p.add_argument("--threads", type=_csv(int), help="thread counts, e.g. 1,2")
    p.add_argument("--ms", type=_csv(int), help="batch sizes M, e.g. 1,8,32,128")
    p.add_argument("--sparsities", type=_csv(float), help="1x4 block sparsities, e.g. 0,0.5,0.9")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="directory for benchmarks.{md,png,json}")
    p.add_argument("--budget-s", type=float, default=600.0,
                   help="seconds of timing for the main grid, spread over its (shape, threads, M) groups")
    p.add_argument("--stream-l3-multiple", type=float, default=3.0,
                   help="working set of the DRAM-streamed batch-1 runs, in multiples of the L3 size")
    p.add_argument("--no-ort", action="store_true", help="leave out ONNX Runtime even if installed")
    p.add_argument("--no-plot", action="store_true", help="don't write the PNG")
    p.add_argument("--note", default="", help="free text for the report's notes (e.g. machine load)")
    p.add_argument("--pack-kwargs", default=None,
                   help='JSON dict of extra sqfx.pack keyword arguments (default: {"layout": "auto"} where '
                        "pack() takes a layout, else none)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.shapes = [parse_shape(s) for s in (args.shapes or (QUICK_SHAPES if args.quick else FULL_SHAPES))]
    except ValueError as e:
        p.error(str(e))
    args.threads = args.threads or ([1] if args.quick else [1, 2])
    args.ms = args.ms or list(QUICK_MS if args.quick else FULL_MS)
    args.sparsities = args.sparsities if args.sparsities is not None else list(
        QUICK_SPARSITIES if args.quick else FULL_SPARSITIES)
    try:
        args.pack_kwargs = peers.default_pack_kwargs() if args.pack_kwargs is None else json.loads(args.pack_kwargs)
    except ValueError as e:
        p.error(f"--pack-kwargs: {e}")
    if not isinstance(args.pack_kwargs, dict):
        p.error("--pack-kwargs must be a JSON object")
    for s in args.sparsities:
        if not 0.0 <= s < 1.0:
            p.error(f"sparsity must be in [0, 1), got {s}")
    if any(t < 1 for t in args.threads) or any(m < 1 for m in args.ms):
        p.error("threads and M must be positive")
    return args


def _git(where: Path, *cmd: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(where), *cmd], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def machine_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    sqfx_dir = Path(sqfx.__file__).resolve().parent
    commit = _git(sqfx_dir, "rev-parse", "--short", "HEAD")
    if commit and _git(sqfx_dir, "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    info = {
        "cpu": model,
        "isa": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni")},
        "logical_cpus": os.cpu_count(),
        "l3_bytes": memory.l3_bytes(),
        "torch": torch.__version__,
        "sqfx": getattr(sqfx, "__version__", "?"),
        "git_commit": commit,
        "sqfx_path": str(sqfx_dir),
        "python": platform.python_version(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": load_average(),
    }
    if peers.ort_available():
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    return info


def load_average() -> str:
    """1/5/15-minute load averages: how busy the machine was (other jobs skew every timing)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def _closest(values, target):
    return min(values, key=lambda v: abs(v - target))


class ShapeLayers:
    """Every implementation of one shape: sqfx and torch's sparse op per sparsity, dense peers once.

    The dense peers' time doesn't depend on the weight's values, so they are built once, from the
    weight masked at the sparsity closest to 90%, and their times are shared by the sparsity rows of
    a group (which also gives every row of a group the same denominator).
    """

    def __init__(self, shape, sparsities, seed, use_ort, workdir, pack_kwargs):
        out_f, in_f = shape
        self.shape = shape
        self.w, self.b = random_weight(out_f, in_f, seed)
        self.masks = {s: block_magnitude_mask(self.w, s) for s in sparsities}
        self.pack_kwargs = pack_kwargs
        self.sqfx = {s: peers.build_sqfx(self.w, self.masks[s], self.b, **pack_kwargs) for s in sparsities}
        self.sparse = {s: peers.build_sparse_qnnpack(self.w * self.masks[s], self.b) for s in sparsities}
        self.dense_sparsity = _closest(sparsities, TARGET_SPARSITY)
        w_dense = self.w * self.masks[self.dense_sparsity]
        self.fp32 = peers.build_fp32(w_dense, self.b)
        self.fbgemm = peers.build_int8_fbgemm(w_dense, self.b)
        self.ort = peers.OrtModel(w_dense, self.b, workdir, f"{out_f}x{in_f}") if use_ort else None

    def accuracy(self, threads) -> list[dict]:
        """Max |y - fp32| / max |fp32| of every implementation on one random batch."""
        x = torch.randn(8, self.shape[1], generator=torch.Generator().manual_seed(1))
        rows = []
        for s in self.masks:
            ref = F.linear(x, self.w * self.masks[s], self.b)
            impls = {peers.SQFX: self.sqfx[s], peers.SPARSE_QNNPACK: self.sparse[s]}
            if s == self.dense_sparsity:
                impls.update(self.dense_layers(threads))
            with peers.quantized_engine("qnnpack"):
                for name, layer in impls.items():
                    rows.append({"shape": list(self.shape), "sparsity": s, "impl": name,
                                 "rel_err": peers.relative_error(layer(x), ref)})
        return rows

    def dense_layers(self, threads) -> dict:
        layers = {peers.FP32: self.fp32, peers.INT8_FBGEMM: self.fbgemm}
        if self.ort is not None:
            layers[peers.ORT_INT8] = self.ort.layer(threads)
        return layers


def measure_group(layers: ShapeLayers, threads, m, policy, seed) -> list[dict]:
    """One interleaved timing group: every implementation x sparsity at (shape, threads, M)."""
    x = torch.randn(m, layers.shape[1], generator=torch.Generator().manual_seed(seed + m))
    fns = {}
    for s in layers.masks:
        fns[f"{peers.SQFX}@{s}"] = layers.sqfx[s].bound(x)
        fns[f"{peers.SPARSE_QNNPACK}@{s}"] = layers.sparse[s].bound(x)
    for name, layer in layers.dense_layers(threads).items():
        fns[name] = layer.bound(x)
    with peers.quantized_engine("qnnpack"):
        times = time_interleaved(fns, policy)
    cells = []
    for s in layers.masks:
        t = {peers.SQFX: times[f"{peers.SQFX}@{s}"], peers.SPARSE_QNNPACK: times[f"{peers.SPARSE_QNNPACK}@{s}"]}
        t.update({name: times[name] for name in layers.dense_layers(threads)})
        cells.append({"shape": list(layers.shape), "threads": threads, "m": m, "sparsity": s, "times": t,
                      "kernel": layers.sqfx[s].kernel, "sqfx_bytes": layers.sqfx[s].nbytes})
    return cells


def measure_streamed(layers: ShapeLayers, threads, working_set) -> list[dict]:
    """Batch-1 time with the weights streamed from DRAM: sqfx per sparsity, fbgemm int8 once."""
    x = torch.randn(1, layers.shape[1])
    rows = []
    for s, layer in layers.sqfx.items():
        packed = layer.keep[0]
        remake = lambda s=s: sqfx.pack(layers.w, mask=layers.masks[s], block=(1, 4), bias=layers.b,  # noqa: E731
                                       **layers.pack_kwargs)
        t, n = memory.streamed_batch1(lambda: memory.copy_packed(packed, remake), layer.nbytes, working_set, x)
        rows.append({"shape": list(layers.shape), "threads": threads, "impl": peers.SQFX, "sparsity": s,
                     "seconds": t, "bytes": layer.nbytes, "copies": n})
    w_dense = layers.w * layers.masks[layers.dense_sparsity]
    with peers.quantized_engine("qnnpack"):
        t, n = memory.streamed_batch1(lambda: peers.build_int8_fbgemm(w_dense, layers.b), layers.fbgemm.nbytes,
                                      working_set, x)
    rows.append({"shape": list(layers.shape), "threads": threads, "impl": peers.INT8_FBGEMM, "sparsity": None,
                 "seconds": t, "bytes": layers.fbgemm.nbytes, "copies": n})
    return rows


def measure_fixed_cost(threads, policy, use_ort, workdir, pack_kwargs) -> list[dict]:
    """Seconds per call of a 64x64 layer at M=1 (90% sparse weight): the fixed cost per call."""
    out_f, in_f = FIXED_COST_SHAPE
    w, b = random_weight(out_f, in_f, seed=7)
    mask = block_magnitude_mask(w, TARGET_SPARSITY)
    wm = w * mask
    layers = {
        peers.SQFX: peers.build_sqfx(w, mask, b, **pack_kwargs),
        "sqfx_module": peers.build_sqfx_module(w, mask, b, **pack_kwargs),
        peers.FP32: peers.build_fp32(wm, b),
        peers.INT8_FBGEMM: peers.build_int8_fbgemm(wm, b),
        peers.SPARSE_QNNPACK: peers.build_sparse_qnnpack(wm, b),
    }
    if use_ort:
        layers[peers.ORT_INT8] = peers.OrtModel(wm, b, workdir, "fixed").layer(threads)
    x = torch.randn(1, in_f)
    with peers.quantized_engine("qnnpack"):
        times = time_interleaved({n: l.bound(x) for n, l in layers.items()}, policy)
    return [{"threads": threads, "impl": n, "seconds": t} for n, t in times.items()]


def run(args) -> dict:
    use_ort = peers.ort_available() and not args.no_ort
    policy = QUICK if args.quick else TimingPolicy(
        budget_s=args.budget_s / max(1, len(args.shapes) * len(args.threads) * len(args.ms)))
    fixed_policy = QUICK if args.quick else TimingPolicy(budget_s=3.0, round_s=0.005, min_rounds=15, max_rounds=40)
    l3 = memory.l3_bytes()
    working_set = (2 << 20) if args.quick else int(args.stream_l3_multiple * l3)
    results = {"machine": machine_info(), "ort": use_ort, "quick": args.quick,
               "policy": vars(policy) | {"fixed_cost": vars(fixed_policy)},
               "stream_working_set": working_set, "pack_kwargs": args.pack_kwargs, "cells": [], "streamed": [], "fixed_cost": [],
               "dram_read": {}, "accuracy": [], "read_bw_bytes": (64 << 20) if args.quick else (512 << 20),
               "read_bw_stat": "the best of 7 repeats of the fastest of fp32 sum / fp32 amax / int8 amax / fp32 dot",
               "dram_read_how": {}, "parallel_region_s": {}, "parallel_region_end_s": {}}
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="sqfx_bench_") as workdir:
        for threads in args.threads:
            torch.set_num_threads(threads)
            bw, how = memory.read_bandwidth(results["read_bw_bytes"])
            results["dram_read"][str(threads)] = bw
            results["dram_read_how"][str(threads)] = how
            log(f"[bench] DRAM read bandwidth, {threads} thread(s): {bw / 1e9:.1f} GB/s ({how})")
            results["parallel_region_s"][str(threads)] = memory.parallel_region_cost(20 if args.quick else 200)
        for shape in args.shapes:
            t0 = time.perf_counter()
            layers = ShapeLayers(shape, args.sparsities, args.seed, use_ort, workdir, args.pack_kwargs)
            log(f"[bench] {shape[0]}x{shape[1]}: built in {time.perf_counter() - t0:.1f} s")
            torch.set_num_threads(max(args.threads))
            results["accuracy"] += layers.accuracy(max(args.threads))
            for threads in args.threads:
                torch.set_num_threads(threads)
                for m in args.ms:
                    t0 = time.perf_counter()
                    cells = measure_group(layers, threads, m, policy, args.seed)
                    results["cells"] += cells
                    log(f"[bench] {shape[0]}x{shape[1]} threads={threads} M={m}: {time.perf_counter() - t0:.1f} s; "
                        + ", ".join(f"s={c['sparsity']}: x{report.speedup(c):.2f}" for c in cells))
                results["streamed"] += measure_streamed(layers, threads, working_set)
            del layers
        for threads in args.threads:
            torch.set_num_threads(threads)
            results["fixed_cost"] += measure_fixed_cost(threads, fixed_policy, use_ort, workdir, args.pack_kwargs)
        for threads in args.threads:  # again at the end: was the machine quiet throughout?
            torch.set_num_threads(threads)
            results["parallel_region_end_s"][str(threads)] = memory.parallel_region_cost(20 if args.quick else 200)
    results["elapsed_s"] = time.perf_counter() - start
    results["machine"]["loadavg_end"] = load_average()
    return results


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # torch.ao's modules take qint8 tensors, whose creation functions are deprecated in torch 2.13.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
    command = "python -m bench.run" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results = run(args)
    results["command"] = command
    results["note"] = args.note
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=1))
    plot_path = None
    if not args.no_plot:
        plot_path = report.plot(results, args.out / "benchmarks.png")
        if plot_path is None:
            log("[bench] matplotlib is not installed: no plot (pip install -e .[bench])")
    md = report.markdown(results, plot_path.name if plot_path else None)
    (args.out / "benchmarks.md").write_text(md)
    print(report.text_summary(results))
    log(f"[bench] wrote {args.out / 'benchmarks.md'} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
