"""Turns one run's results into the table, the targets check (issue 5), markdown and a plot."""
from __future__ import annotations

from . import peers

BERT_SHAPES = ((768, 768), (3072, 768), (768, 3072))
BIG_SHAPE = (4096, 4096)
TARGET_SPARSITY = 0.9
TARGET_THREADS = 2
STREAM_FRACTION = 0.60
FIXED_COST_LIMIT_S = 5e-6


# ---------------------------------------------------------------- per-cell numbers
def best_peer(cell, among=peers.PEERS) -> tuple[str, float] | None:
    times = [(n, t) for n, t in cell["times"].items() if n in among]
    return min(times, key=lambda nt: nt[1]) if times else None


def speedup(cell, among=peers.PEERS) -> float:
    """Best peer's time / sqfx's time (> 1: sqfx is faster)."""
    best = best_peer(cell, among)
    return best[1] / cell["times"][peers.SQFX] if best else float("nan")


def _us(seconds) -> str:
    if seconds is None:
        return "-"
    us = seconds * 1e6
    return f"{us:.3g}" if us < 100 else f"{us:.0f}"


def _shape(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def _impls(results):
    impls = [peers.SQFX, peers.FP32, peers.INT8_FBGEMM, peers.SPARSE_QNNPACK]
    return impls + ([peers.ORT_INT8] if results["ort"] else [])


def table_rows(results) -> tuple[list[str], list[list[str]]]:
    impls = _impls(results)
    head = (["threads", "shape", "M", "sparsity"] + [f"{peers.SHORT[i]} us" for i in impls]
            + ["best peer", "speedup vs best peer", "vs best dense int8", "sqfx kernel"])
    rows = []
    for c in results["cells"]:
        bp = best_peer(c)
        rows.append([str(c["threads"]), _shape(c["shape"]), str(c["m"]), f"{c['sparsity']:.2f}"]
                    + [_us(c["times"].get(i)) for i in impls]
                    + [peers.SHORT[bp[0]], f"{speedup(c):.2f}x",
                       f"{speedup(c, peers.DENSE_INT8_PEERS):.2f}x", c.get("kernel") or "-"])
    return head, rows


_TEXT_COLUMNS = ("shape", "impl", "implementation", "best peer", "sqfx kernel")


def _md_table(head, rows) -> str:
    align = ["---" if h in _TEXT_COLUMNS else "---:" for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _text_table(head, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


# ---------------------------------------------------------------- targets (issue 5, item 4)
def _find(results, shape, m, sparsity, threads):
    for c in results["cells"]:
        if (tuple(c["shape"]) == tuple(shape) and c["m"] == m and abs(c["sparsity"] - sparsity) < 1e-9
                and c["threads"] == threads):
            return c
    return None


def _target_threads(results) -> int:
    threads = sorted({c["threads"] for c in results["cells"]})
    return TARGET_THREADS if TARGET_THREADS in threads else (threads[-1] if threads else TARGET_THREADS)


def targets(results) -> list[dict]:
    """One row per target cell: what, measured value, limit, met (None = not measured)."""
    th = _target_threads(results)
    ms = sorted({c["m"] for c in results["cells"]})
    out = []

    def ratio_target(group, shape, m, sparsity, limit, among, what):
        c = _find(results, shape, m, sparsity, th)
        if c is None:
            out.append({"group": group, "cell": f"{_shape(shape)} M={m} s={sparsity:.2f}", "value": None,
                        "limit": f">= {limit:g}x", "met": None, "detail": "not measured in this run"})
            return
        bp = best_peer(c, among)
        r = speedup(c, among)
        out.append({"group": group, "cell": f"{_shape(shape)} M={m} s={sparsity:.2f}", "value": f"{r:.2f}x",
                    "limit": f">= {limit:g}x", "met": r >= limit,
                    "detail": f"sqfx {_us(c['times'][peers.SQFX])} us vs {peers.SHORT[bp[0]]} {_us(bp[1])} us"
                              + (f"; kernel {c['kernel']}" if c.get("kernel") else "")})

    for m in ms:
        ratio_target("4096x4096 at 90%", BIG_SHAPE, m, TARGET_SPARSITY, 5.0 if m == 1 else 4.0, peers.PEERS,
                     "best peer")
    for shape in BERT_SHAPES:
        for m in ms:
            ratio_target("BERT shapes at 90%", shape, m, TARGET_SPARSITY, 3.0, peers.PEERS, "best peer")
    shapes = []
    for c in results["cells"]:
        if tuple(c["shape"]) not in shapes:
            shapes.append(tuple(c["shape"]))
    for shape in shapes:
        for m in ms:
            ratio_target("0% sparsity vs best dense int8", shape, m, 0.0, 1.0, peers.DENSE_INT8_PEERS, "")

    bw = results["dram_read"].get(str(th))
    for row in results["streamed"]:
        if (row["impl"] == peers.SQFX and tuple(row["shape"]) == BIG_SHAPE and row["threads"] == th
                and abs(row["sparsity"] - TARGET_SPARSITY) < 1e-9 and bw):
            eff = row["bytes"] / row["seconds"]
            out.append({"group": "batch-1 DRAM-streamed", "cell": f"4096x4096 M=1 s=0.90",
                        "value": f"{100 * eff / bw:.0f}%", "limit": f">= {100 * STREAM_FRACTION:.0f}%",
                        "met": eff >= STREAM_FRACTION * bw,
                        "detail": f"{eff / 1e9:.1f} GB/s of {bw / 1e9:.1f} GB/s measured read bandwidth "
                                  f"({row['bytes'] / 1e6:.2f} MB in {_us(row['seconds'])} us)"})
    if not any(t["group"] == "batch-1 DRAM-streamed" for t in out):
        out.append({"group": "batch-1 DRAM-streamed", "cell": "4096x4096 M=1 s=0.90", "value": None,
                    "limit": f">= {100 * STREAM_FRACTION:.0f}%", "met": None, "detail": "not measured in this run"})
    for row in results["fixed_cost"]:
        if row["impl"] in (peers.SQFX, "sqfx_module"):
            out.append({"group": "fixed cost per call", "cell": f"64x64 M=1 {row['threads']} thread(s), "
                        + ("op" if row["impl"] == peers.SQFX else "nn.Module"),
                        "value": f"{row['seconds'] * 1e6:.1f} us", "limit": "<= 5 us",
                        "met": row["seconds"] <= FIXED_COST_LIMIT_S, "detail": ""})
    return out


def _verdict(met) -> str:
    return "NOT MEASURED" if met is None else ("MET" if met else "NOT MET")


# ---------------------------------------------------------------- outputs
def _streamed_rows(results):
    head = ["threads", "shape", "impl", "sparsity", "bytes (MB)", "copies", "us / call", "GB/s", "% of read BW"]
    rows = []
    for r in results["streamed"]:
        bw = results["dram_read"].get(str(r["threads"]))
        eff = r["bytes"] / r["seconds"]
        rows.append([str(r["threads"]), _shape(r["shape"]), peers.SHORT[r["impl"]],
                     "-" if r["sparsity"] is None else f"{r['sparsity']:.2f}", f"{r['bytes'] / 1e6:.2f}",
                     str(r["copies"]), _us(r["seconds"]), f"{eff / 1e9:.1f}",
                     f"{100 * eff / bw:.0f}%" if bw else "-"])
    return head, rows


def _fixed_rows(results):
    head = ["threads", "implementation", "us / call"]
    label = dict(peers.LABELS, sqfx_module="sqfx (SparseQuantLinear module)")
    label[peers.SQFX] = "sqfx (op via PackedLinear)"
    return head, [[str(r["threads"]), label.get(r["impl"], r["impl"]), f"{r['seconds'] * 1e6:.1f}"]
                  for r in results["fixed_cost"]]


def _accuracy_rows(results):
    worst = {}
    for r in results["accuracy"]:
        worst[r["impl"]] = max(worst.get(r["impl"], 0.0), r["rel_err"])
    return ["implementation", "worst max abs(y - y_fp32) / max abs(y_fp32)"], [
        [peers.LABELS[i], f"{e:.4f}"] for i, e in worst.items()]


def text_summary(results) -> str:
    head, rows = table_rows(results)
    parts = [_text_table(head, rows), "", "DRAM read bandwidth: " + ", ".join(
        f"{t} thread(s) {bw / 1e9:.1f} GB/s" for t, bw in results["dram_read"].items()),
        "", "batch-1, weights streamed from DRAM:", _text_table(*_streamed_rows(results)),
        "", "fixed cost per call (64x64, M=1):", _text_table(*_fixed_rows(results)), "", "targets:"]
    for t in targets(results):
        parts.append(f"  {_verdict(t['met']):>12}  {t['group']}: {t['cell']}: {t['value'] or '-'} "
                     f"(need {t['limit']}) {t['detail']}")
    return "\n".join(parts)


def _load_notes(results) -> list[str]:
    """Warns when the machine was busier than it has cores: then multi-threaded times mostly measure
    waiting for a core (an OpenMP barrier waits for its slowest, descheduled thread)."""
    m, notes = results["machine"], []
    cpus = m.get("logical_cpus") or 1
    loads = []
    for key in ("loadavg_start", "loadavg_end"):
        try:
            loads.append(float(str(m.get(key, "")).split()[0]))
        except (ValueError, IndexError):
            pass
    pr = {k: v for key in ("parallel_region_s", "parallel_region_end_s") for k, v in
          [(f"{t} thread(s) {'start' if key == 'parallel_region_s' else 'end'}", s)
           for t, s in results.get(key, {}).items()]}
    if pr:
        notes.append("Thread-pool health check (median time of a 1M-element `add_`, which torch splits across "
                     "its threads; on a quiet machine more threads make it faster, under load every parallel "
                     "region waits for a descheduled thread): "
                     + ", ".join(f"{k}: {v * 1e6:.0f} us" for k, v in pr.items()) + ".")
    if loads and max(loads) > cpus:
        notes.append(f"The machine was overloaded during this run (1-min load average up to {max(loads):.1f} on "
                     f"{cpus} logical CPUs): multi-threaded timings, torch's above all, include long waits for a "
                     "core and are not representative; single-thread rows are less affected. Rerun on a quiet "
                     "machine before drawing conclusions.")
    return notes


def markdown(results, png_name: str | None) -> str:
    m = results["machine"]
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["isa"].items())
    kernels = sorted({c.get("kernel") or "" for c in results["cells"]} - {""})
    pol = results["policy"]
    lines = [
        "# sqfx benchmarks",
        "",
        "Generated by `bench/run.py` from a single run; do not edit by hand (rerun it instead).",
        "",
        "## Run",
        "",
        f"- command: `{results['command']}`" + (" (quick mode: tiny grid, not representative)" if results["quick"] else ""),
        f"- date: {m['date_utc']}; wall time {results['elapsed_s'] / 60:.1f} min; load average (1/5/15 min) "
        f"{m.get('loadavg_start', '?')} at the start, {m.get('loadavg_end', '?')} at the end",
        f"- CPU: {m['cpu']}; {m['logical_cpus']} logical CPUs; L3 {m['l3_bytes'] >> 20} MiB; {isa}",
        f"- torch {m['torch']}, sqfx {m['sqfx']} from `{m.get('sqfx_path', '?')}` (git {m['git_commit'] or '?'})"
        + (f", onnxruntime {m['onnxruntime']}" if results["ort"] else ", onnxruntime not installed (column left out)"),
        "- sqfx kernels reported by `PackedLinear.kernel`: "
        + (", ".join(f"`{k}`" for k in kernels) if kernels else "none (this sqfx has no `kernel` attribute: the "
           "portable kernel)"),
        "",
        "## How to run",
        "",
        "```",
        "pip install -e .[bench]        # optional: onnxruntime, onnx (ORT column) and matplotlib (plot)",
        "python -m bench.run            # full grid, ~15 min on 2 cores; writes docs/benchmarks.{md,png,json}",
        "python -m bench.run --quick --out /tmp/bench     # tiny grid (what tests/test_bench_smoke.py runs)",
        "python -m bench.run --shapes 4096x4096 --threads 2 --out /tmp/bench",
        "python -m bench.calibrate      # crossover sparsity where sqfx beats dense int8 (for the cost model)",
        "```",
        "",
        "## Method",
        "",
        "- Weights: random N(0, 1/in) fp32, pruned by 1x4 block L1 magnitude to each sparsity; every "
        "implementation is built from the same masked weight (int8 peers: symmetric per-channel qint8).",
        "- Peers: fp32 `F.linear`; torch dynamic int8 `torch.ao.nn.quantized.dynamic.Linear` (fbgemm); torch "
        "sparse dynamic int8 `torch.ao.nn.sparse.quantized.dynamic.Linear` (qnnpack, 1x4, run with the qnnpack "
        "engine); ONNX Runtime `quantize_dynamic` (QInt8 per-channel) of a MatMul+Add model, "
        "`intra_op_num_threads` = threads, spinning off. sqfx is called as `sqfx.pack(w, mask=..., "
        "block=(1, 4)" + "".join(f", {k}={v!r}" for k, v in results.get("pack_kwargs", {}).items()) + ")(x)`.",
        "- Timing: for each (shape, threads, M) every implementation and sparsity is timed in interleaved "
        f"rounds (rotating order) and the median per-call time over the rounds is kept (≥ {pol['min_rounds']} "
        f"and ≤ {pol['max_rounds']} rounds, each a burst of ~{pol['round_s'] * 1e3:g} ms of back-to-back calls, "
        "after a warmup). Dense peers (fp32, fbgemm, ORT) don't depend on the weight's values: they are timed "
        "once per group, with the weight masked at 90%, and shared by the group's sparsity rows.",
        "- Speedup = time of the best peer in the cell / time of sqfx (peers: fp32, fbgemm int8, qnnpack sparse "
        "int8, ORT int8). 'vs best dense int8' compares to fbgemm and ORT only.",
        f"- DRAM-streamed batch 1: the timing loop cycles through enough copies of the layer to hold "
        f"{results['stream_working_set'] >> 20} MiB (L3: {m['l3_bytes'] >> 20} MiB), so every call reads its weights "
        "from DRAM; "
        "effective bandwidth = packed bytes (`PackedLinear.nbytes()`) / time per call. Read bandwidth: "
        f"{results.get('read_bw_stat', 'median time of fp32 sum')} over a "
        f"{results.get('read_bw_bytes', 512 << 20) >> 20} MiB tensor, per thread count.",
        "- Fixed cost: 64x64 layer (90% sparse), M=1, same interleaved timing.",
        "- The machine is shared: other jobs (compilers, tests) may run at the same time, and runs differ by "
        "25-50%. Only ratios measured in one run mean much.",
    ]
    notes = _load_notes(results)
    if not kernels:
        notes.append("This sqfx build has no `PackedLinear.kernel`: it runs the portable scalar kernel (main before "
                     "the fast x86 kernels land), so every NOT MET below has that cause first; the int8 peers run "
                     "SIMD kernels.")
    if results.get("note"):
        notes.insert(0, results["note"])
    if notes:
        lines += ["", "## Notes on this run", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Targets (issue 5)", "",
              f"Ratios vs the best peer in the same run, {_target_threads(results)} thread(s), 1x4 at 90% unless "
              "stated.", "", "| target | cell | measured | needed | verdict | detail |", "|---|---|---:|---:|---|---|"]
    tg = targets(results)
    for t in tg:
        lines.append(f"| {t['group']} | {t['cell']} | {t['value'] or '-'} | {t['limit']} | "
                     f"**{_verdict(t['met'])}** | {t['detail']} |")
    met = sum(1 for t in tg if t["met"])
    lines += ["", f"{met} of {len(tg)} target cells met."]
    if png_name:
        lines += ["", "## Speedup vs sparsity", "", f"![speedup vs best peer]({png_name})"]
    lines += ["", "## DRAM read bandwidth", ""]
    how = results.get("dram_read_how", {})
    lines += [f"- {t} thread(s): {bw / 1e9:.1f} GB/s" + (f" ({how[t]})" if t in how else "")
              for t, bw in results["dram_read"].items()]
    lines += ["", "## Batch 1, weights streamed from DRAM", "", _md_table(*_streamed_rows(results))]
    lines += ["", "## Fixed cost per call (64x64, M=1)", "", _md_table(*_fixed_rows(results))]
    lines += ["", "## Full table (times in microseconds, median)", "", _md_table(*table_rows(results))]
    lines += ["", "## Accuracy check (same run, M=8)", "", _md_table(*_accuracy_rows(results)), ""]
    return "\n".join(lines)


def plot(results, path):
    """Speedup vs sparsity, one line per M, a panel per shape (a row of panels per thread count)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes, threads, ms = [], sorted({c["threads"] for c in results["cells"]}), sorted({c["m"] for c in results["cells"]})
    for c in results["cells"]:
        if tuple(c["shape"]) not in shapes:
            shapes.append(tuple(c["shape"]))
    fig, axes = plt.subplots(len(threads), len(shapes), figsize=(4 * len(shapes), 3.3 * len(threads)),
                             squeeze=False, sharey=True)
    for i, th in enumerate(threads):
        for j, shape in enumerate(shapes):
            ax = axes[i][j]
            for m in ms:
                cells = sorted((c for c in results["cells"] if tuple(c["shape"]) == shape and c["threads"] == th
                                and c["m"] == m), key=lambda c: c["sparsity"])
                ax.plot([c["sparsity"] for c in cells], [speedup(c) for c in cells], marker="o", label=f"M={m}")
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
            ax.set_yscale("log")
            ax.set_title(f"{_shape(shape)}, {th} thread{'s' if th > 1 else ''}", fontsize=10)
            ax.set_xlabel("1x4 block sparsity")
            if j == 0:
                ax.set_ylabel("speedup vs best peer")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"sqfx vs best peer ({results['machine']['cpu']}, torch {results['machine']['torch']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """Re-renders benchmarks.md (and the plot) from a run's benchmarks.json, without re-measuring."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("json", type=Path, help="benchmarks.json written by python -m bench.run")
    p.add_argument("--out", type=Path, help="directory for benchmarks.{md,png} (default: the json's)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text())
    out = args.out or args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    png = None if args.no_plot else plot(results, out / "benchmarks.png")
    (out / "benchmarks.md").write_text(markdown(results, png.name if png else None))
    print(text_summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
