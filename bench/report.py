"""Turns one run's results into tables, the targets check (issue 10), markdown and a plot.

Every target is a ratio against the best peer measured in the same run (issue 10, "Targets"); the
kernel and weight-only tables carry the verdict of each cell in their own "target" column, and the
targets section sums them up per group.
"""
from __future__ import annotations

from . import peers

BERT_SHAPES = ((768, 768), (3072, 768), (768, 3072))
MINILM_SHAPES = ((384, 384), (1536, 384), (384, 1536))
BIG_SHAPE = (4096, 4096)
TARGET_SPARSITY = 0.9
TARGET_THREADS = 2
STREAM_FRACTION = 0.60
FIXED_COST_RATIO = 1.3  # sqfx per call vs nn.Linear, 64x64
E2E_SPEEDUP, E2E_VS_INT8, E2E_SPARSITY = 3.0, 1.25, 0.8


# ---------------------------------------------------------------- per-cell numbers
def best_peer(cell, among=peers.PEERS) -> tuple[str, float] | None:
    times = [(n, t) for n, t in cell["times"].items() if n in among and t is not None]
    return min(times, key=lambda nt: nt[1]) if times else None


def speedup(cell, among=peers.PEERS, impl=peers.SQFX) -> float:
    """Best peer's time / `impl`'s time (> 1: sqfx is faster)."""
    best = best_peer(cell, among)
    mine = cell["times"].get(impl)
    return best[1] / mine if best and mine else float("nan")


def cell_target(cell) -> tuple[float, tuple, str] | None:
    """(ratio needed, peers it is against, name) of the issue-10 target that covers this kernel cell."""
    shape, m, s = tuple(cell["shape"]), cell["m"], cell["sparsity"]
    if abs(s - TARGET_SPARSITY) < 1e-9:
        if shape == BIG_SHAPE:
            return (5.0 if m == 1 else 4.0), peers.PEERS, "4096x4096 at 90%"
        if shape in BERT_SHAPES + MINILM_SHAPES and m <= 2048:
            return 3.0, peers.PEERS, "BERT and MiniLM shapes at 90%"
    if abs(s - 0.8) < 1e-9 and m >= 128:
        return 2.5, peers.PEERS, "80% at M >= 128"
    if s == 0.0:
        return 1.0, peers.DENSE_INT8_PEERS, "0% vs best dense int8"
    return None


def wonly_target(cell) -> tuple[float, str] | None:
    """Weight-only op vs fp32 F.linear: >= 1.0x at 0% (issue 10 targets), faster at 80% (item 3)."""
    if cell["sparsity"] == 0.0:
        return 1.0, "weight-only 0% vs fp32"
    if abs(cell["sparsity"] - 0.8) < 1e-9:
        return 1.0, "weight-only 80% vs fp32"
    return None


def wonly_ratio(cell) -> float:
    t, f = cell["times"].get(peers.SQFX_WONLY), cell["times"].get(peers.FP32)
    return f / t if t and f else float("nan")


def _verdict_cell(ratio, limit) -> str:
    if ratio != ratio:  # nan
        return "-"
    return f">={limit:g}x {'pass' if ratio >= limit else 'MISS'}"


def _us(seconds) -> str:
    if seconds is None:
        return "-"
    us = seconds * 1e6
    return f"{us:.3g}" if us < 100 else f"{us:.0f}"


def _shape(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def _impls(results):
    return [i for i in results.get("impls", [peers.SQFX] + list(peers.PEERS)) if i != peers.SQFX_WONLY]


def table_rows(results) -> tuple[list[str], list[list[str]]]:
    impls = _impls(results)
    avx2 = peers.SQFX_AVX2 in impls
    head = (["threads", "shape", "M", "sparsity"] + [f"{peers.SHORT[i]} us" for i in impls]
            + ["best peer", "speedup vs best peer", "vs best dense int8", "target"]
            + (["avx2 vs best peer"] if avx2 else []) + ["sqfx kernel"])
    rows = []
    for c in results["cells"]:
        bp = best_peer(c)
        tg = cell_target(c)
        rows.append([str(c["threads"]), _shape(c["shape"]), str(c["m"]), f"{c['sparsity']:.2f}"]
                    + [_us(c["times"].get(i)) for i in impls]
                    + [peers.SHORT[bp[0]] if bp else "-", f"{speedup(c):.2f}x",
                       f"{speedup(c, peers.DENSE_INT8_PEERS):.2f}x",
                       _verdict_cell(speedup(c, tg[1]), tg[0]) if tg else "-"]
                    + ([f"{speedup(c, impl=peers.SQFX_AVX2):.2f}x"] if avx2 else [])
                    + [(c.get("kernel") or "-") + (f"; avx2: {c['kernel_avx2']}" if c.get("kernel_avx2") else "")])
    return head, rows


def wonly_rows(results) -> tuple[list[str], list[list[str]]]:
    head = ["threads", "shape", "M", "sparsity", "weight-only us", "fp32 us", "fp32 / weight-only", "target"]
    rows = []
    for c in results["cells"]:
        if c["times"].get(peers.SQFX_WONLY) is None:
            continue
        tg = wonly_target(c)
        r = wonly_ratio(c)
        rows.append([str(c["threads"]), _shape(c["shape"]), str(c["m"]), f"{c['sparsity']:.2f}",
                     _us(c["times"][peers.SQFX_WONLY]), _us(c["times"].get(peers.FP32)), f"{r:.2f}x",
                     _verdict_cell(r, tg[0]) if tg else "-"])
    return head, rows


_TEXT_COLUMNS = ("shape", "impl", "implementation", "best peer", "sqfx kernel", "target", "variant", "group",
                 "worst cell", "category", "verdict", "what", "detail", "ops counted")


def _md_table(head, rows) -> str:
    align = ["---" if h in _TEXT_COLUMNS else "---:" for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _text_table(head, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


# ---------------------------------------------------------------- targets (issue 10)
def _target_threads(results) -> int:
    threads = sorted({c["threads"] for c in results["cells"]} | {r["threads"] for r in results["fixed_cost"]})
    return TARGET_THREADS if TARGET_THREADS in threads or not threads else threads[-1]


def targets(results) -> list[dict]:
    """One row per target group: cells met / measured, the worst cell (met None = not measured)."""
    th = _target_threads(results)
    groups: dict[str, list] = {}

    def add(group, cell_name, ratio, limit, detail, shown=None):
        groups.setdefault(group, []).append({"cell": cell_name, "ratio": ratio, "limit": limit,
                                             "shown": shown or f"{ratio:.2f}x", "detail": detail})

    for c in results["cells"]:
        if c["threads"] != th:
            continue
        name = f"{_shape(c['shape'])} M={c['m']} s={c['sparsity']:.2f}"
        tg = cell_target(c)
        if tg:
            bp = best_peer(c, tg[1])
            if bp:
                add(tg[2], name, speedup(c, tg[1]), tg[0],
                    f"sqfx {_us(c['times'][peers.SQFX])} us vs {peers.SHORT[bp[0]]} {_us(bp[1])} us")
        wt = wonly_target(c)
        if wt and c["times"].get(peers.SQFX_WONLY):
            add(wt[1], name, wonly_ratio(c), wt[0],
                f"weight-only {_us(c['times'][peers.SQFX_WONLY])} us vs fp32 {_us(c['times'][peers.FP32])} us")
    bw = results["dram_read"].get(str(th))
    for row in results["streamed"]:
        if (row["impl"] == peers.SQFX and tuple(row["shape"]) == BIG_SHAPE and row["threads"] == th
                and abs(row["sparsity"] - TARGET_SPARSITY) < 1e-9 and bw):
            eff = row["bytes"] / row["seconds"]
            add("batch 1 from DRAM (4096x4096, 90%)", "4096x4096 M=1 s=0.90", eff / bw, STREAM_FRACTION,
                f"{eff / 1e9:.1f} of {bw / 1e9:.1f} GB/s ({row['bytes'] / 1e6:.2f} MB in {_us(row['seconds'])} us)",
                shown=f"{100 * eff / bw:.0f}% of read BW")
    fixed = {r["impl"]: r["seconds"] for r in results["fixed_cost"] if r["threads"] == th}
    if "nn_linear" in fixed:
        for impl, what in ((peers.SQFX, "op"), ("sqfx_module", "SparseQuantLinear")):
            if impl in fixed:
                add("fixed cost, 64x64 (<= 1.3x nn.Linear)", what, fixed["nn_linear"] / fixed[impl],
                    1 / FIXED_COST_RATIO, f"{fixed[impl] * 1e6:.1f} us vs nn.Linear {fixed['nn_linear'] * 1e6:.1f} us",
                    shown=f"{fixed[impl] / fixed['nn_linear']:.2f}x nn.Linear")
    e2e = results.get("e2e") or {}
    for row in e2e_target_rows(e2e):
        add(row["group"], row["cell"], row["ratio"], row["limit"], row["detail"])
    out = []
    for group, rows in groups.items():
        worst = min(rows, key=lambda r: r["ratio"] / r["limit"] if r["ratio"] == r["ratio"] else -1)
        met = sum(1 for r in rows if r["ratio"] >= r["limit"])
        out.append({"group": group, "met": met, "total": len(rows), "worst": worst, "rows": rows})
    return out


def e2e_target_rows(e2e) -> list[dict]:
    """MiniLM at 80%, compiled: >= 3x fp32 eager and >= 1.25x the fastest int8 peer, per size."""
    rows = []
    name = e2e_variant_name("sqfx compiled", E2E_SPARSITY)
    for size in e2e.get("sizes", []):
        lat = {r["variant"]: r["ms"] for r in e2e.get("rows", []) if r["size"] == size and r["ms"]}
        if name not in lat:
            continue
        if "fp32 eager" in lat:
            rows.append({"group": "MiniLM 80% compiled vs fp32 eager", "cell": size,
                         "ratio": lat["fp32 eager"] / lat[name], "limit": E2E_SPEEDUP,
                         "detail": f"{lat[name]:.2f} ms vs {lat['fp32 eager']:.2f} ms"})
        int8 = [(v, lat[v]) for v in E2E_INT8_PEERS if v in lat]
        if int8:
            v, t = min(int8, key=lambda vt: vt[1])
            rows.append({"group": "MiniLM 80% compiled vs fastest int8 peer", "cell": size,
                         "ratio": t / lat[name], "limit": E2E_VS_INT8,
                         "detail": f"{lat[name]:.2f} ms vs {v} {t:.2f} ms"})
    return rows


E2E_INT8_PEERS = ("torch dynamic int8", "ONNX Runtime int8", "OpenVINO int8 (NNCF PTQ)")


def e2e_variant_name(kind: str, sparsity: float) -> str:
    return f"{kind}, {round(100 * sparsity)}% sparse"


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


FIXED_LABELS = dict(peers.LABELS, sqfx_module="sqfx SparseQuantLinear module", nn_linear="nn.Linear module")
FIXED_LABELS[peers.SQFX] = "sqfx op (PackedLinear call)"


def _fixed_rows(results):
    head = ["threads", "implementation", "us / call", "vs nn.Linear"]
    ref = {r["threads"]: r["seconds"] for r in results["fixed_cost"] if r["impl"] == "nn_linear"}
    return head, [[str(r["threads"]), FIXED_LABELS.get(r["impl"], r["impl"]), f"{r['seconds'] * 1e6:.1f}",
                   f"{r['seconds'] / ref[r['threads']]:.2f}x" if r["threads"] in ref else "-"]
                  for r in results["fixed_cost"]]


def _accuracy_rows(results):
    worst = {}
    for r in results["accuracy"]:
        worst[r["impl"]] = max(worst.get(r["impl"], 0.0), r["rel_err"])
    return ["implementation", "worst max abs(y - y_fp32) / max abs(y_fp32)"], [
        [peers.LABELS.get(i, i), f"{e:.4f}"] for i, e in worst.items()]


def _target_rows(results):
    head = ["group", "cells met", "worst cell", "worst value", "needed", "verdict", "detail"]
    rows = []
    for t in targets(results):
        w = t["worst"]
        need = (f">= {100 * w['limit']:.0f}%" if "DRAM" in t["group"]
                else f"<= {1 / w['limit']:.2g}x" if "fixed" in t["group"] else f">= {w['limit']:g}x")
        rows.append([t["group"], f"{t['met']} / {t['total']}", w["cell"], w["shown"], need,
                     "**" + _verdict(t["met"] == t["total"]) + "**", w["detail"]])
    return head, rows


def e2e_rows(e2e) -> tuple[list[str], list[list[str]]]:
    sizes = e2e.get("sizes", [])
    head = (["variant"] + [f"{s} ms" for s in sizes] + [f"{s} vs fp32 eager" for s in sizes]
            + [f"{s} vs fastest int8 peer" for s in sizes])
    lat = {(r["variant"], r["size"]): r["ms"] for r in e2e.get("rows", [])}
    best_int8 = {}
    for s in sizes:
        cand = [lat[(v, s)] for v in E2E_INT8_PEERS if lat.get((v, s))]
        best_int8[s] = min(cand) if cand else None
    rows = []
    for v in e2e.get("variants", []):
        r = [v] + [f"{lat[(v, s)]:.2f}" if lat.get((v, s)) else "-" for s in sizes]
        for s in sizes:
            base, mine = lat.get(("fp32 eager", s)), lat.get((v, s))
            r.append(f"{base / mine:.2f}x" if base and mine else "-")
        for s in sizes:
            mine = lat.get((v, s))
            r.append(f"{best_int8[s] / mine:.2f}x" if best_int8[s] and mine else "-")
        rows.append(r)
    return head, rows


def profile_rows(e2e) -> tuple[list[str], list[list[str]]]:
    prof = e2e.get("profile") or {}
    head = ["category", "ms per forward", "share of profiled op time", "ops counted"]
    total = sum(c["ms"] for c in prof.get("categories", [])) or 1.0
    return head, [[c["name"], f"{c['ms']:.2f}", f"{100 * c['ms'] / total:.0f}%", ", ".join(c["top"])]
                  for c in prof.get("categories", [])]


def text_summary(results) -> str:
    parts = []
    if results["cells"]:
        parts += [_text_table(*table_rows(results)), ""]
    if results["dram_read"]:
        parts += ["DRAM read bandwidth: " + ", ".join(
            f"{t} thread(s) {bw / 1e9:.1f} GB/s" for t, bw in results["dram_read"].items()), ""]
    if results["streamed"]:
        parts += ["batch-1, weights streamed from DRAM:", _text_table(*_streamed_rows(results)), ""]
    if results["fixed_cost"]:
        parts += ["fixed cost per call (64x64, M=1):", _text_table(*_fixed_rows(results)), ""]
    e2e = results.get("e2e")
    if e2e:
        parts += [f"end to end, {e2e['model']}:", _text_table(*e2e_rows(e2e)), ""]
        if e2e.get("profile"):
            parts += [f"profile of {e2e['profile']['variant']} at {e2e['profile']['size']}:",
                      _text_table(*profile_rows(e2e)), ""]
    parts.append("targets:")
    for t in targets(results):
        w = t["worst"]
        parts.append(f"  {_verdict(t['met'] == t['total']):>8}  {t['group']}: {t['met']}/{t['total']} met; "
                     f"worst {w['cell']}: {w['shown']} ({w['detail']})")
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
        notes.append(f"**Loaded machine**: 1-min load average up to {max(loads):.1f} on {cpus} logical CPUs. "
                     "Multi-threaded timings, of OpenMP-based implementations (torch, sqfx) above all, include "
                     "long waits for a core and are not representative. Rerun on a quiet machine before drawing "
                     "conclusions.")
    return notes


def run_header(results) -> list[str]:
    """The lines naming the run: command, date, CPU (model, family, ISA flags), versions, skipped peers."""
    m = results["machine"]
    versions = [f"torch {m['torch']}", f"sqfx {m['sqfx']} (git {m['git_commit'] or '?'})"]
    versions += [f"{k} {m[k]}" for k in ("onnxruntime", "openvino", "nncf") if m.get(k)]
    lines = [
        f"- command: `{results['command']}`" + (" (quick mode: tiny grid, not representative)" if results["quick"] else ""),
        f"- CPU: **{m['cpu']}**, filed as {m.get('cpu_family', '?')} ({m.get('cpu_id', '?')}); "
        f"{m['logical_cpus']} logical CPUs; L3 {m['l3_bytes'] >> 20} MiB",
        f"- ISA flags: `{m.get('isa_flags') or ', '.join(k for k, v in m['isa'].items() if v)}`; sqfx paths: "
        + ", ".join(f"`{i}`" for i in m.get("sqfx_isas", [])),
        f"- date: {m['date_utc']}; wall time {results['elapsed_s'] / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in results.get("section_s", {}).items())
        + f"); load average (1/5/15 min) {m.get('loadavg_start', '?')} at the start, "
        f"{m.get('loadavg_end', '?')} at the end",
        "- versions: " + ", ".join(versions),
    ]
    for name, why in results.get("skipped", {}).items():
        lines.append(f"- skipped: {peers.LABELS.get(name, name)}: {why}")
    if results.get("ort_settings"):
        lines.append(f"- ONNX Runtime quantize_dynamic settings: `{results['ort_settings']}`")
    return lines


def markdown(results, png_name: str | None) -> str:
    """The full report of one run (docs/benchmarks/<cpu family>.md)."""
    m = results["machine"]
    kernels = sorted({c.get("kernel") or "" for c in results["cells"]} - {""})
    pol = results["policy"]
    lines = [f"# sqfx benchmarks: {m.get('cpu_family', m['cpu'])}", "",
             "Generated by `bench/run.py` from a single run; do not edit by hand (rerun it instead). "
             "Method, peers and how to run: [../benchmarks.md](../benchmarks.md).", "", "## Run", ""]
    lines += run_header(results)
    lines += ["- sqfx kernels reported by `PackedLinear.kernel`: "
              + (", ".join(f"`{k}`" for k in kernels) if kernels else "none measured"),
              f"- timing: interleaved rounds, {pol.get('stat', 'median')} per implementation; >= {pol['min_rounds']} and <= {pol['max_rounds']} rounds of "
              f"~{pol['round_s'] * 1e3:g} ms bursts; calls over {pol.get('slow_call_s', 0):g} s timed in "
              f"{pol.get('slow_rounds', '?')} rounds, over {pol.get('max_call_s', 0):g} s once; kernel-grid budget "
              f"{results.get('budget_s', 0):.0f} s"]
    notes = _load_notes(results)
    if results.get("note"):
        notes.insert(0, results["note"])
    singles = sorted({f"{_shape(c['shape'])} M={c['m']}: {', '.join(c['single_sample'])}"
                      for c in results["cells"] if c.get("single_sample")})
    if singles:
        notes.append("Timed from one call (slower than max_call_s): " + "; ".join(singles) + ".")
    if notes:
        lines += ["", "## Notes on this run", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Targets (issue 10)", "",
              f"Ratios against the best peer of the same run, {_target_threads(results)} thread(s); the per-cell "
              "verdicts are in the tables' `target` columns.", "", _md_table(*_target_rows(results))]
    e2e = results.get("e2e")
    if e2e:
        lines += ["", f"## End to end: {e2e['model']}", ""] + [f"- {n}" for n in e2e.get("notes", [])]
        lines += ["", _md_table(*e2e_rows(e2e))]
        if e2e.get("profile"):
            pr = e2e["profile"]
            lines += ["", f"### Where {pr['variant']} spends its time ({pr['size']}, torch.profiler)", "",
                      f"{pr['wall_ms']:.2f} ms per forward (wall, profiled); op time counted {pr['op_ms']:.2f} ms. "
                      + pr.get("how", ""), "", _md_table(*profile_rows(e2e))]
    if png_name:
        lines += ["", "## Speedup vs sparsity", "", f"![speedup vs best peer]({png_name})"]
    if results["cells"]:
        lines += ["", "## Kernels (times in microseconds, median)", "", _md_table(*table_rows(results))]
        lines += ["", "## Weight-only op vs fp32 F.linear", "", _md_table(*wonly_rows(results))]
    if results["dram_read"]:
        lines += ["", "## DRAM read bandwidth", ""]
        how = results.get("dram_read_how", {})
        lines += [f"- {t} thread(s): {bw / 1e9:.1f} GB/s" + (f" ({how[t]})" if t in how else "")
                  for t, bw in results["dram_read"].items()]
    if results["streamed"]:
        lines += ["", "## Batch 1, weights streamed from DRAM", "", _md_table(*_streamed_rows(results))]
    if results["fixed_cost"]:
        lines += ["", "## Fixed cost per call (64x64, M=1)", "", _md_table(*_fixed_rows(results))]
    if results["accuracy"]:
        lines += ["", "## Accuracy check (same run, M=8)", "", _md_table(*_accuracy_rows(results))]
    return "\n".join(lines) + "\n"


def plot(results, path):
    """Speedup vs sparsity, one line per M, a panel per shape (a row of panels per thread count)."""
    try:
        import matplotlib
    except ImportError:
        return None
    if not results["cells"]:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes, threads, ms = [], sorted({c["threads"] for c in results["cells"]}), sorted({c["m"] for c in results["cells"]})
    for c in results["cells"]:
        if tuple(c["shape"]) not in shapes:
            shapes.append(tuple(c["shape"]))
    fig, axes = plt.subplots(len(threads), len(shapes), figsize=(3.6 * len(shapes), 3.3 * len(threads)),
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
    m = results["machine"]
    fig.suptitle(f"sqfx vs best peer ({m.get('cpu_family', m['cpu'])}, {m['cpu']}, torch {m['torch']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """Re-renders a run's reports (bench/docs.py) from its JSON, without re-measuring."""
    import argparse
    import json
    from pathlib import Path

    from . import docs

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("json", type=Path, help="a run's JSON, e.g. docs/benchmarks/<cpu family>.json")
    p.add_argument("--out", type=Path, help="docs directory to write into (default: the one holding the JSON)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text())
    out = args.out or args.json.parent.parent
    docs.write(results, out, plot=not args.no_plot)
    print(text_summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
