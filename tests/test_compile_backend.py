"""The compile door: torch.compile(model, backend="sqfx") rewrites Dynamo's graph, then Inductor runs it."""
import importlib.metadata
import warnings

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


def _no_repack_warnings(record):
    return [w for w in record if "packed other weights" in str(w.message)]


def _counting_repacks(monkeypatch):
    """Counts every conversion: one per backend compile, plus one per slow-path re-pack."""
    import sqfx.compile_backend as compile_backend

    conversions = []

    def convert(*args, **kwargs):
        conversions.append(1)
        return convert_dynamo_graph(*args, **kwargs)

    monkeypatch.setattr(compile_backend, "convert_dynamo_graph", convert)
    return conversions


def _fresh_compile(model, xs, dynamic):
    """What `model` gives when it is the only one compiled (the oracle for two instances)."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=sqfx.backend(CONFIG), dynamic=dynamic)
    with torch.no_grad():
        out = [compiled(x) for x in xs]
    torch._dynamo.reset()
    return out


@pytest.mark.parametrize("dynamic, compiles", [(False, 2 * 3), (True, 2), (None, 2 * 2)])
def test_second_instance_gets_its_own_compiled_graph(monkeypatch, dynamic, compiles):
    """Issue 12 item 10: Dynamo lifts parameters to inputs and does not guard on their identity, so
    a second instance of the same class used to reuse the first one's graph (packed weights), and
    ran re-packed without Inductor with a warning. The backend's identity guards make it recompile:
    each model its own Inductor graph, bit-equal to its own fresh compile, calls alternating.
    static: one graph per (model, batch size); dynamic=True: one per model; automatic dynamic
    (None): a static and a dynamic graph per model."""
    torch.manual_seed(0)
    first, second = MLP().eval(), MLP().eval()
    batches = [4, 4, 6, 4, 9, 6]  # three sizes, revisited
    xs = [torch.randn(b, D) for b in batches]
    expected = {id(m): _fresh_compile(m, xs, dynamic) for m in (first, second)}
    conversions = _counting_repacks(monkeypatch)
    backend, calls = _counting(sqfx.backend(CONFIG))
    compiled = {id(m): torch.compile(m, backend=backend, dynamic=dynamic) for m in (first, second)}
    with warnings.catch_warnings(record=True) as record, torch.no_grad():
        warnings.simplefilter("always")
        for i, x in enumerate(xs):
            for model in (first, second, first):  # the first keeps working after the second compiled
                out = compiled[id(model)](x)
                assert torch.equal(out, expected[id(model)][i]), (i, model is first)
                assert torch.equal(out, eager(model)(x))  # an MLP: Inductor is exact here
    assert not _no_repack_warnings(record)
    assert len(calls) == compiles  # the second model's calls were compiled by Dynamo + Inductor ...
    assert len(conversions) == compiles  # ... and nothing ran the re-packing slow path


def test_many_instances_then_dropping_them_frees_their_graphs():
    """Each instance's cache entry holds its packed weights; Dynamo ties the identity guard to a
    weakref of the weight, so a dropped model's entry (and its compiled graph) is freed."""
    import gc
    import weakref

    from sqfx.compile_backend import WeightBoundGraph

    models = [MLP().eval() for _ in range(3)]
    x = torch.randn(4, D)
    graphs = []

    def keep(gm, example_inputs):
        graph = sqfx.backend(CONFIG)(gm, example_inputs)
        graphs.append(weakref.ref(graph))
        return graph

    compiled = [torch.compile(m, backend=keep) for m in models]
    with warnings.catch_warnings(record=True) as record, torch.no_grad():
        warnings.simplefilter("always")
        for m, c in zip(models, compiled):
            assert torch.equal(c(x), eager(m)(x))
    assert not _no_repack_warnings(record)
    assert len(graphs) == 3 and all(isinstance(g(), WeightBoundGraph) for g in graphs)
    del models[1], compiled[1]
    gc.collect()
    assert [g() is not None for g in graphs] == [True, False, True]
    with torch.no_grad():  # the survivors still run their own graphs
        for m, c in zip(models, compiled):
            assert torch.equal(c(x), eager(m)(x))
    assert len(graphs) == 3


def test_in_place_weight_update_is_noticed_never_stale(monkeypatch):
    """Same tensors, new values (load_state_dict, an optimizer step): no guard fails, so the
    compiled callable's version check re-packs and runs without Inductor, with a warning."""
    first, second = MLP().eval(), MLP().eval()
    backend, calls = _counting(sqfx.backend(CONFIG))
    x = torch.randn(4, D)
    compiled_first = torch.compile(first, backend=backend)
    with torch.no_grad():
        assert torch.equal(compiled_first(x), eager(first)(x))
        first.fc1.weight.mul_(-1.0)  # an in-place update after compilation
        with pytest.warns(RuntimeWarning, match="packed other weights"):
            assert torch.equal(compiled_first(x), eager(first)(x))
        first.load_state_dict(second.state_dict())  # copy_ into the same tensors
        assert torch.equal(compiled_first(x), eager(second)(x))
    assert len(calls) == 1
    # A fresh compile of the same graph for the new weights (Inductor's caches must not serve the
    # old packed tensors).
    torch._dynamo.reset()
    with torch.no_grad():
        assert torch.equal(torch.compile(first, backend=backend)(x), eager(second)(x))
    assert len(calls) == 2


def test_without_identity_guards_the_runtime_check_still_catches_another_instance(monkeypatch):
    """The safety net when the guards are missing (filtered, or a torch without the internals
    `_guard_packed_weights` uses): the old behaviour, a warning and re-packed eager numbers."""
    import sqfx.compile_backend as compile_backend

    monkeypatch.setattr(compile_backend, "_guard_packed_weights", lambda gm, positions: False)
    first, second = MLP().eval(), MLP().eval()
    backend, calls = _counting(sqfx.backend(CONFIG))
    x = torch.randn(4, D)
    with torch.no_grad():
        assert torch.equal(torch.compile(first, backend=backend)(x), eager(first)(x))
        with pytest.warns(RuntimeWarning, match="packed other weights"):
            assert torch.equal(torch.compile(second, backend=backend)(x), eager(second)(x))
    assert len(calls) == 1


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


def test_backward_through_a_compiled_model_raises_sqfxs_error():
    """Bug 10: the user's weights still require grad, but the compiled graph reads their packed
    copies, so backward used to give them no gradient silently ("does not require grad" at
    best). It now raises sqfx's inference-only error; under no_grad nothing changes."""
    torch.manual_seed(0)
    model = MLP().eval()
    assert all(p.requires_grad for p in model.parameters())
    compiled = torch.compile(model, backend="sqfx")
    x = torch.randn(2, 3, D)
    y = compiled(x)
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="inference-only: it has no backward"):
        y.sum().backward()
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(compiled(x), y.detach()) and not compiled(x).requires_grad


def test_a_model_built_under_inference_mode_compiles():
    """Inference tensors have no version counter: the weight check used to fail the compile."""
    with torch.inference_mode():
        torch.manual_seed(0)
        model = MLP().eval()
        x = torch.randn(2, 3, D)
        got = torch.compile(model, backend="sqfx")(x)
        assert torch.equal(got, sqfx.prepare_and_convert(model)(x))
