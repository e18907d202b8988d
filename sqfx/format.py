"""The packed weight format: int8 block-sparse rows (BSR) held as plain tensors.

For a weight [out_features, in_features] cut into row_block x col_block blocks (the edges
padded with zeros, so any shape works):

| tensor    | dtype          | shape                        | meaning                                  |
|-----------|----------------|------------------------------|------------------------------------------|
| values    | int8           | [nnz, row_block, col_block]  | the kept blocks, row-major inside        |
| row_ptr   | int32          | [ceil(N / row_block) + 1]    | blocks of row block i: row_ptr[i:i+1]    |
| col_idx   | int16 or int32 | [nnz]                        | block column of each block, increasing   |
| w_scale   | float32        | [N]                          | per output channel (per-tensor: equal)   |
| w_sum     | int32          | [N]                          | sum of the int8 weights of each row      |
| bias      | float32 / None | [N]                          |                                          |

Weights are symmetric int8 in [-127, 127] with zero point 0. `w_sum` lets the kernel undo the
activation zero point: sum_k (q_k - zp) w_k = sum_k q_k w_k - zp * w_sum.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

FORMAT_VERSION = 1
_INT16_MAX = torch.iinfo(torch.int16).max

# Fast kernels accumulate in int32: exact up to this many padded input features for any
# w_sum the op accepts (csrc/kernels/kernels.h kMaxInt32InFeatures); above it the op runs
# the generic kernel.
MAX_INT32_IN_FEATURES = 2147483647 // (2 * 255 * 127)

# layout="auto" in pack(): below these block sparsities the dense layout is faster than the
# sparse kernel for that block shape (calibrated with tools/kernel_timing.py --crossover,
# numbers in docs/design.md "Kernels and layout"). Blocks without a fast kernel run the
# portable kernel, so they need very high sparsity to beat the dense int8 kernel.
DENSE_BELOW_SPARSITY = {"1x4": 0.7, "8x1": 0.85, "other": 0.97}
LAYOUTS = ("auto", "sparse", "dense")


def _block_family(rb: int, cb: int) -> str:
    """The calibration family of a block shape for layout="auto" (DENSE_BELOW_SPARSITY); the
    kernel itself is chosen by the op's kernel table (PackedLinear.kernel_for)."""
    if rb == 1 and cb % 4 == 0:
        return "1x4"
    if cb == 1 and rb % 8 == 0:
        return "8x1"
    return "other"


class PackedFormatError(ValueError):
    """A packed tensor violates an invariant of the format."""


@dataclass
class PackedLinear:
    values: torch.Tensor
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    w_scale: torch.Tensor
    w_sum: torch.Tensor
    bias: torch.Tensor | None
    in_features: int
    out_features: int
    per_channel: bool = True

    TENSOR_FIELDS = ("values", "row_ptr", "col_idx", "w_scale", "w_sum", "bias")
    # The op's optional small-M tiled layout (tiled()), derived, never stored in files.
    TILED_FIELDS = ("tile_ptr", "step_col", "slot_w", "slot_idx", "row_perm")

    @property
    def block(self) -> tuple[int, int]:
        return int(self.values.shape[1]), int(self.values.shape[2])

    @property
    def n_row_blocks(self) -> int:
        return -(-self.out_features // self.block[0])

    @property
    def n_col_blocks(self) -> int:
        return -(-self.in_features // self.block[1])

    @property
    def nnz_blocks(self) -> int:
        return int(self.values.shape[0])

    @property
    def sparsity(self) -> float:
        """Fraction of the (padded) blocks that are dropped."""
        total = self.n_row_blocks * self.n_col_blocks
        return 1.0 - self.nnz_blocks / total if total else 0.0

    @property
    def scheme(self) -> str:
        return "per_channel" if self.per_channel else "per_tensor"

    @property
    def layout(self) -> str:
        """"dense" when every row is one stored 1 x K_padded block (pack(layout="dense")), else "sparse"."""
        rb, cb = self.block
        dense = rb == 1 and self.n_col_blocks == 1 and cb % 4 == 0 and self.nnz_blocks == self.out_features
        return "dense" if dense else "sparse"

    def tiled(self) -> tuple | None:
        """The small-M tiled layout of a 1x4 sparse weight, (tile_ptr, step_col, slot_w, slot_idx, row_perm),
        or None for other blocks and the dense layout. Derived from values / row_ptr / col_idx (by
        the op `sqfx::_pack_tiled`, O(nnz)), never stored: files keep packed format v1. Cached
        until one of those tensors is replaced or changed in place (inference tensors, made under
        torch.inference_mode, have no version counter: an in-place change of one is not seen;
        replace the tensor instead)."""
        # Per call (the fixed cost of a small layer, issue 10): the cache hit is checked first and
        # cheaply, against the tensor objects themselves (held, so an id cannot be reused) and
        # their storage and version; is_inference() is asked only when the cache is filled.
        v, r, c = self.values, self.row_ptr, self.col_idx
        cached = self.__dict__.get("_tiled_cache")
        if cached is not None:
            cv, cr, cc, state, inference, tensors = cached
            if cv is v and cr is r and cc is c and state == _tensor_state(v, r, c, inference):
                return tensors
        inference = v.is_inference() or r.is_inference() or c.is_inference()
        tensors = None
        if self._has_tiled():
            tensors = tuple(torch.ops.sqfx._pack_tiled(v, r, c, self.w_scale, self.in_features))
        self.__dict__["_tiled_cache"] = (v, r, c, _tensor_state(v, r, c, inference), inference, tensors)
        return tensors

    def kernel_for(self, M: int, op: str = "qlinear_dynamic") -> str:
        """The kernel `op` ("qlinear_dynamic" or "qlinear_weight_only") runs for M input rows on
        this CPU (or under sqfx.ops.force_isa), e.g. "qd8_bsr1x4c_rows__avx512vnni": asked from
        the op's kernel table (csrc/kernels/dispatch.cpp). Assumes calls through PackedLinear,
        which pass the tiled layout (tiled()) where there is one."""
        return torch.ops.sqfx._kernel_for(op, self.values, self.row_ptr, self.col_idx, self.w_scale,
                                          self.in_features, int(M), self._has_tiled())

    def _has_tiled(self) -> bool:
        # 1x4 sparse weights with stored blocks (an empty layer needs no kernel)
        return self.block == (1, 4) and self.layout != "dense" and self.nnz_blocks > 0

    def kernels(self, op: str = "qlinear_dynamic") -> list[tuple[int, int | None, str]]:
        """[(m_first, m_last or None for no limit, kernel)]: the table's choice over every M >= 1
        (it can only change where a table row's M range starts)."""
        runs: list[list] = []
        for m in [b for b in torch.ops.sqfx._kernel_m_breaks() if b >= 1]:
            name = self.kernel_for(m, op)
            if runs and runs[-1][2] == name:
                continue
            if runs:
                runs[-1][1] = m - 1
            runs.append([m, None, name])
        return [tuple(r) for r in runs]

    @property
    def kernel(self) -> str:
        """The kernels the dynamic op runs for this weight on this CPU, by M, for the conversion
        report: "qd8_bsr1x4c_rows__avx512vnni (M 1-3), qd8_bsr1x4c_panel16__avx512vnni (M >= 4)",
        or one name when one kernel serves every M."""
        return self.kernel_summary()

    def kernel_summary(self, op: str = "qlinear_dynamic") -> str:
        """`kernel` for either op."""
        return _describe_runs(self.kernels(op))

    def __call__(self, input: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """`sqfx.pack(...)(x)`, the stable call benchmarks use: one sqfx::qlinear_dynamic call
        through sqfx.ops.call_eager, as SparseQuantLinear makes it (the op module is imported on
        the first call, not by this module: the format stays data only)."""
        call = _CALL_EAGER or _load_call_eager()
        args = (input, self.values, self.row_ptr, self.col_idx, self.w_scale, self.w_sum, self.bias,
                self.in_features, relu, *(self.tiled() or ()))
        return call(torch.ops.sqfx.qlinear_dynamic.default, args, input, self.w_scale, self.bias)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors() if t is not None)

    def tensors(self) -> tuple:
        return tuple(getattr(self, name) for name in self.TENSOR_FIELDS)

    def validate(self) -> "PackedLinear":
        """Checks every invariant of the format; raises PackedFormatError naming the tensor."""
        validate_packed(*self.tensors(), in_features=self.in_features, out_features=self.out_features)
        return self

    def unpack(self) -> torch.Tensor:
        """The dense dequantized fp32 weight [out_features, in_features]."""
        w = dense_int8(self.values, self.row_ptr, self.col_idx, self.out_features, self.in_features)
        return w.float() * self.w_scale[:, None]

    def block_mask(self) -> torch.Tensor:
        """Bool [n_row_blocks, n_col_blocks]: which blocks are stored."""
        mask = torch.zeros(self.n_row_blocks, self.n_col_blocks, dtype=torch.bool)
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.n_row_blocks), counts)
        mask[rows, self.col_idx.long()] = True
        return mask


def dense_int8(values, row_ptr, col_idx, out_features: int, in_features: int) -> torch.Tensor:
    """Expands BSR int8 blocks to a dense int8 [out_features, in_features] weight."""
    nnz, rb, cb = values.shape
    n_rb = -(-out_features // rb)
    dense = torch.zeros(out_features, in_features, dtype=torch.int8)
    if nnz == 0:
        return dense
    # Scatter element by element into the unpadded weight (a padded copy would scale
    # with the block shape, which for a crafted layer can be far larger than the layer).
    block_row = torch.repeat_interleave(torch.arange(n_rb), (row_ptr[1:] - row_ptr[:-1]).long())
    rows = (block_row[:, None] * rb + torch.arange(rb))[:, :, None].expand(nnz, rb, cb)
    cols = (col_idx.long()[:, None] * cb + torch.arange(cb))[:, None, :].expand(nnz, rb, cb)
    keep = (rows < out_features) & (cols < in_features)
    dense[rows[keep], cols[keep]] = values[keep]
    return dense


_CALL_EAGER = None


def _load_call_eager():
    global _CALL_EAGER
    from .ops import call_eager

    _CALL_EAGER = call_eager
    return call_eager


def _tensor_state(v, r, c, inference: bool) -> tuple:
    """Storage and in-place versions of three tensors; if any is an inference tensor (no version
    counter), storage only: an in-place change is then not seen (tiled() documents it)."""
    if inference:
        return (v.data_ptr(), r.data_ptr(), c.data_ptr())
    return (v.data_ptr(), r.data_ptr(), c.data_ptr(), v._version, r._version, c._version)


def version_counter(t: torch.Tensor) -> int:
    """t's in-place version counter; -1 for an inference tensor (built under
    torch.inference_mode()), which has none: callers then see identity only."""
    return -1 if t.is_inference() else t._version


def _describe_runs(runs) -> str:
    if len(runs) == 1:
        return runs[0][2]
    parts = []
    for first, last, name in runs:
        span = f"M >= {first}" if last is None else (f"M {first}" if first == last else f"M {first}-{last}")
        parts.append(f"{name} ({span})")
    return ", ".join(parts)


def _fail(name: str, why: str) -> None:
    raise PackedFormatError(f"sqfx packed format: {name} {why}")


def _check(t, name, dtype, dim):
    if not isinstance(t, torch.Tensor):
        _fail(name, f"must be a tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        _fail(name, f"must be on the CPU, got {t.device}")
    if t.dtype not in (dtype if isinstance(dtype, tuple) else (dtype,)):
        _fail(name, f"must have dtype {dtype}, got {t.dtype}")
    if t.dim() != dim:
        _fail(name, f"must be {dim}-D, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        _fail(name, "must be contiguous (the op reads it as a flat array)")


_INT64_MAX = torch.iinfo(torch.int64).max
# validate_packed walks the stored blocks in chunks of about this many weights, so its
# temporaries stay a few MB whatever the layer's size (without chunking, the int64 index
# tensors of 1x4 blocks alone are ~10x the size of `values`).
_CHUNK_WEIGHTS = 1 << 18


def _check_features(name, value):
    if not (type(value) is int and 0 < value <= _INT64_MAX):
        _fail(name, f"must be a positive int that fits int64, got {value!r}")


def validate_packed(values, row_ptr, col_idx, w_scale, w_sum, bias, *, in_features, out_features,
                    weight_only=False):
    """Full O(nnz) check of a packed weight (the op itself checks only what is O(rows)).

    weight_only=True: the weight of a `sqfx::qlinear_weight_only` call, which reads no w_sum
    (pass None; a given one is still checked).
    Cheap checks (O(row blocks)) come first, so a crafted file fails before any temporary
    scales with what it claims; the O(nnz) checks then run in bounded chunks of blocks.
    """
    _check(values, "values", torch.int8, 3)
    _check(row_ptr, "row_ptr", torch.int32, 1)
    _check(col_idx, "col_idx", (torch.int16, torch.int32), 1)
    _check(w_scale, "w_scale", torch.float32, 1)
    if w_sum is not None or not weight_only:
        _check(w_sum, "w_sum", torch.int32, 1)
    if bias is not None:
        _check(bias, "bias", torch.float32, 1)
    _check_features("in_features", in_features)
    _check_features("out_features", out_features)
    nnz, rb, cb = values.shape
    if rb <= 0 or cb <= 0:
        _fail("values", f"has a non-positive block size {rb}x{cb}")
    n_rb, n_cb = -(-out_features // rb), -(-in_features // cb)  # exact for any int
    if w_scale.numel() != out_features:
        _fail("w_scale", f"has {w_scale.numel()} entries, expected out_features = {out_features}")
    if not bool(torch.isfinite(w_scale).all()) or not bool((w_scale > 0).all()):
        _fail("w_scale", "must be finite and positive")
    if w_sum is not None and w_sum.numel() != out_features:
        _fail("w_sum", f"has {w_sum.numel()} entries, expected out_features = {out_features}")
    if bias is not None and bias.numel() != out_features:
        _fail("bias", f"has {bias.numel()} entries, expected out_features = {out_features}")
    if row_ptr.numel() != n_rb + 1:
        _fail("row_ptr", f"has {row_ptr.numel()} entries, expected ceil(out_features / row_block) + 1 = {n_rb + 1}")
    if int(row_ptr[0]) != 0:
        _fail("row_ptr", f"must start at 0, got {int(row_ptr[0])}")
    # int64: int32 differences of crafted entries wrap around and would pass the checks below.
    counts = row_ptr[1:].long() - row_ptr[:-1].long()
    if bool((counts < 0).any()):
        _fail("row_ptr", "must be non-decreasing")
    if int(row_ptr[-1]) != nnz:
        _fail("row_ptr", f"ends at {int(row_ptr[-1])}, but values holds {nnz} blocks")
    if bool((counts > n_cb).any()):
        _fail("row_ptr", f"gives a row block more than n_col_blocks = {n_cb} blocks")
    if col_idx.numel() != nnz:
        _fail("col_idx", f"has {col_idx.numel()} entries, but values holds {nnz} blocks")
    # From here on every tensor's size is backed by `values`/`col_idx` memory.
    expected_sum = torch.zeros(out_features, dtype=torch.int64) if w_sum is not None else None
    chunk = max(1, _CHUNK_WEIGHTS // (rb * cb))
    row_starts = row_ptr.long()
    for begin in range(0, nnz, chunk):
        end = min(nnz, begin + chunk)
        _check_block_chunk(values[begin:end], col_idx[max(begin - 1, 0):end], row_starts, begin,
                           n_cb, out_features, in_features, expected_sum)
    if w_sum is None:
        return
    if bool((expected_sum.abs() > torch.iinfo(torch.int32).max).any()):
        _fail("w_sum", "would overflow int32: in_features is too large for int8 row sums")
    if not torch.equal(expected_sum.to(torch.int32), w_sum):
        _fail("w_sum", "does not equal the row sums of the int8 weights")


def _check_block_chunk(values, col_idx, row_starts, begin, n_cb, out_features, in_features, expected_sum):
    """The O(blocks) checks of validate_packed on the blocks [begin, begin + len(values)).

    col_idx starts one block earlier when begin > 0 (for the order check across the chunk
    boundary); row_starts is row_ptr as int64. Adds each stored row's sum into expected_sum.
    """
    nnz, rb, cb = values.shape
    cols_all = col_idx.long()
    if int(cols_all.min()) < 0 or int(cols_all.max()) >= n_cb:
        _fail("col_idx", f"holds a block column outside [0, {n_cb})")
    # The row block of each block j: the i with row_ptr[i] <= j < row_ptr[i + 1].
    first = begin - (len(cols_all) - nnz)
    index = torch.arange(first, begin + nnz)
    block_row = torch.searchsorted(row_starts, index, right=True) - 1
    # Strictly increasing inside each row block (so no block is counted twice).
    same_row = block_row[1:] == block_row[:-1]
    if bool(((cols_all[1:] <= cols_all[:-1]) & same_row).any()):
        _fail("col_idx", "must be strictly increasing within each row block")
    block_row, cols_all = block_row[-nnz:], cols_all[-nnz:]
    if bool((values == -128).any()):
        _fail("values", "must lie in [-127, 127] (symmetric int8)")
    # Padding (rows >= out_features, columns >= in_features) must hold zeros. Checked on
    # the stored blocks only: a dense padded copy would scale with the block shape, which
    # in a crafted file need not be backed by any memory.
    rows = block_row[:, None] * rb + torch.arange(rb)[None, :]  # [nnz, rb] output row
    cols = cols_all[:, None] * cb + torch.arange(cb)[None, :]  # [nnz, cb] input column
    pad_rows, pad_cols = rows >= out_features, cols >= in_features
    if bool(pad_rows.any()) and bool(values[pad_rows].ne(0).any()):
        _fail("values", "holds non-zero weights in the padding beyond the layer's shape")
    if bool(pad_cols.any()) and bool(values.transpose(1, 2)[pad_cols].ne(0).any()):
        _fail("values", "holds non-zero weights in the padding beyond the layer's shape")
    if expected_sum is not None:
        in_layer = ~pad_rows
        expected_sum.index_add_(0, rows[in_layer], values.sum(dim=2, dtype=torch.int64)[in_layer])


def validate_tiled(bsr, in_features, tiled) -> None:
    """The small-M tiled layout given with a packed weight must be the one its BSR tensors
    (values, row_ptr, col_idx, w_scale; already validated) derive to: else the op's small-M
    kernels would compute another weight than the large-M ones."""
    values, row_ptr, col_idx, w_scale = bsr
    tiled = list(tiled)
    if len(tiled) != len(PackedLinear.TILED_FIELDS) or any(not isinstance(t, torch.Tensor) for t in tiled):
        _fail("tiled layout", f"needs the {len(PackedLinear.TILED_FIELDS)} tensors {PackedLinear.TILED_FIELDS}")
    if tuple(values.shape[1:]) != (1, 4):
        _fail("tiled layout", f"is only defined for 1x4 blocks, the weight has {tuple(values.shape[1:])}")
    want = torch.ops.sqfx._pack_tiled(values, row_ptr, col_idx, w_scale, in_features)
    for name, got, exp in zip(PackedLinear.TILED_FIELDS, tiled, want):
        if got.dtype != exp.dtype or got.shape != exp.shape or not torch.equal(got, exp):
            _fail(name, "does not match the tiled layout of the weight's values / row_ptr / col_idx")


def _as_block(block) -> tuple[int, int]:
    try:
        rb, cb = (int(b) for b in block)
    except (TypeError, ValueError):
        raise ValueError(f"sqfx: block must be a pair (row_block, col_block), got {block!r}") from None
    if rb <= 0 or cb <= 0:
        raise ValueError(f"sqfx: block sizes must be positive, got {rb}x{cb}")
    return rb, cb


def block_view(t: torch.Tensor, block) -> torch.Tensor:
    """Pads a 2-D tensor to whole blocks and views it as [n_rb, n_cb, rb, cb]."""
    rb, cb = block
    n, k = t.shape
    n_rb, n_cb = -(-n // rb), -(-k // cb)
    padded = torch.nn.functional.pad(t, (0, n_cb * cb - k, 0, n_rb * rb - n))
    return padded.reshape(n_rb, rb, n_cb, cb).permute(0, 2, 1, 3)


def to_block_mask(mask: torch.Tensor, shape, block, name: str = "weight") -> torch.Tensor:
    """Turns an element mask [N, K] (block-structured) or a block mask [n_rb, n_cb] into a bool block mask."""
    rb, cb = block
    n, k = shape
    n_rb, n_cb = -(-n // rb), -(-k // cb)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"sqfx: mask for {name} must be a tensor, got {type(mask).__name__}")
    if mask.dtype.is_complex or mask.dim() != 2:
        raise ValueError(f"sqfx: mask for {name} must be a real 2-D tensor, got {mask.dtype} {tuple(mask.shape)}")
    mask = mask.detach().cpu() != 0
    if tuple(mask.shape) == (n, k):
        # Pad with the edge values so partial edge blocks are judged on their real part.
        blocks = block_view(mask.to(torch.int8), block)
        valid = block_view(torch.ones(n, k, dtype=torch.int8), block)
        kept = (blocks * valid).sum(dim=(2, 3))
        size = valid.sum(dim=(2, 3))
        partial = (kept > 0) & (kept < size)
        if bool(partial.any()):
            i, j = (int(v) for v in partial.nonzero()[0])
            raise ValueError(
                f"sqfx: mask for {name} is not block-structured for block {rb}x{cb}: block "
                f"({i}, {j}) keeps {int(kept[i, j])} of {int(size[i, j])} weights"
            )
        return kept > 0
    if tuple(mask.shape) == (n_rb, n_cb):
        return mask
    raise ValueError(
        f"sqfx: mask for {name} has shape {tuple(mask.shape)}; expected the weight's shape {(n, k)} "
        f"or the block grid {(n_rb, n_cb)} for block {rb}x{cb}"
    )


def symmetric_scales(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Min-max symmetric int8 scales: max|w| / 127 per output channel (or for the whole tensor)."""
    amax = weight.abs().amax(dim=1) if per_channel else weight.abs().amax().expand(weight.shape[0])
    scale = (amax / 127.0).float()
    return torch.where(scale > 0, scale, torch.ones_like(scale)).contiguous()


def pack(
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    block=(1, 4),
    per_channel: bool = True,
    bias: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    layout: str = "sparse",
) -> PackedLinear:
    """Quantizes and packs a dense fp32 weight [out_features, in_features].

    mask: element mask of the weight's shape (must be block-structured) or block mask
    [ceil(N/rb), ceil(K/cb)]; None keeps every block that holds a non-zero weight.
    scales: per-output-channel float32 scales from an observer (default: min-max symmetric).
    layout: "sparse" stores the kept blocks; "dense" stores every weight (dropped blocks as
    zeros) as one 1 x K_padded block per row, run by the dense int8 kernel; "auto" picks dense
    when the block sparsity is below DENSE_BELOW_SPARSITY for the block's kernel family.
    The numerics are the same either way (same int8 weights, scales and w_sum).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"sqfx.pack: layout must be one of {LAYOUTS}, got {layout!r}")
    block = _as_block(block)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"sqfx.pack: weight must be a 2-D tensor, got {getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"sqfx.pack: weight must be floating point, got {weight.dtype}")
    n, k = weight.shape
    if n == 0 or k == 0:
        raise ValueError(f"sqfx.pack: weight has an empty shape {tuple(weight.shape)}")
    weight = weight.detach().cpu().float()
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("sqfx.pack: weight holds NaN or Inf")
    if mask is None:
        block_mask = block_view(weight, block).ne(0).any(dim=3).any(dim=2)
    else:
        block_mask = to_block_mask(mask, (n, k), block)
    # Dropped blocks are zero before the observer sees the weight.
    masked = (block_view(weight, block) * block_mask[:, :, None, None]).permute(0, 2, 1, 3)
    masked = masked.reshape(block_mask.shape[0] * block[0], -1)[:n, :k]
    if scales is None:
        scales = symmetric_scales(masked, per_channel)
    else:
        scales = torch.as_tensor(scales, dtype=torch.float32).detach().cpu().reshape(-1)
        if scales.numel() == 1:
            scales = scales.expand(n)
        if scales.numel() != n or not bool(torch.isfinite(scales).all()) or not bool((scales > 0).all()):
            raise ValueError(f"sqfx.pack: scales must be {n} finite positive values")
        scales = scales.contiguous()
    q = torch.round(masked / scales[:, None]).clamp(-127, 127).to(torch.int8)
    w_sum64 = q.sum(dim=1, dtype=torch.int64)
    if bool((w_sum64.abs() > torch.iinfo(torch.int32).max).any()):
        raise ValueError(f"sqfx.pack: in_features = {k} is too large: int8 row sums overflow int32")
    w_sum = w_sum64.to(torch.int32)
    if bias is not None:
        bias = bias.detach().cpu().float().reshape(-1).contiguous()
        if bias.numel() != n:
            raise ValueError(f"sqfx.pack: bias has {bias.numel()} entries, expected {n}")
    if layout == "auto":
        sparsity = 1.0 - float(block_mask.float().mean())
        layout = "dense" if sparsity < DENSE_BELOW_SPARSITY[_block_family(*block)] else "sparse"
    if layout == "dense":
        return _pack_dense(q, scales, w_sum, bias, per_channel)
    blocks = block_view(q, block)
    nz = block_mask.nonzero()
    values = blocks[nz[:, 0], nz[:, 1]].contiguous()
    n_cb = block_mask.shape[1]
    col_dtype = torch.int16 if n_cb <= _INT16_MAX else torch.int32
    col_idx = nz[:, 1].to(col_dtype).contiguous()
    row_ptr = torch.zeros(block_mask.shape[0] + 1, dtype=torch.int32)
    row_ptr[1:] = block_mask.sum(dim=1).cumsum(0)
    return PackedLinear(values, row_ptr, col_idx, scales, w_sum, bias, k, n, per_channel)


def _pack_dense(q, scales, w_sum, bias, per_channel) -> PackedLinear:
    """Dense layout: each row one 1 x K_padded block (K padded to a multiple of 4), block
    column 0. Still a valid BSR weight, so the op schema, the reference and validate_packed
    are unchanged; the op's 1 x 4c kernels then stream it as a dense int8 GEMV/GEMM."""
    n, k = q.shape
    k_pad = -(-k // 4) * 4
    values = torch.nn.functional.pad(q, (0, k_pad - k)).reshape(n, 1, k_pad).contiguous()
    row_ptr = torch.arange(n + 1, dtype=torch.int32)
    col_idx = torch.zeros(n, dtype=torch.int16)
    return PackedLinear(values, row_ptr, col_idx, scales, w_sum, bias, k, n, per_channel)
