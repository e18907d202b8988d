"""The compile door: torch.compile(model, backend="sqfx") rewrites Dynamo's graph, then Inductor runs it."""
import importlib.metadata

import pytest
import torch
from torch import fx

import sqfx
from doors_common import CONFIG, D, MLP, Block, eager, run_fresh
from sqfx.lowering import convert_dynamo_graph

QLINEAR = torch.ops.sqfx.qlinear_dynamic.default
SWEEP = [(2, 5), (3, 5), (8, 2), (5, 11), (17, 3)]  # sizes >= 2: Dynamo specializes 0 and 1


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _counting(backend):
    """A backend wrapper that counts compilations (one per Dynamo graph, recompiles included)."""
    calls = []

    def count(gm, example_inputs):
        calls.append(gm)
        return backend(gm, example_inputs)

    return count, calls


def test_entry_point_is_declared():
    (ep,) = [e for e in importlib.metadata.entry_points(group="torch_dynamo_backends") if e.name == "sqfx"]
    assert ep.value == "sqfx.compile_backend:sqfx_backend"
    assert "sqfx" in torch._dynamo.list_backends()


def test_backend_by_name_without_import_sqfx_no_recompiles(tmp_path):
    """Fresh process, sqfx never imported by the script: fullgraph, dynamic=True, grad mode on."""
    torch.manual_seed(0)
    model = MLP().eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    reference = eager(model, CONFIG)
    xs = [torch.randn(b, s, D) for b, s in SWEEP]
    with torch.no_grad():
        torch.save({"xs": xs, "ys": [reference(x) for x in xs]}, tmp_path / "cases.pt")
    out = run_fresh("""
        import sys
        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch._dynamo.utils import counters

        class MLP(nn.Module):  # the same module as tests/doors_common.py, without importing sqfx
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 16, bias=False)

            def forward(self, x):
                x = F.relu(self.fc1(x))
                x = torch.relu(self.fc2(x)) * 1.5
                return self.fc3(x)

        model = MLP().eval()
        model.load_state_dict(torch.load("weights.pt"))
        cases = torch.load("cases.pt")
        options = {"target_sparsity": 0.5, "overrides": {"fc2": {"block": (2, 2)}}}
        assert "sqfx" not in sys.modules
        compiled = torch.compile(model, backend="sqfx", options=options, fullgraph=True, dynamic=True)
        for x, y in zip(cases["xs"], cases["ys"]):
            out = compiled(x)
            assert torch.equal(out, y), f"{tuple(x.shape)}: max diff {(out - y).abs().max()}"
        assert "sqfx" in sys.modules  # imported by the entry point's lookup, not by this script
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
        print("ok", len(cases["xs"]))
    """, tmp_path)
    assert f"ok {len(SWEEP)}" in out


def test_automatic_dynamic_recompiles_once_then_never():
    """Default dynamic=None: the first call compiles static, the first batch change compiles a
    dynamic graph, and no later batch size recompiles."""
    model = MLP().eval()
    reference = eager(model, CONFIG)
    backend, calls = _counting(sqfx.backend(CONFIG))
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        for i, batch in enumerate([4, 6, 2, 9, 31, 7]):
            x = torch.randn(batch, D)
            assert torch.equal(compiled(x), reference(x))
            assert len(calls) == min(i + 1, 2)


def test_converted_dynamo_graph_fuses_relu_and_leaves_weight_inputs_unused():
    """The graph handed to Inductor, inspected directly (an eager-running backend)."""
    model = MLP().eval()
    seen = []

    def capture(gm, example_inputs):
        fresh, report = convert_dynamo_graph(gm, example_inputs, CONFIG)
        seen.append((gm, fresh, report))
        return fresh.forward

    x = torch.randn(3, 4, D)
    with torch.no_grad():
        out = torch.compile(model, backend=capture, fullgraph=True, dynamic=True)(x)
    (dynamo_gm, fresh, report), = seen
    calls = [n for n in fresh.graph.nodes if n.op == "call_function"]
    ops = [n for n in calls if n.target is QLINEAR]
    assert [n.args[-1] for n in ops] == [True, True, False]
    assert not [n for n in calls if n.target in (torch._C._nn.linear, torch.relu, torch.nn.functional.relu)]
    assert all(isinstance(a, fx.Node) and a.op == "get_attr" for n in ops for a in n.args[1:6])
    # Weight placeholders stay in the signature (Dynamo passes them), unused.
    weight_inputs = [n for n in fresh.graph.nodes if n.op == "placeholder" and "parameters" in n.name]
    assert len(weight_inputs) == 5 and all(not n.users for n in weight_inputs)
    # Dynamo's own graph is untouched; exact fqns from the placeholders' sources.
    assert sum(n.target is torch._C._nn.linear for n in dynamo_gm.graph.nodes) == 3
    assert report.converted == ["fc1", "fc2", "fc3"] and report["fc2"].block == (2, 2)
    assert torch.equal(out, eager(model, CONFIG)(x))


def test_three_doors_agree():
    """eager prepare_and_convert, torch.compile and torch.export on the same transformer block.

    The op is deterministic, so the export door and the sqfx graph run without Inductor are
    bit-identical to eager. With Inductor, the fp32 ops around the op (layer_norm, attention,
    residual adds) are fused into Inductor's own kernels whose float rounding may differ in the
    last bit, which can move a value across an activation-quantization step: close, not equal.
    """
    model = Block().eval()
    reference = eager(model, CONFIG)
    reports = []
    compiled = torch.compile(model, backend=sqfx.backend(CONFIG, on_report=reports.append),
                             fullgraph=True, dynamic=True)
    no_inductor = torch.compile(model, fullgraph=True, dynamic=True,
                                backend=lambda gm, ex: convert_dynamo_graph(gm, ex, CONFIG)[0].forward)
    exported = sqfx.export(model, (torch.randn(2, 3, D),), CONFIG,
                           dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},))
    with torch.no_grad():
        for batch, seq in [(2, 5), (3, 4), (6, 9)]:
            x = torch.randn(batch, seq, D)
            y = reference(x)
            assert torch.equal(exported.module()(x), y)
            assert torch.equal(no_inductor(x), y)
            torch.testing.assert_close(compiled(x), y, rtol=0, atol=5e-2)
    assert reports[0].converted == reference.sqfx_report.converted
    assert [l.block for l in reports[0].layers] == [l.block for l in reference.sqfx_report.layers]


def test_weights_are_bound_to_the_compiled_graph():
    """Dynamo reuses a compiled graph for another instance of the same class (parameters are
    inputs, not guarded by identity): the backend notices, re-packs, warns; never stale numbers."""
    first, second = MLP().eval(), MLP().eval()
    backend, calls = _counting(sqfx.backend(CONFIG))
    x = torch.randn(4, D)
    with torch.no_grad():
        compiled_first = torch.compile(first, backend=backend)
        assert torch.equal(compiled_first(x), eager(first)(x))
        with pytest.warns(RuntimeWarning, match="packed other weights"):
            assert torch.equal(torch.compile(second, backend=backend)(x), eager(second)(x))
        first.fc1.weight.mul_(-1.0)  # an in-place update after compilation
        assert torch.equal(compiled_first(x), eager(first)(x))
    assert len(calls) == 1  # one Dynamo compile served all three
    # A fresh compile of the same graph for other weights (Inductor's caches must not serve the
    # old packed tensors).
    torch._dynamo.reset()
    with torch.no_grad():
        assert torch.equal(torch.compile(second, backend=backend)(x), eager(second)(x))
    assert len(calls) == 2


def test_bad_options_name_the_field():
    model = MLP().eval()
    compiled = torch.compile(model, backend="sqfx", options={"target_sparsity": 2.0})
    with pytest.raises(Exception, match="target_sparsity"):
        with torch.no_grad():
            compiled(torch.randn(2, D))


@pytest.mark.parametrize("source, fqn", [
    ("L['self']._modules['fc1']._parameters['weight']", "fc1.weight"),
    ("L['self'].__dict__['_modules']['layers'].__dict__['_modules']['0'].__dict__['_parameters']['bias']",
     "layers.0.bias"),
    ("G['model']._modules['head']._buffers['w']", "head.w"),
    ("L['fn'].__closure__[0].cell_contents._modules['fc1']._parameters['weight']", "fc1.weight"),
    ("L['self']._parameters['weight']", "weight"),
    ("L['x']", None),
    ("L['self'].scale", None),
])
def test_layer_names_from_dynamo_sources(source, fqn):
    from sqfx.patterns.linear_relu import fqn_from_source

    assert fqn_from_source(source) == fqn


class BrokenMLP(MLP):
    def forward(self, x):
        x = torch.nn.functional.relu(self.fc1(x))
        torch._dynamo.graph_break()
        x = torch.relu(self.fc2(x)) * 1.5
        return self.fc3(x)


def test_graph_breaks_keep_exact_layer_names_and_overrides():
    """Dynamo spells sources differently across graph breaks (`.__dict__['_modules']`); every
    graph must still name its layers as eager does, or per-layer config would silently miss."""
    model = BrokenMLP().eval()
    reference = eager(model, CONFIG)  # converting first makes Dynamo spell sources with __dict__
    reports = []

    def eager_backend(gm, example_inputs):  # the sqfx graph without Inductor: bit-exact, cheap
        fresh, report = convert_dynamo_graph(gm, example_inputs, CONFIG)
        reports.append(report)
        return fresh.forward

    x = torch.randn(3, D)
    with torch.no_grad():
        out = torch.compile(model, backend=eager_backend)(x)
    assert [r.converted for r in reports] == [["fc1"], ["fc2", "fc3"]]
    assert reports[1]["fc2"].block == (2, 2)
    assert torch.equal(out, reference(x))
