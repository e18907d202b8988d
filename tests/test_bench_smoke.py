"""Smoke test of the benchmark suite (bench/): it runs end to end and writes sane reports.

Runs `python -m bench.run --quick` in a subprocess (its own thread settings, as a user runs it).
No timing assertions: the machine is shared and noisy; only that every time is positive and finite,
that every peer installed here is in the table, and that the reports hold the tables, the targets,
the CPU (model and ISA flags) and the run's command.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
HAS_OV = all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def _run_bench(out: Path, *extra: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"bench failed:\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _results_file(out: Path) -> Path:
    files = list((out / "benchmarks").glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _table_lines(md: str, title: str) -> list[str]:
    section = md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [l for l in section.splitlines() if l.startswith("|")]


def _expected_impls(sparsity, expect_ort, expect_ov):
    import torch

    sys.path.insert(0, str(REPO))
    try:
        from bench import peers
    finally:
        sys.path.pop(0)
    impls = {"sqfx", "sqfx_wonly", "fp32", "int8_fbgemm"}
    impls |= {"sparse_qnnpack"} if sparsity >= 0.8 else set()
    impls |= {"ort_int8"} if expect_ort else set()
    impls |= {"ov_int8"} if expect_ov else set()
    impls |= {"int_mm"} if peers.int_mm_missing() is None else set()
    impls |= {"sqfx_avx2"} if peers.forced_isa_column() else set()
    assert torch.get_num_threads() > 0
    return impls


def _check_results(out: Path, expect_ort: bool, expect_ov: bool, shapes, ms, sparsities, threads):
    results = json.loads(_results_file(out).read_text())
    cells = results["cells"]
    assert len(cells) == len(shapes) * len(ms) * len(sparsities) * len(threads)
    for c in cells:
        assert set(c["times"]) == _expected_impls(c["sparsity"], expect_ort, expect_ov), c["times"].keys()
        for t in c["times"].values():
            assert math.isfinite(t) and t > 0
    for row in results["streamed"] + results["fixed_cost"]:
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0
    assert {"nn_linear", "sqfx", "sqfx_module"} <= {r["impl"] for r in results["fixed_cost"]}
    assert all(bw > 0 for bw in results["dram_read"].values())
    # Every implementation computes the same layer: far from fp32 would mean a mis-built peer
    # (e.g. ORT's u8s8 saturation, or an int8 peer that quantized the wrong axis).
    for row in results["accuracy"]:
        assert row["rel_err"] < 0.1, row
    m = results["machine"]
    assert m["cpu"] and m["cpu_family"] and m["isa_flags"]

    md = (out / "benchmarks" / (_results_file(out).stem + ".md")).read_text()
    assert "python -m bench.run --quick" in md and m["cpu"] in md and m["isa_flags"] in md
    assert "## Targets (issue 10)" in md
    lines = _table_lines(md, "Kernels")
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    assert "sqfx us" in head and "speedup vs best peer" in head and "target" in head
    assert ("ort us" in head) == expect_ort and ("ov us" in head) == expect_ov
    rows = lines[2:]
    assert len(rows) == len(cells)
    for row in rows:
        cols = dict(zip(head, (v.strip() for v in row.strip("|").split("|"))))
        for name in head:
            if name.endswith(" us") and cols[name] != "-":
                assert float(cols[name]) > 0
        assert re.fullmatch(r"\d+\.\d\dx", cols["speedup vs best peer"]) and float(cols["speedup vs best peer"][:-1]) > 0
        # 0% cells are held to the dense int8 peers, 90% ones (shapes off the target list) to nothing.
        assert re.fullmatch(r">=1x (pass|MISS)", cols["target"]) if cols["sparsity"] == "0.00" else cols["target"] == "-"
    assert len(_table_lines(md, "Weight-only op vs fp32 F.linear")) == 2 + len(cells)

    index = (out / "benchmarks.md").read_text()
    assert f"<!-- bench:begin {m['cpu_slug']} -->" in index and m["cpu_family"] in index
    e2e = results["e2e"]
    if HAS_TRANSFORMERS:
        variants = {r["variant"] for r in e2e["rows"]}
        assert {"fp32 eager", "torch dynamic int8", "sqfx eager, 80% sparse"} <= variants
        assert ("ONNX Runtime int8" in variants) == expect_ort and ("OpenVINO int8 (NNCF PTQ)" in variants) == expect_ov
        assert all(math.isfinite(r["ms"]) and r["ms"] > 0 for r in e2e["rows"])
        assert e2e["profile"]["categories"] and "End to end" in md
    return results


def test_bench_quick_full_features(tmp_path):
    """The quick grid with every optional part that is installed (ORT and OpenVINO columns, PNG)."""
    _run_bench(tmp_path)
    _check_results(tmp_path, HAS_ORT, HAS_OV, shapes=["64x128", "128x64"], ms=[1, 8], sparsities=[0.0, 0.9],
                   threads=[1])
    assert (tmp_path / "benchmarks.png").exists() == HAS_MPL
    if HAS_MPL:
        assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_optional_extras(tmp_path, monkeypatch, capsys):
    """ORT, OpenVINO and the plot left out (as on a machine without the `bench` extra): still a full
    report, the skipped peers printed with their reason, and `python -m bench.report <json>` rebuilds
    the same markdown without re-measuring."""
    proc = _run_bench(tmp_path, "--shapes", "32x64", "--ms", "2", "--sparsities", "0.5", "--threads", "1",
                      "--no-plot", env_extra={"SQFX_BENCH_NO_ORT": "1", "SQFX_BENCH_NO_OV": "1"})
    _check_results(tmp_path, False, False, shapes=["32x64"], ms=[2], sparsities=[0.5], threads=[1])
    assert not (tmp_path / "benchmarks.png").exists()
    assert "ORT int8 (MLAS): skipped (SQFX_BENCH_NO_ORT is set)" in proc.stderr
    assert "OpenVINO int8 (NNCF PTQ): skipped (SQFX_BENCH_NO_OV is set)" in proc.stderr
    report_md = tmp_path / "benchmarks" / (_results_file(tmp_path).stem + ".md")
    assert "skipped: ORT int8 (MLAS): SQFX_BENCH_NO_ORT is set" in report_md.read_text()
    assert "speedup vs best peer" in proc.stdout

    monkeypatch.syspath_prepend(str(REPO))
    from bench import report

    again = tmp_path / "again"
    assert report.main([str(_results_file(tmp_path)), "--out", str(again), "--no-plot"]) == 0
    assert (again / "benchmarks" / report_md.name).read_text() == report_md.read_text()
    assert "targets:" in capsys.readouterr().out


def test_bench_only_sections(tmp_path):
    """--only runs the named sections and nothing else."""
    _run_bench(tmp_path, "--only", "fixed", "--no-plot")
    results = json.loads(_results_file(tmp_path).read_text())
    assert results["fixed_cost"] and not results["cells"] and not results["streamed"] and results["e2e"] is None


@pytest.mark.parametrize("bad", [["--shapes", "12y4"], ["--sparsities", "1.0"], ["--threads", "0"], ["--ms", "x"],
                                 ["--only", "kernels,gpu"], ["--e2e-sparsities", "1.5"]])
def test_bench_rejects_bad_arguments(bad, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench.run import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--quick", *bad])
    assert exc.value.code != 0
    assert "error" in capsys.readouterr().err


def test_index_keeps_hand_written_sections(tmp_path, monkeypatch):
    """A run rewrites its own CPU family's section of benchmarks.md only: other families, the
    history and the accuracy sections stay byte for byte; a new family goes before the end marker."""
    monkeypatch.syspath_prepend(str(REPO))
    from bench import docs

    index = tmp_path / "benchmarks.md"
    hand = ("# sqfx benchmarks\n\nmethod text\n\n<!-- bench:begin intel-ice-lake-sp-avx-512-vnni -->\nold ice lake\n"
            "<!-- bench:end intel-ice-lake-sp-avx-512-vnni -->\n\n" + docs.FAMILIES_END + "\n\n## Accuracy\n\nkept\n")
    index.write_text(hand)
    docs.update_index(index, "amd-zen-3-avx2", "<!-- bench:begin amd-zen-3-avx2 -->\nzen3 v1\n<!-- bench:end amd-zen-3-avx2 -->")
    text = index.read_text()
    assert "old ice lake" in text and "zen3 v1" in text and text.endswith("## Accuracy\n\nkept\n")
    assert text.index("zen3 v1") < text.index(docs.FAMILIES_END)
    docs.update_index(index, "amd-zen-3-avx2", "<!-- bench:begin amd-zen-3-avx2 -->\nzen3 v2\n<!-- bench:end amd-zen-3-avx2 -->")
    text2 = index.read_text()
    assert "zen3 v1" not in text2 and text2.count("zen3 v2") == 1 and text2.replace("zen3 v2", "zen3 v1") == text


@pytest.mark.parametrize("vendor,family,model,flags,expected", [
    ("AuthenticAMD", 25, 1, "avx2 fma", "AMD Zen 3 (AVX2)"),
    ("AuthenticAMD", 25, 17, "avx2 avx512f avx512bw avx512_vnni", "AMD Zen 4 (AVX-512 VNNI)"),
    ("AuthenticAMD", 26, 2, "avx2 avx512f avx512_vnni", "AMD Zen 5 (AVX-512 VNNI)"),
    ("GenuineIntel", 6, 106, "avx2 avx512f avx512_vnni", "Intel Ice Lake-SP (AVX-512 VNNI)"),
    ("GenuineIntel", 6, 999, "avx2", "Intel family 6 model 999 (AVX2)"),
])
def test_cpu_family(vendor, family, model, flags, expected, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench import cpuinfo

    text = (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: Some CPU\nflags\t\t: fpu {flags}\n\nprocessor\t: 1\n")
    d = cpuinfo.describe(text)
    assert d["family"] == expected and d["model"] == "Some CPU"
    assert d["isa"]["avx2"] and "avx2" in d["flags_line"] and d["slug"] == d["slug"].lower()


def test_calibrate_crossover(monkeypatch):
    """The crossover is the lowest sparsity from which sqfx wins at every swept sparsity above it."""
    monkeypatch.syspath_prepend(str(REPO))
    from bench.calibrate import crossover

    sparsities = [0.0, 0.5, 0.8, 0.9]
    assert crossover(sparsities, [4.0, 2.0, 0.9, 0.5], dense_time=1.0) == 0.8
    assert crossover(sparsities, [0.5, 2.0, 0.9, 0.5], dense_time=1.0) == 0.8  # a lucky low point doesn't count
    assert crossover(sparsities, [0.5, 0.6, 0.7, 0.8], dense_time=1.0) == 0.0
    assert crossover(sparsities, [4.0, 3.0, 2.0, 1.5], dense_time=1.0) is None


def test_timing_contexts_and_slow_calls(monkeypatch):
    """time_interleaved enters a fn's context around each of its bursts (and its warmup), times a
    call slower than max_call_s from its warmup alone, and reports every fn (counts, not speed)."""
    import contextlib
    import time as _time

    monkeypatch.syspath_prepend(str(REPO))
    from bench.timing import TimingPolicy, time_interleaved

    calls = {"fast": 0, "slow": 0}
    inside = {"depth": 0, "entered": 0}

    @contextlib.contextmanager
    def around():
        inside["depth"] += 1
        inside["entered"] += 1
        yield
        inside["depth"] -= 1

    def fast():
        assert inside["depth"] == 1  # always run under its context
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        _time.sleep(0.02)

    single = set()
    policy = TimingPolicy(budget_s=0.01, round_s=0.0001, min_rounds=3, max_rounds=3, warmup_s=0.0,
                          max_call_s=0.005, stat="min")
    times = time_interleaved({"fast": fast, "slow": slow}, policy, around={"fast": around}, single=single)
    assert set(times) == {"fast", "slow"} and all(t > 0 for t in times.values())
    assert calls["slow"] == 1 and single == {"slow"}
    assert inside["entered"] == 1 + 3 and inside["depth"] == 0  # warmup + one per round
    assert calls["fast"] >= 1 + 1 + 3
