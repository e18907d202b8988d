"""What sparsify did, per layer and overall (print it for a table)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SparsifiedLayer:
    fqn: str
    shape: tuple
    block: tuple
    sparsity: float               # fraction of blocks dropped
    method: str
    reconstruction_error: float   # ||(W_dense - W) X||^2 / ||W_dense X||^2 on the captured inputs
    sensitivity: Optional[list] = None  # output loss with this layer alone pruned at each grid point


@dataclass
class SparsifyReport:
    method: str
    allocation: str
    target_sparsity: float
    layers: list = field(default_factory=list)
    loss_one_shot: float = float("nan")     # distillation loss vs the dense model on the data, after pruning
    loss_final: float = float("nan")        # the same after recovery (= loss_one_shot without recovery)
    recovery: Optional[dict] = None         # {"steps", "cpu_seconds", "resumed_from"}
    cpu_seconds: float = 0.0                # time.process_time spent in sparsify, recovery included

    @property
    def sparsity(self) -> float:
        """Block sparsity over all pruned layers, weighted by their size."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        return sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers) / total if total else 0.0

    def __str__(self) -> str:
        head = f"{'layer':<44} {'shape':>10} {'block':>5} {'sparsity':>8} {'method':>10} {'rel. err':>9}"
        out = [head, "-" * len(head)]
        for r in self.layers:
            out.append(f"{r.fqn[-44:]:<44} {f'{r.shape[0]}x{r.shape[1]}':>10} {f'{r.block[0]}x{r.block[1]}':>5} "
                       f"{r.sparsity:>8.3f} {r.method:>10} {r.reconstruction_error:>9.4f}")
        out.append(f"{len(self.layers)} layers, {self.method}, allocation {self.allocation}, block sparsity "
                   f"{self.sparsity:.3f} (target {self.target_sparsity:g}); output loss vs dense "
                   f"{self.loss_one_shot:.4f} one-shot" + (f", {self.loss_final:.4f} after {self.recovery['steps']} "
                                                           f"recovery steps ({self.recovery['cpu_seconds']:.0f} CPU s)"
                                                           if self.recovery else "")
                   + f"; {self.cpu_seconds:.0f} CPU s in all")
        return "\n".join(out)
