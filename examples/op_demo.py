"""A short tour of the sqfx op on one layer: pack a 90%-sparse 1x4-block int8 weight, run it,
compare with fp32 and with the plain-PyTorch reference, and time it against F.linear."""
import time

import torch
import torch.nn.functional as F

import sqfx

torch.manual_seed(0)
out_features, in_features, sparsity = 4096, 4096, 0.9
linear = torch.nn.Linear(in_features, out_features)
# Keep the 10% of 1x4 blocks with the largest L2 norm.
norms = linear.weight.detach().reshape(out_features, -1, 4).norm(dim=2)
mask = norms >= norms.flatten().kthvalue(int(sparsity * norms.numel())).values

layer = sqfx.SparseQuantLinear.from_float(linear, mask=mask, block=(1, 4))
print(layer)
print(f"packed weight: {layer.packed.nbytes() / 2**20:.2f} MiB "
      f"(fp32 dense: {linear.weight.numel() * 4 / 2**20:.1f} MiB)")

x = torch.randn(8, in_features)
with torch.inference_mode():
    y = layer(x)
    reference = sqfx.reference.qlinear_dynamic(x, *layer.packed.tensors(), in_features)
    fp32 = F.linear(x, layer.weight(), layer.bias())
print(f"bit-identical to the reference: {torch.equal(y, reference)}")
print(f"max |error| vs fp32 on the same masked weight: {(y - fp32).abs().max():.4f} "
      f"(output std {fp32.std():.3f})")


def median_ms(fn, reps=30):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


dense_w = layer.weight()
with torch.inference_mode():
    for m in (1, 32):
        xm = torch.randn(m, in_features)
        t_sqfx = median_ms(lambda: layer(xm))
        t_fp32 = median_ms(lambda: F.linear(xm, dense_w))
        print(f"M={m:3d}: sqfx {t_sqfx:7.3f} ms   fp32 F.linear {t_fp32:7.3f} ms   "
              f"speedup {t_fp32 / t_sqfx:5.2f}x")
