"""The implementations under test, each built from the same masked fp32 weight.

Every builder returns a `Layer`: `layer(x)` runs one forward on a float32 [M, in] input.

| name            | what                                                                        |
|-----------------|-----------------------------------------------------------------------------|
| sqfx            | `sqfx.pack(w, mask=..., block=(1, 4))(x)`: whatever kernels sqfx ships      |
| fp32            | `F.linear(x, masked_w, b)` (MKL/oneDNN sgemm)                               |
| int8_fbgemm     | `torch.ao.nn.quantized.dynamic.Linear`, fbgemm, per-channel qint8 weight    |
| sparse_qnnpack  | `torch.ao.nn.sparse.quantized.dynamic.Linear`, qnnpack, 1x4 blocks          |
| ort_int8        | ONNX Runtime `quantize_dynamic` (QInt8, per-channel) of a 1-linear model     |

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

PEERS = (FP32, INT8_FBGEMM, SPARSE_QNNPACK, ORT_INT8)
DENSE_PEERS = (FP32, INT8_FBGEMM, ORT_INT8)  # time independent of the weight's values
DENSE_INT8_PEERS = (INT8_FBGEMM, ORT_INT8)
LABELS = {
    SQFX: "sqfx",
    FP32: "fp32 F.linear",
    INT8_FBGEMM: "torch int8 (fbgemm)",
    SPARSE_QNNPACK: "torch sparse int8 (qnnpack)",
    ORT_INT8: "ORT int8",
}
SHORT = {SQFX: "sqfx", FP32: "fp32", INT8_FBGEMM: "fbgemm", SPARSE_QNNPACK: "qnnpack-sp", ORT_INT8: "ort"}


def ort_available() -> bool:
    if os.environ.get("SQFX_BENCH_NO_ORT"):
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


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

    def __call__(self, x):
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


def build_sqfx_module(w, mask, bias, **pack_kwargs) -> Layer:
    packed = sqfx.pack(w, mask=mask, block=(1, 4), bias=bias, **pack_kwargs)
    mod = sqfx.SparseQuantLinear(packed)
    return Layer("sqfx_module", mod, packed.nbytes(), sqfx_kernel_name(packed), [mod])


def build_fp32(w_masked, bias) -> Layer:
    w, b = w_masked.contiguous(), bias.contiguous()
    return Layer(FP32, lambda x: F.linear(x, w, b), w.numel() * 4 + b.numel() * 4, keep=[w, b])


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
        from onnxruntime.quantization import QuantType, quantize_dynamic

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
        quantize_dynamic(fp32_path, self.path, weight_type=QuantType.QInt8, per_channel=True)
        ops = [n.op_type for n in onnx.load(self.path).graph.node]
        if "MatMulInteger" not in ops and "DynamicQuantizeMatMul" not in ops:
            raise RuntimeError(f"onnxruntime quantize_dynamic left the linear in fp32: {ops}")
        self.nbytes = w_masked.numel() + out_f * 4 * 3
        self.sessions = {}

    def session(self, threads: int):
        import onnxruntime as ort

        if threads not in self.sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Spinning pool threads would steal the 2 cores from the implementation timed next.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.sessions[threads] = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
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
