"""sqfx.sparsify's methods on a tiny MLP: exact block masks, lower reconstruction error than
magnitude for the calibrated methods, sensitivity allocation, and masks conversion consumes."""
import pytest
import torch
from torch import nn

import sqfx
from sqfx.format import block_view
from sqfx.lowering import block_magnitude_mask
from sqfx.sparsify import SparsifyConfig
from sqfx.sparsify.allocate import allocate

METHODS = ("magnitude", "wanda", "sparsegpt")


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def calibration(n=8, rows=32, seed=1):
    """Inputs with very unequal, correlated columns: where activation-aware pruning should matter."""
    g = torch.Generator().manual_seed(seed)
    mix = (torch.eye(16) + 0.3 * torch.randn(16, 16, generator=g)) * torch.logspace(-1, 1, 16)
    return [torch.randn(rows, 16, generator=g) @ mix for _ in range(n)]


def _sparsify(method, sparsity=0.5, block=(1, 4), **kw):
    return sqfx.sparsify(tiny_mlp(), calibration(), SparsifyConfig(target_sparsity=sparsity, method=method,
                                                                    block=block, progress=False, **kw))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("block", [(1, 4), (2, 4), (4, 1)])
def test_masks_are_exact_and_block_structured(method, block):
    model = _sparsify(method, 0.5, block)
    assert set(model.sqfx_masks) == {"0", "2", "4"}
    for fqn, mask in model.sqfx_masks.items():
        w = model.get_submodule(fqn).weight.detach()
        n, k = w.shape
        assert mask.dtype == torch.bool and mask.shape == (n // block[0], k // block[1])
        assert int((~mask).sum()) == round(0.5 * mask.numel())  # exact per-layer count
        blocks = block_view(w, block)
        assert torch.all(blocks[~mask] == 0)  # every dropped block is zero
        assert torch.all(blocks[mask].abs().sum(dim=(1, 2)) > 0)  # kept blocks hold weights
    report = model.sqfx_sparsify_report
    assert [r.fqn for r in report.layers] == ["0", "2", "4"]
    assert all(r.method == method and r.sparsity == 0.5 and r.reconstruction_error > 0 for r in report.layers)
    assert report.sparsity == pytest.approx(0.5)
    assert "reconstruction" not in str(report) and method in str(report)


def test_magnitude_is_the_converters_rule():
    model, dense = _sparsify("magnitude", 0.6), tiny_mlp()
    for fqn, mask in model.sqfx_masks.items():
        assert torch.equal(mask, block_magnitude_mask(dense.get_submodule(fqn).weight, (1, 4), 0.6, "l1"))


def test_input_model_is_not_changed():
    dense = tiny_mlp()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    sqfx.sparsify(dense, calibration(), SparsifyConfig(progress=False))
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_calibrated_methods_reconstruct_better_than_magnitude():
    errors = {m: [r.reconstruction_error for r in _sparsify(m, 0.5).sqfx_sparsify_report.layers] for m in METHODS}
    # OBS updates the kept weights: lower error on every layer; Wanda only on the first, whose
    # inputs are the (unequal) calibration columns, and in total.
    assert all(s < m for s, m in zip(errors["sparsegpt"], errors["magnitude"]))
    assert errors["wanda"][0] < errors["magnitude"][0]
    assert sum(errors["sparsegpt"]) < sum(errors["wanda"]) < sum(errors["magnitude"])
    losses = {m: _sparsify(m, 0.5).sqfx_sparsify_report.loss_one_shot for m in METHODS}
    assert losses["sparsegpt"] < losses["magnitude"]


def test_converter_consumes_the_masks():
    model = _sparsify("sparsegpt", 0.75)
    for masks in (model.sqfx_masks, {}):  # explicit config masks, or the zeroed weights alone
        config = sqfx.SparseQuantConfig(masks=masks, layout="sparse")
        converted = sqfx.prepare_and_convert(model, config)
        layers = {r.fqn: r for r in converted.sqfx_report.layers}
        for fqn, mask in model.sqfx_masks.items():
            assert layers[fqn].sparsity == pytest.approx(0.75)
            assert layers[fqn].mask_source == ("config.masks" if masks else "none (zero blocks only)")
        x = calibration(1)[0]
        torch.testing.assert_close(converted(x), model(x), rtol=0.05, atol=0.05 * model(x).abs().max().item())


def test_sensitivity_allocation_meets_the_global_target():
    model = _sparsify("sparsegpt", 0.5, allocation="sensitivity", sensitivity_grid=(0.25, 0.5, 0.75, 0.9))
    report = model.sqfx_sparsify_report
    sizes = [r.shape[0] * r.shape[1] for r in report.layers]
    assert report.sparsity == pytest.approx(0.5, abs=4 / sum(sizes) * 4)
    assert len({round(r.sparsity, 3) for r in report.layers}) > 1  # non-uniform
    assert all(len(r.sensitivity) == 4 for r in report.layers)


def test_allocate_prunes_the_insensitive_layer_first():
    grid = (0.25, 0.5, 0.75)
    sens = {"cheap": [0.0, 0.01, 0.02], "dear": [1.0, 2.0, 4.0]}
    got = allocate(sens, {"cheap": 100, "dear": 100}, grid, target=0.5, max_sparsity=0.9)
    assert got["cheap"] == pytest.approx(0.9) and got["dear"] == pytest.approx(0.1)
    same = allocate({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0]}, {"a": 10, "b": 30}, grid, 0.5, 0.9)
    assert (same["a"] * 10 + same["b"] * 30) / 40 == pytest.approx(0.5)


def test_sequential_groups_layers_that_share_an_input():
    transformers = pytest.importorskip("transformers")
    from sqfx.sparsify.capture import layer_groups
    from sqfx.sparsify.data import Call

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    bert = transformers.BertModel(cfg).eval()
    names = [n for n, m in bert.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")]
    groups = layer_groups(bert, Call((torch.randint(0, 50, (2, 5)),)), names)
    p = "encoder.layer.0."
    assert groups == [[p + "attention.self.query", p + "attention.self.key", p + "attention.self.value"],
                      [p + "attention.output.dense"], [p + "intermediate.dense"], [p + "output.dense"]]


def test_layer_sparsity_reuses_an_allocation():
    first = _sparsify("wanda", 0.5, allocation="sensitivity", sensitivity_grid=(0.25, 0.5, 0.75, 0.9))
    report = first.sqfx_sparsify_report
    sens = {r.fqn: r.sensitivity for r in report.layers}
    blocks = {r.fqn: r.shape[0] * r.shape[1] // 4 for r in report.layers}
    targets = sqfx.sparsify.allocate(sens, blocks, (0.25, 0.5, 0.75, 0.9), 0.5, 0.95)
    again = _sparsify("wanda", 0.5, layer_sparsity=targets)
    assert [r.sparsity for r in again.sqfx_sparsify_report.layers] == [r.sparsity for r in report.layers]
    with pytest.raises(ValueError, match=r"layer_sparsity names layer\(s\) \['nope'\]"):
        _sparsify("wanda", 0.5, layer_sparsity={"nope": 0.5})
