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

from refgen.errors import EnvironmentProfileError

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


def apply_environment() -> None:
    """Force the profile's variables into this process; must run before ``import torch``."""
    if "torch" in sys.modules:
        raise EnvironmentProfileError(
            "torch was imported before the determinism profile was applied, so its kernel "
            "selection can no longer be fixed. Run the generator as its own process: "
            "`python -m refgen generate ...`."
        )
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    os.environ.update(PROFILE_ENV)


def configure_torch() -> None:
    """Pin torch's own settings; call right after the first ``import torch``."""
    import torch

    torch.set_num_threads(THREADS)
    # Settable once per process: a second spec in the same `generate` finds it already set.
    if torch.get_num_interop_threads() != THREADS:
        torch.set_num_interop_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("highest")
    torch.set_grad_enabled(False)


def describe() -> dict[str, Any]:
    """The profile as the manifest records it, with what torch reports it actually uses."""
    import torch

    return {
        "name": PROFILE_NAME,
        "environment": dict(sorted(PROFILE_ENV.items())),
        "cleared_environment": sorted(CLEARED_ENV),
        "torch": {
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
    }
