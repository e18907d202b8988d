"""Which CPU a run is on: model name, ISA flags and the CPU family its table is filed under.

docs/benchmarks.md keeps one section per CPU family (bench/docs.py): peers change rank and sqfx's
kernels behave differently across micro-architectures, so numbers from one family never overwrite
another's. Virtual machines often report a bare model name ("AMD EPYC"), so the family comes from
the vendor, the cpuid family/model numbers and the widest int8 ISA, not from the name.
"""
from __future__ import annotations

import re
from pathlib import Path

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")

# (vendor, cpuid family, model ranges) -> micro-architecture. Only what the project's machines and
# their neighbours need; anything else is filed under its raw family/model numbers.
_AMD = {23: [(range(0x00, 0x30), "Zen / Zen+"), (range(0x30, 0x100), "Zen 2")],
        25: [(range(0x00, 0x10), "Zen 3"), (range(0x20, 0x60), "Zen 3"), (range(0x10, 0x20), "Zen 4"),
             (range(0x60, 0x80), "Zen 4"), (range(0xa0, 0xb0), "Zen 4")],
        26: [(range(0x00, 0x100), "Zen 5")]}
_INTEL6 = {0x55: "Skylake-SP / Cascade Lake", 0x6a: "Ice Lake-SP", 0x6c: "Ice Lake-D", 0x7d: "Ice Lake",
           0x7e: "Ice Lake", 0x8f: "Sapphire Rapids", 0xcf: "Emerald Rapids", 0xad: "Granite Rapids",
           0xae: "Granite Rapids", 0x97: "Alder Lake", 0x9a: "Alder Lake", 0xb7: "Raptor Lake",
           0xba: "Raptor Lake"}


def _fields(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def uarch(vendor: str, family: int | None, model: int | None) -> str | None:
    if family is None or model is None:
        return None
    if vendor == "AuthenticAMD":
        return next((name for r, name in _AMD.get(family, ()) if model in r), None)
    if vendor == "GenuineIntel" and family == 6:
        return _INTEL6.get(model)
    return None


def isa_tier(flags) -> str:
    # AMX's int8 tiles (Sapphire Rapids and later) change the dense int8 peers (oneDNN, OpenVINO)
    # by several x: its machines are a family of their own, whatever model number a VM reports.
    if "amx_int8" in flags and "avx512_vnni" in flags:
        return "AVX-512 VNNI + AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2 + AVX-VNNI" if "avx_vnni" in flags else "AVX2"
    return "no AVX2"


def describe(cpuinfo_text: str | None = None) -> dict:
    """{model, family, slug, id, isa: {flag: bool}, flags_line} for this machine (or the given text)."""
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo_text = ""
    f = _fields(cpuinfo_text)
    flags = set(f.get("flags", "").split())
    vendor = f.get("vendor_id", "unknown")
    fam = int(f["cpu family"]) if f.get("cpu family", "").isdigit() else None
    mod = int(f["model"]) if f.get("model", "").isdigit() else None
    name = uarch(vendor, fam, mod)
    short_vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(vendor, vendor)
    tier = isa_tier(flags)
    if name is None:
        name = f"family {fam} model {mod}" if fam is not None else "unknown family"
    family = f"{short_vendor} {name} ({tier})"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{short_vendor} {name} {tier}".lower()).strip("-")
    return {
        "model": f.get("model name", "unknown"),
        "family": family,
        "slug": slug,
        "id": f"{vendor} family {fam} model {mod} stepping {f.get('stepping', '?')}",
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
        "flags_line": " ".join(flag for flag in ISA_FLAGS if flag in flags) or "none of " + " ".join(ISA_FLAGS),
    }
