"""sqfx benchmark suite: `python -m bench.run` (see docs/benchmarks.md).

Measures the stable Python API (`sqfx.pack(...)(x)`) against PyTorch fp32, PyTorch dynamic int8
(fbgemm), PyTorch's sparse dynamic int8 (qnnpack) and ONNX Runtime dynamic int8, so it times
whatever kernels the installed sqfx has.
"""
