"""The AOTInductor door: sqfx.export -> aoti_compile_and_package -> a fresh process runs the package.

One small model, compiled once for the module (AOTInductor compiles C++: tens of seconds).
"""
import json
import zipfile

import pytest
import torch
from torch.export import Dim

import sqfx
from doors_common import CONFIG, D, MLP, eager, run_fresh, run_fresh_expect_failure, shapes_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(directory, package path): an AOTI package of the MLP with dynamic batch and seq, plus
    inputs and the eager prepare_and_convert outputs saved next to it."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("aoti")
    model = MLP().eval()
    ep = sqfx.export(model, (torch.randn(4, 6, D),), CONFIG,
                     dynamic_shapes=({0: Dim("batch"), 1: Dim("seq")},))
    path = sqfx.aoti_compile(ep, root / "mlp_aoti.pt2")
    reference = eager(model, CONFIG)
    xs = [torch.randn(b, s, D) for b, s in shapes_sweep()]
    with torch.no_grad():
        torch.save({"xs": xs, "ys": [reference(x) for x in xs]}, root / "cases.pt")
    return root, path


def test_round_trip_in_a_fresh_process(package):
    root, path = package
    out = run_fresh(f"""
        import torch
        import sqfx
        runner = torch._inductor.aoti_load_package({str(path)!r})
        runner_via_sqfx = sqfx.load_package({str(path)!r})
        cases = torch.load("cases.pt")
        for x, y in zip(cases["xs"], cases["ys"]):
            for run in (runner, runner_via_sqfx):
                out = run(x)
                assert torch.equal(out, y), f"{{tuple(x.shape)}}: max diff {{(out - y).abs().max()}}"
        print("checked", len(cases["xs"]))
    """, root)
    assert f"checked {len(shapes_sweep())}" in out


def test_op_is_called_through_the_dispatcher(package):
    """The stable-ABI op is not inlined: the package calls sqfx::qlinear_dynamic by name (the
    proxy executor), with relu fused into the first two calls."""
    _, path = package
    with zipfile.ZipFile(path) as archive:
        (wrapper,) = [n for n in archive.namelist() if n.endswith(".wrapper.json")]
        nodes = json.loads(archive.read(wrapper))["nodes"]
    targets = [n["node"]["target"] for n in nodes]
    assert targets == ["sqfx::qlinear_dynamic"] * 3
    relu = [[i["arg"]["as_bool"] for i in n["node"]["inputs"] if i["name"] == "relu"][0] for n in nodes]
    assert relu == [True, True, False]


def test_loading_without_import_sqfx_fails_naming_the_op(package):
    root, path = package
    text = run_fresh_expect_failure(f"""
        import torch
        torch._inductor.aoti_load_package({str(path)!r})
    """, root)
    assert "sqfx::qlinear_dynamic" in text


def test_docs_doors_snippets_run(tmp_path):
    """docs/doors.md's code blocks, in order, as one script in a fresh process."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "doors.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 5
    out = run_fresh("\n".join(blocks) + "\nprint('doors ok')\n", tmp_path)
    assert "doors ok" in out
    assert (tmp_path / "model.pt2").exists() and (tmp_path / "model_aoti.pt2").exists()
