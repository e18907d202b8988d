"""Lowering: for one match and the config, mask -> observe -> pack -> emit the op call."""
from .layer import LoweredLayer, lower_layer
from .mask import block_magnitude_mask, choose_mask, collect_module_masks, strip_reparametrizations
from .observe import MinMaxSymmetricObserver, weight_scales
from .report import ConversionReport, LayerReport, SkippedLayer
from .rewrite import convert_dynamo_graph, convert_graph

__all__ = ["ConversionReport", "LayerReport", "LoweredLayer", "MinMaxSymmetricObserver", "SkippedLayer",
           "block_magnitude_mask", "choose_mask", "collect_module_masks", "convert_dynamo_graph", "convert_graph", "lower_layer",
           "strip_reparametrizations", "weight_scales"]
