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
    assert out.exists() and out.with_suffix(".report.json").exists()
    rows = json.loads(out.with_suffix(".report.json").read_text())
    assert [row["name"] for row in rows] == ["0", "2", "4"]
    assert all(abs(row["sparsity"] - 0.5) < 0.02 for row in rows)
    assert all(row["sqnr_db"] > 30 for row in rows)
    # The exported program computes what the in-process conversion computes, at a new batch size.
    import sqfx
    from sqfx.cli import convert_model
    from tests.cli_factory import make_mlp

    converted, _, _ = convert_model(make_mlp(), 0.5, (1, 4))
    ep = torch.export.load(str(out))
    x = torch.randn(7, 32)
    assert torch.equal(ep.module()(x), converted(x))


def test_report_from_factory_and_from_pt2_agree(tmp_path, capsys, monkeypatch):
    from sqfx.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "m.pt2"
    assert main(["convert", FACTORY, "--sparsity", "0.75", "--block", "2", "4", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", FACTORY, "--sparsity", "0.75", "--block", "2", "4", "--json"]) == 0
    ra = json.loads(capsys.readouterr().out)
    b = run_cli("report", str(out), "--json")  # a fresh process: the .pt2 loads after `import sqfx`
    assert b.returncode == 0, b.stderr
    rb = json.loads(b.stdout)
    for x, y in zip(ra, rb, strict=True):
        assert (x["name"], x["shape"], x["block"], x["act_mode"]) == (y["name"], y["shape"], y["block"], y["act_mode"])
        assert x["sparsity"] == pytest.approx(y["sparsity"])
        assert y["sqnr_db"] is None  # the .pt2 has no fp32 weight to compare with
    assert main(["report", FACTORY]) == 0
    table = capsys.readouterr().out
    assert "act mode" in table and "dynamic_int8" in table and "64x32" in table


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
    (("report", FACTORY, "--include", "nothing*"), "no nn.Linear layer selected"),
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
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["2"]


def test_act_modes_reach_the_pt2_and_its_report(tmp_path, capsys, monkeypatch):
    from sqfx.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "wo.pt2"
    assert main(["convert", FACTORY, "--act-mode", "weight_only", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["act_mode"] for r in rows] == ["weight_only"] * 3
    assert all(r["kernel"].startswith("f32_qc8w_") for r in rows)  # the weight-only table rows
    # auto: a threshold above every layer's SQNR picks weight_only everywhere, below none.
    assert main(["report", FACTORY, "--act-mode", "auto", "--threshold-db", "1000", "--json"]) == 0
    assert {r["act_mode"] for r in json.loads(capsys.readouterr().out)} == {"weight_only"}
    assert main(["report", FACTORY, "--act-mode", "auto", "--threshold-db", "-1000", "--json"]) == 0
    assert {r["act_mode"] for r in json.loads(capsys.readouterr().out)} == {"dynamic_int8"}


def test_progress_bar_for_many_layers_only(capsys, monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is not installed: no progress bar to check")
    from sqfx.cli import main

    monkeypatch.chdir(REPO)
    assert main(["report", "tests.cli_factory:make_deep", "--json"]) == 0
    deep = capsys.readouterr()
    assert "sqfx convert" in deep.err and "10/10" in deep.err
    assert len(json.loads(deep.out)) == 10
    assert main(["report", FACTORY, "--json"]) == 0
    assert "sqfx convert" not in capsys.readouterr().err  # 3 layers: no bar
