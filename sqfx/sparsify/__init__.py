"""sqfx.sparsify: from a dense model to a block-sparse one that keeps its accuracy.

Finds block masks on the fp32 weights (magnitude, Wanda-style activation-aware scores, or
SparseGPT-style OBS reconstruction; uniform or sensitivity-allocated per-layer sparsity) and can
distil the pruned model toward the dense one with the masks fixed. It feeds masks to conversion
and knows nothing of packing:

    sparse = sqfx.sparsify(model, batches, sqfx.SparsifyConfig(target_sparsity=0.5))
    qconfig = sqfx.SparseQuantConfig(masks=sparse.sqfx_masks, include=list(sparse.sqfx_masks))
    converted = sqfx.prepare_and_convert(sparse, qconfig, example_inputs)
"""
import sys
import types

from .allocate import allocate
from .api import selected_linears, sparsify
from .config import ALLOCATIONS, METHODS, RecoveryConfig, SparsifyConfig
from .report import SparsifiedLayer, SparsifyReport

__all__ = ["ALLOCATIONS", "allocate", "METHODS", "RecoveryConfig", "SparsifiedLayer", "SparsifyConfig", "SparsifyReport",
           "selected_linears", "sparsify"]


class _CallablePackage(types.ModuleType):
    """`sqfx.sparsify(model, data, config)` calls sparsify(); `sqfx.sparsify.<module>` stays the
    package, so `import sqfx.sparsify.text` and friends work as usual (no name clash)."""

    def __call__(self, model, data, config=None, **kwargs):
        return sparsify(model, data, config, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
