"""`python -m sqfx sparsify`, run as a user would, on the CLI tests' tiny factory."""
import json

import torch

from test_cli import FACTORY, run_cli


def test_sparsify_then_convert(tmp_path):
    out = tmp_path / "sparse.pt"
    r = run_cli("sparsify", FACTORY, "--data", "tests.cli_factory:calibration_batches", "--sparsity", "0.5",
                "--recovery-steps", "3", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert "sparsegpt" in r.stdout and "recovery steps" in r.stdout
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert [row["fqn"] for row in report["layers"]] == ["0", "2", "4"]
    assert all(row["sparsity"] == 0.5 for row in report["layers"]) and report["recovery"]["steps"] == 3
    sparse = torch.load(out, weights_only=False)
    assert set(sparse.sqfx_masks) == {"0", "2", "4"}
    pt2 = tmp_path / "sparse.pt2"
    r = run_cli("convert", str(out), "-o", str(pt2))
    assert r.returncode == 0, r.stderr
    rows = json.loads(pt2.with_suffix(".report.json").read_text())["layers"]
    assert all(abs(row["sparsity"] - 0.5) < 1e-6 for row in rows)  # the zeroed blocks are the masks


def test_sparsify_bad_input_is_a_clear_error(tmp_path):
    r = run_cli("sparsify", FACTORY, "--data", "tests.cli_factory:calibration_batches", "--sparsity", "1.2")
    assert r.returncode == 2 and "target_sparsity must be" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("sparsify", FACTORY, "--data", "tests.cli_factory:calibration_batches", "--block", "1", "3")
    assert r.returncode == 2 and "does not divide" in r.stderr
