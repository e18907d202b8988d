"""The one measure of how far the pruned model's output is from the dense one's: used to rank
layer sensitivity, as the distillation loss, and in the report."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import Call, output_tensor


def pooled(hidden: torch.Tensor, call: Call) -> torch.Tensor:
    """Mean over the attended tokens for a [B, T, H] output (sentence embedding), else the output flattened per row."""
    mask = call.token_mask()
    if hidden.dim() == 3:
        if mask is not None and tuple(mask.shape) == tuple(hidden.shape[:2]):
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return hidden.mean(1)
    return hidden.reshape(hidden.shape[0], -1) if hidden.dim() > 1 else hidden[None]


def distill_loss(student_out, teacher: torch.Tensor, call: Call, mse_weight: float = 1.0,
                 cosine_weight: float = 1.0) -> torch.Tensor:
    """mse_weight * relative MSE of the outputs (padding tokens excluded) + cosine_weight * (1 - cosine of
    the pooled outputs). `teacher` is output_tensor(dense model output), detached."""
    s = output_tensor(student_out).float()
    t = teacher.float()
    loss = s.new_zeros(())
    if mse_weight:
        mask = call.token_mask()
        if mask is not None and s.dim() == 3 and tuple(mask.shape) == tuple(s.shape[:2]):
            sel = mask.bool()
            diff, ref = s[sel] - t[sel], t[sel]
        else:
            diff, ref = s - t, t
        loss = loss + mse_weight * diff.pow(2).sum() / ref.pow(2).sum().clamp(min=1e-12)
    if cosine_weight:
        loss = loss + cosine_weight * (1 - F.cosine_similarity(pooled(s, call), pooled(t, call), dim=-1)).mean()
    return loss
