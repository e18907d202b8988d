"""Every linear / ReLU spelling, matched in every IR (symbolic_trace, Dynamo, torch.export)."""
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.nn.intrinsic import LinearReLU
from torch.testing._internal.common_utils import TestCase

import sqfx
from sqfx.patterns import find_linear_matches
from sqfx_testing import IRS, as_reference, convert_in_ir, op_nodes, relu_flags


class Variants(nn.Module):
    """One layer per linear spelling, each followed by a different ReLU spelling."""

    def __init__(self):
        super().__init__()
        self.mod = nn.Linear(16, 16)
        self.relu_mod = nn.ReLU()
        self.mod_inplace = nn.Linear(16, 16)
        self.relu_inplace = nn.ReLU(inplace=True)
        self.w_f = nn.Parameter(torch.randn(16, 16) * 0.2)
        self.b_f = nn.Parameter(torch.randn(16) * 0.1)
        self.w_c = nn.Parameter(torch.randn(16, 16) * 0.2)
        self.kw = nn.Linear(16, 16, bias=False)
        self.meth = nn.Linear(16, 16)
        self.meth_ = nn.Linear(16, 16)
        self.fused = LinearReLU(nn.Linear(16, 16), nn.ReLU())
        self.last = nn.Linear(16, 8)

    def forward(self, x):
        x = self.relu_mod(self.mod(x))                     # nn.Linear -> nn.ReLU
        x = self.relu_inplace(self.mod_inplace(x))         # nn.Linear -> nn.ReLU(inplace)
        x = F.relu(F.linear(x, self.w_f, self.b_f))        # F.linear -> F.relu
        x = torch.relu(torch._C._nn.linear(x, self.w_c))   # _C._nn.linear, no bias -> torch.relu
        x = torch.relu_(F.linear(x, weight=self.kw.weight, bias=None))  # keywords -> relu_
        x = self.meth(x).relu()                            # Tensor.relu
        x = self.meth_(x).relu_()                          # Tensor.relu_
        x = self.fused(x)                                  # LinearReLU
        return self.last(x)                                # no relu


@pytest.mark.parametrize("ir", IRS)
def test_every_variant_matched_and_fused(ir):
    model = Variants().eval()
    x = torch.randn(5, 16)
    with torch.no_grad():
        want = model(x)
    run, report = convert_in_ir(model, (x,), ir)
    assert report.converted == ["mod", "mod_inplace", "w_f", "w_c", "kw", "meth", "meth_", "fused.0", "last"]
    assert [l.relu_fused for l in report.layers] == [True] * 8 + [False]
    with torch.no_grad():
        got = run(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("ir", ["symbolic_trace", "export"])  # Dynamo: test_dynamo_graph_rewritten
def test_graph_holds_only_the_op(ir):
    model = Variants().eval()
    x = torch.randn(3, 16)
    gm, _ = convert_in_ir(model, (x,), ir)
    targets = {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")}
    linear_or_relu = {F.linear, F.relu, torch.relu, torch.relu_, "relu", "relu_", torch.ops.aten.linear.default,
                      torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
    assert not (targets & linear_or_relu)
    assert not any(isinstance(m, (nn.Linear, nn.ReLU)) for m in gm.modules())
    assert relu_flags(gm) == [True] * 8 + [False]
    # The fp32 weights are gone; bit-exact against the reference on the packed tensors.
    assert not any(p.dtype == torch.float32 and p.dim() == 2 for p in gm.parameters())
    torch.testing.assert_close(gm(x), as_reference(gm)(x), atol=0, rtol=0)


def test_dynamo_graph_rewritten():
    model = Variants().eval()
    x = torch.randn(3, 16)
    graphs = []

    def backend(gm, inputs):
        from sqfx.lowering import convert_graph
        from sqfx.patterns import dynamo_param_resolver
        convert_graph(gm, None, resolve_placeholder=dynamo_param_resolver(gm, inputs))
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    with torch.no_grad():
        y = torch.compile(model, backend=backend, fullgraph=True)(x)
    (gm,) = graphs
    assert relu_flags(gm) == [True] * 8 + [False]
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (F.linear, F.relu, torch.relu)]
    # Without `root`, names come from Dynamo's placeholder names.
    assert op_nodes(gm)[0].args[1].target == "sqfx_mod.values"
    assert y.shape == (3, 8)


class TwoUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(x)
        return torch.relu(y) + y


@pytest.mark.parametrize("ir", IRS)
def test_no_fusion_when_linear_has_another_user(ir):
    model = TwoUsers().eval()
    x = torch.randn(4, 8)
    run, report = convert_in_ir(model, (x,), ir)
    assert report["fc"].relu_fused is False
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), atol=0.05, rtol=0.05)


def test_relu_of_linear_with_two_users_stays():
    gm = fx.symbolic_trace(TwoUsers().eval())
    sqfx.lowering.convert_graph(gm)
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [
        torch.ops.sqfx.qlinear_dynamic.default, torch.relu, __import__("operator").add]


class Computed(nn.Module):
    """A weight computed in the graph is not a constant: no match."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return F.linear(x, self.w * 2)


def test_computed_weight_not_matched():
    gm = fx.symbolic_trace(Computed())
    assert find_linear_matches(gm) == []


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class GraphPrintouts(TestCase):
    def test_symbolic_trace_graph(self):
        torch.manual_seed(0)
        gm = fx.symbolic_trace(Small().eval())
        sqfx.lowering.convert_graph(gm)
        self.assertExpectedInline(gm.code.strip(), """\
def forward(self, x):
    sqfx_fc1_values = self.sqfx_fc1.values
    sqfx_fc1_row_ptr = self.sqfx_fc1.row_ptr
    sqfx_fc1_col_idx = self.sqfx_fc1.col_idx
    sqfx_fc1_w_scale = self.sqfx_fc1.w_scale
    sqfx_fc1_w_sum = self.sqfx_fc1.w_sum
    sqfx_fc1_fp32_bias = self.sqfx_fc1.fp32_bias
    qlinear_dynamic_default = torch.ops.sqfx.qlinear_dynamic.default(x, sqfx_fc1_values, sqfx_fc1_row_ptr, sqfx_fc1_col_idx, sqfx_fc1_w_scale, sqfx_fc1_w_sum, sqfx_fc1_fp32_bias, 8, True);  x = sqfx_fc1_values = sqfx_fc1_row_ptr = sqfx_fc1_col_idx = sqfx_fc1_w_scale = sqfx_fc1_w_sum = sqfx_fc1_fp32_bias = None
    sqfx_fc2_values = self.sqfx_fc2.values
    sqfx_fc2_row_ptr = self.sqfx_fc2.row_ptr
    sqfx_fc2_col_idx = self.sqfx_fc2.col_idx
    sqfx_fc2_w_scale = self.sqfx_fc2.w_scale
    sqfx_fc2_w_sum = self.sqfx_fc2.w_sum
    qlinear_dynamic_default_1 = torch.ops.sqfx.qlinear_dynamic.default(qlinear_dynamic_default, sqfx_fc2_values, sqfx_fc2_row_ptr, sqfx_fc2_col_idx, sqfx_fc2_w_scale, sqfx_fc2_w_sum, None, 8, False);  qlinear_dynamic_default = sqfx_fc2_values = sqfx_fc2_row_ptr = sqfx_fc2_col_idx = sqfx_fc2_w_scale = sqfx_fc2_w_sum = None
    return qlinear_dynamic_default_1""")

    def test_export_graph(self):
        torch.manual_seed(0)
        model = Small().eval()
        gm = torch.export.export(model, (torch.randn(2, 8),), strict=False).module()
        sqfx.lowering.convert_graph(gm, root=model)
        ops = [n for n in gm.graph.nodes if n.op == "call_function"]
        self.assertExpectedInline("\n".join(f"{n.target}{tuple(a.name if isinstance(a, fx.Node) else a for a in n.args)}" for n in ops), """\
sqfx.qlinear_dynamic.default('x', 'sqfx_fc1_values', 'sqfx_fc1_row_ptr', 'sqfx_fc1_col_idx', 'sqfx_fc1_w_scale', 'sqfx_fc1_w_sum', 'sqfx_fc1_fp32_bias', 8, True)
sqfx.qlinear_dynamic.default('qlinear_dynamic_default', 'sqfx_fc2_values', 'sqfx_fc2_row_ptr', 'sqfx_fc2_col_idx', 'sqfx_fc2_w_scale', 'sqfx_fc2_w_sum', None, 8, False)""")


@pytest.mark.slow
def test_dynamo_graph_through_inductor_dynamic():
    """The backend recipe: convert_dynamo_graph, then Inductor; no recompile across batch sizes."""
    from torch._inductor.compile_fx import compile_fx

    from sqfx.lowering import convert_dynamo_graph

    model = Variants().eval()
    reports = []

    def backend(gm, inputs):
        fresh, report = convert_dynamo_graph(gm, inputs, root=model)
        reports.append(report)
        return compile_fx(fresh, inputs)

    eager = sqfx.prepare_and_convert(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for batch in (2, 3, 7):
            x = torch.randn(batch, 16)
            assert torch.equal(compiled(x), eager(x))  # the op is opaque to Inductor: same bits
    assert len(reports) == 1 and reports[0].capture == "dynamo"
    assert reports[0].converted == eager.sqfx_report.converted


class DynamoPrintout(TestCase):
    def test_dynamo_graph(self):
        from sqfx.lowering import convert_dynamo_graph

        model = Small().eval()
        graphs = []

        def backend(gm, inputs):
            fresh, _ = convert_dynamo_graph(gm, inputs, root=model)
            graphs.append(fresh)
            return fresh

        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend=backend, fullgraph=True)(torch.randn(2, 8))
        lines = [f"{n.op} {n.target}" + (f" {tuple(a.name if isinstance(a, fx.Node) else a for a in n.args)}"
                                         if n.op == "call_function" else "") for n in graphs[0].graph.nodes]
        self.assertExpectedInline("\n".join(lines), """\
placeholder L_self_modules_fc1_parameters_weight_
placeholder L_self_modules_fc1_parameters_bias_
placeholder L_x_
placeholder L_self_modules_fc2_parameters_weight_
get_attr sqfx_fc1.values
get_attr sqfx_fc1.row_ptr
get_attr sqfx_fc1.col_idx
get_attr sqfx_fc1.w_scale
get_attr sqfx_fc1.w_sum
get_attr sqfx_fc1.fp32_bias
call_function sqfx.qlinear_dynamic.default ('l_x_', 'sqfx_fc1_values', 'sqfx_fc1_row_ptr', 'sqfx_fc1_col_idx', 'sqfx_fc1_w_scale', 'sqfx_fc1_w_sum', 'sqfx_fc1_fp32_bias', 8, True)
get_attr sqfx_fc2.values
get_attr sqfx_fc2.row_ptr
get_attr sqfx_fc2.col_idx
get_attr sqfx_fc2.w_scale
get_attr sqfx_fc2.w_sum
call_function sqfx.qlinear_dynamic.default ('qlinear_dynamic_default', 'sqfx_fc2_values', 'sqfx_fc2_row_ptr', 'sqfx_fc2_col_idx', 'sqfx_fc2_w_scale', 'sqfx_fc2_w_sum', None, 8, False)
output output""")


class FunctionalSpellings(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))
        self.b = nn.Parameter(torch.randn(8))

    def forward(self, x):
        x = F.relu(F.linear(x, self.w, bias=self.b), inplace=True)
        return F.linear(input=x, weight=self.w)


@pytest.mark.parametrize("ir", IRS)
def test_keyword_arguments_and_inplace_functional_relu(ir):
    model = FunctionalSpellings().eval()
    x = torch.randn(3, 8)
    run, report = convert_in_ir(model, (x,), ir)
    assert [(l.fqn, l.relu_fused, l.shared_with) for l in report.layers] == [("w", True, None), ("w", False, None)]
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), atol=0.1, rtol=0.05)
