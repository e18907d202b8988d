"""The export door: sqfx.export -> .pt2 -> a fresh process loads it and gives the eager numbers."""
import json

import pytest
import torch
from torch.export import Dim

import sqfx
from doors_common import CONFIG, D, MLP, Block, eager, run_fresh, run_fresh_expect_failure, shapes_sweep

QLINEAR = torch.ops.sqfx.qlinear_dynamic.default


def _dynamic():
    return ({0: Dim("batch"), 1: Dim("seq")},)


def _cases(model, config=CONFIG):
    """Inputs over several (batch, seq) and the eager prepare_and_convert outputs for them."""
    reference = eager(model, config)
    xs = [torch.randn(b, s, D) for b, s in shapes_sweep()]
    with torch.no_grad():
        return {"xs": xs, "ys": [reference(x) for x in xs]}


def test_dynamic_batch_and_seq_round_trip_in_a_fresh_process(tmp_path):
    """MLP saved with sqfx.save, loaded with plain torch.export.load; transformer block saved with
    plain torch.export.save, loaded with sqfx.load. Both after `import sqfx`, in a new process."""
    mlp, block = MLP().eval(), Block().eval()
    example = (torch.randn(4, 6, D),)
    sqfx.save(sqfx.export(mlp, example, CONFIG, dynamic_shapes=_dynamic()), tmp_path / "mlp.pt2")
    torch.export.save(sqfx.export(block, example, CONFIG, dynamic_shapes=_dynamic()), tmp_path / "block.pt2")
    torch.save({"mlp": _cases(mlp), "block": _cases(block)}, tmp_path / "cases.pt")
    out = run_fresh("""
        import torch
        import sqfx
        cases = torch.load("cases.pt")
        for name, load in (("mlp", torch.export.load), ("block", sqfx.load)):
            run = load(f"{name}.pt2").module()
            for x, y in zip(cases[name]["xs"], cases[name]["ys"]):
                out = run(x)
                assert out.shape == y.shape, (name, out.shape, y.shape)
                assert torch.equal(out, y), f"{name} {tuple(x.shape)}: max diff {(out - y).abs().max()}"
            print("checked", name, len(cases[name]["xs"]))
    """, tmp_path)
    assert f"checked mlp {len(shapes_sweep())}" in out and f"checked block {len(shapes_sweep())}" in out


def test_two_dim_input_with_dynamic_batch(tmp_path):
    model = MLP().eval()
    ep = sqfx.export(model, (torch.randn(5, D),), CONFIG, dynamic_shapes=({0: Dim("batch")},))
    reference = eager(model, CONFIG, (torch.randn(5, D),))
    for batch in (1, 2, 33):
        x = torch.randn(batch, D)
        assert torch.equal(ep.module()(x), reference(x))


def test_relu_is_fused_into_the_op_in_the_exported_graph():
    ep = sqfx.export(MLP().eval(), (torch.randn(2, 3, D),), CONFIG, dynamic_shapes=_dynamic())
    calls = [n for n in ep.graph.nodes if n.op == "call_function"]
    ops = [n for n in calls if n.target is QLINEAR]
    # fc1 -> F.relu and fc2 -> torch.relu fused; fc3 (no relu after it) not.
    assert [n.args[-1] for n in ops] == [True, True, False]
    assert [n.args[-2] for n in ops] == [D, 64, 64]  # in_features
    relu_targets = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
    assert not [n for n in calls if n.target in relu_targets]
    assert not [n for n in calls if n.target is torch.ops.aten.linear.default]
    # The fp32 weights are gone: only packed buffers, and no parameters at all.
    assert not ep.graph_signature.parameters
    assert all(name.startswith("sqfx_") for name in ep.graph_signature.buffers)


def test_exported_program_keeps_the_dims_dynamic():
    ep = sqfx.export(Block().eval(), (torch.randn(2, 3, D),), CONFIG, dynamic_shapes=_dynamic())
    (x_node,) = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "x"]
    batch, seq, features = x_node.meta["val"].shape
    assert isinstance(batch, torch.SymInt) and isinstance(seq, torch.SymInt)
    assert features == D


def test_export_does_not_mutate_the_model_and_reports():
    model = MLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ep = sqfx.export(model, torch.randn(2, 3, D), CONFIG)  # a bare tensor is accepted too
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.fc1, torch.nn.Linear)
    report = ep.sqfx_report
    assert report.capture == "torch.export"
    assert report.converted == ["fc1", "fc2", "fc3"]
    assert report["fc2"].block == (2, 2)  # the per-layer override reached the export door
    assert [report[n].relu_fused for n in report.converted] == [True, True, False]


def test_excluded_layer_stays_fp32_linear():
    config = sqfx.SparseQuantConfig(exclude=["fc3"])
    model = MLP().eval()
    ep = sqfx.export(model, (torch.randn(2, 3, D),), config)
    assert [n.target for n in ep.graph.nodes if n.target is torch.ops.aten.linear.default]
    x = torch.randn(2, 3, D)
    assert torch.equal(ep.module()(x), eager(model, config)(x))


def test_bad_example_inputs_name_the_problem():
    with pytest.raises(TypeError, match="example_inputs"):
        sqfx.export(MLP(), "x")
    with pytest.raises(TypeError, match="example_inputs"):
        sqfx.export(MLP())


def test_dict_example_is_keyword_inputs():
    """A dict (a tokenizer's BatchEncoding) is the model's keyword inputs, never its key strings."""
    model, x = MLP().eval(), torch.randn(2, 3, D)
    ep = sqfx.export(model, {"x": x})
    assert ep.sqfx_report.converted == ["fc1", "fc2", "fc3"]
    assert torch.equal(ep.module()(x=x), eager(model, None)(x))


def test_archive_carries_the_import_hint(tmp_path):
    ep = sqfx.export(MLP().eval(), (torch.randn(2, 3, D),))
    sqfx.save(ep, tmp_path / "model.pt2")
    extra = {"sqfx.json": ""}
    sqfx.load(tmp_path / "model.pt2", extra_files=extra)
    note = json.loads(extra["sqfx.json"])
    assert "import sqfx" in note["load"]
    assert note["packed_format_version"] == sqfx.FORMAT_VERSION


def test_loading_without_import_sqfx_fails_with_torchs_message(tmp_path):
    ep = sqfx.export(MLP().eval(), (torch.randn(2, 3, D),))
    sqfx.save(ep, tmp_path / "model.pt2")
    text = run_fresh_expect_failure("""
        import sys, torch
        assert "sqfx" not in sys.modules
        torch.export.load("model.pt2")
    """, tmp_path)
    assert "torch.ops.sqfx.qlinear_dynamic" in text
    assert "custom op is not registered" in text
