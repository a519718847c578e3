"""The determinism profile: everything that changes output bytes, fixed by the generator itself.

A caller's environment must not change the reference. Measured with the original script, each of
OMP_NUM_THREADS=1, ATEN_CPU_CAPABILITY=avx2/default, MKL_CBWR=COMPATIBLE and a one-core
``taskset`` gave a different file. So the generator *overrides* these variables (it does not
merely default them) before torch is imported, and pins torch's thread pools explicitly, because
torch otherwise follows the visible core count.

The instruction-set caps are chosen so that x86-64 CPUs with and without AVX-512, Intel and AMD,
can produce the same bytes: AVX2 is the common denominator of current x86-64 server and desktop
parts, and MKL's conditional-numerical-reproducibility mode COMPATIBLE makes MKL take the same
code path on every processor (another project reported bit-identical float32 logits across four
Intel and AMD CPU models only with MKL_CBWR=COMPATIBLE added to the ISA caps).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from refgen.errors import EnvironmentProfileError, UnsupportedCpuError

PROFILE_NAME = "refgen-cpu-avx2-2threads/1"
# Fixed, whatever the machine has: with one core visible torch still runs two threads, so the
# work is split the same way everywhere. (Measured at the Qwen3-1.7B shape under this profile:
# 1, 2 and 4 threads gave the same bytes; 2 threads ran the forward 1.7x faster than 1.)
THREADS = 2

# Read by torch (ATen), MKL, oneDNN and the OpenMP runtime when they load: set before import.
PROFILE_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "OPENBLAS_NUM_THREADS": str(THREADS),
    "OMP_DYNAMIC": "FALSE",
    "MKL_DYNAMIC": "FALSE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Variables that would change numerics or loading if a caller set them; removed, not overridden.
CLEARED_ENV: tuple[str, ...] = (
    "KMP_AFFINITY",
    "GOMP_CPU_AFFINITY",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "MKL_CBWR_BRANCH",
    "TORCH_ALLOW_TF32_CPU_OVERRIDE",
    "ONEDNN_VERBOSE",
    "DNNL_VERBOSE",
)


# How idle OpenMP threads wait: performance only, never bytes (the same output bytes with either
# policy, tested). libgomp's default spins after every parallel region before it sleeps; on a
# machine whose cores other processes keep busy, the spinning threads take the time slices the
# computing ones need. Measured on 2 busy cores (1-minute load average 3.4 to 4.7), alternating:
# 12 prompts in memory at the Qwen3-1.7B shape 85.6 and 113.8 s spinning against 37.2 and 40.7 s
# passive (CPU time 71 vs 39 s); 50 forwards of the tiny Qwen3, on the main thread or another,
# 0.15 to 3.1 s against 0.06 to 0.24 s. A caller's own setting is kept.
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")

# Variables that only make the run offline and quiet; set even for the control (no numerics).
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")

# Variants for `refgen crosscheck` only (hidden `generate --profile-variant NAME`): the control
# that proves the cross-CPU check can fail, and the cheaper candidates the profile was chosen
# against (README, "Cross-CPU reproducibility"). A variant's name is recorded in the manifest;
# no published reference is made with one.
CONTROL = "off"
VARIANTS: dict[str, dict[str, str | None]] = {
    # the original method's environment: torch's defaults (all cores, best ISA, MKL's own path)
    CONTROL: {},
    # None removes a variable
    "mkl-cbwr-avx2": {"MKL_CBWR": "AVX2"},
    "mkl-cbwr-avx2-strict": {"MKL_CBWR": "AVX2,STRICT"},
    "no-mkl-cbwr": {"MKL_CBWR": None},
}
_variant: str | None = None


def apply_environment(variant: str | None = None) -> None:
    """Force the profile's variables into this process; must run before ``import torch``.

    Refuses up front on a CPU without AVX2 and FMA (:class:`UnsupportedCpuError`): the profile
    caps every library at AVX2, and below it they fall back to other kernels and other bytes.
    ``variant`` (crosscheck only) replaces the profile by one of :data:`VARIANTS`.
    """
    global _variant
    if "torch" in sys.modules:
        raise EnvironmentProfileError(
            "torch was imported before the determinism profile was applied, so its kernel "
            "selection can no longer be fixed. Run the generator as its own process: "
            "`python -m refgen generate ...`."
        )
    if variant is not None and variant not in VARIANTS:
        raise EnvironmentProfileError(
            f"unknown profile variant {variant!r}; known: {', '.join(VARIANTS)}"
        )
    _variant = variant
    if variant == CONTROL:
        os.environ.update({k: PROFILE_ENV[k] for k in OFFLINE_ENV})
        return
    require_profile_cpu()
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    os.environ.update(PROFILE_ENV)
    os.environ.setdefault(*WAIT_POLICY)
    for name, value in VARIANTS.get(variant or "", {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def require_profile_cpu() -> None:
    """Raise :class:`UnsupportedCpuError` unless CPUID shows AVX2 and FMA (read in microseconds,
    before anything is loaded). A machine without CPUID (not x86-64) is not refused here: the
    README says its bytes differ, and the manifest records it."""
    from refgen import cpu

    missing = cpu_lacks()
    if missing:
        seen = cpu.read()
        name = seen.brand or seen.label if seen else "this CPU"
        raise UnsupportedCpuError(
            f"this CPU ({name}) lacks {' and '.join(missing)}, which the determinism profile "
            f"{PROFILE_NAME} needs: torch, MKL and oneDNN would take other kernels and give other "
            "bytes than a reference made with the profile. Build references on an x86-64 CPU "
            "with AVX2 and FMA (Intel Haswell / AMD Zen or later)."
        )


def cpu_lacks() -> tuple[str, ...]:
    """The profile's instruction sets this process's CPU lacks (empty when none, or no CPUID)."""
    from refgen import cpu

    seen = cpu.read()
    return seen.missing() if seen is not None else ()


def configure_torch() -> None:
    """Pin torch's own settings; call right after the first ``import torch``."""
    import torch

    torch.set_grad_enabled(False)
    if _variant == CONTROL:
        return
    torch.set_num_threads(THREADS)
    # Settable once per process: a second spec in the same `generate` finds it already set.
    if torch.get_num_interop_threads() != THREADS:
        torch.set_num_interop_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("highest")


def describe() -> dict[str, Any]:
    """The profile as the manifest records it, with what torch reports it actually uses."""
    import torch

    described: dict[str, Any] = {
        "name": PROFILE_NAME,
        "environment": dict(sorted(PROFILE_ENV.items())),
        "cleared_environment": sorted(CLEARED_ENV),
    }
    if _variant is not None:
        # A crosscheck run: say so, and what it ran with, instead of claiming the profile.
        described = {
            "name": f"crosscheck variant {_variant!r} (not the profile {PROFILE_NAME})",
            "variant": _variant,
            "environment": {
                k: os.environ[k] for k in sorted({*PROFILE_ENV, *CLEARED_ENV}) if k in os.environ
            },
        }
    return described | {
        "torch": {
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
    }
