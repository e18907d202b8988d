"""Lowering (step 2 of every door): per linear, skip rules -> mask -> observe -> pack -> kernel /
mode -> report row (layer.py), emitted as an op call in a graph (rewrite.py) or as a
SparseQuantLinear in a module tree (swap.py)."""
from .layer import LayerLowering, LayerUse, LoweredLayer, lower_layer
from .mask import block_magnitude_mask, choose_mask, collect_module_masks, strip_reparametrizations
from .observe import MinMaxSymmetricObserver, weight_scales
from .report import ConversionReport, LayerReport, SkippedLayer, sqnr_db
from .rewrite import convert_dynamo_graph, convert_graph
from .swap import swap_modules

__all__ = ["ConversionReport", "LayerLowering", "LayerReport", "LayerUse", "LoweredLayer", "MinMaxSymmetricObserver",
           "SkippedLayer", "block_magnitude_mask", "choose_mask", "collect_module_masks", "convert_dynamo_graph",
           "convert_graph", "lower_layer", "sqnr_db", "strip_reparametrizations", "swap_modules", "weight_scales"]
