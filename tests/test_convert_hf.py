"""HF models through prepare_and_convert behave like the model the user gave (issue 12, bugs 2, 4, 10)."""
import copy
import io
import json
import pickle

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[demo])")

import sqfx  # noqa: E402


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _enc(b, s):
    g = torch.Generator().manual_seed(b * 31 + s)
    return transformers.BatchEncoding({"input_ids": torch.randint(0, 100, (b, s), generator=g),
                                       "attention_mask": torch.ones(b, s, dtype=torch.long)})


@pytest.fixture(scope="module")
def converted(bert):
    # A batch-1 example: it must not pin the batch or the sequence length.
    x = _enc(1, 1)
    return sqfx.prepare_and_convert(bert, example_inputs=(x["input_ids"], x["attention_mask"]))


def test_any_batch_and_sequence_from_a_batch_1_example(bert, converted):
    for b, s in ((1, 1), (3, 9), (2, 17)):
        x = _enc(b, s)
        with torch.no_grad():
            got, want = converted(**x).last_hidden_state, bert(**x).last_hidden_state
        assert got.shape == (b, s, 32)
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_keywords_optional_arguments_and_outputs(bert, converted):
    x = _enc(2, 5)
    with torch.no_grad():
        out = converted(input_ids=x["input_ids"], output_hidden_states=True)  # attention_mask omitted
        assert len(out.hidden_states) == 3
        positional = converted(x["input_ids"], x["attention_mask"]).last_hidden_state
        torch.testing.assert_close(positional, converted(**x).last_hidden_state, rtol=0, atol=0)


def test_eval_train_and_pickle(bert):
    # A fresh conversion: transformers itself makes a model unpicklable once it was called with
    # output_hidden_states (it installs local hooks), the fp32 model as much as the converted one.
    x = _enc(2, 4)
    converted = sqfx.prepare_and_convert(bert, example_inputs=(x["input_ids"], x["attention_mask"]))
    assert type(converted) is transformers.BertModel and not converted.training
    converted.train()
    assert converted.training
    converted.eval()
    with torch.no_grad():
        want = converted(**x).last_hidden_state
        clone = pickle.loads(pickle.dumps(converted))
        buf = io.BytesIO()
        torch.save(converted, buf)
        buf.seek(0)
        saved = torch.load(buf, weights_only=False)
        for m in (clone, saved):
            assert torch.equal(m(**x).last_hidden_state, want)


def test_inplace_converts_the_given_model(bert):
    model = copy.deepcopy(bert)
    x = _enc(2, 3)
    out = sqfx.prepare_and_convert(model, example_inputs=(x["input_ids"],), inplace=True)
    assert out is model and isinstance(model.encoder.layer[0].attention.self.query, sqfx.SparseQuantLinear)


def test_dict_and_kwarg_examples_calibrate(bert):
    cfg = sqfx.SparseQuantConfig(activation="auto", act_threshold_db=1000.0)  # every layer reached: weight_only
    for kwargs in ({"example_inputs": _enc(2, 6)}, {"example_kwarg_inputs": dict(_enc(2, 6))}):
        out = sqfx.prepare_and_convert(bert, cfg, **kwargs)
        assert len(out.sqfx_report.layers) == 12 + 1  # 12 encoder linears + the pooler
        assert {l.activation for l in out.sqfx_report.layers} == {"weight_only"}


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_conv1d_layers_are_converted(gpt2):
    """Bug 4: transformers' Conv1D (a linear with a transposed weight) was silently left fp32."""
    out = sqfx.prepare_and_convert(gpt2)
    rep = out.sqfx_report
    conv = [l for l in rep.layers if l.matched == "Conv1D module"]
    assert len(conv) == 8 and {l.fqn.rsplit(".", 1)[1] for l in conv} == {"c_attn", "c_proj", "c_fc"}
    assert rep["transformer.h.0.attn.c_attn"].out_features == 96 and rep["transformer.h.0.attn.c_attn"].in_features == 32
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(out(ids).logits, gpt2(ids).logits, atol=0.05, rtol=0.05)


def test_generate_with_the_default_cache(gpt2):
    """Bug 10: a decoder with use_cache=True must still convert fully and generate()."""
    out = sqfx.prepare_and_convert(gpt2)
    assert len(out.sqfx_report.layers) == 9
    ids = torch.randint(0, 100, (1, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = gpt2.generate(ids, max_new_tokens=5, do_sample=False)
        got = out.generate(ids, max_new_tokens=5, do_sample=False)
    assert got.shape == want.shape == (1, 9)


def test_every_linear_left_out_is_reported():
    """Bug 4: layers left out must be in the report with their reason, never silently."""
    from torch import nn

    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(x @ self.fc.weight.t())  # fc is never called as a linear

    rep = sqfx.prepare_and_convert(ReadsWeight()).sqfx_report
    assert rep.converted == ["head"]
    assert [(s.fqn, "not called as a linear" in s.reason) for s in rep.skipped] == [("fc", True)]


@pytest.mark.slow
def test_hf_archive_loads_in_a_fresh_process(bert, tmp_path):
    """Bug 3: an HF .pt2 failed to load in a fresh process unless transformers.modeling_outputs
    was imported (its output type is unknown to pytree there), and sqfx.load blamed a missing
    sqfx op. sqfx.load now imports the (allow-listed) module that registers the output type;
    the CLI reports on the archive without a traceback."""
    import subprocess
    import sys

    from doors_common import run_fresh

    ids = torch.randint(0, 100, (2, 5))
    sqfx.save(sqfx.export(bert, (ids,)), tmp_path / "bert.pt2")
    torch.save({"ids": ids, "want": bert(ids).last_hidden_state}, tmp_path / "io.pt")
    out = run_fresh(f"""
        import sys
        import torch, sqfx
        assert "transformers" not in sys.modules
        io = torch.load({str(tmp_path / "io.pt")!r})
        out = sqfx.load({str(tmp_path / "bert.pt2")!r}).module()(io["ids"])
        print(type(out).__name__, (out.last_hidden_state - io["want"]).abs().max().item())
    """, tmp_path)
    name, err = out.split()
    assert name == "BaseModelOutputWithPoolingAndCrossAttentions" and float(err) < 0.1
    proc = subprocess.run([sys.executable, "-m", "sqfx", "report", str(tmp_path / "bert.pt2")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "pooler.dense" in proc.stdout, proc.stderr[-3000:]
    assert "nan" not in proc.stdout  # a stored program's SQNR is unknown: "-"
    proc = subprocess.run([sys.executable, "-m", "sqfx", "report", "--json", str(tmp_path / "bert.pt2")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    layers = json.loads(proc.stdout, parse_constant=refuse)["layers"]
    assert layers and all(layer["sqnr_db"] is None for layer in layers)


def test_load_imports_only_known_output_type_modules():
    """An untrusted archive names its output types: only HF's ModelOutput modules are imported
    on its word; any other unknown type gets an error that says what to import."""
    from sqfx.artifacts import _load_hint, _output_type_module

    def err(name):
        return NotImplementedError(f"Deserializing {name} in pytree is not registered.")

    assert _output_type_module(err("transformers.modeling_outputs.BaseModelOutput")) == "transformers.modeling_outputs"
    assert (_output_type_module(err("transformers.models.t5.modeling_t5.T5Output"))
            == "transformers.models.t5.modeling_t5")
    for other in ("os.Foo", "antigravity.Fly", "transformers.commands.env.X", "mypkg.outputs.Out"):
        assert _output_type_module(err(other)) is None
        assert f"returns {other}" in _load_hint(err(other)) and "sqfx op" not in _load_hint(err(other))


def test_save_pretrained_of_a_converted_model_round_trips(bert, tmp_path):
    """Bug 10: save_pretrained on a module-swapped BertModel failed on the extra-state dict
    (safetensors takes tensors only). The extra state is now an int64 tensor; the saved file
    loads back into a converted model of the same config, with the same outputs."""
    from safetensors.torch import load_file

    out = sqfx.prepare_and_convert(bert)
    assert out.sqfx_report.capture == "module_swap"
    out.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "encoder.layer.0.intermediate.dense._extra_state" in state
    torch.manual_seed(1)  # another random init: everything must come from the file
    other = transformers.BertModel(bert.config).eval()
    back = sqfx.prepare_and_convert(other, sqfx.SparseQuantConfig(target_sparsity=0.5))
    back.load_state_dict(state)
    ids = torch.randint(0, 100, (2, 7))
    assert torch.equal(back(ids).last_hidden_state, out(ids).last_hidden_state)
