"""`python -m sqfx`: convert a model, report on its layers, benchmark it.

    python -m sqfx convert  SOURCE -o model.pt2 [--sparsity 0.8] [--block 1 4] [--per-tensor]
    python -m sqfx report   SOURCE [--sparsity ...]      # or a converted .pt2
    python -m sqfx bench    SOURCE [--batch 8] [--input-shape 8,128,384]
    python -m sqfx sparsify SOURCE --data module:attr [--sparsity 0.5] [--method sparsegpt] -o sparse.pt

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
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .config import ACTIVATION_MODES, DEFAULT_ACT_THRESHOLD_DB, ConfigError, SparseQuantConfig
from .convert import prepare_and_convert
from .lowering import ConversionReport


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
    from .patterns.linear_relu import linear_like

    first = next((found for found in map(linear_like, model.modules()) if found is not None), None)
    if first is None:
        raise CliError("the model has no linear layer to infer an input from: pass --inputs or --input-shape")
    return (torch.randn(1, first[0].shape[1], generator=torch.Generator().manual_seed(0)),)


# ---------------------------------------------------------------- converting
def config_from_args(args) -> SparseQuantConfig:
    """The library's config for the conversion flags (SparseQuantConfig checks the values)."""
    if not 0.0 <= args.sparsity < 1.0:
        raise CliError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    return SparseQuantConfig(block=tuple(args.block), target_sparsity=args.sparsity or None,
                             per_channel=not args.per_tensor, include=[args.include] if args.include else None,
                             activation=args.act_mode, act_threshold_db=args.threshold_db)


def _check_selected(report: ConversionReport, args) -> None:
    if not report.layers:
        raise CliError("no linear layer selected" + (f" by --include {args.include!r}" if args.include else ""))


def convert_from_args(args):
    """(fp32 model, converted model, its ConversionReport), through sqfx.prepare_and_convert."""
    config = config_from_args(args)
    model = load_model(args.source)
    inputs = example_inputs(model, args.inputs, args.input_shape) if config.uses_auto_activation() else None
    converted = prepare_and_convert(model, config, example_inputs=inputs)
    _check_selected(converted.sqfx_report, args)
    return model, converted, converted.sqfx_report


def _trace_batch(inputs: tuple) -> tuple:
    # Trace with a batch of at least 2: torch.export specializes a size-1 dim to the constant 1.
    return tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() >= 2 and t.shape[0] == 1 else t for t in inputs)


def export_from_args(args):
    """(fp32 model, ExportedProgram) through sqfx.export, every dim dynamic where the model allows."""
    from .artifacts import export

    config = config_from_args(args)
    model = load_model(args.source)
    inputs = _trace_batch(example_inputs(model, args.inputs, args.input_shape))
    auto = torch.export.Dim.AUTO
    try:
        ep = export(model, inputs, config, dynamic_shapes=tuple({d: auto for d in range(t.dim())} for t in inputs))
    except ConfigError:
        raise
    except Exception as e:
        raise CliError(f"sqfx.export of the model failed: {type(e).__name__}: {e}") from None
    _check_selected(ep.sqfx_report, args)
    return model, ep


def _strict_json(value):
    """NaN / inf (an SQNR unknown for a stored program, or exact) as null / "inf": json.dumps would
    write NaN / Infinity, which strict JSON parsers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def dumps(obj) -> str:
    return json.dumps(_strict_json(obj), indent=1, allow_nan=False)


def report_json(report: ConversionReport) -> str:
    return dumps({"capture": report.capture, "layers": [asdict(l) for l in report.layers],
                  "skipped": [asdict(s) for s in report.skipped], "notes": list(report.notes)})


def masked_fp32(model: nn.Module, report: ConversionReport) -> nn.Module:
    """A copy of the fp32 model with the blocks each converted layer dropped zeroed: the pruning
    the conversion did (the same block_magnitude_mask on the same weight), without the int8."""
    from .lowering import block_magnitude_mask
    from .patterns.linear_relu import linear_like

    masked = copy.deepcopy(model)
    for layer in report.layers:
        if not layer.mask_source.startswith("magnitude"):
            continue
        module = masked.get_submodule(layer.fqn)
        weight, _ = linear_like(module)
        _, norm, sparsity = layer.mask_source.split()
        keep = block_magnitude_mask(weight, layer.block, float(sparsity), norm)
        rb, cb = layer.block
        dense = keep.repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:layer.out_features, :layer.in_features]
        with torch.no_grad():
            module.weight.mul_(dense if module.weight.shape == dense.shape else dense.T)
    return masked


# ---------------------------------------------------------------- timing
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
    p.add_argument("--act-mode", choices=ACTIVATION_MODES, default="dynamic_int8",
                   help="activation mode of every layer; 'auto' picks per layer from a calibration run on "
                        "the example inputs (weight_only where dynamic int8 falls below --threshold-db)")
    p.add_argument("--threshold-db", type=float, default=DEFAULT_ACT_THRESHOLD_DB,
                   help="SQNR threshold of --act-mode auto")


def cmd_convert(args) -> int:
    from .artifacts import save

    _, ep = export_from_args(args)
    out = Path(args.output)
    save(ep, out)
    report = out.with_suffix(".report.json")
    report.write_text(report_json(ep.sqfx_report))
    print(ep.sqfx_report)
    print(f"\nwrote {out} (load: `import sqfx; sqfx.load({str(out)!r})`) and {report}")
    return 0


def cmd_report(args) -> int:
    if Path(args.source).suffix == ".pt2":
        from .artifacts import load, report_from_program

        if not Path(args.source).exists():
            raise CliError(f"{args.source} does not exist")
        export_log = logging.getLogger("torch.export")
        level = export_log.level
        export_log.setLevel(logging.ERROR)  # torch logs its own traceback before raising
        try:
            report = report_from_program(load(args.source))
        except Exception as e:  # a foreign or damaged archive: say so, without a traceback
            first = (str(e).strip().splitlines() or [""])[0]
            raise CliError(f"cannot load {args.source}: {type(e).__name__}: {first}") from None
        finally:
            export_log.setLevel(level)
    else:
        _, _, report = convert_from_args(args)
    print(report_json(report) if args.json else report)
    return 0


def cmd_bench(args) -> int:
    model, converted, report = convert_from_args(args)
    model = masked_fp32(model, report)
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
    print(f"inputs {shapes}, {len(report.layers)} sqfx layers, {torch.get_num_threads()} threads, median of {args.iters}")
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
    p = sub.add_parser("report", help="the conversion report: per layer shape, block, sparsity, mode, kernel, SQNR")
    _add_conversion_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("bench", help="time the converted model against the fp32 one")
    _add_conversion_args(p)
    p.add_argument("--batch", type=int, help="repeat the example input to this batch size")
    p.add_argument("--iters", type=int, default=10)
    p.set_defaults(func=cmd_bench)
    add_sparsify_parser(sub)
    return ap


# ---------------------------------------------------------------- sparsify (self-contained)
def add_sparsify_parser(sub) -> None:
    """`python -m sqfx sparsify SOURCE --data module:attr -o sparse.pt`: sqfx.sparsify from the shell."""
    from .sparsify import ALLOCATIONS, METHODS

    p = sub.add_parser("sparsify", help="prune a dense model to block masks on calibration data (sqfx.sparsify)",
                       description="Prunes SOURCE's linears with sqfx.sparsify and saves the pruned fp32 model "
                                   "(torch.save); `python -m sqfx convert` on that file keeps its masks.")
    p.add_argument("source", help="saved model file or 'package.module:attr' factory")
    p.add_argument("--data", required=True,
                   help="'module:attr' giving the calibration data: an iterable of model inputs (tensors, "
                        "tuples, or dicts of keyword arguments), or a callable returning one")
    p.add_argument("--sparsity", type=float, default=0.5, help="target block sparsity in [0, 1)")
    p.add_argument("--method", choices=METHODS, default="sparsegpt")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform")
    p.add_argument("--block", type=int, nargs=2, default=(1, 4), metavar=("ROWS", "COLS"))
    p.add_argument("--include", action="append", help="fnmatch pattern of the linears to prune (repeatable)")
    p.add_argument("--recovery-steps", type=int, default=0, help="distillation steps after pruning (0: none)")
    p.add_argument("--recovery-cpu", type=float, help="stop recovery after this many CPU seconds")
    p.add_argument("--lr", type=float, default=2e-4, help="recovery learning rate")
    p.add_argument("--checkpoint-dir", help="recovery checkpoints (a rerun with the same directory resumes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="model_sparse.pt", help="the pruned model file to write")
    p.add_argument("--json", action="store_true", help="also write the per-layer report as OUTPUT.report.json")
    p.set_defaults(func=cmd_sparsify)


def cmd_sparsify(args) -> int:
    from .config import ConfigError
    from .sparsify import RecoveryConfig, SparsifyConfig, sparsify

    model = load_model(args.source)
    data = _import_attr(args.data)
    data = data() if callable(data) else data
    try:
        recovery = None
        if args.recovery_steps:
            recovery = RecoveryConfig(steps=args.recovery_steps, max_cpu_seconds=args.recovery_cpu, lr=args.lr,
                                      seed=args.seed, checkpoint_dir=args.checkpoint_dir)
        config = SparsifyConfig(target_sparsity=args.sparsity, method=args.method, allocation=args.allocation,
                                block=tuple(args.block), include=args.include, recovery=recovery)
        sparse = sparsify(model, data, config)
    except (ConfigError, ValueError, TypeError) as e:
        raise CliError(str(e)) from None
    report = sparse.sqfx_sparsify_report
    out = Path(args.output)
    torch.save(sparse, out)
    print(report)
    if args.json:
        rows = [asdict(r) for r in report.layers]
        out.with_suffix(".report.json").write_text(dumps(
            {"layers": rows, "sparsity": report.sparsity, "loss_one_shot": report.loss_one_shot,
             "loss_final": report.loss_final, "recovery": report.recovery, "cpu_seconds": report.cpu_seconds}))
    print(f"\nwrote {out}; convert it with `python -m sqfx convert {out} -o model.pt2` (its zeroed blocks "
          f"are the masks)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ConfigError) as e:
        print(f"sqfx: error: {e}", file=sys.stderr)
        return 2
