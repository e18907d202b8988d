"""The `linear` / `linear -> relu` pattern, described once for the three IRs sqfx meets.

| IR                     | linear                                         | weight / bias come from        | relu                                     |
|------------------------|------------------------------------------------|--------------------------------|------------------------------------------|
| fx.symbolic_trace      | call_module nn.Linear, F.linear (= torch._C._nn.linear) | the module / get_attr  | nn.ReLU, F.relu, torch.relu(_), Tensor.relu(_), LinearReLU |
| Dynamo graph           | torch._C._nn.linear                            | placeholders (graph inputs)    | F.relu / torch.relu / Tensor.relu        |
| torch.export (pre-decomposition, `ep.module()`) | aten.linear.default   | get_attr                       | aten.relu.default / aten.relu_.default   |

A linear with a transposed weight, `addmm(bias, x, W)` with W a constant `[in, out]` (what
transformers' `Conv1D`, the GPT-2 family's linear, runs), is matched too (`torch.addmm` in
Dynamo graphs, `aten.addmm.default` in torch.export's); its match says `weight_transposed`.
A symbolic_trace graph keeps Conv1D as a call_module (see `linear_like`).

Why a node walk and not `torch.fx.subgraph_rewriter` / `SubgraphMatcher`: those match nodes by
`op` and `target` with placeholders standing for any argument. That cannot express what sqfx
needs: (1) a `call_module` nn.Linear hides its weight inside the module and SubgraphMatcher
compares call_module targets by name; (2) the weight must be a *constant* (get_attr in one IR, a
graph input that the caller knows to be a parameter in Dynamo) and the matcher has no predicate
for that; (3) bias is a node, a literal None, or absent, positionally or by keyword, which would
need a pattern per spelling and per IR. So the pattern is the three small tables below
(linear targets, relu targets, relu methods) plus one walk that reads any of them; the walk
looks at one node and its only user, no more.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

aten = torch.ops.aten

# F.linear *is* torch._C._nn.linear; both names are listed so the table reads as documentation.
LINEAR_FUNCTIONS = frozenset({F.linear, torch._C._nn.linear, aten.linear.default})
RELU_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, aten.relu.default, aten.relu_.default})
RELU_METHODS = frozenset({"relu", "relu_"})
ADDMM_FUNCTIONS = frozenset({torch.addmm, aten.addmm.default})
_LINEAR_ARG_NAMES = ("input", "weight", "bias")


@dataclass(frozen=True)
class ParamRef:
    """A constant tensor of the graph: its fully qualified name and its value."""
    fqn: str
    tensor: torch.Tensor
    node: Optional[fx.Node] = None  # the get_attr / placeholder node, None when inside a module


@dataclass
class LinearMatch:
    """One linear (and the ReLU fused into it, if any) found in a graph."""
    fqn: str                          # the layer's name, e.g. "encoder.0.fc1"
    linear_node: fx.Node
    weight: ParamRef
    bias: Optional[ParamRef]
    relu_node: Optional[fx.Node]      # a separate ReLU node to fold into the op
    relu_in_module: bool = False      # the linear is a LinearReLU module: the ReLU is inside it
    module: Optional[nn.Module] = None  # the nn.Linear when known (call_module, or via root lookup)
    weight_transposed: bool = False   # the weight is stored [in, out] (addmm / Conv1D)

    @property
    def input_node(self) -> fx.Node:
        # Read live from the linear node: an earlier rewrite may have replaced its producer.
        if self.linear_node.op == "call_module":
            return self.linear_node.args[0]
        if self.linear_node.target in ADDMM_FUNCTIONS:
            return self.linear_node.args[1]
        return _linear_args(self.linear_node)[0]

    @property
    def relu(self) -> bool:
        return self.relu_in_module or self.relu_node is not None

    @property
    def output_node(self) -> fx.Node:
        """The node whose value the op replaces."""
        return self.relu_node if self.relu_node is not None else self.linear_node

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features)."""
        shape = tuple(self.weight.tensor.shape)
        return shape[::-1] if self.weight_transposed else shape


PlaceholderResolver = Callable[[fx.Node], Optional[tuple[str, torch.Tensor]]]


def _fetch_attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _is_plain_linear(mod) -> bool:
    # Subclasses are fine (nn.MultiheadAttention's NonDynamicallyQuantizableLinear) as long as
    # they compute what nn.Linear computes.
    return isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward


def is_conv1d(mod) -> bool:
    """transformers' Conv1D (GPT-2 family): `x @ W + b` with W [in, out], a transposed linear."""
    cls = type(mod)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and isinstance(getattr(mod, "weight", None), torch.Tensor) and mod.weight.dim() == 2
            and isinstance(getattr(mod, "bias", None), torch.Tensor) and mod.bias.shape == mod.weight.shape[1:])


def linear_like(mod) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(weight [out, in], bias) of a module that computes a linear (nn.Linear and subclasses
    that keep its forward, transformers' Conv1D), else None."""
    if _is_plain_linear(mod):
        return mod.weight, mod.bias
    if is_conv1d(mod):
        return mod.weight.t(), mod.bias
    return None


def _is_linear_relu_module(mod) -> bool:
    from torch.ao.nn.intrinsic import LinearReLU

    return type(mod) is LinearReLU and _is_plain_linear(mod[0])


def _constant(node, gm: nn.Module, resolve_placeholder: Optional[PlaceholderResolver]) -> Optional[ParamRef]:
    """The constant tensor a weight/bias argument refers to, or None if it is computed."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "get_attr":
        value = _fetch_attr(gm, node.target)
        return ParamRef(node.target, value, node) if isinstance(value, torch.Tensor) else None
    if node.op == "placeholder" and resolve_placeholder is not None:
        found = resolve_placeholder(node)
        if found is not None:
            fqn, value = found
            return ParamRef(fqn, value, node)
    return None


def _layer_name(weight_fqn: str) -> str:
    return weight_fqn[: -len(".weight")] if weight_fqn.endswith(".weight") else weight_fqn


_LINEAR_CLASS_NAMES = ("torch.nn.modules.linear.Linear", "transformers.pytorch_utils.Conv1D")


def _calling_layer(node: fx.Node) -> Optional[str]:
    """The fqn of the linear-like module whose forward made this call, from the node's
    nn_module_stack (Dynamo: "L['self'].lm_head"; torch.export: "lm_head"), or None. A weight tied
    to another module (GPT-2's lm_head and wte) is then named after the layer that calls it."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    if name not in _LINEAR_CLASS_NAMES and not (isinstance(cls, type) and issubclass(cls, nn.Linear)):
        return None
    path = re.sub(r"^L\['[^']+'\](?:\[\d+\])*\.?", "", str(path))  # L['self'], L['args'][0]
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    path = re.sub(r"\[(\d+)\]|\['([^']+)'\]", lambda m: "." + (m.group(1) or m.group(2)), path)
    path = path.strip(".")
    return path if path and re.fullmatch(r"[\w.]+", path) else None


def _linear_args(node: fx.Node):
    """(input, weight, bias) of a functional linear, whether given by position or keyword."""
    args = list(node.args) + [None] * (3 - len(node.args))
    for i, name in enumerate(_LINEAR_ARG_NAMES):
        if name in node.kwargs:
            args[i] = node.kwargs[name]
    return args[:3]


def is_relu_of(node: fx.Node, source: fx.Node, gm: nn.Module) -> bool:
    """Whether `node` computes relu(source) (in any spelling)."""
    if not node.args or node.args[0] is not source:
        return False
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in RELU_METHODS and len(node.args) == 1
    if node.op == "call_module":
        return type(_fetch_attr(gm, node.target)) is nn.ReLU and len(node.args) == 1
    return False


def match_linear(node: fx.Node, gm: nn.Module, resolve_placeholder: Optional[PlaceholderResolver] = None,
                 fuse_relu: bool = True) -> Optional[LinearMatch]:
    """A LinearMatch if `node` is a linear over a constant weight (else None)."""
    match = None
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        mod = _fetch_attr(gm, node.target)
        fused = _is_linear_relu_module(mod)
        linear = mod[0] if fused else mod
        if fused or _is_plain_linear(mod) or is_conv1d(mod):
            prefix = f"{node.target}.0" if fused else node.target
            bias = ParamRef(f"{prefix}.bias", linear.bias) if linear.bias is not None else None
            match = LinearMatch(prefix, node, ParamRef(f"{prefix}.weight", linear.weight),
                                bias, None, relu_in_module=fused, module=linear,
                                weight_transposed=is_conv1d(mod))
    elif node.op == "call_function" and node.target in ADDMM_FUNCTIONS and len(node.args) == 3 and not node.kwargs:
        b, inp, w = node.args
        weight = _constant(w, gm, resolve_placeholder)
        bias = _constant(b, gm, resolve_placeholder)
        if (isinstance(inp, fx.Node) and weight is not None and bias is not None and weight.tensor.dim() == 2
                and tuple(bias.tensor.shape) == tuple(weight.tensor.shape[1:])):
            match = LinearMatch(_calling_layer(node) or _layer_name(weight.fqn), node, weight, bias, None,
                                weight_transposed=True)
    elif node.op == "call_function" and node.target in LINEAR_FUNCTIONS:
        inp, w, b = _linear_args(node)
        weight = _constant(w, gm, resolve_placeholder)
        bias = _constant(b, gm, resolve_placeholder) if b is not None else None
        if isinstance(inp, fx.Node) and weight is not None and (b is None or bias is not None):
            match = LinearMatch(_calling_layer(node) or _layer_name(weight.fqn), node, weight, bias, None)
    if match is None or match.weight.tensor.dim() != 2:
        return None
    if fuse_relu and not match.relu_in_module and len(node.users) == 1:
        (user,) = node.users
        if is_relu_of(user, node, gm):
            match.relu_node = user
    return match


def find_linear_matches(gm: fx.GraphModule, resolve_placeholder: Optional[PlaceholderResolver] = None,
                        fuse_relu: bool = True) -> list[LinearMatch]:
    """Every linear over a constant weight in `gm`, in graph order, with its fusable ReLU.

    resolve_placeholder(node) -> (fqn, tensor) | None tells which graph inputs are parameters
    (Dynamo graphs); see dynamo_param_resolver.
    """
    matches = []
    for node in gm.graph.nodes:
        m = match_linear(node, gm, resolve_placeholder, fuse_relu)
        if m is not None:
            matches.append(m)
    return matches


_NAME_PART = re.compile(r"_(?:modules|parameters|buffers)_")

# Dynamo records where a lifted parameter came from, e.g. L['self']._modules['fc1']._parameters[
# 'weight'] or, for the same tensor on other code paths (after a graph break, or for a model
# converted eagerly first), L['self'].__dict__['_modules']['fc1'].__dict__['_parameters']['weight'].
# The module path is the trailing run of _modules steps ending in a _parameters / _buffers step.
_MODULES = r"(?:\._modules|\.__dict__\['_modules'\])\['[^']+'\]"
_STATE_SOURCE = re.compile(rf"((?:{_MODULES})*)(?:\._(?:parameters|buffers)|\.__dict__\['_(?:parameters|buffers)'\])"
                           r"\['([^']+)'\]$")
_MODULE_PART = re.compile(r"(?:\._modules|\.__dict__\['_modules'\])\['([^']+)'\]")


def fqn_from_source(source_name: str) -> Optional[str]:
    """"L['self']._modules['fc1']._parameters['weight']" -> "fc1.weight" (None if not module state)."""
    m = _STATE_SOURCE.search(source_name)
    if m is None:
        return None
    return ".".join([*_MODULE_PART.findall(m.group(1)), m.group(2)])


def _fqn_from_placeholder_name(name: str) -> str:
    # "L_self_modules_fc1_parameters_weight_" -> "fc1.weight". Best effort only (module names may
    # hold underscores): used when Dynamo recorded no source and no root is given.
    parts = _NAME_PART.split(name.strip("_"))
    return ".".join(parts[1:]) if len(parts) > 1 else name


def dynamo_param_resolver(gm: fx.GraphModule, example_inputs, root: Optional[nn.Module] = None) -> PlaceholderResolver:
    """Resolver for a graph handed to a torch.compile backend.

    Dynamo lifts parameters and buffers to graph inputs; the backend's `example_inputs` hold the
    real tensors. A placeholder is module state when `root` (the compiled module) owns its tensor,
    when Dynamo's recorded source names a parameter / buffer, or when its example input is an
    nn.Parameter. Its fqn is, in that order of preference: root's name for the tensor, the name in
    the source (exact, so config include / exclude / overrides apply as in eager), or a guess from
    the placeholder's name.
    """
    names = {}
    if root is not None:
        for name, t in root.named_parameters(remove_duplicate=False):
            names.setdefault(id(t), name)
        for name, t in root.named_buffers(remove_duplicate=False):
            names.setdefault(id(t), name)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    table = {}
    for node, value in zip(placeholders, example_inputs):
        if not isinstance(value, torch.Tensor):
            continue
        source = getattr(node.meta.get("grapharg"), "source", None)
        from_source = fqn_from_source(source.name) if source is not None else None
        if id(value) in names:
            table[node] = (names[id(value)], value)
        elif from_source is not None:
            table[node] = (from_source, value)
        elif isinstance(value, nn.Parameter):
            table[node] = (_fqn_from_placeholder_name(str(node.target)), value)
    return table.get
