"""sqfx benchmark suite: one command, one run, every number in docs/benchmarks.md.

    python -m bench.run                                # everything (<= 20 min on 2 cores), writes docs/
    python -m bench.run --only kernels,e2e             # some sections: kernels, streamed, fixed, e2e
    python -m bench.run --quick --out /tmp/b           # tiny grid, tiny model, few repeats (the smoke test)
    python -m bench.run --only kernels --shapes 4096x4096 --ms 1,128

Sections:
- kernels: for each shape (out x in), batch M and 1x4 block sparsity, sqfx (best ISA path, and its
  AVX2 path forced as its own column on AVX-512 CPUs) against fp32 F.linear, torch dynamic int8
  (fbgemm), torch._int_mm (oneDNN), ONNX Runtime int8 (MLAS), OpenVINO int8 (NNCF PTQ) and torch's
  sparse int8 (qnnpack, at >= 80% only), interleaved in one group per (shape, threads, M); the
  weight-only op's rows against fp32 F.linear;
- streamed: batch 1 with the weights streamed from DRAM, as a fraction of the measured read bandwidth;
- fixed: the fixed cost per call on a 64x64 layer (op, module, nn.Linear and the peers);
- e2e: all-MiniLM-L6-v2 end to end (bench/e2e.py) and a profile of sqfx-compiled.
See bench/report.py for the targets (issue 10) it checks.
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

from . import cpuinfo, docs, memory, peers, report
from .timing import QUICK, TimingPolicy, time_interleaved
from .workloads import magnitude_element_mask, parse_shape, random_weight

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("kernels", "streamed", "fixed", "e2e")
FULL_SHAPES = ("384x384", "1536x384", "384x1536", "768x768", "3072x768", "768x3072", "4096x4096")
FULL_MS = (1, 8, 32, 128, 512, 2048)
FULL_SPARSITIES = (0.0, 0.5, 0.8, 0.9)
QUICK_SHAPES = ("64x128", "128x64")
QUICK_MS = (1, 8)
QUICK_SPARSITIES = (0.0, 0.9)
TARGET_SPARSITY = 0.9
SPARSE_PEER_FROM = 0.8  # torch's qnnpack sparse op is timed at these sparsities and above only
FIXED_COST_SHAPE = (64, 64)


def _csv(convert):
    def parse(text):
        return [convert(v) for v in text.split(",") if v.strip()]
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny grid, tiny random model and few repeats (smoke test)")
    p.add_argument("--only", type=_csv(str), help=f"sections to run, comma-separated from {','.join(SECTIONS)}")
    p.add_argument("--shapes", type=_csv(str), help="OUTxIN list, e.g. 768x768,4096x4096")
    p.add_argument("--threads", type=_csv(int), help="thread counts, e.g. 1,2 (default 2: the targets' count)")
    p.add_argument("--ms", type=_csv(int), help="batch sizes M, e.g. 1,8,32,128")
    p.add_argument("--sparsities", type=_csv(float), help="1x4 block sparsities, e.g. 0,0.5,0.9")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the reports (see bench/docs.py); default docs/, or a temp dir with --quick "
                        "(quick numbers never land in docs/ by accident)")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="seconds of timing for the kernel grid, spread over its (shape, threads, M) groups")
    p.add_argument("--stream-l3-multiple", type=float, default=3.0,
                   help="working set of the DRAM-streamed batch-1 runs, in multiples of the L3 size")
    p.add_argument("--no-ort", action="store_true", help="leave out ONNX Runtime even if installed")
    p.add_argument("--no-ov", action="store_true", help="leave out OpenVINO even if installed")
    p.add_argument("--no-plot", action="store_true", help="don't write the PNG")
    p.add_argument("--e2e-sparsities", type=_csv(float), help="sqfx sparsities of the MiniLM section (default 0,0.5,0.8,0.9)")
    p.add_argument("--e2e-shapes", type=_csv(str), help="batch x seq list, e.g. 1x128,8x128,32x128")
    p.add_argument("--e2e-budget-s", type=float, default=90.0, help="seconds of timing for the MiniLM latencies")
    p.add_argument("--no-compile", action="store_true", help="MiniLM: leave out the torch.compile rows")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="per-implementation statistic over the timing rounds; min on a loaded machine")
    p.add_argument("--note", default="", help="free text for the report's notes (e.g. machine load)")
    p.add_argument("--pack-kwargs", default=None,
                   help='JSON dict of extra sqfx.pack keyword arguments (default: {"layout": "auto"} where '
                        "pack() takes a layout, else none)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.only = args.only or list(SECTIONS)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "sqfx_bench_quick" if args.quick else REPO / "docs"
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {bad}; choose from {list(SECTIONS)}")
    try:
        args.shapes = [parse_shape(s) for s in (args.shapes or (QUICK_SHAPES if args.quick else FULL_SHAPES))]
        args.e2e_shapes = [parse_shape(s) for s in (args.e2e_shapes or ())] or None
    except ValueError as e:
        p.error(str(e))
    args.threads = args.threads or ([1] if args.quick else [2])
    args.ms = args.ms or list(QUICK_MS if args.quick else FULL_MS)
    args.sparsities = args.sparsities if args.sparsities is not None else list(
        QUICK_SPARSITIES if args.quick else FULL_SPARSITIES)
    try:
        args.pack_kwargs = peers.default_pack_kwargs() if args.pack_kwargs is None else json.loads(args.pack_kwargs)
    except ValueError as e:
        p.error(f"--pack-kwargs: {e}")
    if not isinstance(args.pack_kwargs, dict):
        p.error("--pack-kwargs must be a JSON object")
    for s in list(args.sparsities) + list(args.e2e_sparsities or ()):
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
    cpu = cpuinfo.describe()
    sqfx_dir = Path(sqfx.__file__).resolve().parent
    commit = _git(sqfx_dir, "rev-parse", "--short", "HEAD")
    if commit and _git(sqfx_dir, "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    info = {
        "cpu": cpu["model"],
        "cpu_family": cpu["family"],
        "cpu_slug": cpu["slug"],
        "cpu_id": cpu["id"],
        "isa": cpu["isa"],
        "isa_flags": cpu["flags_line"],
        "sqfx_isas": sqfx.ops.available_isas(),
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
    if peers.ov_missing() is None:
        info.update(peers.ov_versions())
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


def peer_availability(args) -> dict:
    """{peer: None if it runs, else why not}; each reason is printed once."""
    why = {peers.ORT_INT8: "--no-ort" if args.no_ort else peers.ort_missing(),
           peers.OV_INT8: "--no-ov" if args.no_ov else peers.ov_missing(),
           peers.INT_MM: peers.int_mm_missing()}
    forced = peers.forced_isa_column()
    why[peers.SQFX_AVX2] = None if forced else (
        f"sqfx's best path here is {sqfx.ops.available_isas()[-1]!r}: the sqfx column is already it")
    for name, reason in why.items():
        if reason:
            log(f"[bench] {peers.LABELS[name]}: skipped ({reason})")
    return why


class ShapeLayers:
    """Every implementation of one shape: sqfx (and its AVX2 path, its weight-only op) and torch's
    sparse op per sparsity, the dense peers once.

    The dense peers' time doesn't depend on the weight's values, so they are built once, from the
    weight masked at the sparsity closest to 90%, and their times are shared by the sparsity rows of
    a group (which also gives every row of a group the same denominator).
    """

    def __init__(self, shape, sparsities, seed, skip, workdir, pack_kwargs):
        out_f, in_f = shape
        self.shape = shape
        self.w, self.b = random_weight(out_f, in_f, seed)
        self.masks = {s: magnitude_element_mask(self.w, s) for s in sparsities}
        self.pack_kwargs = pack_kwargs
        self.sqfx = {s: peers.build_sqfx(self.w, self.masks[s], self.b, **pack_kwargs) for s in sparsities}
        self.avx2 = ({s: peers.build_sqfx_forced(l, "avx2") for s, l in self.sqfx.items()}
                     if skip.get(peers.SQFX_AVX2) is None else {})
        self.wonly = {s: peers.build_sqfx_weight_only(l) for s, l in self.sqfx.items()}
        self.sparse = {s: peers.build_sparse_qnnpack(self.w * self.masks[s], self.b)
                       for s in sparsities if s >= SPARSE_PEER_FROM - 1e-9}
        self.dense_sparsity = _closest(sparsities, TARGET_SPARSITY)
        w_dense = self.w * self.masks[self.dense_sparsity]
        self.fp32 = peers.build_fp32(w_dense, self.b)
        self.fbgemm = peers.build_int8_fbgemm(w_dense, self.b)
        self.int_mm = peers.build_int_mm(w_dense, self.b) if skip.get(peers.INT_MM) is None else None
        tag = f"{out_f}x{in_f}"
        self.ort = peers.OrtModel(w_dense, self.b, workdir, tag) if skip.get(peers.ORT_INT8) is None else None
        self.ov = peers.OvModel(w_dense, self.b) if skip.get(peers.OV_INT8) is None else None

    def per_sparsity(self, s) -> dict:
        """{impl: Layer} of the implementations built for sparsity s."""
        out = {peers.SQFX: self.sqfx[s], peers.SQFX_WONLY: self.wonly[s]}
        if s in self.avx2:
            out[peers.SQFX_AVX2] = self.avx2[s]
        if s in self.sparse:
            out[peers.SPARSE_QNNPACK] = self.sparse[s]
        return out

    def dense_layers(self, threads) -> dict:
        layers = {peers.FP32: self.fp32, peers.INT8_FBGEMM: self.fbgemm}
        if self.int_mm is not None:
            layers[peers.INT_MM] = self.int_mm
        if self.ort is not None:
            layers[peers.ORT_INT8] = self.ort.layer(threads)
        if self.ov is not None:
            layers[peers.OV_INT8] = self.ov.layer(threads)
        return layers

    def accuracy(self, threads) -> list[dict]:
        """Max |y - fp32| / max |fp32| of every implementation on one random batch."""
        x = torch.randn(8, self.shape[1], generator=torch.Generator().manual_seed(1))
        rows = []
        for s in self.masks:
            ref = F.linear(x, self.w * self.masks[s], self.b)
            impls = self.per_sparsity(s)
            if s == self.dense_sparsity:
                impls.update(self.dense_layers(threads))
            with peers.quantized_engine("qnnpack"):
                for name, layer in impls.items():
                    rows.append({"shape": list(self.shape), "sparsity": s, "impl": name,
                                 "rel_err": peers.relative_error(layer(x), ref)})
        return rows


def measure_group(layers: ShapeLayers, threads, m, policy, seed) -> list[dict]:
    """One interleaved timing group: every implementation x sparsity at (shape, threads, M)."""
    x = torch.randn(m, layers.shape[1], generator=torch.Generator().manual_seed(seed + m))
    fns, around = {}, {}
    for s in layers.masks:
        for name, layer in layers.per_sparsity(s).items():
            fns[f"{name}@{s}"] = layer.bound(x)
            if layer.around is not None:
                around[f"{name}@{s}"] = layer.around
    dense = layers.dense_layers(threads)
    for name, layer in dense.items():
        fns[name] = layer.bound(x)
    single = set()
    with peers.quantized_engine("qnnpack"):
        times = time_interleaved(fns, policy, around=around, single=single)
    cells = []
    for s in layers.masks:
        mine = layers.per_sparsity(s)
        t = {name: times[f"{name}@{s}"] for name in mine}
        t.update({name: times[name] for name in dense})
        cells.append({"shape": list(layers.shape), "threads": threads, "m": m, "sparsity": s, "times": t,
                      "kernel": layers.sqfx[s].kernel,
                      "kernel_avx2": mine[peers.SQFX_AVX2].kernel if peers.SQFX_AVX2 in mine else "",
                      "sqfx_bytes": layers.sqfx[s].nbytes,
                      "single_sample": sorted(n.split("@")[0] for n in single
                                              if "@" not in n or n.endswith(f"@{s}"))})
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
                     "seconds": t, "bytes": layer.nbytes, "copies": n, "kernel": layer.kernel})
    w_dense = layers.w * layers.masks[layers.dense_sparsity]
    with peers.quantized_engine("qnnpack"):
        t, n = memory.streamed_batch1(lambda: peers.build_int8_fbgemm(w_dense, layers.b), layers.fbgemm.nbytes,
                                      working_set, x)
    rows.append({"shape": list(layers.shape), "threads": threads, "impl": peers.INT8_FBGEMM, "sparsity": None,
                 "seconds": t, "bytes": layers.fbgemm.nbytes, "copies": n, "kernel": ""})
    return rows


def measure_fixed_cost(threads, policy, skip, workdir, pack_kwargs) -> list[dict]:
    """Seconds per call of a 64x64 layer at M=1 (90% sparse weight): the fixed cost per call."""
    out_f, in_f = FIXED_COST_SHAPE
    w, b = random_weight(out_f, in_f, seed=7)
    mask = magnitude_element_mask(w, TARGET_SPARSITY)
    wm = w * mask
    op = peers.build_sqfx(w, mask, b, **pack_kwargs)
    layers = {
        peers.SQFX: op,
        "sqfx_module": peers.build_sqfx_module(w, mask, b, **pack_kwargs),
        peers.SQFX_WONLY: peers.build_sqfx_weight_only(op),
        "nn_linear": peers.build_nn_linear(wm, b),
        peers.FP32: peers.build_fp32(wm, b),
        peers.INT8_FBGEMM: peers.build_int8_fbgemm(wm, b),
        peers.SPARSE_QNNPACK: peers.build_sparse_qnnpack(wm, b),
    }
    if skip.get(peers.INT_MM) is None:
        layers[peers.INT_MM] = peers.build_int_mm(wm, b)
    if skip.get(peers.ORT_INT8) is None:
        layers[peers.ORT_INT8] = peers.OrtModel(wm, b, workdir, "fixed").layer(threads)
    if skip.get(peers.OV_INT8) is None:
        layers[peers.OV_INT8] = peers.OvModel(wm, b).layer(threads)
    x = torch.randn(1, in_f)
    with peers.quantized_engine("qnnpack"):
        times = time_interleaved({n: l.bound(x) for n, l in layers.items()}, policy)
    return [{"threads": threads, "impl": n, "seconds": t} for n, t in times.items()]


def _kernel_grid(args, results, skip, workdir):
    n_groups = len(args.shapes) * len(args.threads) * len(args.ms)
    done, spent = 0, 0.0  # groups timed, seconds spent timing them
    working_set = (2 << 20) if args.quick else int(args.stream_l3_multiple * memory.l3_bytes())
    results["stream_working_set"] = working_set
    for shape in args.shapes:
        t0 = time.perf_counter()
        layers = ShapeLayers(shape, args.sparsities, args.seed, skip, workdir, args.pack_kwargs)
        log(f"[bench] {shape[0]}x{shape[1]}: built in {time.perf_counter() - t0:.1f} s")
        torch.set_num_threads(max(args.threads))
        results["accuracy"] += layers.accuracy(max(args.threads))
        for threads in args.threads:
            torch.set_num_threads(threads)
            if "kernels" in args.only:
                for m in args.ms:
                    t0 = time.perf_counter()
                    # What is left of the budget, shared by the groups left (slow groups borrow from later ones).
                    left = args.budget_s - spent
                    policy = QUICK if args.quick else TimingPolicy(budget_s=max(1.0, left / max(1, n_groups - done)),
                                                                   stat=args.stat)
                    cells = measure_group(layers, threads, m, policy, args.seed)
                    done += 1
                    spent += time.perf_counter() - t0
                    results["cells"] += cells
                    log(f"[bench] {shape[0]}x{shape[1]} threads={threads} M={m}: {time.perf_counter() - t0:.1f} s; "
                        + ", ".join(f"s={c['sparsity']}: x{report.speedup(c):.2f}" for c in cells))
            if "streamed" in args.only:
                results["streamed"] += measure_streamed(layers, threads, working_set)
        del layers


def run(args) -> dict:
    skip = peer_availability(args)
    fixed_policy = QUICK if args.quick else TimingPolicy(budget_s=3.0, round_s=0.005, min_rounds=15, max_rounds=40,
                                                         stat=args.stat)
    results = {"machine": machine_info(), "sections": list(args.only), "quick": args.quick,
               "skipped": {k: v for k, v in skip.items() if v},
               "impls": [i for i in (peers.SQFX, peers.SQFX_AVX2, peers.SQFX_WONLY) + peers.PEERS
                         if not skip.get(i)],
               "ort": skip.get(peers.ORT_INT8) is None,
               "ort_settings": peers.ort_quant_settings() if skip.get(peers.ORT_INT8) is None else None,
               "policy": vars(QUICK if args.quick else TimingPolicy(stat=args.stat)) | {"fixed_cost": vars(fixed_policy)},
               "budget_s": args.budget_s, "pack_kwargs": args.pack_kwargs, "cells": [], "streamed": [],
               "fixed_cost": [], "dram_read": {}, "accuracy": [], "e2e": None,
               "read_bw_bytes": (64 << 20) if args.quick else (512 << 20),
               "read_bw_stat": "the best of 7 repeats of the fastest of fp32 sum / fp32 amax / int8 amax / fp32 dot",
               "dram_read_how": {}, "parallel_region_s": {}, "parallel_region_end_s": {}, "section_s": {}}
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="sqfx_bench_") as workdir:
        for threads in args.threads:
            torch.set_num_threads(threads)
            if "streamed" in args.only:
                bw, how = memory.read_bandwidth(results["read_bw_bytes"])
                results["dram_read"][str(threads)] = bw
                results["dram_read_how"][str(threads)] = how
                log(f"[bench] DRAM read bandwidth, {threads} thread(s): {bw / 1e9:.1f} GB/s ({how})")
            results["parallel_region_s"][str(threads)] = memory.parallel_region_cost(20 if args.quick else 200)
        if "kernels" in args.only or "streamed" in args.only:
            t0 = time.perf_counter()
            _kernel_grid(args, results, skip, workdir)
            results["section_s"]["kernels+streamed"] = time.perf_counter() - t0
        if "fixed" in args.only:
            t0 = time.perf_counter()
            for threads in args.threads:
                torch.set_num_threads(threads)
                results["fixed_cost"] += measure_fixed_cost(threads, fixed_policy, skip, workdir, args.pack_kwargs)
            results["section_s"]["fixed"] = time.perf_counter() - t0
        for threads in args.threads:  # again at the end: was the machine quiet throughout?
            torch.set_num_threads(threads)
            results["parallel_region_end_s"][str(threads)] = memory.parallel_region_cost(20 if args.quick else 200)
    if "e2e" in args.only:
        from . import e2e

        t0 = time.perf_counter()
        torch.set_num_threads(max(args.threads))
        results["e2e"] = e2e.run(args, skip, log)
        results["section_s"]["e2e"] = time.perf_counter() - t0
    results["elapsed_s"] = time.perf_counter() - start
    results["machine"]["loadavg_end"] = load_average()
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # torch.ao's modules take qint8 tensors, whose creation functions are deprecated in torch 2.13.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
    command = "python -m bench.run" + "".join(" " + shlex.quote(a) for a in argv)
    results = run(args)
    results["command"] = command
    results["note"] = args.note
    written = docs.write(results, args.out, plot=not args.no_plot, log=log)
    print(report.text_summary(results))
    log(f"[bench] wrote {', '.join(str(p) for p in written)} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
