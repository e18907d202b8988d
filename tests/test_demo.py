"""The MiniLM demo's pipeline on a tiny randomly initialised BERT (no download, no weights)."""
import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[demo])")

import sqfx  # noqa: E402
from sqfx_testing import kept_blocks  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "examples" / "minilm_demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("minilm_demo", DEMO)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["minilm_demo"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def test_block_magnitude_mask_keeps_the_largest_blocks(demo):
    """The demo prunes with the library's block_magnitude_mask (one definition)."""
    assert demo.block_magnitude_mask is sqfx.lowering.block_magnitude_mask
    w = torch.randn(8, 16)
    mask = demo.block_magnitude_mask(w, (1, 4), 0.75, "l1")
    assert mask.shape == (8, 4) and int(mask.sum()) == 8
    norms = w.abs().reshape(8, 4, 4).sum(-1)
    assert norms[mask].min() >= norms[~mask].max()


def test_block_prune_zeroes_exactly_the_dropped_blocks(demo, tiny_bert):
    import copy

    model = copy.deepcopy(tiny_bert)
    masks = demo.block_prune_(model, 0.5, (2, 4))
    assert len(masks) == 2 * 6  # q, k, v, attn out, FFN up, FFN down per layer
    for fqn, mask in masks.items():
        w = model.get_submodule(fqn).weight
        blocks = w.reshape(w.shape[0] // 2, 2, w.shape[1] // 4, 4).abs().sum(dim=(1, 3))
        assert torch.equal(blocks != 0, mask)
        assert abs(mask.float().mean().item() - 0.5) < 0.01


def test_pipeline_on_tiny_bert(demo, tiny_bert, tmp_path):
    inputs = demo.random_inputs(4, 12, 120, seed=3)
    inputs["attention_mask"][1, 8:] = 0  # padding is pooled out
    out = tmp_path / "tiny.pt2"
    result = demo.run_pipeline(tiny_bert, inputs, sparsity=0.6, shapes=((1, 8), (2, 8)), iters=1,
                               export_path=out, progress=False)
    names = {r["variant"] for r in result["rows"]}
    assert {"fp32 eager", "torch dynamic int8", "sqfx eager", "sqfx weight-only"} <= names
    assert len(result["act_modes"]) == 12 and set(result["act_modes"].values()) <= {"dynamic_int8", "weight_only"}
    if not demo.sqfx_backend_available():
        assert any("sqfx compiled: skipped" in n for n in result["notes"])
    assert len(result["rows"]) == 2 * len(names)
    assert result["layers"] == 12 and abs(result["block_sparsity"] - 0.6) < 0.01
    assert result["cosine"]["fp32 eager"] == pytest.approx(1.0, abs=1e-6)
    assert result["cosine"]["sqfx eager"] > 0.99
    assert result["cosine"]["sqfx weight-only"] > 0.99
    assert all(r["ms"] > 0 and r["speedup"] > 0 for r in result["rows"])
    assert "sqfx eager" in demo.format_table(result)
    # The exported program holds the sqfx op and reproduces the eager converted model.
    assert result["export"] == out and out.exists()
    ep = torch.export.load(str(out))
    assert any("sqfx" in str(n.target) for n in ep.graph.nodes)
    x = {k: v[:2] for k, v in inputs.items()}
    with torch.inference_mode():
        want = result["model"](**x).last_hidden_state
        got = ep.module()(x["input_ids"], x["attention_mask"]).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_converted_model_matches_masked_fp32_within_quantization_error(demo, tiny_bert):
    import copy

    masked = copy.deepcopy(tiny_bert)
    masks = demo.block_prune_(masked, 0.5, (1, 4))
    converted = demo.convert(masked, masks, (1, 4))
    assert type(converted) is type(tiny_bert) and converted.sqfx_report.capture == "module_swap"
    n_sqfx = sum(isinstance(m, sqfx.SparseQuantLinear) for m in converted.modules())
    assert n_sqfx == len(masks)
    # The masks survive the round trip into the packed format.
    for fqn, mask in masks.items():
        assert torch.equal(kept_blocks(converted.get_submodule(fqn).packed, (1, 4)), mask)
    inputs = demo.random_inputs(2, 10, 120)
    ref = demo.mean_pooled(masked, inputs)
    assert demo.cosine(converted, ref, inputs) > 0.99


def test_act_mode_choices(demo, tiny_bert):
    inputs = demo.random_inputs(2, 8, 120, seed=4)
    for mode in ("dynamic_int8", "weight_only"):
        result = demo.run_pipeline(tiny_bert, inputs, sparsity=0.5, shapes=((1, 8),), iters=1, compile_=False,
                                   progress=False, act_mode=mode, weight_only_row=False)
        assert set(result["act_modes"].values()) == {mode}
        layers = [m for m in result["model"].modules() if isinstance(m, sqfx.SparseQuantLinear)]
        assert {m.act_mode for m in layers} == {mode}
    with pytest.raises(ValueError, match="act_mode must be"):
        demo.run_pipeline(tiny_bert, inputs, act_mode="int4", progress=False)


def _fx_converted(demo, tiny_bert, inputs):
    import copy

    masked = copy.deepcopy(tiny_bert)
    masks = demo.block_prune_(masked, 0.5, (1, 4))
    example = (inputs["input_ids"], inputs["attention_mask"])
    return masked, demo.convert(masked, masks, (1, 4), example_inputs=example)


def test_fx_converter_path(demo, tiny_bert):
    """The adapter's prepare_and_convert route, at the example's shape."""
    inputs = demo.random_inputs(2, 8, 120, seed=5)
    masked, converted = _fx_converted(demo, tiny_bert, inputs)
    assert len(converted.sqfx_report.layers) == 12
    assert demo.cosine(converted, demo.mean_pooled(masked, inputs), inputs) > 0.99
    masks = demo.block_prune_(copy.deepcopy(tiny_bert), 0.5, (1, 4))
    first = next(iter(masks))
    mixed = demo.convert(masked, masks, example_inputs=(inputs["input_ids"], inputs["attention_mask"]),
                         act_modes={first: "weight_only"})
    modes = [m.act_mode for m in mixed.modules() if isinstance(m, sqfx.SparseQuantLinear)]
    assert modes.count("weight_only") == 1 and mixed.get_submodule(first).act_mode == "weight_only"


def test_fx_converter_path_other_batch(demo, tiny_bert):
    masked, converted = _fx_converted(demo, tiny_bert, demo.random_inputs(2, 8, 120, seed=5))
    other = demo.random_inputs(3, 8, 120, seed=6)
    assert demo.cosine(converted, demo.mean_pooled(masked, other), other) > 0.99
