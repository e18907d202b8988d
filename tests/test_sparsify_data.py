"""sqfx.sparsify's data forms (tensors, tuples, dicts of keyword arguments) and its bad-input errors."""
import pytest
import torch
from torch import nn

import sqfx
from sqfx.config import ConfigError
from sqfx.sparsify import RecoveryConfig, SparsifyConfig
from sqfx.sparsify.text import english_sentences, sentences_of, split


class TwoInputs(nn.Module):
    """forward(x, gain=None): positional or keyword, so all three data forms fit one model."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x, gain=None):
        h = torch.relu(self.fc1(x))
        return self.fc2(h * (1 if gain is None else gain))


def _batches(n=4):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(6, 8, generator=g) for _ in range(n)]


CFG = SparsifyConfig(target_sparsity=0.5, method="sparsegpt", progress=False)


def test_each_data_form_gives_the_same_result():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    xs = _batches()
    results = [sqfx.sparsify(model, data, CFG) for data in
               (xs, [(x,) for x in xs], [{"x": x} for x in xs], (x for x in xs))]
    for other in results[1:]:
        for k, v in results[0].state_dict().items():
            assert torch.equal(v, other.state_dict()[k])
    gained = sqfx.sparsify(model, [(x, 2.0) for x in xs], CFG)  # extra positional arguments reach the model
    assert not torch.equal(gained.fc2.weight, results[0].fc2.weight)
    kw = sqfx.sparsify(model, [{"x": x, "gain": 2.0} for x in xs], CFG)
    assert torch.equal(kw.fc2.weight, gained.fc2.weight)


def test_bert_with_keyword_batches_and_padding():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    bert = transformers.BertModel(cfg).eval()
    data = []
    for i in range(3):
        ids = torch.randint(0, 60, (4, 10))
        att = torch.ones(4, 10, dtype=torch.long)
        att[1, 6:] = 0
        data.append({"input_ids": ids, "attention_mask": att})
    out = sqfx.sparsify(bert, data, SparsifyConfig(target_sparsity=0.5, include=["encoder.*"], progress=False))
    assert len(out.sqfx_masks) == 6 and "pooler.dense" not in out.sqfx_masks
    assert all(abs(r.sparsity - 0.5) < 1e-9 for r in out.sqfx_sparsify_report.layers)


@pytest.mark.parametrize("data, error, match", [
    ([], ValueError, "data is empty"),
    (iter(()), ValueError, "data is empty"),
    (torch.randn(2, 8), TypeError, "wrap it in a list"),
    ({"x": torch.randn(2, 8)}, TypeError, "wrap it in a list"),
    (42, TypeError, "must be an iterable"),
    ([torch.randn(2, 8), 3], TypeError, r"data\[1\] is a int"),
])
def test_bad_data(data, error, match):
    with pytest.raises(error, match=match):
        sqfx.sparsify(TwoInputs(), data, CFG)


def test_empty_recovery_data():
    with pytest.raises(ValueError, match="recovery_data is empty"):
        sqfx.sparsify(TwoInputs(), _batches(), CFG, recovery_data=[])


@pytest.mark.parametrize("target", [1.0, 1.5, -0.1, float("nan"), "0.5", None])
def test_target_outside_unit_interval(target):
    with pytest.raises(ConfigError, match=r"target_sparsity must be .*\[0, 1\)"):
        SparsifyConfig(target_sparsity=target)


def test_block_that_does_not_divide():
    with pytest.raises(ValueError, match=r"block 1x3 does not divide layer 'fc1'.s weight 16x8"):
        sqfx.sparsify(TwoInputs(), _batches(), SparsifyConfig(block=(1, 3), progress=False))
    with pytest.raises(ValueError, match=r"block 5x4 does not divide layer 'fc1'"):
        sqfx.sparsify(TwoInputs(), _batches(), SparsifyConfig(block=(5, 4), progress=False))


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "obs"}, "method must be one of"),
    ({"allocation": "owl"}, "allocation must be one of"),
    ({"block": (0, 4)}, "block must be two positive ints"),
    ({"window": 130}, "window .130. must be a multiple of the column block"),
    ({"target_sparsity": 0.9, "max_layer_sparsity": 0.8}, "max_layer_sparsity"),
    ({"sensitivity_grid": ()}, "sensitivity_grid must not be empty"),
    ({"recovery": {"steps": 3}}, "recovery must be a RecoveryConfig"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SparsifyConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": -1}, "steps must be a non-negative int"),
    ({"lr": 0}, "lr must be a positive number"),
    ({"mse_weight": 0, "cosine_weight": 0}, "needs mse_weight or cosine_weight"),
    ({"max_cpu_seconds": -5}, "max_cpu_seconds must be a positive"),
])
def test_bad_recovery_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RecoveryConfig(**kwargs)


def test_no_selected_layer_and_bad_model():
    with pytest.raises(ValueError, match="no nn.Linear layer is selected"):
        sqfx.sparsify(TwoInputs(), _batches(), SparsifyConfig(include=["nothing*"], progress=False))
    with pytest.raises(TypeError, match="expects an nn.Module"):
        sqfx.sparsify(lambda x: x, _batches(), CFG)
    with pytest.raises(TypeError, match="config must be a SparsifyConfig"):
        sqfx.sparsify(TwoInputs(), _batches(), {"target_sparsity": 0.5})


def test_offline_text_is_prose_and_the_split_is_disjoint():
    assert sentences_of("Call f(x) now. This is a plain English sentence about cats. Then set x = 1 here.") == \
        ["This is a plain English sentence about cats."]
    sentences = english_sentences(("reference",))
    assert len(sentences) > 500 and len(set(sentences)) == len(sentences)
    train, held = split(sentences, 0.1)
    assert not set(train) & set(held) and len(train) + len(held) == len(sentences)
    assert 0.05 < len(held) / len(sentences) < 0.15
    assert split(sentences, 0.1) == (train, held)  # stable
