"""`sqfx.prepare_and_convert`: the eager door. Capture and output form only; the conversion is
sqfx.prepare (step 1) and sqfx.lowering (step 2), shared by every door.

Capture, tried in order (the report's `capture` says which one ran):
1. `torch.fx.symbolic_trace` -> an eager GraphModule (ReLUs fused across modules, F.linear
   converted);
2. module by module: every selected linear-like module (nn.Linear, LinearReLU, transformers'
   Conv1D) of the model becomes a SparseQuantLinear where it stands. The result is the user's
   own class (HF models: keywords, optional arguments, any batch / sequence size, train / eval,
   pickling, generate(), save_pretrained all work as before).
"""
from __future__ import annotations

from typing import Mapping, Optional

from torch import fx, nn

from .config import SparseQuantConfig, as_config
from .lowering import ConversionReport, LayerLowering, convert_graph
from .lowering.swap import swap_modules
from .prepare import example_call, prepare


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _already_converted_note(model: nn.Module) -> Optional[str]:
    from .nn import SparseQuantLinear

    n = sum(isinstance(m, SparseQuantLinear) for m in model.modules())
    return f"the model already holds {n} sqfx layer(s) (SparseQuantLinear), left as they are" if n else None


def prepare_and_convert(model: nn.Module, config: Optional[SparseQuantConfig] = None, example_inputs=None,
                        inplace: bool = False, *, example_kwarg_inputs: Optional[Mapping] = None) -> nn.Module:
    """Converts the model's linear layers to block-sparse int8 sqfx op calls.

    Returns the converted module (eval mode, runs eagerly, inference only);
    its report is `converted.sqfx_report` (a ConversionReport; print it for a table). The input
    model is not changed unless `inplace=True` (or config.inplace): then it is converted where it
    stands (module by module) or consumed (a traced GraphModule is returned).

    example_inputs / example_kwarg_inputs: a call of the model (a tensor, a tuple of positional
    inputs, or a dict such as a tokenizer's BatchEncoding; plus keyword inputs), needed only for
    activation="auto" (calibration).
    """
    config = as_config(config)
    example = example_call(example_inputs, example_kwarg_inputs, "sqfx.prepare_and_convert")
    inplace = inplace or config.inplace
    prepared = prepare(model, config, example, inplace=inplace, where="sqfx.prepare_and_convert")
    work = prepared.model
    notes = [n for n in (_already_converted_note(work),) if n]
    try:
        gm = fx.symbolic_trace(work)
    except Exception as e:  # noqa: BLE001 -- any trace failure means: convert module by module
        gm = None
        notes.append(f"symbolic_trace failed ({_first_line(e)}): converted module by module")
    if gm is not None:
        report = convert_graph(gm, config, root=work, module_masks=prepared.module_masks, capture="symbolic_trace",
                               act_modes=prepared.act_modes)
        converted = gm
    else:
        report = ConversionReport(capture="module_swap")
        converted = swap_modules(work, LayerLowering(config, report, module_masks=prepared.module_masks,
                                                     act_modes=prepared.act_modes, root=work))
    report.notes = notes + report.notes
    converted.eval()  # inference only, whatever mode the model was in
    converted.sqfx_report = report
    return converted
