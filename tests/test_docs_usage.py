"""The usage example in docs/usage.md runs as written."""
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def test_usage_example_runs(capsys):
    first_block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(first_block.strip().splitlines()) <= 12
    exec(compile(first_block, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "capture: symbolic_trace" in out and "magnitude l1 0.5" in out


def test_backend_snippet_runs():
    import sqfx
    from torch import nn

    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[1]
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    scope = {"config": sqfx.SparseQuantConfig(), "model": model}
    exec(compile(block, str(DOC), "exec"), scope)
    torch._dynamo.reset()
    with torch.no_grad():
        y = torch.compile(model, backend=scope["backend"], fullgraph=True)(torch.randn(2, 8))
    assert y.shape == (2, 8) and bool((y >= 0).all())


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    readme = DOC.parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert len(blocks) == 3  # the third (sparsify) elides the user's model and batches: run by test_sparsify_*
    monkeypatch.chdir(tmp_path)  # the examples write model.pt2 and layer.pt
    scope = {}
    exec(compile(blocks[0], str(readme), "exec"), scope)
    torch._dynamo.reset()
    with torch.no_grad():
        assert torch.equal(scope["compiled"](scope["x"]), scope["y"])
    exec(compile(blocks[1], str(readme), "exec"), scope)
    assert (tmp_path / "model.pt2").exists() and (tmp_path / "layer.pt").exists()
    assert "sqfx conversion report" in capsys.readouterr().out
