"""The implementations under test, each built from the same masked fp32 weight.

Every builder returns a `Layer`: `layer(x)` runs one forward on a float32 [M, in] input.

| name            | what                                                                        |
|-----------------|-----------------------------------------------------------------------------|
| sqfx            | `sqfx.pack(w, mask=..., block=(1, 4))(x)`: whatever kernels sqfx ships      |
| fp32            | `F.linear(x, masked_w, b)` (MKL/oneDNN sgemm)                               |
| int8_fbgemm     | `torch.ao.nn.quantized.dynamic.Linear`, fbgemm, per-channel qint8 weight    |
| sparse_qnnpack  | `torch.ao.nn.sparse.quantized.dynamic.Linear`, qnnpack, 1x4 blocks          |
| int_mm          | `torch._int_mm` (oneDNN s8s8->s32) with per-row dynamic activation quant     |
| ort_int8        | ONNX Runtime `quantize_dynamic` (QInt8, per-channel, MLAS) of a 1-linear model|
| ov_int8         | OpenVINO CPU plugin, int8 by NNCF post-training quantization (static act.)  |
| sqfx_wonly      | sqfx's weight-only op (fp32 activations x int8 weights), same packed weight  |

PyTorch's sparse op only exists for the qnnpack engine, at prepack time *and* at run time; the fbgemm
dynamic op dispatches on its packed weight and runs under any engine, so the suite prepacks each
peer under its own engine and then times everything with the engine set to qnnpack.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import sqfx

SQFX = "sqfx"
FP32 = "fp32"
INT8_FBGEMM = "int8_fbgemm"
SPARSE_QNNPACK = "sparse_qnnpack"
ORT_INT8 = "ort_int8"
INT_MM = "int_mm"
OV_INT8 = "ov_int8"
SQFX_AVX2 = "sqfx_avx2"  # sqfx with its AVX2 path forced (only on CPUs whose best path is another)
SQFX_WONLY = "sqfx_wonly"

PEERS = (FP32, INT8_FBGEMM, SPARSE_QNNPACK, INT_MM, ORT_INT8, OV_INT8)
DENSE_PEERS = (FP32, INT8_FBGEMM, INT_MM, ORT_INT8, OV_INT8)  # time independent of the weight's values
DENSE_INT8_PEERS = (INT8_FBGEMM, INT_MM, ORT_INT8, OV_INT8)
LABELS = {
    SQFX: "sqfx",
    SQFX_AVX2: "sqfx, AVX2 path forced",
    SQFX_WONLY: "sqfx weight-only op",
    FP32: "fp32 F.linear",
    INT8_FBGEMM: "torch int8 (fbgemm)",
    SPARSE_QNNPACK: "torch sparse int8 (qnnpack)",
    INT_MM: "torch._int_mm int8 (oneDNN)",
    ORT_INT8: "ORT int8 (MLAS)",
    OV_INT8: "OpenVINO int8 (NNCF PTQ)",
}
SHORT = {SQFX: "sqfx", SQFX_AVX2: "sqfx-avx2", SQFX_WONLY: "wonly", FP32: "fp32", INT8_FBGEMM: "fbgemm",
         SPARSE_QNNPACK: "qnnpack-sp", INT_MM: "int_mm", ORT_INT8: "ort", OV_INT8: "ov"}


def _missing(env_off: str, modules) -> str | None:
    """Why a peer can't run here (None: it can): turned off by an env variable or a module missing."""
    if os.environ.get(env_off):
        return f"{env_off} is set"
    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(gone)} not installed (pip install -e .[bench])" if gone else None


def ort_missing() -> str | None:
    return _missing("SQFX_BENCH_NO_ORT", ("onnxruntime", "onnx"))


def ov_missing() -> str | None:
    return _missing("SQFX_BENCH_NO_OV", ("openvino", "nncf"))


def int_mm_missing() -> str | None:
    if os.environ.get("SQFX_BENCH_NO_INT_MM"):
        return "SQFX_BENCH_NO_INT_MM is set"
    if not hasattr(torch, "_int_mm"):
        return f"torch {torch.__version__} has no torch._int_mm"
    try:  # the CPU kernel may be missing from a build; also rejects a too-small M on some versions
        torch._int_mm(torch.ones(32, 64, dtype=torch.int8), torch.ones(64, 32, dtype=torch.int8))
    except RuntimeError as e:
        return f"torch._int_mm fails on the CPU: {str(e).splitlines()[0][:120]}"
    return None


def ort_available() -> bool:
    return ort_missing() is None


def has_vnni() -> bool:
    """The CPU has a VNNI int8 dot product (AVX-512 VNNI or AVX-VNNI)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_vnni" in flags or "avx_vnni" in flags


def ort_quant_settings() -> dict:
    """The ONNX Runtime quantize_dynamic settings used for every ORT peer (linear and MiniLM).

    MLAS runs u8 activations x s8 weights. Without VNNI its AVX2 / AVX-512BW kernel multiplies with
    vpmaddubsw, whose int16 pair sums saturate for large weights (the "saturation trap": wrong
    outputs, not just a little noise). ORT's documented fix on such CPUs is reduce_range (7-bit
    weights); with VNNI (vpdpbusd sums into int32) full-range weights are exact, so it is off.
    Per-channel weight scales, as sqfx and the torch peers use.
    """
    return {"weight_type": "QInt8", "per_channel": True, "reduce_range": not has_vnni(),
            "extra_options": {"MatMulConstBOnly": True}}


def ort_quantize(fp32_path: str, int8_path: str) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = ort_quant_settings()
    quantize_dynamic(fp32_path, int8_path, weight_type=getattr(QuantType, settings["weight_type"]),
                     per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                     extra_options=settings["extra_options"])
    return settings


def ort_session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads would steal the 2 cores from the implementation timed next.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ov_compile(model, threads: int):
    """An OpenVINO CPU compiled model for latency: one stream, `threads` inference threads."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                             "PERFORMANCE_HINT": "LATENCY"})


def ov_versions() -> dict:
    import nncf
    import openvino

    return {"openvino": openvino.get_version(), "nncf": nncf.__version__}


@contextlib.contextmanager
def quantized_engine(name: str):
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


@dataclass
class Layer:
    name: str
    forward: Callable[[torch.Tensor], object]
    nbytes: int  # bytes of the weight as the implementation stores it
    kernel: str = ""
    keep: list = field(default_factory=list)  # objects that must outlive the layer

    bind: Callable[[torch.Tensor], Callable[[], object]] | None = None
    # A context every call runs under (e.g. sqfx.ops.force_isa("avx2")); the timing loop enters it
    # once per burst of calls, so its own cost stays out of the time per call.
    around: Callable[[], object] | None = None

    def __call__(self, x):
        if self.around is None:
            return self.forward(x)
        with self.around():
            return self.forward(x)

    def bound(self, x: torch.Tensor) -> Callable[[], object]:
        """A zero-argument call on x, with any input conversion done once, outside the timing."""
        if self.bind is not None:
            return self.bind(x)
        fwd = self.forward
        return lambda: fwd(x)


def _quiet_quantize():
    # torch.quantize_per_channel is deprecated in 2.13 but still what the ao modules take.
    return warnings.catch_warnings()


def per_channel_qweight(w: torch.Tensor) -> torch.Tensor:
    with _quiet_quantize():
        warnings.simplefilter("ignore")
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zp = torch.zeros(w.shape[0], dtype=torch.long)
        return torch.quantize_per_channel(w, scale, zp, 0, torch.qint8)


def sqfx_kernel_name(packed) -> str:
    """The `kernel` attribute of a PackedLinear, if this sqfx has one (the fast-kernel work adds it)."""
    k = getattr(packed, "kernel", None)
    if callable(k):
        try:
            k = k()
        except TypeError:
            return ""
    return "" if k is None else str(k)


def default_pack_kwargs() -> dict:
    """What a conversion would pass to sqfx.pack: the cost-model layout choice where pack() has one."""
    import inspect

    params = inspect.signature(sqfx.pack).parameters
    return {"layout": "auto"} if "layout" in params else {}


def build_sqfx(w, mask, bias, **pack_kwargs) -> Layer:
    packed = sqfx.pack(w, mask=mask, block=(1, 4), bias=bias, **pack_kwargs)
    kernel = sqfx_kernel_name(packed)
    layout = getattr(packed, "layout", None)
    if kernel and isinstance(layout, str) and layout not in kernel:
        kernel = f"{kernel} ({layout})"
    return Layer(SQFX, packed, packed.nbytes(), kernel, [packed])


def build_sqfx_forced(base: Layer, isa: str) -> Layer:
    """The same packed weight as `base`, run with sqfx's `isa` path forced (e.g. AVX2 on AVX-512)."""
    packed = base.keep[0]
    with sqfx.ops.force_isa(isa):
        kernel = sqfx_kernel_name(packed)
    return Layer(SQFX_AVX2 if isa == "avx2" else f"sqfx_{isa}", packed, base.nbytes, kernel, [packed],
                 around=lambda: sqfx.ops.force_isa(isa))


def forced_isa_column() -> str | None:
    """"avx2" where the CPU's best sqfx path is a wider one (AVX-512 VNNI), so AVX2 gets its own column."""
    isas = sqfx.ops.available_isas()
    return "avx2" if "avx2" in isas and isas[-1] != "avx2" else None


def build_sqfx_weight_only(base: Layer) -> Layer:
    """sqfx's weight-only op (fp32 activations, int8 weights dequantized on the fly) on base's packing."""
    p = base.keep[0]
    op = torch.ops.sqfx.qlinear_weight_only
    args = (p.values, p.row_ptr, p.col_idx, p.w_scale, p.bias, p.in_features, False)
    return Layer(SQFX_WONLY, lambda x: op(x, *args), base.nbytes, keep=[p])


def build_sqfx_module(w, mask, bias, **pack_kwargs) -> Layer:
    packed = sqfx.pack(w, mask=mask, block=(1, 4), bias=bias, **pack_kwargs)
    mod = sqfx.SparseQuantLinear(packed)
    return Layer("sqfx_module", mod, packed.nbytes(), sqfx_kernel_name(packed), [mod])


def build_fp32(w_masked, bias) -> Layer:
    w, b = w_masked.contiguous(), bias.contiguous()
    return Layer(FP32, lambda x: F.linear(x, w, b), w.numel() * 4 + b.numel() * 4, keep=[w, b])


def build_nn_linear(w_masked, bias) -> Layer:
    """A plain `nn.Linear` module call (the fixed-cost reference of issue 10)."""
    out_f, in_f = w_masked.shape
    mod = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        mod.weight.copy_(w_masked)
        mod.bias.copy_(bias)
    mod.requires_grad_(False)
    return Layer("nn_linear", mod, w_masked.numel() * 4 + out_f * 4, keep=[mod])


def build_int_mm(w_masked, bias) -> Layer:
    """Dense int8 through `torch._int_mm` (oneDNN s8 x s8 -> s32), as a whole dynamic linear.

    The activation is quantized per row, symmetric to [-127, 127], in torch ops around the GEMM;
    the weight per output channel, transposed once to [in, out]. So the time includes what any
    dynamic int8 linear pays (quantize, dequantize, bias), like fbgemm's and sqfx's.
    """
    scale_w = (w_masked.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    wt = torch.round(w_masked / scale_w[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous()
    b = bias.contiguous()
    int_mm = torch._int_mm

    def forward(x):
        s = x.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12).div_(127.0)
        xq = torch.round(x / s).clamp_(-127, 127).to(torch.int8)
        return int_mm(xq, wt).float().mul_(s).mul_(scale_w).add_(b)

    return Layer(INT_MM, forward, wt.numel() + scale_w.numel() * 4 + b.numel() * 4, keep=[wt, scale_w, b])


class OvModel:
    """A 1-linear OpenVINO model (MatMul(x, W^T) + b, M dynamic), int8 by NNCF post-training
    quantization calibrated on random N(0, 1) rows (the benchmark's input distribution): per-channel
    int8 weights and static per-tensor activations, as NNCF's default (performance) preset makes them.
    One compiled model per thread count. Raises if the CPU plugin does not run the linear in int8.
    """

    def __init__(self, w_masked: torch.Tensor, bias: torch.Tensor, calib_rows: int = 64):
        import nncf
        import numpy as np
        import openvino as ov
        import openvino.opset13 as opset

        out_f, in_f = w_masked.shape
        x = opset.parameter([-1, in_f], np.float32, name="x")
        w = opset.constant(w_masked.contiguous().numpy())
        y = opset.add(opset.matmul(x, w, transpose_a=False, transpose_b=True), opset.constant(bias.numpy()))
        model = ov.Model([y], [x], "linear")
        g = torch.Generator().manual_seed(3)
        calib = [torch.randn(8, in_f, generator=g).numpy() for _ in range(max(1, calib_rows // 8))]
        self.model = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), fast_bias_correction=True)
        self.nbytes = w_masked.numel() + out_f * 4 * 3
        self.compiled = {}

    def layer(self, threads: int) -> Layer:
        if threads not in self.compiled:
            self.compiled[threads] = ov_compile(self.model, threads)
            require_ov_int8(self.compiled[threads])
        compiled = self.compiled[threads]

        def forward(x):
            return compiled.create_infer_request().infer({0: x.numpy()})[0]

        def bind(x):  # one request per bound input: a shared input tensor fixes the request's shape
            req, feed = compiled.create_infer_request(), {0: x.numpy()}
            return lambda: req.infer(feed, share_inputs=True, share_outputs=True)

        return Layer(OV_INT8, forward, self.nbytes, keep=[compiled], bind=bind)


def ov_int8_ops(compiled) -> list[str]:
    """Layers of a compiled OpenVINO model that the CPU plugin runs with int8 inputs."""
    found = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        ltype = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if prec.lower() in ("i8", "u8") and ltype in ("FullyConnected", "MatMul", "Convolution"):
            found.append(ltype)
    return found


def require_ov_int8(compiled) -> None:
    if not ov_int8_ops(compiled):
        raise RuntimeError("OpenVINO's CPU plugin runs no MatMul/FullyConnected in int8 for this model")


def build_int8_fbgemm(w_masked, bias) -> Layer:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

    out_f, in_f = w_masked.shape
    with quantized_engine("fbgemm"):
        mod = DynamicQuantLinear(in_f, out_f, dtype=torch.qint8)
        mod.set_weight_bias(per_channel_qweight(w_masked), bias)
    return Layer(INT8_FBGEMM, mod, w_masked.numel() + out_f * 4 * 3, keep=[mod])


def build_sparse_qnnpack(w_masked, bias) -> Layer:
    from torch.ao.nn.sparse.quantized.dynamic import Linear as SparseDynamicQuantLinear

    out_f, in_f = w_masked.shape
    with quantized_engine("qnnpack"):
        # The constructor prepacks a zero weight; set_weight_bias re-prepacks ours as 1x4 BCSR.
        mod = SparseDynamicQuantLinear(in_f, out_f, row_block_size=1, col_block_size=4)
        mod.set_weight_bias(per_channel_qweight(w_masked), bias, 1, 4)
    nnz_blocks = int(w_masked.reshape(out_f, in_f // 4, 4).ne(0).any(-1).sum()) if in_f % 4 == 0 else 0
    return Layer(SPARSE_QNNPACK, mod, nnz_blocks * 4 + nnz_blocks * 4 + out_f * 4 * 3, keep=[mod])


class OrtModel:
    """A dynamically quantized 1-linear ONNX model; one session per thread count.

    The fp32 model is MatMul(x, W^T) + Add(b), i.e. what `torch.onnx.export` emits for nn.Linear on
    a 3-D input. It is built with onnx.helper rather than exported from a 2-D nn.Linear because the
    exporter turns that into Gemm, which `quantize_dynamic` leaves in fp32.
    """

    def __init__(self, w_masked: torch.Tensor, bias: torch.Tensor, workdir: str, tag: str):
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        out_f, in_f = w_masked.shape
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w_t"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
            "linear",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", in_f])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", out_f])],
            [
                numpy_helper.from_array(w_masked.t().contiguous().numpy(), "w_t"),
                numpy_helper.from_array(bias.contiguous().numpy(), "b"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        fp32_path = os.path.join(workdir, f"{tag}_fp32.onnx")
        self.path = os.path.join(workdir, f"{tag}_int8.onnx")
        onnx.save(model, fp32_path)
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing" note
        self.settings = ort_quantize(fp32_path, self.path)
        ops = [n.op_type for n in onnx.load(self.path).graph.node]
        if "MatMulInteger" not in ops and "DynamicQuantizeMatMul" not in ops:
            raise RuntimeError(f"onnxruntime quantize_dynamic left the linear in fp32: {ops}")
        self.nbytes = w_masked.numel() + out_f * 4 * 3
        self.sessions = {}

    def session(self, threads: int):
        if threads not in self.sessions:
            self.sessions[threads] = ort_session(self.path, threads)
        return self.sessions[threads]

    def layer(self, threads: int) -> Layer:
        sess = self.session(threads)

        run = sess.run

        def forward(x):
            return run(None, {"x": x.numpy()})[0]

        def bind(x):
            feed = {"x": x.numpy()}  # a zero-copy view of the tensor
            return lambda: run(None, feed)

        return Layer(ORT_INT8, forward, self.nbytes, keep=[sess], bind=bind)


def relative_error(y, ref: torch.Tensor) -> float:
    y = torch.as_tensor(y)
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
