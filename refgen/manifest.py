"""The manifest: what a reference was made from and on, next to the JSON it describes.

It is deterministic given the same host and inputs: no timestamps (unless SOURCE_DATE_EPOCH is
set), no absolute paths, sorted keys. Bump ``SCHEMA`` on any incompatible change.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import refgen
from refgen import cpu, determinism, jsonio, provenance
from refgen.errors import ProvenanceError
from refgen.hashing import sha256_bytes, sha256_file
from refgen.lock import ModelLock
from refgen.spec import Spec

SCHEMA = "refgen.manifest/1"
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "numpy")
PACKAGE_ROOT = Path(refgen.__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
# Inputs of the generator's identity: its code and the dependency lock, not its outputs.
SOURCE_PATHS = ("refgen", "requirements.lock")


def build(spec: Spec, lock: ModelLock, outputs: Mapping[str, bytes]) -> dict[str, Any]:
    """Everything an auditor needs to rebuild ``outputs`` and to know where they came from."""
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "spec": {"file": spec.path.name, "sha256": spec.sha256, "content": spec.as_dict()},
        "model": {
            "repo": lock.repo,
            "revision": lock.revision,
            "lock_file": spec.lock_path.name,
            "lock_sha256": sha256_file(spec.lock_path, progress=False)[0],
            "files": [f.as_dict() for f in lock.files],
        },
        "requirements_lock": requirements_lock(),
        "generator": generator_identity(),
        "packages": packages(),
        "torch_build": torch_build(),
        "platform": host_platform(),
        "determinism": determinism.describe(),
        "container": container(),
        "outputs": [
            {"path": name, "sha256": sha256_bytes(data), "size": len(data)}
            for name, data in sorted(outputs.items())
        ],
    }
    epoch = provenance.source_date_epoch(os.environ.get("SOURCE_DATE_EPOCH"))
    if epoch is not None:
        result["source_date_epoch"] = epoch
        result["build_time"] = datetime.fromtimestamp(epoch, UTC).isoformat()
    return result


def check_environment() -> None:
    """The variables the manifest records, checked before a run computes anything
    (:class:`ProvenanceError` naming the variable)."""
    provenance.source_date_epoch(os.environ.get("SOURCE_DATE_EPOCH"))
    container()


def dump(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def sha256sums(files: Mapping[str, bytes]) -> bytes:
    """``sha256sum -c`` format, so the outputs can be checked with coreutils alone."""
    return "".join(f"{sha256_bytes(data)}  {name}\n" for name, data in files.items()).encode()


def requirements_lock_path() -> Path:
    """The dependency lock the generator runs from (``REFGEN_REQUIREMENTS_LOCK`` overrides)."""
    return Path(os.environ.get("REFGEN_REQUIREMENTS_LOCK", PROJECT_ROOT / "requirements.lock"))


def requirements_lock() -> dict[str, Any] | None:
    path = requirements_lock_path()
    if not path.is_file():
        return None
    digest, size = sha256_file(path, progress=False)
    return {"file": path.name, "sha256": digest, "size": size}


def generator_identity() -> dict[str, Any]:
    """The code that made the artifact: a hash of its sources, and git's view when available."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        rel = path.relative_to(PACKAGE_ROOT).as_posix()
        digest.update(f"{rel}\0{sha256_file(path, progress=False)[0]}\n".encode())
    identity: dict[str, Any] = {
        "name": "refgen",
        "version": refgen.__version__,
        "sources_sha256": digest.hexdigest(),
        "git_commit": os.environ.get("REFGEN_GIT_COMMIT") or None,
        "git_dirty": None,
    }
    git = shutil.which("git")
    if git and (PROJECT_ROOT / ".git").exists():
        head = _run([git, "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"])
        status = _run([git, "-C", str(PROJECT_ROOT), "status", "--porcelain", "--", *SOURCE_PATHS])
        if head is not None and status is not None:
            identity["git_commit"] = head.strip()
            identity["git_dirty"] = bool(status.strip())
    return identity


def packages() -> dict[str, Any]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def torch_build() -> dict[str, Any]:
    """BLAS, oneDNN and OpenMP as torch was built, which decide which kernels exist at all."""
    import torch

    shown = torch.__config__.show()

    def find(pattern: str) -> str | None:
        match = re.search(pattern, shown)
        return match.group(1).strip() if match else None

    return {
        "git_version": torch.version.git_version,
        "cuda": torch.version.cuda,
        "blas": find(r"BLAS_INFO=(\w+)"),
        "mkl": find(r"Math Kernel Library Version ([^\n]+)"),
        "onednn": find(r"MKL-DNN (v[^\n]+)"),
        "openmp": find(r"OpenMP (\d+)"),
    }


def host_platform() -> dict[str, Any]:
    libc, libc_version = platform.libc_ver()
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "libc": f"{libc} {libc_version}".strip() or None,
        # /proc/cpuinfo: the host's CPU. `cpuid`: the CPU this process sees, which decides the
        # kernels; the two differ under an emulator or a VM with a masked CPU model.
        "cpu_model": _cpu_model(),
        "cpu_isa": _cpu_isa(),
        "cpuid": cpu.describe(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }


def container() -> dict[str, Any] | None:
    """Set by the host script that runs the image; a container cannot see its own image ID."""
    image = os.environ.get("REFGEN_CONTAINER_IMAGE")
    if not image:
        return None
    return {
        "image_id": image,
        "base_image": os.environ.get("REFGEN_BASE_IMAGE") or None,
        "layers": image_layers(os.environ.get("REFGEN_IMAGE_LAYERS")),
    }


def image_layers(text: str | None) -> list[str]:
    """``REFGEN_IMAGE_LAYERS`` (set by ``docker/run.sh``): a JSON list of layer digests."""
    if not text:
        return []
    try:
        layers = jsonio.loads(text)
    except ValueError as exc:
        layers = exc
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise ProvenanceError(
            f"REFGEN_IMAGE_LAYERS must be a JSON list of layer digests (strings), as "
            f"docker/run.sh sets it, got {shown!r}; unset it outside the image."
        )
    return layers


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _cpu_isa() -> list[str]:
    """The vector extensions the CPU has, whatever the profile caps torch to."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    return sorted(f for f in flags if f in _ISA_FLAGS or f.startswith(("avx512", "amx")))


_ISA_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni"})


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
