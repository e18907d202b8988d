"""Calibration capture: per selected linear, the input Hessian H = sum x x^T over the calibration
tokens (padding excluded when the call carries an attention_mask), from forward hooks.

`layer_groups` orders the layers as the model calls them and groups the ones that read the same
input tensor (q / k / v), so a sequential pass can prune group by group, each one captured on
the outputs of the already-pruned layers before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Call


@dataclass
class InputStats:
    hessian: torch.Tensor  # float64 [K, K], sum of x x^T
    tokens: int = 0

    def col_norms(self) -> torch.Tensor:
        """||X_j||_2 per input column (Wanda's activation norm)."""
        return self.hessian.diagonal().clamp(min=0).sqrt()


class _Stop(Exception):
    """Raised from a hook once every layer of the group has its input: the rest of the forward is not needed."""


def _rows(x: torch.Tensor, call: Call) -> torch.Tensor:
    mask = call.token_mask()
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def layer_groups(model: nn.Module, call: Call, names: list[str]) -> list[list[str]]:
    """The selected layers in call order, those reading one input tensor grouped together.
    Layers never called on this input come last, one group each."""
    seen: list[tuple[str, int]] = []
    handles = []
    for name in names:
        def hook(mod, inputs, name=name):
            if name not in (n for n, _ in seen):
                seen.append((name, id(inputs[0])))
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        call.run(model)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last_id = None
    for name, input_id in seen:
        if groups and input_id == last_id:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_id = input_id
    called = {n for n, _ in seen}
    return groups + [[n] for n in names if n not in called]


@torch.no_grad()
def capture_inputs(model: nn.Module, calls: list[Call], names: list[str], stop_early: bool = False) -> dict[str, InputStats]:
    """{layer name: InputStats} over every call. stop_early: end each forward once all the named
    layers have seen their input (for a sequential pass: the rest of the model is not needed)."""
    stats = {n: None for n in names}
    current: dict = {}
    handles = []
    for name in names:
        def hook(mod, inputs, name=name):
            x = _rows(inputs[0].detach(), current["call"]).double()
            s = stats[name]
            if s is None:
                s = stats[name] = InputStats(torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64))
            s.hessian.addmm_(x.T, x)
            s.tokens += x.shape[0]
            current["pending"].discard(name)
            if stop_early and not current["pending"]:
                raise _Stop
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for call in calls:
            current.update(call=call, pending=set(names))
            try:
                call.run(model)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    for name, s in stats.items():
        if s is None:
            k = model.get_submodule(name).in_features
            stats[name] = InputStats(torch.zeros(k, k, dtype=torch.float64))
    return stats
