"""Finds `linear` and `linear -> relu` in FX graphs of every IR sqfx meets; knows nothing of packing.

See sqfx/patterns/linear_relu.py for the pattern table and why it is a node walk.
"""
from .linear_relu import (
    LINEAR_FUNCTIONS,
    RELU_FUNCTIONS,
    RELU_METHODS,
    LinearMatch,
    ParamRef,
    dynamo_param_resolver,
    find_linear_matches,
)

__all__ = ["LINEAR_FUNCTIONS", "RELU_FUNCTIONS", "RELU_METHODS", "LinearMatch", "ParamRef",
           "dynamo_param_resolver", "find_linear_matches"]
