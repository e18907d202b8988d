"""Model inputs for sparsify: an iterable of tensors, tuples of positional arguments, or dicts of
keyword arguments (no labels). Each item is one forward call (one batch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch


@dataclass
class Call:
    """One forward call: model(*args, **kwargs)."""
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def run(self, model):
        return model(*self.args, **self.kwargs)

    def token_mask(self):
        """The [batch, seq] attention mask when the call has one (padding tokens are 0), else None."""
        m = self.kwargs.get("attention_mask")
        return m if isinstance(m, torch.Tensor) and m.dim() == 2 else None


def as_calls(data, what: str = "data") -> list[Call]:
    """The data as a list of Calls; a clear error for an empty or ill-formed iterable."""
    if isinstance(data, (torch.Tensor, Mapping)) or (isinstance(data, tuple) and data
                                                     and all(isinstance(t, torch.Tensor) for t in data)):
        raise TypeError(f"sqfx.sparsify: {what} must be an iterable of model inputs (a list of batches), got a "
                        f"single {type(data).__name__}; wrap it in a list: [{type(data).__name__.lower()}]")
    try:
        items = list(data)
    except TypeError:
        raise TypeError(f"sqfx.sparsify: {what} must be an iterable of model inputs (tensors, tuples of "
                        f"tensors, or dicts of keyword arguments), got {type(data).__name__}") from None
    if not items:
        raise ValueError(f"sqfx.sparsify: {what} is empty; give at least one batch of model inputs")
    calls = []
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            calls.append(Call((item,)))
        elif isinstance(item, Mapping):
            if not all(isinstance(k, str) for k in item):
                raise TypeError(f"sqfx.sparsify: {what}[{i}] is a dict whose keys are not all strings")
            calls.append(Call((), dict(item)))
        elif isinstance(item, (tuple, list)):
            calls.append(Call(tuple(item)))
        else:
            raise TypeError(f"sqfx.sparsify: {what}[{i}] is a {type(item).__name__}; each item must be a tensor, "
                            f"a tuple of positional arguments or a dict of keyword arguments")
    return calls


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a model output stands for: itself, a ModelOutput's / dict's first tensor
    (HF: last_hidden_state), or a tuple's first element."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"sqfx.sparsify: cannot find a tensor in the model's output ({type(out).__name__}); "
                    "the model must return a tensor, a tuple starting with one, or a dict / ModelOutput")
