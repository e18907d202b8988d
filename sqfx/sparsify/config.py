"""`SparsifyConfig` / `RecoveryConfig`: how `sqfx.sparsify` chooses masks and recovers accuracy.

Small checked dataclasses in the shape of `SparseQuantConfig` (same block / sparsity / name-pattern
checks, reused from sqfx.config), so a typo or an out-of-range value fails when the config is made.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from ..config import ConfigError, _check_block, _check_choice, _check_name_patterns, _check_sparsity, name_matches

METHODS = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS = ("uniform", "sensitivity")
SCHEDULES = ("fixed", "gradual")


def _check_positive(value, where: str, integer: bool = False, allow_zero: bool = False):
    kind = int if integer else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, kind) or (isinstance(value, float) and math.isnan(value))
    if bad or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"sqfx sparsify config: {where} must be a {'non-negative' if allow_zero else 'positive'} "
                          f"{'int' if integer else 'number'}, got {value!r}")
    return value


@dataclass
class RecoveryConfig:
    """Distillation from the dense model (see sqfx/sparsify/recover.py).

    steps: optimizer steps (one step = one item of the data, cycled in a seeded order).
    max_cpu_seconds: stop early once the process has used this much CPU time (time.process_time,
        all threads), whichever of the two limits comes first. None: steps only.
    lr: AdamW learning rate, with a linear warm-up over warmup_steps then cosine decay to 0.
    mse_weight / cosine_weight: loss = mse_weight * (relative MSE of the output hidden states,
        padding excluded) + cosine_weight * (1 - cosine of the mean-pooled outputs).
    checkpoint_dir: where to write `recovery.pt` every checkpoint_every steps; a run given the
        same directory resumes from it (same seed, same data: the same result).
    schedule: "fixed" (the one-shot masks stay fixed) or "gradual" (Zhu & Gupta 2017): training
        starts from the dense weights and every prune_every steps each layer's block masks are
        recomputed by block L1 magnitude of the current weights at sparsity
        s_f * (1 - (1 - t / T)^3), T = ceil(prune_until * steps), s_f the layer's one-shot sparsity
        (the same block count); from step T on (or when the run stops) the masks are at s_f and fixed.
    """
    steps: int = 200
    max_cpu_seconds: Optional[float] = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 50
    progress: bool = True
    schedule: str = "fixed"
    prune_until: float = 0.5
    prune_every: int = 10

    def __post_init__(self):
        _check_positive(self.steps, "recovery.steps", integer=True, allow_zero=True)
        if self.max_cpu_seconds is not None:
            _check_positive(self.max_cpu_seconds, "recovery.max_cpu_seconds")
        _check_positive(self.lr, "recovery.lr")
        _check_positive(self.weight_decay, "recovery.weight_decay", allow_zero=True)
        _check_positive(self.warmup_steps, "recovery.warmup_steps", integer=True, allow_zero=True)
        _check_positive(self.mse_weight, "recovery.mse_weight", allow_zero=True)
        _check_positive(self.cosine_weight, "recovery.cosine_weight", allow_zero=True)
        if self.mse_weight == 0 and self.cosine_weight == 0:
            raise ConfigError("sqfx sparsify config: recovery needs mse_weight or cosine_weight above 0")
        _check_positive(self.checkpoint_every, "recovery.checkpoint_every", integer=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"sqfx sparsify config: recovery.seed must be an int, got {self.seed!r}")
        _check_choice(self.schedule, SCHEDULES, "recovery.schedule")
        _check_positive(self.prune_until, "recovery.prune_until")
        if self.prune_until > 1:
            raise ConfigError(f"sqfx sparsify config: recovery.prune_until must be in (0, 1] (a fraction of the "
                              f"steps), got {self.prune_until!r}")
        _check_positive(self.prune_every, "recovery.prune_every", integer=True)


@dataclass
class SparsifyConfig:
    """What `sqfx.sparsify` prunes and how.

    target_sparsity: fraction of the selected layers' weight blocks to drop, in [0, 1). With
        allocation="sensitivity" it is the global fraction (weighted by layer size); layers differ.
    method: "magnitude" (block L1 norm), "wanda" (block sum of |W| * ||X_col||, activation-aware),
        or "sparsegpt" (OBS: prune blocks by w^2 / [H^-1]_jj, then update the kept weights of the
        layer from its input Hessian H = X^T X; sequential, so later layers see the pruned earlier ones).
    block: (row_block, col_block); it must divide every selected layer's weight shape.
    allocation: "uniform" (every layer at target_sparsity) or "sensitivity": each layer's effect on
        the model output is measured at the sparsities of sensitivity_grid on the first
        sensitivity_samples data items, and the per-layer sparsities minimising the summed effect
        at the global target are chosen (bounded by max_layer_sparsity).
    layer_sparsity: {fqn: sparsity} fixing chosen layers' sparsity (e.g. a previous run's allocation,
        sqfx.sparsify.allocate.allocate on its report's sensitivities); it wins over `allocation`.
    include / exclude: fnmatch globs / regexes / module types selecting the nn.Linear layers
        (as in SparseQuantConfig). Default: every nn.Linear.
    damp: sparsegpt's dampening, as a fraction of the Hessian's mean diagonal.
    window: sparsegpt's mask-selection window in columns, a multiple of the column block
        (None: the multiple nearest 128).
    recovery: a RecoveryConfig to distil the pruned model toward the dense one, or None.
    """
    target_sparsity: float = 0.5
    method: str = "sparsegpt"
    block: tuple = (1, 4)
    allocation: str = "uniform"
    include: Optional[Sequence] = None
    exclude: Optional[Sequence] = None
    layer_sparsity: Optional[Mapping[str, float]] = None
    sensitivity_grid: tuple = (0.3, 0.5, 0.65, 0.8, 0.9)
    sensitivity_samples: int = 4
    max_layer_sparsity: float = 0.95
    damp: float = 0.01
    window: Optional[int] = None
    sequential: bool = True
    recovery: Optional[RecoveryConfig] = None
    progress: bool = True

    def __post_init__(self):
        if self.target_sparsity is None:
            raise ConfigError("sqfx sparsify config: target_sparsity must be a number in [0, 1), got None")
        self.target_sparsity = _check_sparsity(self.target_sparsity, "target_sparsity")
        _check_choice(self.method, METHODS, "method")
        self.block = _check_block(self.block, "block")
        _check_choice(self.allocation, ALLOCATIONS, "allocation")
        self.include = _check_name_patterns(self.include, "include", allow_types=True)
        self.exclude = _check_name_patterns(self.exclude, "exclude", allow_types=True) or ()
        if self.layer_sparsity is not None:
            if not isinstance(self.layer_sparsity, Mapping):
                raise ConfigError(f"sqfx sparsify config: layer_sparsity must be a dict {{fqn: sparsity}}, "
                                  f"got {type(self.layer_sparsity).__name__}")
            self.layer_sparsity = {str(k): _check_sparsity(v, f"layer_sparsity[{k!r}]")
                                   for k, v in self.layer_sparsity.items()}
        try:
            grid = tuple(sorted({_check_sparsity(float(g), "sensitivity_grid entries") for g in self.sensitivity_grid}))
        except TypeError:
            raise ConfigError(f"sqfx sparsify config: sensitivity_grid must be a list of numbers in [0, 1), "
                              f"got {self.sensitivity_grid!r}") from None
        if not grid:
            raise ConfigError("sqfx sparsify config: sensitivity_grid must not be empty")
        self.sensitivity_grid = grid
        _check_positive(self.sensitivity_samples, "sensitivity_samples", integer=True)
        self.max_layer_sparsity = _check_sparsity(self.max_layer_sparsity, "max_layer_sparsity")
        if self.max_layer_sparsity < self.target_sparsity:
            raise ConfigError(f"sqfx sparsify config: max_layer_sparsity ({self.max_layer_sparsity}) is below "
                              f"target_sparsity ({self.target_sparsity})")
        _check_positive(self.damp, "damp")
        if self.window is None:
            self.window = max(1, round(128 / self.block[1])) * self.block[1]
        _check_positive(self.window, "window", integer=True)
        if self.window % self.block[1]:
            raise ConfigError(f"sqfx sparsify config: window ({self.window}) must be a multiple of the column "
                              f"block ({self.block[1]})")
        if not isinstance(self.sequential, bool) or not isinstance(self.progress, bool):
            raise ConfigError("sqfx sparsify config: sequential and progress must be bools")
        if self.recovery is not None and not isinstance(self.recovery, RecoveryConfig):
            raise ConfigError(f"sqfx sparsify config: recovery must be a RecoveryConfig or None, "
                              f"got {type(self.recovery).__name__}")

    def selects(self, fqn: str, module) -> bool:
        if self.include is not None and not any(name_matches(p, fqn, module) for p in self.include):
            return False
        return not any(name_matches(p, fqn, module) for p in self.exclude)
