# Builds sqfx._C, the sqfx::qlinear_dynamic op, against the LibTorch stable ABI
# (TORCH_TARGET_VERSION 2.10) so one binary works across torch releases.
# SQFX_SANITIZE=1 builds with AddressSanitizer + UBSan for the sanitizer suite.
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

sanitize = os.environ.get("SQFX_SANITIZE", "0") == "1"
cxx_flags = [
    "-std=c++17",
    "-ffp-contract=off",  # the kernels must round exactly like the reference
    "-DTORCH_TARGET_VERSION=0x020a000000000000",
    "-fvisibility=hidden",
]
link_flags = []
if sanitize:
    # float-cast-overflow (NaN/Inf/out-of-range float -> int) is not part of GCC's "undefined".
    cxx_flags += ["-O1", "-g", "-fsanitize=address,undefined,float-cast-overflow", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all"]
    link_flags += ["-fsanitize=address,undefined,float-cast-overflow"]
else:
    cxx_flags += ["-O3", "-g0"]

setup(
    ext_modules=[
        CppExtension(
            "sqfx._C",
            sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/kernels/*.cpp")),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
