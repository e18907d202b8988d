"""Block-mask pruning of one linear's weight [N, K] at a given sparsity.

- magnitude: block L1 norm (sqfx.lowering.mask.block_magnitude_mask, the converter's own rule);
- wanda: the same ranking on |W_ij| * ||X_j||_2 (activation-aware: a small weight on a loud input
  column matters);
- sparsegpt: Optimal Brain Surgeon in SparseGPT's column sweep. With U the upper Cholesky factor
  of H^-1 (H = X^T X + damping), columns are visited left to right; in each window of columns the
  blocks of least sum of w^2 / U_jj^2 are dropped, and every dropped weight's error is spread over
  the not-yet-visited columns of its row (w_:, j+1: -= err_j U_j, j+1:), so the kept weights
  compensate. Dropped counts are rounded cumulatively so the layer's sparsity is exact.
"""
from __future__ import annotations

import torch

from ..lowering.mask import _expand, block_magnitude_mask
from .capture import InputStats


def magnitude_mask(weight: torch.Tensor, block, sparsity: float) -> torch.Tensor:
    return block_magnitude_mask(weight, block, sparsity, "l1")


def wanda_mask(weight: torch.Tensor, stats: InputStats, block, sparsity: float) -> torch.Tensor:
    score = weight.detach().abs().double() * stats.col_norms()[None, :]
    return block_magnitude_mask(score, block, sparsity, "l1")


def _damped_hessian(stats: InputStats, damp: float) -> torch.Tensor:
    h = stats.hessian.clone()
    diag = h.diagonal()
    dead = diag <= 0
    diag[dead] = 1.0  # an input that is always 0: its weights do not matter, keep H invertible
    diag += damp * diag.mean()
    return h


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, stats: InputStats, block, sparsity: float, damp: float = 0.01,
                    window: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(updated weight with the dropped blocks zeroed, bool block mask [N/rb, K/cb])."""
    rb, cb = block
    w = weight.detach().double().clone()
    n, k = w.shape
    h = _damped_hessian(stats, damp)
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:  # numerically singular even after damping: damp harder once
        h.diagonal().add_(h.diagonal().mean())
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    n_rb = n // rb
    block_mask = torch.ones(n_rb, k // cb, dtype=torch.bool)
    total_blocks = n_rb * (k // cb)
    dropped = 0
    for i1 in range(0, k, window):
        i2 = min(i1 + window, k)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        # Dropped blocks so far should be round(sparsity * blocks seen so far).
        want = int(round(sparsity * n_rb * (i2 // cb))) - dropped
        score = w1 / u1.diagonal()[None, :]
        n_win = score.numel() // (rb * cb)
        win_mask = block_magnitude_mask(score, block, want / n_win, "l2") if want > 0 else \
            torch.ones(n_rb, (i2 - i1) // cb, dtype=torch.bool)
        dropped += int((~win_mask).sum())
        block_mask[:, i1 // cb:i2 // cb] = win_mask
        keep = _expand(win_mask, w1.shape, block).double()
        err = torch.zeros_like(w1)
        for j in range(i2 - i1):
            col = w1[:, j]
            e = col * (1 - keep[:, j]) / u1[j, j]
            w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
            err[:, j] = e
        w[:, i1:i2] = w1 * keep
        w[:, i2:] -= err @ u[i1:i2, i2:]
    assert dropped == int(round(sparsity * total_blocks))
    return w.to(weight.dtype), block_mask


def prune_weight(method: str, weight: torch.Tensor, stats: InputStats, block, sparsity: float,
                 damp: float, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned weight, bool block mask) for one layer by the named method."""
    if method == "sparsegpt":
        return sparsegpt_prune(weight, stats, block, sparsity, damp, window)
    mask = magnitude_mask(weight, block, sparsity) if method == "magnitude" else \
        wanda_mask(weight, stats, block, sparsity)
    return weight.detach() * _expand(mask, weight.shape, block).to(weight.dtype), mask


def reconstruction_error(reference: torch.Tensor, pruned: torch.Tensor, stats: InputStats) -> float:
    """||(W_ref - W) X||^2 / ||W_ref X||^2 on the captured inputs (0: the layer output is unchanged)."""
    if stats.tokens == 0:
        return float("nan")
    ref = reference.detach().double()
    d = ref - pruned.detach().double()
    num = torch.einsum("nk,kl,nl->", d, stats.hessian, d)
    den = torch.einsum("nk,kl,nl->", ref, stats.hessian, ref)
    return float(num / den) if den > 0 else float("nan")
