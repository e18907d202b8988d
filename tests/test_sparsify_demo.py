"""The MiniLM demo's sparsify pieces on a tiny random BERT: the accuracy metrics against the dense
model, the choice of the default sparsity, the cache, and run_pipeline on a pre-sparsified model."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[demo])")

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


class WordTokenizer:
    """Enough of an HF tokenizer for sqfx.sparsify.text.batches: hashed words, padded."""

    def __call__(self, sentences, padding=True, truncation=True, max_length=64, return_tensors="pt"):
        ids = [[hash(w) % 118 + 2 for w in s.split()][:max_length] for s in sentences]
        width = max(len(i) for i in ids)
        return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


def test_retrieval_agreement(demo):
    ref = torch.eye(4) + 0.1 * torch.arange(16.).reshape(4, 4)
    assert demo.retrieval_agreement(ref, ref) == 1.0
    moved = ref.clone()
    moved[0] = ref[2] + 0.01  # row 0 now sits next to row 2: its neighbour and row 2's change
    assert demo.retrieval_agreement(moved, ref) < 1.0


def test_choose_sparsity_takes_the_sparsest_point_above_the_floor(demo):
    rows = [{"sparsity": 0.0, "cosine": 1.0}, {"sparsity": 0.3, "cosine": 0.97},
            {"sparsity": 0.5, "cosine": 0.951}, {"sparsity": 0.7, "cosine": 0.90}]
    assert demo.choose_sparsity(rows)["sparsity"] == 0.5
    assert demo.choose_sparsity(rows[:1] + [{"sparsity": 0.3, "cosine": 0.5}])["sparsity"] == 0.0


def test_sparsify_cached_and_the_pipeline_on_it(demo, tiny_bert, tmp_path):
    tok = WordTokenizer()
    train = [f"Sentence number {i} talks about topic {i % 7} in plain words." for i in range(40)]
    kw = dict(method="sparsegpt", allocation="uniform", calib=16, cache_dir=tmp_path, progress=False)
    first = demo.sparsify_cached(tiny_bert, tok, train, 0.5, **kw)
    assert len(list(tmp_path.glob("minilm-*.pt"))) == 1
    again = demo.sparsify_cached(tiny_bert, tok, train, 0.5, **kw)  # from the cache
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert again.sqfx_masks.keys() == first.sqfx_masks.keys()
    inputs = demo.random_inputs(4, 10, 120, seed=2)
    dense_ref = demo.mean_pooled(tiny_bert, inputs)
    result = demo.run_pipeline(first, inputs, shapes=((2, 8),), iters=1, compile_=False, progress=False,
                               act_mode="dynamic_int8", weight_only_row=False, masks=first.sqfx_masks,
                               dense_reference=dense_ref)
    assert abs(result["block_sparsity"] - 0.5) < 1e-6
    # vs the pruned fp32 model: quantization only; vs dense: the pruning shows
    assert result["cosine"]["fp32 eager"] == pytest.approx(1.0, abs=1e-6)
    assert result["cosine_dense"]["fp32 eager"] < 1.0
    assert "cos vs dense" in demo.format_table(result)
    acc = demo.accuracy(first, dense_ref, inputs, n_everyday=2)
    assert acc["cosine"] == pytest.approx(result["cosine_dense"]["fp32 eager"], abs=1e-5)
    assert 0.0 <= acc["retrieval"] <= 1.0


def test_text_sources(demo, monkeypatch):
    from sqfx.sparsify import text

    assert demo.text_sources(["stdlib"]) == text.STDLIB
    assert demo.text_sources(["stdlib", "reference"]) == text.STDLIB   # deduplicated, in order
    assert demo.training_sentences(text.STDLIB, ["a", "b"]) == ["a", "b"]
    monkeypatch.setattr(text, "gensim_test_data", lambda: None)
    assert demo.text_sources(["auto"]) == text.STDLIB   # without gensim: the stdlib text, no error
    with pytest.raises(SystemExit, match="pip install gensim"):
        demo.text_sources(["broad"])
    with pytest.raises(SystemExit, match="unknown"):
        demo.text_sources(["nope"])
