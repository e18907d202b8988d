"""Non-uniform per-layer sparsity for a global target, from measured sensitivity.

Each layer alone is pruned (by the configured method) at every sparsity of a grid and the model's
output loss against the dense model (sqfx.sparsify.loss.distill_loss) is measured on a few data
items. Assuming the layers' losses add up, the allocation minimising the summed loss at the
global block budget is found greedily on each layer's lower convex hull: repeatedly move the layer
whose next step costs the least loss per dropped block, the last step cut to land on the target.
This is what lets a small distilled model like MiniLM keep its sensitive FFN-input layers denser
while attention projections, which tolerate far more, carry the sparsity.
"""
from __future__ import annotations

import torch
from torch import nn

from .capture import InputStats
from .data import Call
from .loss import distill_loss
from .methods import prune_weight


@torch.no_grad()
def measure_sensitivity(model: nn.Module, layers: dict[str, nn.Linear], stats: dict[str, InputStats],
                        calls: list[Call], teacher: list[torch.Tensor], grid, method: str, block,
                        damp: float, window: int, progress=None) -> dict[str, list[float]]:
    """{layer: [loss with only that layer pruned at g, for g in grid]}."""
    out = {}
    for name, lin in layers.items():
        original = lin.weight.data.clone()
        losses = []
        for g in grid:
            lin.weight.data.copy_(prune_weight(method, original, stats[name], block, g, damp, window)[0])
            losses.append(float(sum(distill_loss(c.run(model), t, c) for c, t in zip(calls, teacher)) / len(calls)))
        lin.weight.data.copy_(original)
        out[name] = losses
        if progress is not None:
            progress.update(1)
    return out


def allocate(sensitivity: dict[str, list[float]], n_blocks: dict[str, int], grid, target: float,
             max_sparsity: float) -> dict[str, float]:
    """Per-layer sparsities, their block-weighted mean equal to `target` (up to block rounding)."""
    points = {}
    for name, losses in sensitivity.items():
        pts, best = [(0.0, 0.0)], 0.0
        for g, loss in zip(grid, losses):
            if 0 < g <= max_sparsity:
                best = max(best, loss)  # more pruning never helps: make the curve monotone
                pts.append((g, best))
        if pts[-1][0] < max_sparsity:  # allow the cap itself, priced by extrapolating the last slope
            (g0, l0), (g1, l1) = pts[-2] if len(pts) > 1 else (0.0, 0.0), pts[-1]
            slope = (l1 - l0) / (g1 - g0) if g1 > g0 else 0.0
            pts.append((max_sparsity, l1 + slope * (max_sparsity - g1)))
        points[name] = pts
    total = sum(n_blocks.values())
    need = target * total
    at = {name: 0 for name in points}
    done = 0.0
    while done < need - 1e-9:
        best = None
        for name, pts in points.items():
            i = at[name]
            for j in range(i + 1, len(pts)):
                gain = (pts[j][0] - pts[i][0]) * n_blocks[name]
                cost = (pts[j][1] - pts[i][1]) / gain
                if best is None or cost < best[0]:
                    best = (cost, name, j, gain)
        if best is None:
            break
        _, name, j, gain = best
        if done + gain > need:  # land on the target inside this step
            frac = (need - done) / gain
            g_from = points[name][at[name]][0]
            g_to = points[name][j][0]
            points[name] = points[name][:at[name] + 1] + [(g_from + frac * (g_to - g_from), 0.0)]
            at[name] = len(points[name]) - 1
            break
        done += gain
        at[name] = j
    return {name: points[name][at[name]][0] for name in points}
