"""Accuracy of sqfx.sparsify on all-MiniLM-L6-v2 against the ORIGINAL dense fp32 model.

    python examples/minilm_sparsify_curve.py --methods magnitude wanda sparsegpt --sparsities 0.3 0.5 \
        --allocation sensitivity --calib 128 [--recovery-cpu 900 --distill 2048] --out results.jsonl

Held-out evaluation (never used for calibration or distillation): minilm_demo.evaluation_data, the
demo's 32 hand-written everyday sentences plus 224 sentences of the offline text's held-out hash split. Metrics: mean
sentence-embedding cosine vs the dense model (fp32 after sparsify, and with sqfx int8 on top via
prepare_and_convert), and retrieval agreement: the fraction of evaluation sentences whose nearest
neighbour (cosine, among the other evaluation sentences, all embedded by the model under test) is
the dense model's. One JSON line per point goes to --out.

--text picks the sources (sqfx.sparsify.text) that calibration and distillation sentences come from:
"stdlib" (the default: reference, docstrings, idle), "broad" (wiki, news, newsgroups: the public
corpora in the gensim wheel), "all", or source names. The evaluation set above stays the same
whatever --text says (training sentences equal to an evaluation sentence are dropped);
--eval-broad N adds a second column ("broad" in each row): N sentences of the broad sources'
held-out hash split, never used for training either.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import sqfx
from sqfx.sparsify import RecoveryConfig, SparsifyConfig, allocate, text

import minilm_demo as demo

def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["sparsegpt"])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.8])
    ap.add_argument("--allocation", default="sensitivity")
    ap.add_argument("--calib", type=int, default=128, help="calibration sentences")
    ap.add_argument("--distill", type=int, default=0, help="distillation sentences (0: the calibration ones)")
    ap.add_argument("--recovery-cpu", type=float, default=0, help="recovery budget in CPU seconds (0: none)")
    ap.add_argument("--recovery-steps", type=int, default=100000)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--sens-samples", type=int, default=2, help="data items (batches) the sensitivity is measured on")
    ap.add_argument("--recovery-stages", type=float, nargs="*", default=[],
                    help="after one-shot, distil in stages up to these cumulative CPU-second budgets, "
                         "measuring after each (resumes from the stage's checkpoint)")
    ap.add_argument("--text", nargs="+", default=["stdlib"],
                    help="sources of the calibration/distillation sentences: stdlib, broad, all or source names")
    ap.add_argument("--eval-broad", type=int, default=0,
                    help="also evaluate on this many held-out sentences of the broad sources (needs gensim)")
    ap.add_argument("--schedule", default="fixed", choices=["fixed", "gradual"],
                    help="recovery's mask schedule: fixed one-shot masks, or gradual pruning from the dense weights")
    ap.add_argument("--prune-until", type=float, default=0.5,
                    help="gradual: fraction of the recovery steps over which sparsity ramps up")
    ap.add_argument("--prune-every", type=int, default=10, help="gradual: steps between mask updates")
    ap.add_argument("--out", default="sparsify_curve.jsonl")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = demo.load_minilm()
    train, evaluation = demo.evaluation_data(tok)
    sources = demo.text_sources(args.text)
    train = demo.training_sentences(sources, train)
    rng = random.Random(0)
    rng.shuffle(train)
    broad_eval = broad_reference = None
    if args.eval_broad:
        broad_eval = broad_evaluation(tok, args.eval_broad)
        broad_reference = demo.mean_pooled(model, broad_eval)
    calib = text.batches(tok, train[:args.calib], args.batch)
    distill = text.batches(tok, train[:args.distill], args.batch) if args.distill else calib
    reference = demo.mean_pooled(model, evaluation)
    example = (evaluation["input_ids"][:2], evaluation["attention_mask"][:2])
    for method in args.methods:
        sensitivity = None  # measured once per method, then re-allocated for each target
        for s in args.sparsities:
            recovery = None
            if args.recovery_cpu:
                recovery = RecoveryConfig(steps=args.recovery_steps, max_cpu_seconds=args.recovery_cpu, lr=args.lr,
                                          progress=False, **schedule_args(args))
            cfg = SparsifyConfig(target_sparsity=s, method=method, allocation=args.allocation,
                                 include=["encoder.*"], progress=False, recovery=recovery,
                                 sensitivity_samples=args.sens_samples)
            if sensitivity is not None:
                cfg.layer_sparsity = allocate(sensitivity, n_blocks, cfg.sensitivity_grid, s, cfg.max_layer_sparsity)
            t0 = time.process_time()
            sparse = sqfx.sparsify(model, calib, cfg, recovery_data=distill)
            cpu = time.process_time() - t0
            rep = sparse.sqfx_sparsify_report
            if args.allocation == "sensitivity" and sensitivity is None:
                sensitivity = {r.fqn: r.sensitivity for r in rep.layers}
                n_blocks = {r.fqn: r.shape[0] * r.shape[1] // 4 for r in rep.layers}
            row = {"method": method, "allocation": args.allocation, "target": s, "sparsity": rep.sparsity,
                   "text": list(sources), "train_sentences": len(train), "calib": args.calib, "distill": args.distill or args.calib,
                   "recovery_cpu_budget": args.recovery_cpu, "recovery": rep.recovery, "cpu_seconds": cpu,
                   "fp32": demo.accuracy(sparse, reference, evaluation),
                   "layers": {r.fqn: round(r.sparsity, 3) for r in rep.layers}}
            if broad_eval is not None:
                row["broad"] = broad_accuracy(sparse, broad_reference, broad_eval)
            if not args.no_int8:
                int8 = demo.convert(sparse, sparse.sqfx_masks, example_inputs=example)
                row["int8"] = demo.accuracy(int8, reference, evaluation)
            if sensitivity is not None:
                row["sensitivity"] = sensitivity
            emit(row, args.out)
            if args.recovery_stages:
                staged_recovery(model, sparse, distill, args, row, reference, evaluation, example,
                                broad_reference, broad_eval)


def broad_accuracy(model, reference, inputs) -> dict:
    acc = demo.accuracy(model, reference, inputs)
    acc.pop("cosine_everyday")   # the broad column has no everyday part
    return acc


def broad_evaluation(tok, n: int) -> dict:
    """n sentences of the broad sources' held-out hash split (a fixed shuffle, so all three sources appear)."""
    _, held = text.split(text.english_sentences(demo.text_sources(["broad"])))
    random.Random(1).shuffle(held)
    enc = tok(held[:n], padding=True, truncation=True, max_length=128, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def emit(row, out):
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


def schedule_args(args) -> dict:
    return {"schedule": args.schedule, "prune_until": args.prune_until, "prune_every": args.prune_every}


def staged_recovery(dense, sparse, distill, args, base, reference, evaluation, example,
                    broad_reference=None, broad_eval=None):
    """Distils `sparse` in place in stages of growing CPU budget; one row per stage."""
    import tempfile

    from sqfx.lowering.mask import _expand
    from sqfx.sparsify.data import as_calls
    from sqfx.sparsify.recover import recover

    masks = {n: _expand(m, sparse.get_submodule(n).weight.shape, (1, 4)) for n, m in sparse.sqfx_masks.items()}
    calls = as_calls(distill)
    ckpt = tempfile.mkdtemp(prefix="sqfx-recovery-")
    for i, budget in enumerate(args.recovery_stages):
        cfg = RecoveryConfig(steps=args.recovery_steps, max_cpu_seconds=budget, lr=args.lr, checkpoint_dir=ckpt,
                             checkpoint_every=25, progress=False, **schedule_args(args))
        info = recover(sparse, dense, calls, masks, cfg, (1, 4))
        if info["masks"] is not None:
            sparse.sqfx_masks = info["masks"]
        row = {**{k: base[k] for k in ("method", "allocation", "target", "sparsity", "text", "calib")},
               "distill": len(distill) * args.batch, "recovery": {k: info[k] for k in ("steps", "cpu_seconds")},
               "recovery_cpu_budget": budget, "train_loss_last20": sum(info["losses"][-20:]) / max(1, len(info["losses"][-20:])),
               "fp32": demo.accuracy(sparse, reference, evaluation)}
        if broad_eval is not None:
            row["broad"] = broad_accuracy(sparse, broad_reference, broad_eval)
        if not args.no_int8 and i == len(args.recovery_stages) - 1:
            int8 = demo.convert(sparse, sparse.sqfx_masks, example_inputs=example)
            row["int8"] = demo.accuracy(int8, reference, evaluation)
        emit(row, args.out)


if __name__ == "__main__":
    main()
