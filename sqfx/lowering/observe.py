"""Weight observers: sqfx's min-max symmetric int8 (per-channel / per-tensor) and an adapter for
torch.ao observers or qconfigs (duck-typed: `calculate_qparams()` and `dtype`)."""
from __future__ import annotations

import copy

import torch

from ..format import symmetric_scales

_INT8_DTYPES = (torch.qint8, torch.int8)


class MinMaxSymmetricObserver:
    """max|w| / 127 per output channel (or for the whole tensor), zero point 0."""

    dtype = torch.qint8

    def __init__(self, per_channel: bool = True):
        self.per_channel = per_channel
        self._scales = None

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        self._scales = symmetric_scales(weight.detach().float(), self.per_channel)
        return weight

    def calculate_qparams(self):
        if self._scales is None:
            raise RuntimeError("MinMaxSymmetricObserver: observe a weight before calculate_qparams()")
        scales = self._scales if self.per_channel else self._scales[:1]
        return scales, torch.zeros(scales.shape, dtype=torch.int64)


def make_observer(user_observer, per_channel: bool):
    """A fresh observer for one layer: the user's (copied / instantiated) or sqfx's own."""
    if user_observer is None:
        return MinMaxSymmetricObserver(per_channel)
    if hasattr(user_observer, "calculate_qparams"):
        return copy.deepcopy(user_observer)  # an instance: never share its state across layers
    weight_factory = getattr(user_observer, "weight", None)
    if callable(weight_factory) and not isinstance(user_observer, type):
        return weight_factory()  # a QConfig: its .weight makes the weight observer
    return user_observer()  # an observer class or `Observer.with_args(...)` factory


def weight_scales(weight: torch.Tensor, user_observer, per_channel: bool, fqn: str) -> tuple[torch.Tensor, bool]:
    """Observes the (masked) fp32 weight; returns (scales float32 [N], per_channel)."""
    obs = make_observer(user_observer, per_channel)
    dtype = getattr(obs, "dtype", None)
    if dtype not in _INT8_DTYPES:
        raise ValueError(f"sqfx: layer {fqn!r}: the weight observer must produce int8 (torch.qint8), "
                         f"got dtype {dtype}")
    obs(weight.detach().float())
    scale, zero_point = obs.calculate_qparams()
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    zero_point = torch.as_tensor(zero_point).reshape(-1)
    if bool((zero_point != 0).any()):
        raise ValueError(f"sqfx: layer {fqn!r}: the weight observer gave a non-zero zero point "
                         f"{zero_point.tolist()[:4]}...; sqfx weights are symmetric int8 (zero point 0): "
                         f"use a symmetric qscheme (torch.per_channel_symmetric / per_tensor_symmetric)")
    n = weight.shape[0]
    if scale.numel() not in (1, n):
        raise ValueError(f"sqfx: layer {fqn!r}: the weight observer gave {scale.numel()} scales; expected 1 "
                         f"(per tensor) or {n} (per output channel, ch_axis=0)")
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise ValueError(f"sqfx: layer {fqn!r}: the weight observer gave non-finite or non-positive scales")
    scheme_per_channel = per_channel if user_observer is None else (scale.numel() == n and n > 1)
    return scale.expand(n).contiguous(), scheme_per_channel
