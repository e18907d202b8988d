# Builds sqfx._C, the sqfx::qlinear_dynamic op, against the LibTorch stable ABI
# (TORCH_TARGET_VERSION 2.10) so one binary works across torch releases.
# SQFX_SANITIZE=1 builds with AddressSanitizer + UBSan for the sanitizer suite.
import fnmatch
import glob
import os
import platform

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

# Kernel sources by architecture: a file whose name matches an architecture's patterns is
# compiled only when building for that architecture; every other source is portable.
# Another ISA family (e.g. ARM NEON / dotprod: "*_neon.cpp", "*_dotprod.cpp") is one more row.
ARCH_SOURCES = {
    "x86_64": ["*_avx2.cpp", "*_avx512*.cpp", "*_x86.cpp"],
}
ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64"}


def sources_for(arch: str) -> list[str]:
    arch = ARCH_ALIASES.get(arch.lower(), arch.lower())
    everything = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/kernels/*.cpp"))
    specific = {p for pats in ARCH_SOURCES.values() for p in pats}
    mine = set(ARCH_SOURCES.get(arch, []))

    def keep(path: str) -> bool:
        name = os.path.basename(path)
        matched = {p for p in specific if fnmatch.fnmatch(name, p)}
        return not matched or bool(matched & mine)

    return [p for p in everything if keep(p)]


setup(
    ext_modules=[
        CppExtension(
            "sqfx._C",
            sources_for(os.environ.get("SQFX_TARGET_ARCH", platform.machine())),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
