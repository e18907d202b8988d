"""Step 1 of every door: a private copy of the model, ready for lowering.

`prepare` copies the model (unless inplace) without sharing any class with the user's model,
collects the masks its modules carry, strips the parametrizations / prune hooks on the copy (so
every IR sees a plain constant weight) and, when a layer's activation is "auto", calibrates on
the example inputs. prepare_and_convert, sqfx.export, the CLI and the demo all start here; the
compile backend receives Dynamo's graph instead of a model, so it starts at step 2
(sqfx.lowering).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from .config import ConfigError, SparseQuantConfig
from .lowering.mask import collect_module_masks, strip_reparametrizations


@dataclass
class ExampleInputs:
    """A model call: positional and keyword arguments."""
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.args or self.kwargs)

    def run(self, model: nn.Module):
        return model(*self.args, **self.kwargs)


def example_call(example_inputs=None, example_kwarg_inputs: Optional[Mapping] = None,
                 where: str = "sqfx") -> Optional[ExampleInputs]:
    """Normalizes a door's example inputs: a tensor, a tuple / list of positional inputs, or a
    dict (e.g. a tokenizer's BatchEncoding) of keyword inputs; plus optional keyword inputs."""
    if example_inputs is None and example_kwarg_inputs is None:
        return None
    kwargs = {}
    if example_kwarg_inputs is not None:
        if not isinstance(example_kwarg_inputs, Mapping):
            raise TypeError(f"{where}: example_kwarg_inputs must be a dict of keyword inputs, "
                            f"got {type(example_kwarg_inputs).__name__}")
        kwargs = dict(example_kwarg_inputs)
    if example_inputs is None:
        args = ()
    elif isinstance(example_inputs, torch.Tensor):
        args = (example_inputs,)
    elif isinstance(example_inputs, Mapping):  # a dict / BatchEncoding: the model's keyword inputs
        args, kwargs = (), {**dict(example_inputs), **kwargs}
    elif isinstance(example_inputs, (tuple, list)):
        args = tuple(example_inputs)
    else:
        raise TypeError(f"{where}: example_inputs must be a tensor, a tuple of inputs or a dict of keyword "
                        f"inputs, got {type(example_inputs).__name__}")
    return ExampleInputs(args, kwargs)


def _own_parametrized_classes(model: nn.Module) -> None:
    """Gives every parametrized module of a *copy* its own class.

    torch.nn.utils.parametrize makes a class per module on the fly (ParametrizedLinear) and puts
    the parametrized tensor's property on it; deepcopy keeps that class, so removing the copy's
    parametrization (which deletes the property from the class) would also break the original.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing mutable with `model`: no tensor, no parametrized class.
    Modules holding computed (non-leaf) tensors, as torch.nn.utils.prune leaves `weight`, are
    copied too (plain deepcopy refuses them)."""
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    work = copy.deepcopy(model, memo)
    _own_parametrized_classes(work)
    return work


@dataclass
class Prepared:
    model: nn.Module                 # the copy (the user's model itself when inplace)
    module_masks: dict               # {fqn: (mask, source)} carried by the modules
    act_modes: Optional[dict]        # {fqn: mode} chosen by calibration, None without "auto"


def prepare(model: nn.Module, config: SparseQuantConfig, example: Optional[ExampleInputs] = None, *,
            inplace: bool = False, where: str = "sqfx") -> Prepared:
    """Copy (unless inplace), collect masks, strip parametrizations, calibrate if asked."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where} expects an nn.Module, got {type(model).__name__}")
    work = model if inplace else copy_model(model)
    work.eval()
    module_masks = collect_module_masks(work)
    strip_reparametrizations(work)
    act_modes = None
    if config.uses_auto_activation():
        if not example:
            raise ConfigError(f'{where}: activation="auto" calibrates on example inputs; pass example_inputs '
                              f'(or example_kwarg_inputs), or choose "dynamic_int8" / "weight_only"')
        from .calibrate import choose_activation_modes

        act_modes = choose_activation_modes(work, example, config, threshold_db=config.act_threshold_db,
                                            masks={**{k: m for k, (m, _) in module_masks.items()}, **config.masks})
    return Prepared(work, module_masks, act_modes)


def run_example(model: nn.Module, example: Any):
    """Calls `model` on an ExampleInputs, a dict of keyword inputs, a tuple, or one tensor."""
    if isinstance(example, ExampleInputs):
        return example.run(model)
    if isinstance(example, Mapping):
        return model(**example)
    if isinstance(example, (tuple, list)):
        return model(*example)
    return model(example)
