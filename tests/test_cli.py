"""`python -m sqfx` convert / report / bench, run as a user would (subprocess) on a tiny factory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests.cli_factory` is imported in-process too
    sys.path.insert(0, str(REPO))
FACTORY = "tests.cli_factory:make_mlp"


def run_cli(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sqfx", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_convert_writes_a_pt2_that_runs_like_the_converted_model(tmp_path):
    out = tmp_path / "mlp.pt2"
    r = run_cli("convert", FACTORY, "--sparsity", "0.5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "sqfx conversion report (capture: torch.export): 3 converted" in r.stdout
    assert out.exists() and out.with_suffix(".report.json").exists()
    layers = json.loads(out.with_suffix(".report.json").read_text())["layers"]
    assert [row["fqn"] for row in layers] == ["0", "2", "4"]
    assert all(abs(row["sparsity"] - 0.5) < 0.02 for row in layers)
    assert all(row["sqnr_db"] > 30 for row in layers)
    # The exported program computes what the library's conversion computes, at a new batch size.
    import sqfx
    from tests.cli_factory import make_mlp

    converted = sqfx.prepare_and_convert(make_mlp(), sqfx.SparseQuantConfig(target_sparsity=0.5))
    assert [l.kernel for l in converted.sqfx_report.layers] == [row["kernel"] for row in layers]
    ep = sqfx.load(str(out))
    x = torch.randn(7, 32)
    assert torch.equal(ep.module()(x), converted(x))


def test_the_cli_prints_the_library_report(capsys, monkeypatch):
    """The CLI's report is the library's ConversionReport: real kernel names, layout=auto, F.linear
    layers, fused layers named after their linear (bug 8)."""
    import sqfx
    from sqfx.cli import main
    from tests.cli_factory import make_functional

    monkeypatch.chdir(REPO)
    assert main(["report", "tests.cli_factory:make_functional", "--sparsity", "0.5", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    expected = sqfx.prepare_and_convert(make_functional(), sqfx.SparseQuantConfig(target_sparsity=0.5)).sqfx_report
    assert [l["fqn"] for l in got["layers"]] == expected.converted == ["fc1", "fc2"]
    assert [l["kernel"] for l in got["layers"]] == [l.kernel for l in expected.layers]
    assert [l["relu_fused"] for l in got["layers"]] == [True, False]
    assert main(["report", "tests.cli_factory:make_functional", "--sparsity", "0.5"]) == 0
    assert capsys.readouterr().out.strip() == str(expected).strip()


def test_report_from_factory_and_from_pt2_agree(tmp_path, capsys, monkeypatch):
    from sqfx.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "m.pt2"
    assert main(["convert", FACTORY, "--sparsity", "0.75", "--block", "2", "4", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", FACTORY, "--sparsity", "0.75", "--block", "2", "4", "--json"]) == 0
    ra = json.loads(capsys.readouterr().out)["layers"]
    b = run_cli("report", str(out), "--json")  # a fresh process: the .pt2 loads after `import sqfx`
    assert b.returncode == 0, b.stderr
    rb = json.loads(b.stdout)["layers"]
    for x, y in zip(ra, rb, strict=True):
        keys = ("fqn", "in_features", "out_features", "activation", "kernel", "relu_fused")
        assert [x[k] for k in keys] == [y[k] for k in keys]
        assert y["sqnr_db"] is None  # unknown, strict JSON null: the .pt2 has no fp32 weight to compare with
    assert main(["report", FACTORY]) == 0
    table = capsys.readouterr().out
    assert "activations" in table and "dynamic_int8" in table and "64 x 32" in table


def test_report_of_a_broken_pt2_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip archive")
    r = run_cli("report", str(bad))
    assert r.returncode == 2 and "sqfx: error: cannot load" in r.stderr and "Traceback" not in r.stderr


def test_bench_times_both_and_checks_the_error():
    r = run_cli("bench", FACTORY, "--inputs", "tests.cli_factory:example_inputs", "--batch", "5",
                "--iters", "2", "--sparsity", "0.5")
    assert r.returncode == 0, r.stderr
    assert "inputs (5, 32)" in r.stdout and "fp32 eager" in r.stdout and "sqfx eager" in r.stdout
    rel = float(r.stdout.split("relative error vs fp32 (same mask) ")[1].split()[0])
    assert rel < 0.05


@pytest.mark.parametrize("args, message", [
    (("report", "no_such_module:make"), "cannot import 'no_such_module'"),
    (("report", "tests.cli_factory:NOT_A_MODULE"), "not an nn.Module"),
    (("report", "tests.cli_factory:missing"), "has no attribute 'missing'"),
    (("report", "does/not/exist.pt"), "neither an existing file"),
    (("report", FACTORY, "--sparsity", "1.5"), "--sparsity must be in [0, 1)"),
    (("report", FACTORY, "--include", "nothing*"), "no linear layer selected"),
    (("report", FACTORY, "--block", "0", "4"), "block must be two positive ints"),
    (("bench", FACTORY, "--input-shape", "2,x"), "--input-shape must be comma-separated ints"),
])
def test_bad_input_is_a_clear_error(args, message, capsys, monkeypatch):
    # In-process through the same entry point (a subprocess per case would cost seconds each).
    from sqfx.cli import main

    monkeypatch.chdir(REPO)
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("sqfx: error:")


def test_error_exit_status_from_the_command_line():
    r = run_cli("report", "tests.cli_factory:NOT_A_MODULE")
    assert r.returncode == 2 and "not an nn.Module" in r.stderr and "Traceback" not in r.stderr


def test_saved_model_file_and_include(tmp_path, capsys):
    from tests.cli_factory import make_mlp

    path = tmp_path / "mlp.pt"
    torch.save(make_mlp(), path)
    from sqfx.cli import main

    assert main(["report", str(path), "--include", "2", "--json"]) == 0
    assert [row["fqn"] for row in json.loads(capsys.readouterr().out)["layers"]] == ["2"]


def test_act_modes_reach_the_pt2_and_its_report(tmp_path, capsys, monkeypatch):
    from sqfx.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "wo.pt2"
    assert main(["convert", FACTORY, "--act-mode", "weight_only", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert [r["activation"] for r in rows] == ["weight_only"] * 3
    assert all(r["kernel"].startswith("f32_qc8w_") for r in rows)  # the weight-only table rows
    # auto: a threshold above every layer's SQNR picks weight_only everywhere, below none.
    assert main(["report", FACTORY, "--act-mode", "auto", "--threshold-db", "1000", "--json"]) == 0
    assert {r["activation"] for r in json.loads(capsys.readouterr().out)["layers"]} == {"weight_only"}
    assert main(["report", FACTORY, "--act-mode", "auto", "--threshold-db", "-1000", "--json"]) == 0
    assert {r["activation"] for r in json.loads(capsys.readouterr().out)["layers"]} == {"dynamic_int8"}
