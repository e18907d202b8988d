"""`SparseQuantLinear`: an nn.Module holding a packed int8 block-sparse weight as buffers."""
from __future__ import annotations

import operator

import torch
from torch import nn

from .config import ACT_MODES
from . import ops as _ops  # noqa: F401  (registers torch.ops.sqfx before the op handles below)
from .format import FORMAT_VERSION, PackedFormatError, PackedLinear, pack, validate_packed


def _check_act_mode(act_mode) -> str:
    if act_mode not in ACT_MODES:
        raise ValueError(f"SparseQuantLinear: act_mode must be one of {list(ACT_MODES)}, got {act_mode!r}")
    return act_mode


_INT64_MAX = torch.iinfo(torch.int64).max
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_QLINEAR_DYNAMIC = torch.ops.sqfx.qlinear_dynamic.default
_QLINEAR_WEIGHT_ONLY = torch.ops.sqfx.qlinear_weight_only.default
_is_compiling = torch.compiler.is_compiling
_F32 = torch.float32
_inference_mode = torch.is_inference_mode_enabled
_DYNAMIC_BUFFERS = operator.itemgetter("values", "row_ptr", "col_idx", "w_scale", "w_sum", "fp32_bias",
                                       "tiled_tile_ptr", "tiled_step_col", "tiled_slot_w", "tiled_slot_idx",
                                       "tiled_row_perm")
_WEIGHT_ONLY_BUFFERS = operator.itemgetter("values", "row_ptr", "col_idx", "w_scale", "fp32_bias")


def _on_device_message(values: torch.Tensor) -> str:
    return (f"SparseQuantLinear runs on the CPU only; its packed weight is on {values.device}: "
            "move the module back with .cpu()")
# Buffer names: the bias buffer may not be called `bias`, since `bias()` is a method here
# as in torch.ao's quantized linears.
_BUFFER = {"values": "values", "row_ptr": "row_ptr", "col_idx": "col_idx", "w_scale": "w_scale",
           "w_sum": "w_sum", "bias": "fp32_bias"}


class SparseQuantLinear(nn.Module):
    """Inference-only linear (+ optional fused ReLU) over `torch.ops.sqfx.qlinear_dynamic`.

    Inputs of any leading shape and any float dtype (computed in float32, returned in the
    input's dtype). The state_dict holds the packed tensors plus an extra state with the
    format version and the layer's shape; loading validates every invariant.
    """

    def __init__(self, packed: PackedLinear, relu: bool = False, act_mode: str = "dynamic_int8"):
        super().__init__()
        packed.validate()
        self.relu = relu
        self.act_mode = _check_act_mode(act_mode)
        self._set_packed(packed)

    def _set_packed(self, packed: PackedLinear) -> None:
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        self.per_channel = packed.per_channel
        for name in PackedLinear.TENSOR_FIELDS:
            self.register_buffer(_BUFFER[name], getattr(packed, name))
        # The small-M tiled layout (1x4 sparse weights): derived here, not part of the state_dict
        # (files keep packed format v1; loading derives it again through _set_packed).
        tiled = packed.tiled() or (None,) * len(PackedLinear.TILED_FIELDS)
        for name, t in zip(PackedLinear.TILED_FIELDS, tiled):
            self.register_buffer(f"tiled_{name}", t, persistent=False)

    @property
    def packed(self) -> PackedLinear:
        return PackedLinear(*(getattr(self, _BUFFER[n]) for n in PackedLinear.TENSOR_FIELDS),
                            self.in_features, self.out_features, self.per_channel)

    @classmethod
    def from_float(cls, mod: nn.Module, mask=None, block=(1, 4), per_channel: bool = True,
                   relu: bool = False, scales=None, act_mode: str = "dynamic_int8",
                   layout: str = "sparse") -> "SparseQuantLinear":
        """Packs an `nn.Linear` (or `torch.ao.nn.intrinsic.LinearReLU`, fusing its ReLU).

        layout: see sqfx.pack ("sparse" keeps the block structure; "auto" stores low-sparsity
        layers densely, where the dense int8 kernel is faster)."""
        fused = type(mod).__name__ == "LinearReLU" and isinstance(mod[0], nn.Linear)
        linear = mod[0] if fused else mod
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseQuantLinear.from_float expects nn.Linear, got {type(mod).__name__}")
        packed = pack(linear.weight, mask=mask, block=block, per_channel=per_channel,
                      bias=linear.bias, scales=scales, layout=layout)
        return cls(packed, relu=relu or fused, act_mode=act_mode)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # Eager fp32 CPU calls (the common case) take the short path: every Python step here is
        # fixed cost per call, and on a small layer that is most of the time (issue 10: the
        # module must stay within 1.3x nn.Linear). Buffers are read from the dict in one
        # itemgetter call (Module.__getattr__ is slow); sqfx.ops.call_eager skips the op's
        # Python autograd kernel when nothing needs a gradient.
        if not _is_compiling() and input.dtype is _F32 and input.is_cpu:
            buffers = self.__dict__["_buffers"]
            if self.act_mode == "weight_only":
                values, row_ptr, col_idx, w_scale, bias = _WEIGHT_ONLY_BUFFERS(buffers)
                args = (input, values, row_ptr, col_idx, w_scale, bias, self.in_features, self.relu)
                op = _QLINEAR_WEIGHT_ONLY
            else:
                values, row_ptr, col_idx, w_scale, w_sum, bias, t0, t1, t2, t3, t4 = _DYNAMIC_BUFFERS(buffers)
                args = (input, values, row_ptr, col_idx, w_scale, w_sum, bias, self.in_features, self.relu,
                        t0, t1, t2, t3, t4)
                op = _QLINEAR_DYNAMIC
            if not values.is_cpu:
                raise RuntimeError(_on_device_message(values))
            if _inference_mode():  # what call_eager does first, without a call (1.5 us here)
                return _ops.UNBOXED[op](*args)
            return _ops.call_eager(op, args, input, w_scale, bias)
        return self._forward_checked(input)

    def _forward_checked(self, input: torch.Tensor) -> torch.Tensor:
        """Other dtypes and devices (clear errors, or a cast to float32 and back), and traced calls
        (torch.compile, torch.export), which read the buffers as attributes as the tracers expect."""
        if input.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"SparseQuantLinear expects a floating point input, got {input.dtype}")
        if not input.is_cpu:
            raise RuntimeError(f"SparseQuantLinear runs on the CPU only; the input is on {input.device}")
        values, w_scale, bias = self.values, self.w_scale, self.fp32_bias
        if not values.is_cpu:
            raise RuntimeError(_on_device_message(values))
        x = input if input.dtype is _F32 else input.float()
        if self.act_mode == "weight_only":
            op, args = _QLINEAR_WEIGHT_ONLY, (x, values, self.row_ptr, self.col_idx, w_scale, bias,
                                              self.in_features, self.relu)
        else:
            tiled = (self.tiled_tile_ptr, self.tiled_step_col, self.tiled_slot_w, self.tiled_slot_idx,
                     self.tiled_row_perm)
            op, args = _QLINEAR_DYNAMIC, (x, values, self.row_ptr, self.col_idx, w_scale, self.w_sum, bias,
                                          self.in_features, self.relu, *tiled)
        y = op(*args) if _is_compiling() else _ops.call_eager(op, args, x, w_scale, bias)
        return y if input.dtype is _F32 else y.to(input.dtype)

    def _apply(self, fn, recurse=True):
        # model.half() / .to(torch.bfloat16) must not cast the packed buffers: they are a
        # fixed int8 + fp32 format (the op rejects any other dtype). Keep their dtype; the
        # module still takes fp16/bf16 inputs and returns them in the input's dtype.
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, orig in before.items():
            buf = self._buffers[name]
            if buf is not None and buf.dtype != orig.dtype:
                # Restore the original values exactly (a round trip through fp16 would not).
                self._buffers[name] = orig.to(buf.device)
        return self

    # The surface users of torch.ao.nn.sparse.quantized.dynamic.Linear know.
    def weight(self) -> torch.Tensor:
        """The dense dequantized fp32 weight (dropped blocks are zero)."""
        return self.packed.unpack()

    def bias(self) -> torch.Tensor | None:
        return self.fp32_bias

    def set_weight_bias(self, weight: torch.Tensor, bias: torch.Tensor | None, mask=None,
                        block=None) -> None:
        """Repacks from a dense fp32 weight; keeps the current block shape unless given."""
        packed = pack(weight, mask=mask, block=block or self.packed.block,
                      per_channel=self.per_channel, bias=bias)
        self._set_packed(packed.validate())

    def extra_repr(self) -> str:
        p = self.packed
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block={p.block[0]}x{p.block[1]}, sparsity={p.sparsity:.3f}, "
                f"scheme=int8_{p.scheme}, relu={self.relu}"
                + ("" if self.act_mode == "dynamic_int8" else f", act_mode={self.act_mode}"))

    # ---- state_dict with a format version, validated on load ----
    # The extra state is a small int64 tensor, so the whole state_dict is plain tensors
    # (safetensors, HF save_pretrained): these fields in this order, act_mode as its index in
    # ACT_MODES (append-only). A dict of the same fields (states saved before) loads too.
    EXTRA_STATE_FIELDS = ("format_version", "in_features", "out_features", "per_channel", "relu", "act_mode")

    def get_extra_state(self):
        return torch.tensor([FORMAT_VERSION, self.in_features, self.out_features, int(self.per_channel),
                             int(self.relu), ACT_MODES.index(self.act_mode)], dtype=torch.int64)

    @classmethod
    def extra_state_fields(cls, state) -> dict:
        """The extra state (tensor or dict form) as a dict of EXTRA_STATE_FIELDS."""
        if isinstance(state, dict):
            return dict(state)
        if not (isinstance(state, torch.Tensor) and state.dtype == torch.int64
                and state.shape == (len(cls.EXTRA_STATE_FIELDS),)):
            raise PackedFormatError(
                f"SparseQuantLinear: unsupported packed format version: the extra state must be an int64 "
                f"tensor of {len(cls.EXTRA_STATE_FIELDS)} fields {cls.EXTRA_STATE_FIELDS}, got "
                f"{type(state).__name__}{'' if not isinstance(state, torch.Tensor) else f' {state.dtype} {tuple(state.shape)}'}")
        version, in_features, out_features, per_channel, relu, act = (int(v) for v in state.tolist())
        as_bool = {0: False, 1: True}
        return {"format_version": version, "in_features": in_features, "out_features": out_features,
                "per_channel": as_bool.get(per_channel, per_channel), "relu": as_bool.get(relu, relu),
                "act_mode": ACT_MODES[act] if 0 <= act < len(ACT_MODES) else f"<act_mode code {act}>"}

    def set_extra_state(self, state):
        state = self.extra_state_fields(state)  # a dict from here on (anything else raised)
        if state.get("format_version") != FORMAT_VERSION:
            raise PackedFormatError(
                f"SparseQuantLinear: unsupported packed format version {state.get('format_version')!r}; "
                f"this sqfx reads version {FORMAT_VERSION}")
        for key, kind in (("in_features", int), ("out_features", int), ("per_channel", bool),
                          ("relu", bool)):
            if type(state.get(key)) is not kind:
                raise PackedFormatError(
                    f"SparseQuantLinear: extra state field {key!r} must be a {kind.__name__}, "
                    f"got {state.get(key)!r}")
            # The op takes these as int64 (a larger one would load, then fail in forward).
            if kind is int and not 0 < state[key] <= _INT64_MAX:
                raise PackedFormatError(
                    f"SparseQuantLinear: extra state field {key!r} must be a positive int that "
                    f"fits int64, got {state[key]!r}")
        self._pending_meta = state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The packed tensors change shape with the sparsity: take them whole, not copy_ into
        # the current buffers, and validate them together with the metadata.
        extra_key = prefix + "_extra_state"
        if extra_key not in state_dict:
            missing_keys.append(extra_key)
            return
        self.set_extra_state(state_dict[extra_key])
        meta = self._pending_meta
        del self._pending_meta
        tensors = {}
        for name in PackedLinear.TENSOR_FIELDS:
            key = prefix + _BUFFER[name]
            if key in state_dict:
                tensors[name] = state_dict[key]
            elif name == "bias":
                tensors[name] = None
            else:
                missing_keys.append(key)
        if len(tensors) != len(PackedLinear.TENSOR_FIELDS):
            return
        # Own contiguous copies: the file's tensors may be strided views or shared storage.
        tensors = {k: (v.clone(memory_format=torch.contiguous_format)
                       if isinstance(v, torch.Tensor) else v) for k, v in tensors.items()}
        try:
            validate_packed(**tensors, in_features=meta["in_features"],
                            out_features=meta["out_features"])
        except PackedFormatError as e:
            error_msgs.append(f"while loading {prefix or 'SparseQuantLinear'}: {e}")
            return
        packed = PackedLinear(**tensors,
                              in_features=meta["in_features"], out_features=meta["out_features"],
                              per_channel=bool(meta["per_channel"]))
        # Format version 1 states written before act_mode existed load as dynamic_int8.
        act_mode = meta.get("act_mode", "dynamic_int8")
        if act_mode not in ACT_MODES:
            error_msgs.append(f"while loading {prefix or 'SparseQuantLinear'}: unknown act_mode {act_mode!r}; "
                              f"this sqfx knows {list(ACT_MODES)}")
            return
        self._set_packed(packed)
        self.relu = bool(meta["relu"])
        self.act_mode = act_mode
