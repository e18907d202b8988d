"""The conversion report: what happened to every linear layer."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of `approx` against `reference`, in dB (inf when equal)."""
    signal = float(reference.double().pow(2).sum())
    noise = float((reference.double() - approx.double()).pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


@dataclass
class LayerReport:
    fqn: str
    in_features: int
    out_features: int
    block: tuple
    sparsity: float          # fraction of blocks dropped
    scheme: str              # "int8 per_channel" / "int8 per_tensor"
    relu_fused: bool
    sqnr_db: float           # dequantized weight vs the masked fp32 weight
    mask_source: str
    matched: str             # how the linear appeared in the graph
    shared_with: Optional[str] = None  # the layer whose packed buffers this one reuses
    activation: str = "dynamic_int8"   # "dynamic_int8" | "weight_only"
    kernel: str = ""                   # the kernel the op will run (PackedLinear.kernel)


@dataclass
class SkippedLayer:
    fqn: str
    reason: str


@dataclass
class ConversionReport:
    """Returned as `converted.sqfx_report` by sqfx.prepare_and_convert."""
    capture: str                                  # "symbolic_trace" | "torch.export" | "module_swap" | "graph"
    layers: list = field(default_factory=list)    # [LayerReport]
    skipped: list = field(default_factory=list)   # [SkippedLayer]
    notes: list = field(default_factory=list)     # why earlier capture paths failed, etc.

    def __getitem__(self, fqn: str) -> LayerReport:
        for layer in self.layers:
            if layer.fqn == fqn:
                return layer
        raise KeyError(f"sqfx report: no converted layer named {fqn!r}; converted: {[l.fqn for l in self.layers]}")

    @property
    def converted(self) -> list:
        return [layer.fqn for layer in self.layers]

    def __str__(self) -> str:
        head = ("layer", "shape (out x in)", "block", "sparsity", "scheme", "activations", "kernel", "relu", "SQNR dB", "mask",
                "matched")
        rows = [head]
        for l in self.layers:
            sqnr = "-" if math.isnan(l.sqnr_db) else "inf" if math.isinf(l.sqnr_db) else f"{l.sqnr_db:.1f}"
            rows.append((l.fqn, f"{l.out_features} x {l.in_features}", f"{l.block[0]}x{l.block[1]}",
                         f"{l.sparsity:.1%}", l.scheme, l.activation, l.kernel, "fused" if l.relu_fused else "-", sqnr,
                         l.mask_source + (f" (shared with {l.shared_with})" if l.shared_with else ""), l.matched))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [f"sqfx conversion report (capture: {self.capture}): {len(self.layers)} converted, "
                 f"{len(self.skipped)} skipped"]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for s in self.skipped:
            lines.append(f"skipped {s.fqn}: {s.reason}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    __repr__ = __str__
