"""Recovery: distil the pruned model toward the dense one, masks fixed or pruned gradually.

One optimizer step per data item, in an order fixed by (seed, step) so a resumed run replays the
same sequence. The model stays in eval mode (no dropout: deterministic). Pruned weights get a zero
gradient and are re-zeroed after each step, so between mask updates the block masks never change.
schedule="gradual" starts from the dense weights and raises each layer's sparsity along a cubic
ramp to its final block count, recomputing the masks by block magnitude (see RecoveryConfig).
Embedding tables are frozen (large, and not pruned). A checkpoint holds the model, the optimizer,
the masks, the step and the CPU seconds spent, so a stopped run resumes where it was.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from .config import RecoveryConfig
from .data import Call, output_tensor
from .loss import distill_loss
from .methods import magnitude_mask
from ..lowering.mask import _expand

CHECKPOINT = "recovery.pt"

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional: no bar without it
    tqdm = None


def _order(n: int, seed: int, step: int) -> int:
    """The data index of `step`: a fresh seeded permutation per pass over the data."""
    epoch, pos = divmod(step, n)
    return int(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))[pos])


def _schedule(cfg: RecoveryConfig):
    def factor(step):
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        span = max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    return factor


def ramp_sparsity(final: float, step: int, cfg: RecoveryConfig) -> float:
    """The gradual schedule's sparsity at `step` (the final one from ceil(prune_until * steps) on)."""
    end = math.ceil(cfg.prune_until * cfg.steps)
    return final if step >= end else final * (1 - (1 - step / end) ** 3)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if not isinstance(m, nn.Embedding)
            for p in m.parameters(recurse=False) if p.requires_grad]


@torch.no_grad()
def mean_loss(model: nn.Module, calls: list[Call], teacher: list[torch.Tensor], cfg: RecoveryConfig) -> float:
    return float(sum(distill_loss(c.run(model), t, c, cfg.mse_weight, cfg.cosine_weight)
                     for c, t in zip(calls, teacher)) / len(calls))


def recover(student: nn.Module, dense: nn.Module, calls: list[Call], masks: dict[str, torch.Tensor],
            cfg: RecoveryConfig, block=None) -> dict:
    """Trains `student` in place. masks: {linear fqn: element mask [N, K] (1 = kept)}; with
    schedule="gradual" only their block counts are used (block: the (row, col) block, required).
    Returns {"steps", "cpu_seconds", "resumed_from", "losses" (one per step), "masks" (the final
    bool block masks; None for "fixed"), "sparsity" ([(step, overall sparsity)] per mask update)}."""
    torch.manual_seed(cfg.seed)
    student.eval()
    dense.eval()
    weights = {name: student.get_submodule(name).weight for name in masks}
    float_masks = {name: m.to(weights[name].dtype) for name, m in masks.items()}
    gradual = cfg.schedule == "gradual"
    ramp_end = math.ceil(cfg.prune_until * cfg.steps)
    final, history = {}, []
    if gradual:
        if block is None:
            raise ValueError("sqfx recovery: schedule='gradual' needs the block shape (block=(rows, cols))")
        final = {n: 1.0 - float(m[::block[0], ::block[1]].float().mean()) for n, m in masks.items()}
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(dense.get_submodule(n).weight)

    @torch.no_grad()
    def update_masks(step):
        """Masks at the ramp's sparsity for `step`, from the current weights; pruned blocks zeroed."""
        dropped = total = 0
        for n, w in weights.items():
            bm = magnitude_mask(w, block, ramp_sparsity(final[n], step, cfg))
            float_masks[n].copy_(_expand(bm, w.shape, block))
            w.mul_(float_masks[n])
            dropped, total = dropped + int((~bm).sum()), total + bm.numel()
        history.append((step, dropped / total))
    hooks = [weights[n].register_hook(lambda g, m=float_masks[n]: g * m) for n in masks]
    params = trainable_parameters(student)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    step, spent, losses, resumed_from = 0, 0.0, [], None
    path = Path(cfg.checkpoint_dir) / CHECKPOINT if cfg.checkpoint_dir else None
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=False)
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, spent, losses = state["step"], state["cpu_seconds"], state["losses"]
        for n, m in state.get("masks", {}).items():
            float_masks[n].copy_(m)
        history = state.get("sparsity", [])
        resumed_from = step

    def save():
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": student.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "cpu_seconds": spent, "losses": losses, "masks": float_masks,
                    "sparsity": history}, tmp)
        os.replace(tmp, path)

    teacher_cache: dict[int, torch.Tensor] = {}
    bar = tqdm(total=cfg.steps, initial=step, desc="sqfx recovery", unit="step",
               disable=not cfg.progress) if tqdm is not None else None
    t0 = time.process_time()
    try:
        while step < cfg.steps and (cfg.max_cpu_seconds is None or spent < cfg.max_cpu_seconds):
            if gradual and (step < ramp_end and step % cfg.prune_every == 0 or step == ramp_end):
                update_masks(step)
            i = _order(len(calls), cfg.seed, step)
            if i not in teacher_cache:
                with torch.no_grad():
                    teacher_cache[i] = output_tensor(calls[i].run(dense)).detach()
            loss = distill_loss(calls[i].run(student), teacher_cache[i], calls[i], cfg.mse_weight, cfg.cosine_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for n, w in weights.items():
                    w.mul_(float_masks[n])
            losses.append(loss.item())
            step += 1
            now = time.process_time()
            spent, t0 = spent + (now - t0), now
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", cpu_s=f"{spent:.0f}")
            if step % cfg.checkpoint_every == 0:
                save()
    finally:
        for h in hooks:
            h.remove()
        if bar is not None:
            bar.close()
    save()
    if gradual and (not history or history[-1][0] < ramp_end):
        update_masks(cfg.steps)  # stopped before the ramp's end: prune to the final counts (not saved)
    block_masks = {n: m[::block[0], ::block[1]].bool() for n, m in float_masks.items()} if gradual else None
    return {"steps": step, "cpu_seconds": spent, "resumed_from": resumed_from, "losses": losses,
            "masks": block_masks, "sparsity": history}
