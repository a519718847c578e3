"""The CPU as this process sees it, read with the CPUID instruction itself.

``/proc/cpuinfo`` describes the host's CPU. A process can see another one: under an emulator
(``qemu-x86_64 -cpu Haswell-v4``), in a VM with a masked CPU model, or with features the kernel
hides. torch, MKL and oneDNN pick their kernels from CPUID, so CPUID is what the manifest records
and what the AVX2 check reads.

py-cpuinfo was tried first: its public ``get_cpu_info()`` runs CPUID in a child process started
with ``sys.executable``, which the emulator does not follow (under ``qemu-x86_64 -cpu Westmere``
it reported the host's AMD EPYC with AVX-512), it takes about 1.2 s (it also times a busy loop to
guess the clock), and it knows neither the AMX nor the AVX-512 BF16 bits. So this module runs
CPUID in-process with a few bytes of machine code through ctypes: microseconds, and exact under
qemu-user (checked against qemu's Haswell-v4, EPYC-Rome and Westmere models).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import platform
from dataclasses import dataclass, field
from typing import Any

# x86-64 System V: void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])
#   push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid;
#   mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("53 89f8 89f1 4989d0 0fa2 418900 41895804 41894808 4189500c 5b c3")
# uint64 xgetbv0(void): xor ecx, ecx; xgetbv; shl rdx, 32; or rax, rdx; ret
_XGETBV_CODE = bytes.fromhex("31c9 0f01d0 48c1e220 4809d0 c3")

_X86_MACHINES = frozenset({"x86_64", "amd64", "x64"})

# (leaf, subleaf, register, bit) -> flag name, Linux's /proc/cpuinfo spelling. The subset that
# decides which kernels torch (ATen), MKL and oneDNN may take.
_FLAGS: dict[str, tuple[int, int, str, int]] = {
    "sse4_1": (1, 0, "ecx", 19),
    "sse4_2": (1, 0, "ecx", 20),
    "fma": (1, 0, "ecx", 12),
    "osxsave": (1, 0, "ecx", 27),
    "avx": (1, 0, "ecx", 28),
    "f16c": (1, 0, "ecx", 29),
    "avx2": (7, 0, "ebx", 5),
    "bmi2": (7, 0, "ebx", 8),
    "avx512f": (7, 0, "ebx", 16),
    "avx512dq": (7, 0, "ebx", 17),
    "avx512ifma": (7, 0, "ebx", 21),
    "avx512cd": (7, 0, "ebx", 28),
    "avx512bw": (7, 0, "ebx", 30),
    "avx512vl": (7, 0, "ebx", 31),
    "avx512vbmi": (7, 0, "ecx", 1),
    "avx512_vbmi2": (7, 0, "ecx", 6),
    "avx512_vnni": (7, 0, "ecx", 11),
    "avx512_bitalg": (7, 0, "ecx", 12),
    "avx512_vpopcntdq": (7, 0, "ecx", 14),
    "avx512_fp16": (7, 0, "edx", 23),
    "amx_bf16": (7, 0, "edx", 22),
    "amx_tile": (7, 0, "edx", 24),
    "amx_int8": (7, 0, "edx", 25),
    "avx_vnni": (7, 1, "eax", 4),
    "avx512_bf16": (7, 1, "eax", 5),
}
# XCR0: the OS saves these register states, so the instructions using them may run.
_XCR0_AVX = 0b110  # SSE + AVX (YMM)
_XCR0_AVX512 = 0b11100110  # + opmask, ZMM_Hi256, Hi16_ZMM
_XCR0_AMX = 0b11 << 17  # XTILECFG, XTILEDATA

# What the determinism profile's kernels need (ATen's AVX2 capability requires FMA too).
PROFILE_ISA = ("avx2", "fma")


@dataclass(frozen=True)
class CpuId:
    """What CPUID reports to this process; ``flags`` are usable ones (the OS enables them)."""

    vendor: str
    brand: str
    family: int
    model: int
    stepping: int
    flags: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return f"{self.vendor} family {self.family} model {self.model} stepping {self.stepping}"

    def missing(self, required: tuple[str, ...] = PROFILE_ISA) -> tuple[str, ...]:
        return tuple(f.upper() for f in required if f not in self.flags)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": "cpuid",
            "vendor": self.vendor,
            "brand": self.brand,
            "family": self.family,
            "model": self.model,
            "stepping": self.stepping,
            "flags": list(self.flags),
        }


class _Instructions:
    """The two routines, in one executable page that lives as long as the process."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        size = mmap.PAGESIZE
        # Written while writable, then made executable: never W+X at once (hardened kernels
        # refuse that).
        address = libc.mmap(
            None,
            size,
            mmap.PROT_READ | mmap.PROT_WRITE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
            -1,
            0,
        )
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        ctypes.memmove(address, _CPUID_CODE, len(_CPUID_CODE))
        ctypes.memmove(address + 64, _XGETBV_CODE, len(_XGETBV_CODE))
        if libc.mprotect(address, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")
        out = ctypes.POINTER(ctypes.c_uint32)
        self._cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, out)(address)
        self.xgetbv0 = ctypes.CFUNCTYPE(ctypes.c_uint64)(address + 64)

    def cpuid(self, leaf: int, subleaf: int = 0) -> dict[str, int]:
        regs = (ctypes.c_uint32 * 4)()
        self._cpuid(leaf, subleaf, regs)
        return dict(zip(("eax", "ebx", "ecx", "edx"), regs, strict=True))


@functools.cache
def read() -> CpuId | None:
    """The CPU through CPUID, or None where there is no CPUID (not x86-64, or no exec memory)."""
    if platform.machine().lower() not in _X86_MACHINES:
        return None
    try:
        ins = _Instructions()
    except (OSError, AttributeError, TypeError):
        return None
    return _decode(ins)


def _decode(ins: _Instructions) -> CpuId:
    leaf0 = ins.cpuid(0)
    max_leaf = leaf0["eax"]
    vendor = b"".join(leaf0[r].to_bytes(4, "little") for r in ("ebx", "edx", "ecx"))
    leaf1 = ins.cpuid(1)
    eax = leaf1["eax"]
    base_family, base_model = (eax >> 8) & 0xF, (eax >> 4) & 0xF
    family = base_family + ((eax >> 20) & 0xFF if base_family == 0xF else 0)
    model = base_model + (((eax >> 16) & 0xF) << 4 if base_family in (0x6, 0xF) else 0)
    regs: dict[tuple[int, int], dict[str, int]] = {(1, 0): leaf1}
    if max_leaf >= 7:
        regs[(7, 0)] = ins.cpuid(7, 0)
        regs[(7, 1)] = ins.cpuid(7, 1) if regs[(7, 0)]["eax"] >= 1 else dict.fromkeys(leaf1, 0)
    present = {
        name
        for name, (leaf, sub, reg, bit) in _FLAGS.items()
        if (leaf, sub) in regs and regs[(leaf, sub)][reg] >> bit & 1
    }
    # An instruction set is usable only if the OS saves its registers (XCR0); torch's cpuinfo
    # library checks the same before choosing AVX2 or AVX-512 kernels.
    xcr0 = ins.xgetbv0() if "osxsave" in present else 0
    if xcr0 & _XCR0_AVX != _XCR0_AVX:
        present -= {"avx", "avx2", "fma", "f16c", "avx_vnni"}
    if xcr0 & _XCR0_AVX512 != _XCR0_AVX512:
        present = {f for f in present if not f.startswith("avx512")}
    if xcr0 & _XCR0_AMX != _XCR0_AMX:
        present = {f for f in present if not f.startswith("amx")}
    brand = b""
    if ins.cpuid(0x80000000)["eax"] >= 0x80000004:
        for leaf in (0x80000002, 0x80000003, 0x80000004):
            r = ins.cpuid(leaf)
            brand += b"".join(r[x].to_bytes(4, "little") for x in ("eax", "ebx", "ecx", "edx"))
    return CpuId(
        vendor=vendor.decode("ascii", "replace"),
        brand=brand.rstrip(b"\0").decode("ascii", "replace").strip(),
        family=family,
        model=model,
        stepping=eax & 0xF,
        flags=tuple(sorted(present - {"osxsave"})),
    )


def describe() -> dict[str, Any]:
    """The manifest's ``cpu`` entry: CPUID's view, and the capability torch chose from it."""
    import torch

    seen = read()
    entry: dict[str, Any] = (
        seen.as_dict() if seen is not None else {"source": "unavailable (no CPUID on this machine)"}
    )
    entry["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return entry


def main() -> None:
    """``python -m refgen.cpu``: print what this process sees (run it under an emulator too)."""
    import json

    seen = read()
    print(json.dumps(seen.as_dict() if seen else None, indent=2))


if __name__ == "__main__":
    main()
