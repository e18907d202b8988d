"""Real-model shapes through every door: tiny random-init HF models (and nn.MultiheadAttention).

Each model is converted by prepare_and_convert (eager), torch.compile(backend=sqfx) and
sqfx.export; the doors must convert the same layers and compute the same numbers (eager is the
oracle: export bit-close, compile within Inductor's rounding of the fp32 code around the op),
and stay near the fp32 model.
"""
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[demo])")

import sqfx  # noqa: E402

T = transformers


def _ids(b, s, vocab=100):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(b * 100 + s))


def bert():
    c = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    return T.BertModel(c), lambda b, s: {"input_ids": _ids(b, s), "attention_mask": torch.ones(b, s, dtype=torch.long)}


def gpt2():
    c = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0,
                     use_cache=False)
    return T.GPT2LMHeadModel(c), lambda b, s: {"input_ids": _ids(b, s)}


def llama():
    c = T.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, max_position_embeddings=64, use_cache=False)
    return T.LlamaForCausalLM(c), lambda b, s: {"input_ids": _ids(b, s)}


def t5_encoder():
    c = T.T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    return T.T5EncoderModel(c), lambda b, s: {"input_ids": _ids(b, s)}


def vit():
    c = T.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64)
    return T.ViTModel(c), lambda b, s: {"pixel_values": torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(b))}


def wav2vec2():
    """Its positional conv carries weight_norm (a parametrization the copy must not share)."""
    c = T.Wav2Vec2Config(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2)
    return T.Wav2Vec2Model(c), lambda b, s: {"input_values": torch.randn(b, 40 * s, generator=torch.Generator().manual_seed(s))}


def whisper_encoder():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    c = T.WhisperConfig(vocab_size=100, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        num_mel_bins=8, max_source_positions=16, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                        decoder_start_token_id=0)
    # The encoder's input length is fixed by its positions (2 * max_source_positions).
    return WhisperEncoder(c), lambda b, s: {"input_features": torch.randn(b, 8, 32, generator=torch.Generator().manual_seed(b))}


class MHANet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.attn = nn.MultiheadAttention(32, 2, batch_first=True)
        self.out = nn.Linear(32, 8)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0])


def mha():
    return MHANet(), lambda b, s: {"x": torch.randn(b, s, 16, generator=torch.Generator().manual_seed(s))}


ZOO = {"bert": (bert, 13), "gpt2": (gpt2, 9), "llama": (llama, 15), "t5_encoder": (t5_encoder, 12), "vit": (vit, 13),
       "wav2vec2": (wav2vec2, 13), "whisper_encoder": (whisper_encoder, 12), "mha": (mha, 2)}
CONFIG = sqfx.SparseQuantConfig()  # no pruning: the converted model stays near the fp32 one


def first(out):
    if isinstance(out, torch.Tensor):
        return out
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def make(name):
    torch.manual_seed(0)
    build, n_layers = ZOO[name]
    model, inputs = build()
    return model.eval(), inputs, n_layers


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=list(ZOO))
def eager_case(request):
    model, inputs, n_layers = make(request.param)
    converted = sqfx.prepare_and_convert(model, CONFIG)
    return request.param, model, inputs, n_layers, converted


def test_eager(eager_case):
    name, model, inputs, n_layers, converted = eager_case
    report = converted.sqfx_report
    assert len(report.layers) == n_layers, report
    if name == "gpt2":
        assert {l.matched for l in report.layers} == {"Conv1D module", "nn.Linear module"}
    if name == "mha":
        assert sorted((s.fqn, "MultiheadAttention" in s.reason) for s in report.skipped) == [
            ("attn.in_proj_weight", True), ("attn.out_proj", True)]
    else:
        assert type(converted) is type(model) and report.skipped == []
    with torch.no_grad():
        for b, s in ((2, 7), (1, 3)):
            x = inputs(b, s)
            assert rel_err(first(converted(**x)), first(model(**x))) < 0.1


def test_export_door_matches_eager(eager_case):
    name, model, inputs, n_layers, converted = eager_case
    x = inputs(2, 7)
    ep = sqfx.export(model, example_kwarg_inputs=x, config=CONFIG)
    # The same layers with the same settings (the order is the graph's call order or the module order).
    rows = lambda r: sorted((l.fqn, l.block, l.sparsity, l.activation, l.kernel) for l in r.layers)  # noqa: E731
    assert rows(ep.sqfx_report) == rows(converted.sqfx_report)
    assert sorted(s.fqn for s in ep.sqfx_report.skipped) == sorted(s.fqn for s in converted.sqfx_report.skipped)
    with torch.no_grad():
        got, want = first(ep.module()(**x)), first(converted(**x))
    if name == "mha":  # eager nn.MultiheadAttention runs the fused fast path, export decomposes it
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(got, want)  # docs/doors.md promises it


@pytest.mark.slow
def test_compile_door_matches_eager(eager_case):
    name, model, inputs, n_layers, converted = eager_case
    reports = []
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=sqfx.backend(CONFIG, on_report=reports.append))
    x = inputs(2, 7)
    with torch.no_grad():
        got = first(compiled(**x))
        want = first(converted(**x))
    names = [l for r in reports for l in r.converted]
    assert sorted(names) == sorted(converted.sqfx_report.converted)
    assert rel_err(got, want) < 1e-3
