"""sqfx.prepare_and_convert end to end: MLP, CNN head, small transformer; capture paths; report."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.nn.intrinsic import LinearReLU

import sqfx
from sqfx_testing import IRS, as_reference, convert_in_ir, kept_blocks, op_nodes, packed_layer, quant_error_bound


# ---------------- models ----------------
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return x + self.down(F.relu(self.up(x)))


class MLP(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(24, d), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([Block(d), Block(d)])
        self.fused = LinearReLU(nn.Linear(d, d), nn.ReLU())
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(self.fused(x))


class CNNHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.fc1 = nn.Linear(8 * 16, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc2(torch.relu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, s, d))


class EncoderLayer(nn.Module):
    """TransformerEncoderLayer-like: attention + ReLU feed-forward, post-norm."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.attn = Attention(d, heads)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class Transformer(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.layers = nn.Sequential(EncoderLayer(d), EncoderLayer(d))
        self.classifier = nn.Linear(d, 5)

    def forward(self, x):
        return self.classifier(self.layers(x).mean(dim=1))


TRANSFORMER_LAYERS = [f"layers.{i}.{n}" for i in range(2) for n in
                      ("attn.q", "attn.k", "attn.v", "attn.out", "linear1", "linear2")] + ["classifier"]
CASES = {
    "mlp": (MLP, (4, 7, 24), ["stem.0", "blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down",
                              "fused.0", "head"], [True, True, False, True, False, True, False]),
    "cnn": (CNNHead, (3, 3, 8, 8), ["fc1", "fc2"], [True, False]),
    "transformer": (Transformer, (2, 6, 32), TRANSFORMER_LAYERS,
                    [False] * 4 + [True, False] + [False] * 4 + [True, False] + [False]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ir", IRS)
def test_acceptance_models(case, ir):
    cls, shape, names, relus = CASES[case]
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(*shape)
    cfg = sqfx.SparseQuantConfig(target_sparsity=0.5)
    run, report = convert_in_ir(model, (x,), ir, cfg)
    assert report.converted == names
    assert [l.relu_fused for l in report.layers] == relus
    assert all(l.sparsity == pytest.approx(0.5, abs=0.02) for l in report.layers)
    # Every IR gives the very same numbers as prepare_and_convert, and they are the reference's.
    eager = sqfx.prepare_and_convert(model, cfg)
    assert eager.sqfx_report.capture == "symbolic_trace" and eager.sqfx_report.converted == names
    with torch.no_grad():
        got = run(x)
        assert torch.equal(got, eager(x))
        assert torch.equal(got, as_reference(eager)(x))
        # ...and close to the fp32 model with the same masks (looser: the error compounds).
        masked = masked_fp32(model, eager)
        torch.testing.assert_close(got, masked(x), atol=0.15, rtol=0.1)


def masked_fp32(model, converted):
    """The fp32 model with every converted layer's weight multiplied by its stored block mask."""
    import copy
    masked = copy.deepcopy(model)
    for layer in converted.sqfx_report.layers:
        p = packed_layer(converted, layer.fqn)
        lin = masked.get_submodule(layer.fqn)
        rb, cb = layer.block
        keep = kept_blocks(p, layer.block).repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:layer.out_features, :layer.in_features]
        with torch.no_grad():
            lin.weight.mul_(keep)
    return masked


def test_single_layer_within_quantization_bound_3d():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(40, 24))
    out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(target_sparsity=0.4, block=(2, 4)))
    layer = out.sqfx_report["0"]
    p = packed_layer(out, "0")
    x = torch.randn(3, 5, 40)
    rb, cb = layer.block
    keep = kept_blocks(p, layer.block).repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:24, :40]
    w_masked = net[0].weight.detach() * keep
    with torch.no_grad():
        got = out(x)
    want = F.linear(x, w_masked, net[0].bias.detach())
    assert got.shape == (3, 5, 24)
    assert bool(((got - want).abs() <= quant_error_bound(x, w_masked, p.w_scale)).all())
    assert torch.equal(got, sqfx.reference.qlinear_dynamic(x, *p.tensors(), 40, False))


def test_report_contents():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4, bias=False))
    out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(target_sparsity=0.5, block=(2, 2),
                                                               per_channel=False))
    rep = out.sqfx_report
    assert rep.capture == "symbolic_trace" and rep.converted == ["0", "2"] and rep.skipped == []
    l0 = rep["0"]
    assert (l0.in_features, l0.out_features, l0.block, l0.relu_fused) == (16, 8, (2, 2), True)
    assert l0.sparsity == 0.5 and l0.scheme == "int8 per_tensor" and l0.activation == "dynamic_int8"
    assert l0.mask_source == "magnitude l1 0.5" and l0.matched == "nn.Linear module"
    p = packed_layer(out, "0")
    keep = kept_blocks(p, l0.block).repeat_interleave(2, 0).repeat_interleave(2, 1)
    ref = net[0].weight.detach() * keep
    expected = 10 * math.log10(float(ref.double().pow(2).sum()) / float((ref - p.unpack()).double().pow(2).sum()))
    assert l0.sqnr_db == pytest.approx(expected) and 30 < l0.sqnr_db < 60
    assert rep["2"].relu_fused is False
    text = str(rep)
    assert "capture: symbolic_trace" in text and "2 converted" in text
    assert any(line.startswith("0 ") and "8 x 16" in line and "fused" in line for line in text.splitlines())
    with pytest.raises(KeyError, match="no converted layer named 'nope'"):
        rep["nope"]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8, bias=False)
        self.b = nn.Linear(8, 8, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.a(x)


@pytest.mark.parametrize("ir", IRS)
def test_shared_weights_packed_once(ir):
    model = Tied().eval()
    x = torch.randn(3, 8)
    run, report = convert_in_ir(model, (x,), ir)
    assert len(report.layers) == 3
    assert [l.shared_with for l in report.layers][1:] == [report.layers[0].fqn] * 2
    if ir != "dynamo":
        assert len({n.args[1].target for n in op_nodes(run)}) == 1
        assert len([b for b in dict(run.named_buffers()) if b.endswith(".values")]) == 1
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), atol=0.05, rtol=0.05)


def test_excluded_layers_untouched_and_input_not_mutated():
    torch.manual_seed(3)
    model = MLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = sqfx.SparseQuantConfig(exclude=["head", "blocks.1.*"], target_sparsity=0.5)
    out = sqfx.prepare_and_convert(model, cfg)
    rep = out.sqfx_report
    assert {s.fqn: s.reason for s in rep.skipped} == {"blocks.1.up": "excluded", "blocks.1.down": "excluded",
                                                       "head": "excluded"}
    assert isinstance(out.head, nn.Linear) and torch.equal(out.head.weight, model.head.weight)
    assert isinstance(out.get_submodule("blocks.1.up"), nn.Linear)
    assert "blocks.0.up" not in dict(out.named_modules())  # converted: the fp32 module is gone
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(model.stem[0], nn.Linear)


class Untraceable(nn.Module):
    """symbolic_trace fails: "'Proxy' object does not support item assignment" (as HF BertModel)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = LinearReLU(nn.Linear(16, 8), nn.ReLU())
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        h = self.fc1(x)
        h[..., 0] = 0.0
        h = self.fc2(h)
        return self.attn(h, h, h, need_weights=False)[0]


def test_untraceable_model_is_converted_module_by_module_and_keeps_its_class():
    """symbolic_trace fails (as on HF models): the user's class comes back with sqfx layers in it,
    example_inputs or not (they are only for calibration)."""
    torch.manual_seed(4)
    model = Untraceable().eval()
    x = torch.randn(2, 5, 16)
    for example in (None, (x,)):
        out = sqfx.prepare_and_convert(model, example_inputs=example)
        rep = out.sqfx_report
        assert rep.capture == "module_swap" and type(out) is Untraceable
        assert "does not support item assignment" in rep.notes[0] and "module by module" in rep.notes[0]
        assert rep.converted == ["fc1", "fc2.0"] and [l.relu_fused for l in rep.layers] == [False, True]
        assert [s.fqn for s in rep.skipped] == ["attn.out_proj", "attn.in_proj_weight"]
        assert "MultiheadAttention" in rep.skipped[0].reason
        assert isinstance(out.fc1, sqfx.SparseQuantLinear) and out.fc2.relu
        assert isinstance(model.fc1, nn.Linear)
        with torch.no_grad():
            torch.testing.assert_close(out(x), model(x), atol=0.05, rtol=0.05)
            # any batch / sequence size: nothing was specialized to the example
            y = torch.randn(1, 9, 16)
            torch.testing.assert_close(out(y), model(y), atol=0.05, rtol=0.05)


def test_inplace():
    net = nn.Sequential(nn.Linear(8, 8))
    out = sqfx.prepare_and_convert(net, inplace=True)
    assert isinstance(out, fx.GraphModule) and not hasattr(out, "0")
    swapped = Untraceable()
    out = sqfx.prepare_and_convert(swapped, sqfx.SparseQuantConfig(inplace=True))
    assert out is swapped and isinstance(swapped.fc1, sqfx.SparseQuantLinear)


def test_bad_arguments():
    with pytest.raises(TypeError, match="expects an nn.Module"):
        sqfx.prepare_and_convert(lambda x: x)
    with pytest.raises(sqfx.config.ConfigError, match="unknown field"):
        sqfx.prepare_and_convert(nn.Linear(4, 4), {"blocks": (1, 4)})


def test_non_float32_layers_skipped():
    net = nn.Sequential(nn.Linear(8, 8).double())
    rep = sqfx.prepare_and_convert(net).sqfx_report
    assert rep.converted == [] and "float64" in rep.skipped[0].reason


class TiedEmbedding(nn.Module):
    """lm_head reads the embedding's weight: the embedding must keep it."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)

    def forward(self, ids):
        return F.linear(self.emb(ids), self.emb.weight)


def test_tied_embedding_keeps_its_weight():
    model = TiedEmbedding().eval()
    ids = torch.randint(0, 20, (2, 5))
    out = sqfx.prepare_and_convert(model)
    assert out.sqfx_report.converted == ["emb"]
    assert torch.equal(out.emb.weight, model.emb.weight)
    with torch.no_grad():
        torch.testing.assert_close(out(ids), model(ids), atol=0.05, rtol=0.05)


class WithMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_linears_hidden_in_leaf_modules_are_reported():
    rep = sqfx.prepare_and_convert(WithMHA().eval()).sqfx_report
    assert rep.converted == ["fc"]
    assert [s.fqn for s in rep.skipped] == ["attn.in_proj_weight", "attn.out_proj"] and "MultiheadAttention" in rep.skipped[0].reason


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 24), k=st.integers(1, 40), rb=st.sampled_from([1, 2, 4]), cb=st.sampled_from([1, 4, 8]),
       sparsity=st.sampled_from([None, 0.0, 0.3, 0.8]), lead=st.lists(st.integers(1, 3), max_size=2),
       bias=st.booleans(), relu=st.booleans())
def test_random_shapes_match_reference_and_bound(n, k, rb, cb, sparsity, lead, bias, relu):
    torch.manual_seed(n * 100 + k)
    layers = [nn.Linear(k, n, bias=bias)] + ([nn.ReLU()] if relu else [])
    net = nn.Sequential(*layers).eval()
    out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(block=(rb, cb), target_sparsity=sparsity))
    layer = out.sqfx_report["0"]
    assert layer.relu_fused == relu
    p = packed_layer(out, "0")
    x = torch.randn(*lead, k)
    with torch.no_grad():
        got = out(x)
    assert torch.equal(got, sqfx.reference.qlinear_dynamic(x, *p.tensors(), k, relu))
    keep = kept_blocks(p, layer.block).repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:n, :k]
    w_masked = net[0].weight.detach() * keep
    want = F.linear(x, w_masked, net[0].bias.detach() if bias else None)
    if relu:
        want = want.clamp(min=0)  # relu is 1-Lipschitz: the bound still holds
    assert bool(((got - want).abs() <= quant_error_bound(x, w_masked, p.w_scale)).all())
