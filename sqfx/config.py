"""`SparseQuantConfig`: what to convert and how, with per-layer overrides by FQN pattern.

One small dataclass in the shape torchao users know (`filter_fn(module, fqn)` chooses layers).
Every value is checked when the config is made, so a typo fails at once, naming the field.

Name patterns (include / exclude / overrides keys): a `str` is an fnmatch glob matched against
the layer's fully qualified name (`"encoder.*.fc1"`, `"head"`); a compiled `re.Pattern` is used
with `fullmatch`; a `type` (include / exclude only) matches layers whose module is an instance.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from .format import LAYOUTS

# How a converted layer treats its activations: "dynamic_int8" quantizes them per row to uint8
# (the integer kernel, sqfx::qlinear_dynamic); "weight_only" keeps them fp32 and dequantizes the
# int8 weights on the fly (sqfx::qlinear_weight_only), for layers whose inputs have outliers.
ACT_MODES = ("dynamic_int8", "weight_only")
# The config may also say "auto": chosen per layer by calibration (sqfx.calibrate).
ACTIVATION_MODES = ACT_MODES + ("auto",)
DEFAULT_ACT_THRESHOLD_DB = 30.0  # activation="auto": weight_only below this dynamic-int8 SQNR
PRUNE_NORMS = ("l1", "l2")
UNSTRUCTURED_MASK_POLICIES = ("error", "coarsen")
# Fields a per-layer override may set (the rest are global by nature).
OVERRIDABLE = ("block", "target_sparsity", "prune_norm", "per_channel", "observer", "fuse_relu",
               "activation", "layout", "skip")


class ConfigError(ValueError):
    """A SparseQuantConfig field holds a bad value."""


def _check_block(block, where: str) -> tuple[int, int]:
    try:
        rb, cb = (int(b) for b in block)
        ok = all(isinstance(b, int) or float(b).is_integer() for b in block)
    except (TypeError, ValueError):
        raise ConfigError(f"sqfx config: {where} must be a pair (row_block, col_block), got {block!r}") from None
    if not ok or rb <= 0 or cb <= 0:
        raise ConfigError(f"sqfx config: {where} must be two positive ints, got {block!r}")
    return rb, cb


def _check_sparsity(s, where: str):
    if s is None:
        return None
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= float(s) < 1.0) or math.isnan(s):
        raise ConfigError(f"sqfx config: {where} must be None or a number in [0, 1), got {s!r}")
    return float(s)


def _check_choice(value, choices, where: str):
    if value not in choices:
        raise ConfigError(f"sqfx config: {where} must be one of {list(choices)}, got {value!r}")
    return value


def _check_bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"sqfx config: {where} must be a bool, got {value!r}")
    return value


def _check_observer(obs, where: str):
    """Accepts None, an observer instance/factory with calculate_qparams, or a qconfig with .weight."""
    if obs is None:
        return None
    looks_like_observer = hasattr(obs, "calculate_qparams") or callable(obs) or callable(getattr(obs, "weight", None))
    if not looks_like_observer:
        raise ConfigError(
            f"sqfx config: {where} must be a torch.ao observer (with calculate_qparams), an observer "
            f"class/factory, or a qconfig with a .weight observer; got {type(obs).__name__}")
    return obs


def _check_name_patterns(patterns, where: str, allow_types: bool) -> tuple:
    if patterns is None:
        return None
    if isinstance(patterns, (str, re.Pattern, type)):
        patterns = [patterns]
    try:
        patterns = tuple(patterns)
    except TypeError:
        raise ConfigError(f"sqfx config: {where} must be a list of names/regexes/types, got {patterns!r}") from None
    for p in patterns:
        if isinstance(p, type):
            if not allow_types:
                raise ConfigError(f"sqfx config: {where} keys must be names or regexes, got type {p.__name__}")
        elif not isinstance(p, (str, re.Pattern)):
            raise ConfigError(f"sqfx config: {where} entries must be str (glob), re.Pattern or a module type, got {p!r}")
    return patterns


def name_matches(pattern, fqn: str, module=None) -> bool:
    """Whether one include/exclude/override pattern selects the layer `fqn` (module optional)."""
    if isinstance(pattern, type):
        return module is not None and isinstance(module, pattern)
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(fqn) is not None
    return fnmatch.fnmatchcase(fqn, pattern)


@dataclass(frozen=True)
class LayerSettings:
    """The settings that apply to one layer once the overrides are resolved."""
    block: tuple[int, int]
    target_sparsity: Optional[float]
    prune_norm: str
    per_channel: bool
    observer: Any
    fuse_relu: bool
    activation: str = "dynamic_int8"
    layout: str = "auto"


@dataclass
class SparseQuantConfig:
    """How sqfx converts linear layers (see docs/usage.md).

    block: (row_block, col_block) of the block-sparse format.
    target_sparsity: fraction of blocks to drop by block-magnitude pruning when a layer has no
        mask of its own (None: no pruning; blocks that are all zero are still skipped).
    prune_norm: "l1" or "l2", the per-block norm ranked by the pruning.
    per_channel: per-output-channel weight scales (else one per-tensor scale).
    activation: "dynamic_int8" (activations quantized per row to uint8 on the fly: the fast
        path), "weight_only" (fp32 activations x int8 weights), or "auto": per layer, from a
        short calibration on prepare_and_convert's example_inputs (weight_only where the
        dynamic-int8 output's SQNR is below act_threshold_db).
    act_threshold_db: the SQNR threshold of activation="auto".
    layout: "auto" (default: the dense int8 layout where the layer's block sparsity is too low for
        the sparse kernel to win, see sqfx.format.DENSE_BELOW_SPARSITY), "sparse" or "dense".
    filter_fn: `filter_fn(module, fqn) -> bool`, a layer is converted only if it returns True.
        `module` is the nn.Linear when it is known (it may be None for Dynamo graphs).
    include / exclude: names (fnmatch globs), compiled regexes or module types. A layer must
        match some include entry (when given) and no exclude entry.
    min_features: skip layers with in_features * out_features below this.
    overrides: {fqn pattern: {field: value}} for the fields in OVERRIDABLE (plus "skip": True).
        Patterns are tried in order; every matching one applies, later ones win.
    masks: {fqn: mask}; an element mask [out, in] or a block mask [out/rb, in/cb]. Wins over
        every other mask source.
    observer: a torch.ao weight observer (instance or factory) or a qconfig with a `.weight`
        observer; its zero point must be 0 (symmetric int8). None: sqfx's min-max observer.
    on_unstructured_mask: "error" (default) or "coarsen" (keep every block with a kept weight,
        zero the pruned weights, and warn) when a given mask is not block-structured.
    fuse_relu: fold a ReLU that is the linear's only user into the op.
    inplace: convert the given model in place (prepare_and_convert's `inplace=` also sets it).
    """

    block: tuple = (1, 4)
    target_sparsity: Optional[float] = None
    prune_norm: str = "l1"
    per_channel: bool = True
    activation: str = "dynamic_int8"
    act_threshold_db: float = DEFAULT_ACT_THRESHOLD_DB
    layout: str = "auto"
    filter_fn: Optional[Callable[[Any, str], bool]] = None
    include: Optional[Sequence] = None
    exclude: Optional[Sequence] = None
    min_features: int = 0
    overrides: Mapping[Any, Mapping[str, Any]] = field(default_factory=dict)
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    observer: Any = None
    on_unstructured_mask: str = "error"
    fuse_relu: bool = True
    inplace: bool = False

    def __post_init__(self):
        self.block = _check_block(self.block, "block")
        self.target_sparsity = _check_sparsity(self.target_sparsity, "target_sparsity")
        _check_choice(self.prune_norm, PRUNE_NORMS, "prune_norm")
        _check_bool(self.per_channel, "per_channel")
        _check_choice(self.activation, ACTIVATION_MODES, "activation")
        _check_choice(self.layout, LAYOUTS, "layout")
        if isinstance(self.act_threshold_db, bool) or not isinstance(self.act_threshold_db, (int, float)) \
                or self.act_threshold_db != self.act_threshold_db:
            raise ConfigError(f"sqfx config: act_threshold_db must be a number, got {self.act_threshold_db!r}")
        if self.filter_fn is not None and not callable(self.filter_fn):
            raise ConfigError(f"sqfx config: filter_fn must be callable(module, fqn), got {self.filter_fn!r}")
        self.include = _check_name_patterns(self.include, "include", allow_types=True)
        self.exclude = _check_name_patterns(self.exclude, "exclude", allow_types=True) or ()
        if isinstance(self.min_features, bool) or not isinstance(self.min_features, int) or self.min_features < 0:
            raise ConfigError(f"sqfx config: min_features must be a non-negative int, got {self.min_features!r}")
        if not isinstance(self.overrides, Mapping):
            raise ConfigError(f"sqfx config: overrides must be a dict {{fqn pattern: {{field: value}}}}, got {type(self.overrides).__name__}")
        checked = {}
        for pattern, values in self.overrides.items():
            _check_name_patterns([pattern], "overrides", allow_types=False)
            if not isinstance(values, Mapping):
                raise ConfigError(f"sqfx config: overrides[{pattern!r}] must be a dict of fields, got {values!r}")
            unknown = sorted(set(values) - set(OVERRIDABLE))
            if unknown:
                raise ConfigError(f"sqfx config: overrides[{pattern!r}] has unknown field(s) {unknown}; "
                                  f"a per-layer override may set {list(OVERRIDABLE)}")
            checked[pattern] = self._check_layer_fields(dict(values), f"overrides[{pattern!r}]")
        self.overrides = checked
        if not isinstance(self.masks, Mapping):
            raise ConfigError(f"sqfx config: masks must be a dict {{fqn: mask tensor}}, got {type(self.masks).__name__}")
        for fqn, mask in self.masks.items():
            if not isinstance(fqn, str) or not isinstance(mask, torch.Tensor):
                raise ConfigError(f"sqfx config: masks must map fqn strings to tensors, got {fqn!r}: {type(mask).__name__}")
        self.masks = dict(self.masks)
        self.observer = _check_observer(self.observer, "observer")
        _check_choice(self.on_unstructured_mask, UNSTRUCTURED_MASK_POLICIES, "on_unstructured_mask")
        _check_bool(self.fuse_relu, "fuse_relu")
        _check_bool(self.inplace, "inplace")

    @staticmethod
    def _check_layer_fields(values: dict, where: str) -> dict:
        checks = {
            "block": lambda v: _check_block(v, f"{where}.block"),
            "target_sparsity": lambda v: _check_sparsity(v, f"{where}.target_sparsity"),
            "prune_norm": lambda v: _check_choice(v, PRUNE_NORMS, f"{where}.prune_norm"),
            "per_channel": lambda v: _check_bool(v, f"{where}.per_channel"),
            "observer": lambda v: _check_observer(v, f"{where}.observer"),
            "fuse_relu": lambda v: _check_bool(v, f"{where}.fuse_relu"),
            "activation": lambda v: _check_choice(v, ACTIVATION_MODES, f"{where}.activation"),
            "layout": lambda v: _check_choice(v, LAYOUTS, f"{where}.layout"),
            "skip": lambda v: _check_bool(v, f"{where}.skip"),
        }
        return {k: checks[k](v) for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SparseQuantConfig":
        """Builds a config from a plain dict, naming any unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"sqfx config: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)

    # ---- per-layer resolution ----
    def skip_reason(self, fqn: str, module=None, in_features: int = 0, out_features: int = 0) -> Optional[str]:
        """Why the layer is not converted, or None when it is."""
        if self.include is not None and not any(name_matches(p, fqn, module) for p in self.include):
            return "not included"
        if any(name_matches(p, fqn, module) for p in self.exclude):
            return "excluded"
        if in_features * out_features < self.min_features:
            return f"smaller than min_features={self.min_features}"
        if self._override_values(fqn).get("skip", False):
            return "skipped by override"
        if self.filter_fn is not None and not self.filter_fn(module, fqn):
            return "filter_fn returned False"
        return None

    def _override_values(self, fqn: str) -> dict:
        merged: dict = {}
        for pattern, values in self.overrides.items():
            if name_matches(pattern, fqn):
                merged.update(values)
        return merged

    def uses_auto_activation(self) -> bool:
        """True when some layer's activation mode is "auto" (it then needs calibration inputs)."""
        return self.activation == "auto" or any(v.get("activation") == "auto" for v in self.overrides.values())

    def settings_for(self, fqn: str) -> LayerSettings:
        values = {
            "block": self.block, "target_sparsity": self.target_sparsity, "prune_norm": self.prune_norm,
            "per_channel": self.per_channel, "observer": self.observer, "fuse_relu": self.fuse_relu,
            "activation": self.activation, "layout": self.layout,
        }
        values.update({k: v for k, v in self._override_values(fqn).items() if k != "skip"})
        return LayerSettings(**values)


def as_config(config) -> SparseQuantConfig:
    """None -> defaults; a dict -> from_dict; a SparseQuantConfig passes through."""
    if config is None:
        return SparseQuantConfig()
    if isinstance(config, SparseQuantConfig):
        return config
    if isinstance(config, Mapping):
        return SparseQuantConfig.from_dict(config)
    raise ConfigError(f"sqfx: config must be a SparseQuantConfig, a dict or None, got {type(config).__name__}")
