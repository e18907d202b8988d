"""`python -m sqfx`: convert a model, report on its layers, benchmark it.

    python -m sqfx convert  SOURCE -o model.pt2 [--sparsity 0.8] [--block 1 4] [--per-tensor]
    python -m sqfx report   SOURCE [--sparsity ...]      # or a converted .pt2
    python -m sqfx bench    SOURCE [--batch 8] [--input-shape 8,128,384]

SOURCE is a saved model file (`torch.save(model, path)`; loaded with weights_only=False, so
only load files you trust), a Python factory `package.module:attr` (attr is an nn.Module or
a callable returning one), or, for `report`, a `.pt2` written by `convert`.

Example inputs (for export and bench): `--inputs module:attr` (a tuple of tensors or a
callable returning one), else `--input-shape 2,16` (a float randn), else one row of the first
linear's in_features.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .format import block_view
from .nn import SparseQuantLinear

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional: no bar without it
    def tqdm(it=None, **_):
        return it

PROGRESS_MIN_LAYERS = 8  # show a bar only when there are enough layers to wait for


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# ---------------------------------------------------------------- loading
def _import_attr(spec: str):
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise CliError(f"expected 'package.module:attr', got {spec!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise CliError(f"cannot import {mod_name!r} from {spec!r}: {e}") from None
    finally:
        sys.path.pop(0)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_model(source: str) -> nn.Module:
    """An nn.Module from a saved file or a `module:attr` factory."""
    path = Path(source)
    if path.suffix == ".pt2":
        raise CliError(f"{source} is an exported program; this command needs the fp32 model")
    if path.exists():
        try:
            obj = torch.load(path, weights_only=False, map_location="cpu")
        except Exception as e:
            raise CliError(f"cannot load {source} with torch.load: {type(e).__name__}: {e}") from None
    elif ":" in source:
        obj = _import_attr(source)
        if callable(obj) and not isinstance(obj, nn.Module):
            obj = obj()
    else:
        raise CliError(f"{source!r} is neither an existing file nor a 'module:attr' factory")
    if not isinstance(obj, nn.Module):
        raise CliError(f"{source!r} gave a {type(obj).__name__}, not an nn.Module "
                       "(a state_dict needs its model class: pass a factory instead)")
    return obj.eval()


def example_inputs(model: nn.Module, inputs_spec: str | None, input_shape: str | None) -> tuple:
    if inputs_spec:
        obj = _import_attr(inputs_spec)
        obj = obj() if callable(obj) else obj
        obj = obj if isinstance(obj, tuple) else (obj,)
        if not all(isinstance(t, torch.Tensor) for t in obj):
            raise CliError(f"--inputs {inputs_spec} must give a tensor or a tuple of tensors")
        return obj
    if input_shape:
        try:
            shape = [int(s) for s in input_shape.split(",")]
        except ValueError:
            raise CliError(f"--input-shape must be comma-separated ints, got {input_shape!r}") from None
        return (torch.randn(*shape, generator=torch.Generator().manual_seed(0)),)
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise CliError("the model has no nn.Linear to infer an input from: pass --inputs or --input-shape")
    return (torch.randn(1, first.in_features, generator=torch.Generator().manual_seed(0)),)


# ---------------------------------------------------------------- converting
def block_magnitude_mask(weight: torch.Tensor, sparsity: float, block) -> torch.Tensor:
    """Bool block mask keeping the (1 - sparsity) blocks of largest L1 norm."""
    norms = block_view(weight.detach().abs().float(), block).sum(dim=(2, 3))
    mask = torch.ones_like(norms, dtype=torch.bool)
    n_drop = int(round(sparsity * norms.numel()))
    if n_drop:
        mask.view(-1)[norms.flatten().argsort()[:n_drop]] = False
    return mask


def convert_model(model: nn.Module, sparsity: float = 0.0, block=(1, 4), per_channel: bool = True,
                  include: str | None = None, progress: bool | None = None, act_modes=None
                  ) -> tuple[nn.Module, list, nn.Module]:
    """A converted copy of `model`, its per-layer report rows, and the fp32 model with the same mask.

    ADAPTER: swaps each selected nn.Linear for SparseQuantLinear (module by module), so every
    layer stays a module with its act_mode and packed weight for the report. This is the one
    place to route through sqfx.prepare_and_convert once its config takes per-layer activation
    modes (it emits qlinear_dynamic graph calls only today).
    """
    import fnmatch

    masked = copy.deepcopy(model)
    model = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear
             and (include is None or fnmatch.fnmatchcase(n, include))]
    if not names:
        raise CliError("no nn.Linear layer selected" + (f" by --include {include!r}" if include else ""))
    show = progress if progress is not None else len(names) >= PROGRESS_MIN_LAYERS
    rows = []
    for fqn in tqdm(names, desc="sqfx convert", unit="layer", disable=not show):
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        mask = block_magnitude_mask(linear.weight, sparsity, block) if sparsity > 0 else None
        mode = (act_modes or {}).get(fqn, "dynamic_int8") if not isinstance(act_modes, str) else act_modes
        layer = SparseQuantLinear.from_float(linear, mask=mask, block=tuple(block), per_channel=per_channel,
                                             act_mode=mode)
        fp32_weight = _masked_weight(linear.weight, mask, block)
        rows.append(layer_row(fqn, layer, fp32_weight=fp32_weight))
        with torch.no_grad():
            masked.get_submodule(fqn).weight.copy_(fp32_weight)
        setattr(parent, child, layer)
    return model, rows, masked


def _masked_weight(weight, mask, block):
    if mask is None:
        return weight.detach().float()
    rb, cb = block
    n, k = weight.shape
    return weight.detach().float() * mask.repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:n, :k]


# ---------------------------------------------------------------- reporting
@dataclass
class LayerRow:
    name: str
    shape: str
    block: str
    sparsity: float
    act_mode: str
    kernel: str
    sqnr_db: float | None
    est_speedup: float


def _kernel_name(p, act_mode: str = "dynamic_int8") -> str:
    # The op's own kernel table decides (PackedLinear.kernel_for); no rules copied here.
    return p.kernel_summary("qlinear_weight_only" if act_mode == "weight_only" else "qlinear_dynamic")


def layer_row(fqn: str, layer: SparseQuantLinear, fp32_weight: torch.Tensor | None = None) -> LayerRow:
    p = layer.packed
    sqnr = None
    if fp32_weight is not None:
        err = (p.unpack() - fp32_weight).pow(2).sum()
        sig = fp32_weight.pow(2).sum()
        sqnr = float("inf") if err == 0 else 10 * math.log10(float(sig / err))
    # Estimated speedup of a memory-bound layer: dense fp32 weight bytes / packed bytes.
    dense_bytes = 4 * p.out_features * p.in_features
    return LayerRow(fqn, f"{p.out_features}x{p.in_features}", f"{p.block[0]}x{p.block[1]}", p.sparsity,
                    getattr(layer, "act_mode", "dynamic_int8"),
                    _kernel_name(p, getattr(layer, "act_mode", "dynamic_int8")), sqnr,
                    dense_bytes / max(1, p.nbytes()))


def rows_from_module(model: nn.Module) -> list:
    return [layer_row(n, m) for n, m in model.named_modules() if isinstance(m, SparseQuantLinear)]


def rows_from_pt2(path: Path) -> list:
    """Report rows read from the sqfx op calls of an exported program (no SQNR: no fp32 weight)."""
    from .format import PackedLinear

    ep = torch.export.load(str(path))
    sig = ep.graph_signature
    lookup = {**sig.inputs_to_buffers, **sig.inputs_to_parameters,
              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    tensors = {**ep.state_dict, **ep.constants}
    from .reference import dense_int8

    def tensor(a):
        return None if a is None else tensors[lookup[a.name]]

    rows = []
    for node in ep.graph.nodes:
        target = str(node.target)
        if node.op != "call_function" or not target.startswith("sqfx."):
            continue
        if "qlinear_weight_only" in target:  # (x, values, row_ptr, col_idx, w_scale, bias, in_features, relu)
            values, row_ptr, col_idx, w_scale, bias = (tensor(a) for a in node.args[1:6])
            in_features, relu, mode = int(node.args[6]), bool(node.args[7]), "weight_only"
            w_sum = dense_int8(values, row_ptr, col_idx, w_scale.shape[0], in_features).sum(1, dtype=torch.int32)
        elif "qlinear_dynamic" in target:  # (x, values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, relu)
            values, row_ptr, col_idx, w_scale, w_sum, bias = (tensor(a) for a in node.args[1:7])
            in_features, relu, mode = int(node.args[7]), bool(node.args[8]), "dynamic_int8"
        else:
            continue
        packed = PackedLinear(values, row_ptr, col_idx, w_scale, w_sum, bias, in_features=in_features,
                              out_features=int(w_scale.shape[0]))
        layer = SparseQuantLinear(packed, relu=relu, act_mode=mode)
        name = node.meta.get("nn_module_stack", {})
        fqn = list(name.values())[-1][0] if name else node.name
        rows.append(layer_row(fqn, layer))
    return rows


def format_rows(rows: list) -> str:
    head = (f"{'layer':<40} {'shape':>11} {'block':>5} {'sparsity':>8} {'act mode':>12} "
            f"{'kernel':>11} {'wSQNR dB':>8} {'est. speedup':>12}")
    out = [head, "-" * len(head)]
    for r in rows:
        sqnr = "-" if r.sqnr_db is None else f"{r.sqnr_db:.1f}"
        out.append(f"{r.name[-40:]:<40} {r.shape:>11} {r.block:>5} {r.sparsity:>8.3f} {r.act_mode:>12} "
                   f"{r.kernel:>11} {sqnr:>8} {r.est_speedup:>11.1f}x")
    if rows:
        mean = sum(r.sparsity for r in rows) / len(rows)
        out.append(f"{len(rows)} layers, mean block sparsity {mean:.3f}; wSQNR: packed int8 weight vs the "
                   "masked fp32 weight; est. speedup = fp32 weight bytes / packed bytes (the bound of a "
                   "memory-bound layer, not a measurement)")
    return "\n".join(out)


# ---------------------------------------------------------------- exporting / timing
def export(model: nn.Module, inputs: tuple, path: Path) -> Path:
    """torch.export (batch dim dynamic when possible) + save to .pt2."""
    # Trace with a batch of at least 2: torch.export specializes a size-1 dim to the constant 1.
    inputs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() >= 2 and t.shape[0] == 1 else t
                   for t in inputs)
    dyn = tuple({0: torch.export.Dim("batch", min=1, max=4096)} if t.dim() >= 2 else None for t in inputs)
    try:
        ep = torch.export.export(model, inputs, dynamic_shapes=dyn, strict=False)
    except Exception:  # a model that specializes its batch dim still exports statically
        ep = torch.export.export(model, inputs, strict=False)
    torch.export.save(ep, str(path))
    return path


@torch.inference_mode()
def time_ms(fn, inputs: tuple, warmup: int = 1, iters: int = 5) -> float:
    for _ in range(warmup):
        fn(*inputs)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(*inputs)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


# ---------------------------------------------------------------- commands
def _add_conversion_args(p):
    p.add_argument("source", help="saved model file, 'package.module:attr' factory"
                                  + (", or a converted .pt2" if p.prog.endswith("report") else ""))
    p.add_argument("--sparsity", type=float, default=0.0, help="block-magnitude pruning target in [0, 1)")
    p.add_argument("--block", type=int, nargs=2, default=(1, 4), metavar=("ROWS", "COLS"))
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer (default per-channel)")
    p.add_argument("--include", help="fnmatch pattern of the linear names to convert (default all)")
    p.add_argument("--inputs", help="'module:attr' giving example inputs (tensor or tuple)")
    p.add_argument("--input-shape", help="comma-separated shape of one float example input")
    p.add_argument("--act-mode", choices=("dynamic_int8", "weight_only", "auto"), default="dynamic_int8",
                   help="activation mode of every layer; 'auto' picks per layer from a calibration run on "
                        "the example inputs (weight_only where dynamic int8 falls below --threshold-db)")
    p.add_argument("--threshold-db", type=float, default=30.0, help="SQNR threshold of --act-mode auto")


def _convert_from_args(args):
    if not 0.0 <= args.sparsity < 1.0:
        raise CliError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if min(args.block) <= 0:
        raise CliError(f"--block sizes must be positive, got {args.block}")
    model = load_model(args.source)
    act_modes = args.act_mode
    if act_modes == "auto":
        from .lowering.act_mode import choose_activation_modes

        inputs = example_inputs(model, args.inputs, args.input_shape)
        masks = None
        if args.sparsity > 0:
            masks = {n: block_magnitude_mask(m.weight, args.sparsity, tuple(args.block))
                     for n, m in model.named_modules() if type(m) is nn.Linear}
        act_modes = choose_activation_modes(model, inputs, masks=masks, block=tuple(args.block),
                                            per_channel=not args.per_tensor, threshold_db=args.threshold_db)
    converted, rows, masked = convert_model(model, args.sparsity, tuple(args.block), not args.per_tensor,
                                            args.include, act_modes=act_modes)
    return masked, converted, rows


def cmd_convert(args) -> int:
    model, converted, rows = _convert_from_args(args)
    inputs = example_inputs(model, args.inputs, args.input_shape)
    out = Path(args.output)
    try:
        export(converted, inputs, out)
    except Exception as e:
        raise CliError(f"torch.export of the converted model failed: {type(e).__name__}: {e}") from None
    report = out.with_suffix(".report.json")
    report.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(format_rows(rows))
    print(f"\nwrote {out} (load: `import sqfx; torch.export.load({str(out)!r})`) and {report}")
    return 0


def cmd_report(args) -> int:
    if Path(args.source).suffix == ".pt2":
        if not Path(args.source).exists():
            raise CliError(f"{args.source} does not exist")
        rows = rows_from_pt2(Path(args.source))
    else:
        _, _, rows = _convert_from_args(args)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(format_rows(rows))
    return 0


def cmd_bench(args) -> int:
    model, converted, rows = _convert_from_args(args)
    inputs = example_inputs(model, args.inputs, args.input_shape)
    if args.batch:
        if args.batch <= 0:
            raise CliError(f"--batch must be positive, got {args.batch}")
        # Repeat the rows of the example along dim 0 up to the asked batch size.
        inputs = tuple(t.repeat(math.ceil(args.batch / max(1, t.shape[0])), *([1] * (t.dim() - 1)))[:args.batch]
                       if t.dim() >= 1 and t.shape[0] > 0 else t for t in inputs)
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    with torch.inference_mode():
        ref = model(*inputs)
        got = converted(*inputs)
    fp32_ms = time_ms(model, inputs, iters=args.iters)
    sqfx_ms = time_ms(converted, inputs, iters=args.iters)
    err = ""
    if isinstance(ref, torch.Tensor) and isinstance(got, torch.Tensor):
        rel = (got - ref).norm() / ref.norm().clamp(min=1e-30)
        err = f", relative error vs fp32 (same mask) {float(rel):.2e}"
    print(f"inputs {shapes}, {len(rows)} sqfx layers, {torch.get_num_threads()} threads, median of {args.iters}")
    print(f"fp32 eager   {fp32_ms:9.3f} ms")
    print(f"sqfx eager   {sqfx_ms:9.3f} ms   speedup {fp32_ms / sqfx_ms:.2f}x{err}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sqfx", description="sqfx: sparse + int8 linears on the CPU")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert a model and export it to .pt2 (+ a JSON report)")
    _add_conversion_args(p)
    p.add_argument("-o", "--output", default="model_sqfx.pt2", help="the .pt2 to write")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("report", help="per-layer table: shape, block, sparsity, mode, kernel, SQNR")
    _add_conversion_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("bench", help="time the converted model against the fp32 one")
    _add_conversion_args(p)
    p.add_argument("--batch", type=int, help="repeat the example input to this batch size")
    p.add_argument("--iters", type=int, default=10)
    p.set_defaults(func=cmd_bench)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"sqfx: error: {e}", file=sys.stderr)
        return 2
