"""Smoke test of the benchmark suite (bench/): it runs end to end and writes sane reports.

Runs `python -m bench.run --quick` in a subprocess (its own thread settings, as a user runs it).
No timing assertions: the machine is shared and noisy; only that every time is positive and finite
and that the report holds the table, the targets section and the run's command.
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
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _run_bench(out: Path, *extra: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"bench failed:\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _table_lines(md: str) -> list[str]:
    section = md.split("## Full table", 1)[1].split("\n## ", 1)[0]
    return [l for l in section.splitlines() if l.startswith("|")]


def _check_results(out: Path, expect_ort: bool, shapes, ms, sparsities, threads):
    results = json.loads((out / "benchmarks.json").read_text())
    cells = results["cells"]
    assert len(cells) == len(shapes) * len(ms) * len(sparsities) * len(threads)
    expected_impls = {"sqfx", "fp32", "int8_fbgemm", "sparse_qnnpack"} | ({"ort_int8"} if expect_ort else set())
    for c in cells:
        assert set(c["times"]) == expected_impls
        for t in c["times"].values():
            assert math.isfinite(t) and t > 0
    for row in results["streamed"] + results["fixed_cost"]:
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0
    assert all(bw > 0 for bw in results["dram_read"].values())
    # Every implementation computes the same layer: far from fp32 would mean a mis-built peer.
    for row in results["accuracy"]:
        assert row["rel_err"] < 0.1, row

    md = (out / "benchmarks.md").read_text()
    assert "python -m bench.run --quick" in md
    assert "## Targets (issue 5)" in md
    lines = _table_lines(md)
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    assert "sqfx us" in head and "speedup vs best peer" in head
    assert ("ort us" in head) == expect_ort
    rows = lines[2:]
    assert len(rows) == len(cells)
    for row in rows:
        cols = dict(zip(head, (v.strip() for v in row.strip("|").split("|"))))
        for name in head:
            if name.endswith(" us"):
                assert float(cols[name]) > 0
        assert re.fullmatch(r"\d+\.\d\dx", cols["speedup vs best peer"]) and float(cols["speedup vs best peer"][:-1]) > 0
    return results


def test_bench_quick_full_features(tmp_path):
    """The quick grid with every optional part that is installed (ORT column, PNG)."""
    _run_bench(tmp_path)
    _check_results(tmp_path, HAS_ORT, shapes=["64x128", "128x64"], ms=[1, 8], sparsities=[0.0, 0.9], threads=[1])
    assert (tmp_path / "benchmarks.png").exists() == HAS_MPL
    if HAS_MPL:
        assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_optional_extras(tmp_path, monkeypatch, capsys):
    """ORT and the plot left out (as on a machine without the `bench` extra): still a full report,
    and `python -m bench.report benchmarks.json` rebuilds the same markdown without re-measuring."""
    proc = _run_bench(tmp_path, "--shapes", "32x64", "--ms", "2", "--sparsities", "0.5", "--threads", "1",
                      "--no-plot", env_extra={"SQFX_BENCH_NO_ORT": "1"})
    _check_results(tmp_path, False, shapes=["32x64"], ms=[2], sparsities=[0.5], threads=[1])
    assert not (tmp_path / "benchmarks.png").exists()
    assert "onnxruntime not installed" in (tmp_path / "benchmarks.md").read_text()
    assert "speedup vs best peer" in proc.stdout

    monkeypatch.syspath_prepend(str(REPO))
    from bench import report

    again = tmp_path / "again"
    assert report.main([str(tmp_path / "benchmarks.json"), "--out", str(again), "--no-plot"]) == 0
    assert (again / "benchmarks.md").read_text() == (tmp_path / "benchmarks.md").read_text()
    assert "targets:" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--shapes", "12y4"], ["--sparsities", "1.0"], ["--threads", "0"], ["--ms", "x"]])
def test_bench_rejects_bad_arguments(bad, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench.run import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--quick", *bad])
    assert exc.value.code != 0
    assert "error" in capsys.readouterr().err


def test_calibrate_crossover(monkeypatch):
    """The crossover is the lowest sparsity from which sqfx wins at every swept sparsity above it."""
    monkeypatch.syspath_prepend(str(REPO))
    from bench.calibrate import crossover

    sparsities = [0.0, 0.5, 0.8, 0.9]
    assert crossover(sparsities, [4.0, 2.0, 0.9, 0.5], dense_time=1.0) == 0.8
    assert crossover(sparsities, [0.5, 2.0, 0.9, 0.5], dense_time=1.0) == 0.8  # a lucky low point doesn't count
    assert crossover(sparsities, [0.5, 0.6, 0.7, 0.8], dense_time=1.0) == 0.0
    assert crossover(sparsities, [4.0, 3.0, 2.0, 1.5], dense_time=1.0) is None
