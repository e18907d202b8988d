"""The sqfx ops: loads the compiled library and registers what torch needs to trace it.

`sqfx::qlinear_dynamic(input, values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, relu)`
is defined in C++ (csrc/qlinear_dynamic.cpp). Here it gets a fake (meta) kernel, so
`torch.compile` and `torch.export` can trace it, and an Autograd kernel that refuses
backward: the op is for inference only.
"""
from __future__ import annotations

from pathlib import Path

import torch


def _load_library() -> None:
    here = Path(__file__).parent
    candidates = sorted(here.glob("_C*.so"))
    if not candidates:
        raise ImportError(
            f"sqfx: the compiled op library (sqfx/_C*.so) is missing in {here}; "
            "install sqfx with `pip install -e .` to build it"
        )
    torch.ops.load_library(str(candidates[0]))


_load_library()


# fp16 / bf16 activations are computed in float32 and returned in their own dtype.
_ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_and_shape(op: str, input, values, row_ptr, col_idx, w_scale, bias, in_features, w_sum=None):
    """Shape checks shared by the fake kernels, run while tracing (torch.compile / torch.export)
    so a bad layer fails there with the C++ op's message rather than later at run time.

    The dispatcher also runs this kernel for a real call whenever one argument is on `meta`
    (e.g. a packed tensor a tampered .pt2 put there): every tensor must then be on the input's
    device, or the call would "succeed" with an uninitialized CPU result."""
    tensors = (("input", input), ("values", values), ("row_ptr", row_ptr), ("col_idx", col_idx),
               ("w_scale", w_scale), ("w_sum", w_sum), ("bias", bias))
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and t.device != input.device:
            raise RuntimeError(f"sqfx.{op}: {name} is on {t.device} but input is on {input.device}: "
                               "every tensor of the call must be on the same device (the CPU)")
    torch._check(input.dtype in _ACTIVATION_DTYPES,
                 lambda: f"sqfx.{op}: input must be float32, float16 or bfloat16, got {input.dtype}")
    torch._check(input.dim() >= 1, lambda: f"sqfx.{op}: input must have at least 1 dim")
    torch._check(
        input.shape[-1] == in_features,
        lambda: f"sqfx.{op}: input has {input.shape[-1]} features, the layer expects in_features = {in_features}",
    )
    torch._check(values.dim() == 3, lambda: f"sqfx.{op}: values must be 3-D")
    vectors = (("row_ptr", row_ptr), ("col_idx", col_idx), ("w_scale", w_scale))
    for name, t in vectors + ((("w_sum", w_sum),) if w_sum is not None else ()):
        torch._check(t.dim() == 1, lambda: f"sqfx.{op}: {name} must be 1-D")
    if w_sum is not None:
        torch._check(w_sum.shape[0] == w_scale.shape[0], lambda: f"sqfx.{op}: w_sum must have out_features entries")
    torch._check(bias is None or (bias.dim() == 1 and bias.shape[0] == w_scale.shape[0]),
                 lambda: f"sqfx.{op}: bias must have out_features entries")
    torch._check(col_idx.shape[0] == values.shape[0],
                 lambda: f"sqfx.{op}: col_idx must have one entry per block of values")
    return input.new_empty((*input.shape[:-1], w_scale.shape[0]))


_LIB = torch.library.Library("sqfx", "IMPL")  # noqa: TOR901 (kept alive for the registrations below)
_BelowAutograd = torch._C._AutoDispatchBelowAutograd
_AFTER_AUTOGRAD = torch._C._after_autograd_keyset


def inference_only_message(what: str) -> str:
    """The error of a backward through sqfx (the op, or a compiled graph that packed weights)."""
    return (f"{what} is inference-only: it has no backward. Run the converted model under "
            "torch.no_grad() / torch.inference_mode(), or fine-tune the fp32 model instead.")


def _register_inference_only(name: str) -> None:
    """The op's Autograd kernel: runs the op below autograd, and when some input needs a gradient
    returns an output whose backward raises (the op is for inference only).

    Written here rather than with torch.library.register_autograd, whose generic Python kernel
    costs several microseconds per call even when nothing needs a gradient: most of the fixed cost
    of a small layer (issue 10). This one does the same two things with less Python."""
    op = getattr(torch.ops.sqfx, name).default

    class Refuse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, keyset, *args):
            with _BelowAutograd():
                return op.redispatch(keyset, *args)

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError(inference_only_message(f"sqfx.{name}"))

    Refuse.__name__ = Refuse.__qualname__ = f"InferenceOnly_{name}"
    grad_enabled, any_requires_grad = torch._C.is_grad_enabled, torch._C._any_requires_grad

    def autograd_kernel(keyset, *args):
        keyset = keyset & _AFTER_AUTOGRAD
        if grad_enabled() and any_requires_grad(*args):
            return Refuse.apply(keyset, *args)
        # No guard needed (it costs a microsecond): the keyset skips autograd for this op, and
        # its kernels call no differentiable op on the inputs.
        return op.redispatch(keyset, *args)

    _LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)


@torch.library.register_fake("sqfx::qlinear_dynamic")
def _qlinear_dynamic_fake(input, values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, relu,
                          tile_ptr=None, step_col=None, slot_w=None, slot_idx=None, row_perm=None):
    tiled = (tile_ptr, step_col, slot_w, slot_idx, row_perm)
    torch._check(all(t is None for t in tiled) or all(t is not None for t in tiled),
                 lambda: "sqfx.qlinear_dynamic: the tiled layout needs all of tile_ptr, step_col, slot_w, slot_idx and row_perm")
    return _check_and_shape("qlinear_dynamic", input, values, row_ptr, col_idx, w_scale, bias, in_features, w_sum)


_register_inference_only("qlinear_dynamic")


def qlinear_dynamic(
    input: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    w_scale: torch.Tensor,
    w_sum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    relu: bool = False,
    tiled: tuple | None = None,
) -> torch.Tensor:
    """Calls `torch.ops.sqfx.qlinear_dynamic`; see docs/design.md for the numerics. `tiled`: the
    weight's small-M tiled layout (PackedLinear.tiled()), used by the op for M <= 16."""
    return torch.ops.sqfx.qlinear_dynamic(
        input, values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, relu, *(tiled or ())
    )


# ---- sqfx::qlinear_weight_only (csrc/qlinear_weight_only.cpp): fp32 activations, int8 weights ----
@torch.library.register_fake("sqfx::qlinear_weight_only")
def _qlinear_weight_only_fake(input, values, row_ptr, col_idx, w_scale, bias, in_features, relu):
    return _check_and_shape("qlinear_weight_only", input, values, row_ptr, col_idx, w_scale, bias, in_features)


_register_inference_only("qlinear_weight_only")


def qlinear_weight_only(
    input: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    relu: bool = False,
) -> torch.Tensor:
    """Calls `torch.ops.sqfx.qlinear_weight_only`: fp32 x dequantized int8 BSR weight, fp32 sums."""
    return torch.ops.sqfx.qlinear_weight_only(input, values, row_ptr, col_idx, w_scale, bias, in_features, relu)


# ---- the eager call of either op, shared by SparseQuantLinear.forward and PackedLinear.__call__ ----
_QLINEAR_OPS = (torch.ops.sqfx.qlinear_dynamic.default, torch.ops.sqfx.qlinear_weight_only.default)
# An OpOverload's C++ callable, without OpOverload.__call__'s Python frame (the same dispatcher
# entry; falls back to the OpOverload itself should torch rename the attribute).
# The ops' pybind handles: a call skips OpOverload.__call__ (for callers that know autograd is off).
UNBOXED = {op: getattr(op, "_op", op) for op in _QLINEAR_OPS}
_is_compiling = torch.compiler.is_compiling
_inference_mode = torch.is_inference_mode_enabled
_grad_enabled = torch.is_grad_enabled


def call_eager(op, args: tuple, x: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None):
    """op(*args) (op: one of the two ops' .default overloads), skipping the op's Python autograd
    kernel when nothing needs a gradient: that kernel only refuses backward, and it was most of a
    small layer's fixed cost (issue 10). x, w_scale and bias are the op's differentiable inputs.
    Traced calls (torch.compile, torch.export) and calls that need a gradient take the op itself."""
    if _is_compiling():
        return op(*args)
    if _inference_mode():  # autograd is off already: nothing can need a gradient
        return UNBOXED[op](*args)
    if _grad_enabled() and (x.requires_grad or w_scale.requires_grad
                            or (bias is not None and bias.requires_grad)):
        return op(*args)
    with _BelowAutograd():
        return UNBOXED[op](*args)


# ---- kernel ISA selection (csrc/kernels/dispatch.cpp) ----
# The op picks the best ISA path the CPU has at run time; tests force each one
# to check that every path gives the same bits as sqfx.reference.

# Under torch.autocast("cpu", torch.bfloat16 / float16) the activations reaching the op are
# low precision; the op computes in float32 (as SparseQuantLinear does for such inputs), so
# autocast casts its floating inputs to float32 (and returns float32, which autocast's next op
# casts as it likes).
for _op in ("sqfx::qlinear_dynamic", "sqfx::qlinear_weight_only"):
    torch.library.register_autocast(_op, "cpu", torch.float32)


def available_isas() -> list[str]:
    """ISA paths this CPU can run, worst to best: "generic", then "avx2", "avx512vnni" if present."""
    return list(torch.ops.sqfx._kernel_isas())


def active_isa() -> str:
    """The ISA path the op uses now (the best available unless forced)."""
    return torch.ops.sqfx._active_kernel_isa()


def kernel_names() -> list[str]:
    """Every kernel of the op's kernel table (csrc/kernels/dispatch.cpp), in search order, once
    each (a kernel can serve several rows of the table)."""
    return list(torch.ops.sqfx._kernel_names())


class force_isa:
    """Context manager forcing one kernel ISA path for the whole process (tests, benchmarks).
    It limits the kernel table to that ISA's rows and below, for both ops.

    >>> with sqfx.ops.force_isa("generic"):
    ...     y = packed(x)

    Raises RuntimeError if the CPU lacks that ISA. Not thread-safe: the setting is global.
    """

    def __init__(self, isa: str):
        self.isa = isa
        self._previous = None

    def __enter__(self):
        forced_before = _forced_isa
        self._previous = forced_before
        _set_isa(self.isa)
        return self.isa

    def __exit__(self, *exc):
        _set_isa(self._previous or "auto")
        return False


_forced_isa: str | None = None


def _set_isa(isa: str) -> None:
    global _forced_isa
    torch.ops.sqfx._set_kernel_isa(isa)
    _forced_isa = None if isa == "auto" else isa
