"""The `torch.compile` door: `torch.compile(model, backend="sqfx")`.

The backend is found by name through the `torch_dynamo_backends` entry point in pyproject.toml
(`sqfx = "sqfx.compile_backend:sqfx_backend"`), so the user needs no `import sqfx`: the first
lookup of "sqfx" imports this module, which imports sqfx and registers the op. Nothing here calls
`register_backend("sqfx")`: the entry-point lookup registers the loaded function under that name
itself, and a second registration of the same name would fail as a duplicate.

What the backend does with the graph Dynamo hands it (torch-level IR, `torch._C._nn.linear`,
parameters lifted to graph inputs whose example inputs are the real parameter tensors):
1. copies the graph into a fresh GraphModule (Dynamo's own graph module stays untouched);
2. runs the FX pass (`sqfx.lowering.convert_graph`) on it: each selected linear (+ ReLU) becomes
   one `torch.ops.sqfx.qlinear_dynamic` call whose packed tensors are `get_attr` buffers of the
   fresh module. The fp32 weight placeholders stay in the signature (Dynamo calls the compiled
   function with them), unused;
3. hands the result to Inductor (`compile_fx`), which fuses the fp32 code around the op and
   calls the op as an extern kernel.

Weights are captured at compile time: packing reads the parameter values when the graph is
compiled. Dynamo lifts parameters to graph inputs and, by itself, does not guard on which tensors
they are, so it would reuse this graph for another instance of the same module class. The backend
therefore adds an identity guard (Dynamo's ID_MATCH) on every weight it packed
(`_guard_packed_weights`): another instance fails the guard, Dynamo recompiles, and this backend
packs that instance's weights into its own Inductor graph. Those are ordinary Dynamo cache
entries: `torch._dynamo.config.recompile_limit` (8 by default, per code object) bounds them, an
entry is dropped when its weights are freed (but still counts toward the limit until
`torch._dynamo.reset()`), and past the limit Dynamo runs the model eagerly (fp32, with its
"hit config.recompile_limit" warning).
An in-place change of a packed weight (load_state_dict, an optimizer step) keeps the tensors, so
no guard fails; the compiled callable checks each packed weight's version counter per call (and
identity, should the guards have been filtered out) and, on a mismatch, re-packs and runs the
converted graph without Inductor, with a warning: never the old weights' numbers. For compiled
code again after such an update: `torch._dynamo.reset()` and compile. Why this route and not an
Inductor post-grad pass: docs/design.md, "Compile backend".
"""
from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Optional

import torch
from torch import fx

from .config import SparseQuantConfig, as_config
from .format import version_counter
from .ops import inference_only_message
from .lowering import ConversionReport, convert_dynamo_graph
from .patterns import dynamo_param_resolver

def _inductor(gm: fx.GraphModule, example_inputs, config_patches: Optional[dict]):
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches=config_patches or None)


def _packed_inputs(before: fx.GraphModule, after: fx.GraphModule, resolve) -> list[int]:
    """Positions of the module-state inputs the pass packed (their uses went away)."""
    old = [n for n in before.graph.nodes if n.op == "placeholder"]
    new = [n for n in after.graph.nodes if n.op == "placeholder"]
    return [i for i, (o, n) in enumerate(zip(old, new)) if resolve(o) is not None and len(n.users) < len(o.users)]


def _guard_packed_weights(gm: fx.GraphModule, positions: list[int]) -> bool:
    """Makes Dynamo guard on the identity of each packed weight input; False if it could not.

    The packed buffers hold these tensors' values, so the graph is only valid for them, but Dynamo
    (which always inlines nn.Modules and lifts their parameters to inputs) guards parameters by
    metadata (dtype, shape, ...), not identity. An ID_MATCH guard on each placeholder's recorded
    source makes another instance's call fail the guard and recompile; Dynamo ties the guard to a
    weakref of the tensor, so when the tensor dies its cache entry is invalidated (its compiled
    graph and packed buffers freed) and a reused id can never match.

    Private API (torch 2.13): `TracingContext.try_get()` is the frame Dynamo is compiling (guards
    added to it during the backend call are built into the frame's guard set after the backend
    returns), `node.meta["grapharg"].source` the input's source, `install_guard` and
    `GuardBuilder.ID_MATCH` what Dynamo itself uses. No version-counter guard: an accessor under
    a parameter's guard node would turn off Dynamo's dict-tag fast path for the whole module tree;
    WeightBoundGraph checks versions instead. Any failure here leaves the graph unguarded, which
    WeightBoundGraph's identity check still catches (slow path, warning), never wrong numbers.
    """
    try:
        from torch._dynamo.guards import GuardBuilder, install_guard
        from torch._guards import TracingContext

        if TracingContext.try_get() is None:  # called outside Dynamo (a direct backend call)
            return False
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        sources = [getattr(placeholders[i].meta.get("grapharg"), "source", None) for i in positions]
        if any(source is None for source in sources):
            return False
        install_guard(*(source.make_guard(GuardBuilder.ID_MATCH) for source in sources))
        return True
    except Exception:  # a torch without these internals: the runtime check stays the safety net
        return False


class _RefuseBackward(torch.autograd.Function):
    """Ties an output to the fp32 weights the compiled graph packed (and no longer reads), so a
    backward reaches them and raises sqfx's error instead of silently giving them no gradient."""

    @staticmethod
    def forward(ctx, output, *weights):
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(inference_only_message("the torch.compile(backend=\"sqfx\") graph"))


def _backward_refused(outputs, weights):
    def tie(t):
        return _RefuseBackward.apply(t, *weights) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    if isinstance(outputs, (list, tuple)):
        return type(outputs)(tie(t) for t in outputs)
    return tie(outputs)


class WeightBoundGraph:
    """The compiled graph plus a check that it runs with the weights it packed.

    Dynamo guards on which weight tensors arrive (`_guard_packed_weights`), so another instance
    of the module recompiles; but it does not see an in-place weight update (same tensors, new
    values), and its guards may have been filtered out (a guard_filter_fn) or not installed.
    Each call therefore checks, per packed input, that it is the same tensor (weakref identity)
    at the same version counter (cheap: a few attribute reads per layer). On a mismatch the graph
    is re-packed from the weights given and run eagerly (no Inductor: its compile needs Dynamo's
    tracing context), with a warning, and that re-packed graph is kept for those weights.
    """

    def __init__(self, compiled, dynamo_gm: fx.GraphModule, config: SparseQuantConfig, example_inputs,
                 packed_positions: list[int]):
        self.compiled = compiled
        self.dynamo_gm = dynamo_gm
        self.config = config
        self.positions = packed_positions
        self.bound = self._key(example_inputs)
        self.repacked = None  # (key, runner) for the last weights that were not the bound ones
        self.warned = False

    def _key(self, args) -> list:
        # weakrefs, not ids: a dead tensor's id may be reused by a new one. An inference tensor
        # has no version counter (-1): an in-place update inside inference mode is not seen.
        return [(weakref.ref(args[i]), version_counter(args[i])) for i in self.positions]

    def _holds(self, key, args) -> bool:
        for (ref, version), i in zip(key, self.positions):
            t = args[i]
            if ref() is not t or version_counter(t) != version:
                return False
        return True

    def __call__(self, *args):
        outputs = self._run(*args)
        if torch.is_grad_enabled() and any(args[i].requires_grad for i in self.positions):
            outputs = _backward_refused(outputs, [args[i] for i in self.positions])
        return outputs

    def _run(self, *args):
        if self._holds(self.bound, args):
            return self.compiled(*args)
        if self.repacked is not None and self._holds(self.repacked[0], args):
            runner = self.repacked[1]
        else:
            if not self.warned:
                self.warned = True
                warnings.warn(
                    "sqfx backend: this compiled graph packed other weights (weights changed in place "
                    "since compilation, e.g. load_state_dict or an optimizer step, or Dynamo's weight "
                    "identity guards were filtered out). Re-packing for these weights and running the "
                    "graph without Inductor; call torch._dynamo.reset() and compile again for compiled "
                    "code.", RuntimeWarning, stacklevel=2)
            runner, _ = convert_dynamo_graph(self.dynamo_gm, list(args), self.config)
            self.repacked = (self._key(args), runner)  # only the latest: bounded memory
        return runner(*args)


def backend(config=None, *, inductor_config: Optional[dict] = None,
            on_report: Optional[Callable[[ConversionReport], Any]] = None) -> Callable:
    """A torch.compile backend with this config: `torch.compile(model, backend=sqfx.backend(cfg))`.

    config: a SparseQuantConfig, a dict of its fields, or None (defaults).
    inductor_config: Inductor config patches for the compile (as torch.compile's `options`).
    on_report: called with each compiled graph's ConversionReport (one per Dynamo graph).
    """
    config = as_config(config)

    def sqfx_compile(gm: fx.GraphModule, example_inputs, mode: Optional[str] = None,
                     options: Optional[dict] = None):
        graph_config, patches = config, dict(inductor_config or {})
        if options:  # torch.compile(..., backend="sqfx", options={...})
            options = dict(options)
            patches.update(options.pop("inductor_config", None) or {})
            if options:
                graph_config = as_config({**_fields(config), **options})
        if mode is not None and mode != "default":
            patches = {**torch._inductor.list_mode_options(mode), **patches}
        converted, report = convert_dynamo_graph(gm, example_inputs, graph_config)
        if on_report is not None:
            on_report(report)
        positions = _packed_inputs(gm, converted, dynamo_param_resolver(gm, example_inputs))
        compiled = _inductor(converted, example_inputs, patches)
        if not positions:
            return compiled
        _guard_packed_weights(gm, positions)
        return WeightBoundGraph(compiled, gm, graph_config, example_inputs, positions)

    sqfx_compile.sqfx_config = config
    return sqfx_compile


def _fields(config: SparseQuantConfig) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


# The entry point's target (pyproject.toml, [project.entry-points.torch_dynamo_backends]):
# `backend="sqfx"` with the default config; `options={...}` sets config fields per compile.
sqfx_backend = backend()
