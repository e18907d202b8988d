"""Regression tests for the conversion bugs real models hit (issue 12), each failing before its fix."""
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.parametrizations import weight_norm

import sqfx
from sqfx_testing import packed_layer


def _weight_norm_model():
    torch.manual_seed(0)
    return nn.Sequential(weight_norm(nn.Linear(16, 16)), nn.ReLU(), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("door", ["prepare_and_convert", "export"])
def test_parametrized_model_is_not_mutated(door):
    """Bug 1: stripping the copy's parametrization used to delete the property from the class the
    copy shares with the user's model (AttributeError on the next call of the original)."""
    m = _weight_norm_model()
    x = torch.randn(2, 16)
    before = m(x).detach()
    if door == "export":
        sqfx.export(m, (x,))
    else:
        out = sqfx.prepare_and_convert(m)
        assert out.sqfx_report.converted == ["0", "2"]
    assert torch.nn.utils.parametrize.is_parametrized(m[0], "weight")
    assert torch.equal(m(x), before)


def test_fake_sparsity_model_is_not_mutated():
    from torch.ao.pruning.sparsifier.utils import FakeSparsity

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 8)).eval()
    mask = torch.ones(8, 16)
    mask[:, :8] = 0
    torch.nn.utils.parametrize.register_parametrization(m[0], "weight", FakeSparsity(mask))
    x = torch.randn(2, 16)
    before = m(x).detach()
    out = sqfx.prepare_and_convert(m, sqfx.SparseQuantConfig(layout="sparse"))
    assert out.sqfx_report["0"].mask_source == "ao.pruning FakeSparsity"
    assert torch.equal(m(x), before)


def test_export_of_a_prune_pruned_model():
    """Bug 7: sqfx.export deep-copied the model itself and failed on prune's computed weight."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    prune.ln_structured(m[0], "weight", amount=0.5, n=1, dim=0)
    x = torch.randn(3, 16)
    ep = sqfx.export(m, (x,))
    assert ep.sqfx_report["0"].mask_source == "nn.utils.prune"
    torch.testing.assert_close(ep.module()(x), m(x), atol=0.05, rtol=0.05)
    assert hasattr(m[0], "weight_orig")  # the user's pruning is still in place


def test_export_auto_activation_calibrates_on_the_example():
    """Bug 7: export(..., activation="auto") said "no calibration inputs" although it had them."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    x = torch.randn(8, 16)
    cfg = sqfx.SparseQuantConfig(activation="auto", act_threshold_db=1000.0)  # every layer below: weight_only
    ep = sqfx.export(m, (x,), cfg)
    assert [l.activation for l in ep.sqfx_report.layers] == ["weight_only", "weight_only"]
    assert not any("no calibration inputs" in n for n in ep.sqfx_report.notes)


def _graph_model():
    torch.manual_seed(0)
    return sqfx.prepare_and_convert(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval())


def test_load_state_dict_into_a_graph_path_model_validates():
    """Bug 9: a tampered w_sum loaded into a graph-path model was accepted and changed the output."""
    out = _graph_model()
    assert out.sqfx_report.capture == "symbolic_trace"
    x = torch.randn(2, 16)
    want = out(x)
    sd = out.state_dict()
    key = next(k for k in sd if k.endswith("w_sum"))
    sd[key] = sd[key].clone()
    sd[key][0] += 1
    with pytest.raises(RuntimeError, match="w_sum"):
        out.load_state_dict(sd)
    assert torch.equal(out(x), want)
    out.load_state_dict(_graph_model().state_dict())  # an untampered state loads
    assert torch.equal(out(x), want)


def test_module_casts_keep_the_packed_dtypes():
    """Bug 5: .half() / .to(bfloat16) on a graph-path model cast the packed scales (C++ then failed)."""
    out = _graph_model()
    before = {k: v.dtype for k, v in out.state_dict().items() if isinstance(v, torch.Tensor)}
    out.half()
    out.to(torch.bfloat16)
    assert {k: v.dtype for k, v in out.state_dict().items() if isinstance(v, torch.Tensor)} == before
    assert packed_layer(out, "0").w_scale.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act_mode", ["dynamic_int8", "weight_only"])
def test_a_half_graph_model_runs_half_inputs(dtype, act_mode):
    """Bug 5: after .half() / .to(bf16) a graph-path model got fp16 / bf16 activations, which
    the op rejected ("input must be float32"). It now runs them as the module path does:
    computed in float32, returned in the input's dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    out = sqfx.prepare_and_convert(model, sqfx.SparseQuantConfig(activation=act_mode))
    assert out.sqfx_report.capture == "symbolic_trace"
    x = torch.randn(3, 5, 16)
    want = out(x)
    out.to(dtype)
    got = out(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)


def test_converting_a_converted_model_says_so():
    """Bug 10: converting an already-converted model reported 0 converted with no note."""
    again = sqfx.prepare_and_convert(_graph_model())
    assert again.sqfx_report.layers == []
    assert any("already holds 2 sqfx layer" in n for n in again.sqfx_report.notes)


def test_converted_graph_model_pickles():
    out = _graph_model()
    x = torch.randn(2, 16)
    for clone in (pickle.loads(pickle.dumps(out)), _torch_save_load(out)):
        assert torch.equal(clone(x), out(x))


def _torch_save_load(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_reaches_the_op(dtype):
    """Bug 5: torch.autocast('cpu', bf16) failed in the graph path with "input must be float32"."""
    out = _graph_model()
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype):
        got = out(x.to(dtype))
    torch.testing.assert_close(got.float(), out(x), atol=0.02, rtol=0.02)


def test_converted_from_train_mode_is_in_eval_mode():
    """Bug 10: an export-path model converted from train() reported training=True."""
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    model = transformers.BertModel(cfg).train()
    ids = torch.randint(0, 50, (2, 4))
    out = sqfx.prepare_and_convert(model, example_inputs=(ids,))
    assert not out.training and not any(m.training for m in out.modules())
    assert model.training  # the user's model keeps its mode
